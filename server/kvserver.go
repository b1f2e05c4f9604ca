package server

import (
	"bytes"
	"context"

	"github.com/ballotdb/ballot/kv"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// kvServer is etcd's KV service.
type kvServer struct {
	pb.UnimplementedKVServer
	s *Server
}

// rangeStreamChunk is how many keys one RangeStream message carries.
const rangeStreamChunk = 1000

// RangeStream answers a Range in chunks (etcd 3.7): disjoint slices of the
// keys in order, header, more and count on the last chunk only.
func (k *kvServer) RangeStream(r *pb.RangeRequest, stream pb.KV_RangeStreamServer) error {
	resp, err := k.Range(stream.Context(), r)
	if err != nil {
		return err
	}
	kvs := resp.Kvs
	for len(kvs) > rangeStreamChunk {
		if err := stream.Send(&pb.RangeStreamResponse{RangeResponse: &pb.RangeResponse{Kvs: kvs[:rangeStreamChunk]}}); err != nil {
			return err
		}
		kvs = kvs[rangeStreamChunk:]
	}
	resp.Kvs = kvs
	return stream.Send(&pb.RangeStreamResponse{RangeResponse: resp})
}

func (k *kvServer) Range(ctx context.Context, r *pb.RangeRequest) (*pb.RangeResponse, error) {
	if err := checkRange(r); err != nil {
		return nil, err
	}
	if !r.Serializable {
		if err := k.s.readBarrier(ctx); err != nil {
			return nil, err
		}
	}
	// After the barrier: a split applied before it must refuse the read,
	// and so must a transaction's write lock taken before it.
	if err := k.s.requestGuard(&pb.InternalRaftRequest{Range: r}); err != nil {
		return nil, err
	}
	if err := k.s.txnGuard(&pb.InternalRaftRequest{Range: r}); err != nil {
		return nil, err
	}
	resp, err := k.s.store.Range(r)
	if err != nil {
		return nil, err
	}
	// A split applied while the store was read may have taken the keys
	// away under it: the range narrows before they go, so look again.
	if err := k.s.requestGuard(&pb.InternalRaftRequest{Range: r}); err != nil {
		return nil, err
	}
	resp.Header = k.s.fillHeader(resp.Header)
	return resp, nil
}

func (k *kvServer) Put(ctx context.Context, r *pb.PutRequest) (*pb.PutResponse, error) {
	if err := checkPut(r); err != nil {
		return nil, err
	}
	if err := k.s.refuseWrite(ctx, &pb.InternalRaftRequest{Put: r}); err != nil {
		return nil, err
	}
	if k.s.cfg.Unsafe.EarlyAck {
		go func() { // BROKEN ON PURPOSE: answer before the write commits
			ctx, cancel := context.WithTimeout(context.Background(), k.s.requestTimeout())
			defer cancel()
			k.s.propose(ctx, &pb.InternalRaftRequest{Put: r})
		}()
		return &pb.PutResponse{Header: k.s.header(0)}, nil
	}
	resp, err := k.s.propose(ctx, &pb.InternalRaftRequest{Put: r})
	if err != nil {
		return nil, err
	}
	out := resp.(*pb.PutResponse)
	out.Header = k.s.fillHeader(out.Header)
	return out, nil
}

func (k *kvServer) DeleteRange(ctx context.Context, r *pb.DeleteRangeRequest) (*pb.DeleteRangeResponse, error) {
	if err := kv.ValidateDeleteRange(r); err != nil {
		return nil, err
	}
	if err := k.s.refuseWrite(ctx, &pb.InternalRaftRequest{DeleteRange: r}); err != nil {
		return nil, err
	}
	resp, err := k.s.propose(ctx, &pb.InternalRaftRequest{DeleteRange: r})
	if err != nil {
		return nil, err
	}
	out := resp.(*pb.DeleteRangeResponse)
	out.Header = k.s.fillHeader(out.Header)
	return out, nil
}

func (k *kvServer) Txn(ctx context.Context, r *pb.TxnRequest) (*pb.TxnResponse, error) {
	if err := checkTxn(r, MaxTxnOps); err != nil {
		return nil, err
	}
	if err := k.s.refuseWrite(ctx, &pb.InternalRaftRequest{Txn: r}); err != nil {
		return nil, err
	}
	var resp any
	var err error
	if isReadOnlyTxn(r) {
		// A read-only Txn is served like a Range: no log entry.
		serializable := allSerializable(r)
		if !serializable {
			if err := k.s.readBarrier(ctx); err != nil {
				return nil, err
			}
		}
		if err := k.s.requestGuard(&pb.InternalRaftRequest{Txn: r}); err != nil {
			return nil, err
		}
		if err := k.s.txnGuard(&pb.InternalRaftRequest{Txn: r}); err != nil {
			return nil, err
		}
		resp, err = k.s.store.Txn(r)
		if err == nil {
			err = k.s.requestGuard(&pb.InternalRaftRequest{Txn: r}) // as in Range
		}
	} else {
		resp, err = k.s.propose(ctx, &pb.InternalRaftRequest{Txn: r})
	}
	if err != nil {
		return nil, err
	}
	out := resp.(*pb.TxnResponse)
	k.s.fillTxnHeaders(out)
	return out, nil
}

func (k *kvServer) Compact(ctx context.Context, r *pb.CompactionRequest) (*pb.CompactionResponse, error) {
	if err := k.s.refuseWrite(ctx, &pb.InternalRaftRequest{Compaction: r}); err != nil {
		return nil, err
	}
	resp, err := k.s.propose(ctx, &pb.InternalRaftRequest{Compaction: r})
	if err != nil {
		return nil, err
	}
	out := resp.(*pb.CompactionResponse)
	out.Header = k.s.fillHeader(out.Header)
	return out, nil
}

// fillTxnHeaders fills the Txn's own header as etcd does; the headers of
// the responses inside it are the store's (etcd fills only the top one).
func (s *Server) fillTxnHeaders(t *pb.TxnResponse) {
	t.Header = s.fillHeader(t.Header)
}

// Validation is etcd's API-layer validation, shared with the store (see
// kv.ValidateTxn): anything refused here is refused before it is proposed.
func checkRange(r *pb.RangeRequest) error { return kv.ValidateRange(r) }
func checkPut(r *pb.PutRequest) error     { return kv.ValidatePut(r) }
func checkTxn(r *pb.TxnRequest, maxOps int) error {
	return kv.ValidateTxn(r, maxOps)
}

// inRange reports whether k is in [key, end) with etcd's conventions: an
// empty end is the single key, "\x00" means every key from key on.
func inRange(k, key, end []byte) bool {
	switch {
	case len(end) == 0:
		return bytes.Equal(k, key)
	case len(end) == 1 && end[0] == 0:
		return bytes.Compare(k, key) >= 0
	}
	return bytes.Compare(k, key) >= 0 && bytes.Compare(k, end) < 0
}

func isReadOnlyTxn(r *pb.TxnRequest) bool {
	for _, ops := range [][]*pb.RequestOp{r.Success, r.Failure} {
		for _, op := range ops {
			switch v := op.Request.(type) {
			case *pb.RequestOp_RequestRange:
			case *pb.RequestOp_RequestTxn:
				if !isReadOnlyTxn(v.RequestTxn) {
					return false
				}
			default:
				return false
			}
		}
	}
	return true
}

// allSerializable reports whether every range of a read-only Txn asked to
// be serializable; only then is it served without a read barrier.
func allSerializable(r *pb.TxnRequest) bool {
	n := 0
	for _, ops := range [][]*pb.RequestOp{r.Success, r.Failure} {
		for _, op := range ops {
			switch v := op.Request.(type) {
			case *pb.RequestOp_RequestRange:
				n++
				if !v.RequestRange.Serializable {
					return false
				}
			case *pb.RequestOp_RequestTxn:
				n++
				if !allSerializable(v.RequestTxn) {
					return false
				}
			}
		}
	}
	return n > 0
}
