package server

import (
	"bytes"
	"context"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
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
	resp, err := k.s.store.Range(r)
	if err != nil {
		return nil, err
	}
	resp.Header = k.s.fillHeader(resp.Header)
	return resp, nil
}

func (k *kvServer) Put(ctx context.Context, r *pb.PutRequest) (*pb.PutResponse, error) {
	if err := checkPut(r); err != nil {
		return nil, err
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
	if len(r.Key) == 0 {
		return nil, rpctypes.ErrGRPCEmptyKey
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
		resp, err = k.s.store.Txn(r)
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
	resp, err := k.s.propose(ctx, &pb.InternalRaftRequest{Compaction: r})
	if err != nil {
		return nil, err
	}
	out := resp.(*pb.CompactionResponse)
	out.Header = k.s.fillHeader(out.Header)
	return out, nil
}

// fillTxnHeaders fills the Txn's header and, as etcd does, every nested
// response's header with the same values.
func (s *Server) fillTxnHeaders(t *pb.TxnResponse) {
	t.Header = s.fillHeader(t.Header)
	for _, r := range t.Responses {
		switch v := r.Response.(type) {
		case *pb.ResponseOp_ResponseRange:
			if v.ResponseRange != nil {
				v.ResponseRange.Header = cloneHeader(t.Header)
			}
		case *pb.ResponseOp_ResponsePut:
			if v.ResponsePut != nil {
				v.ResponsePut.Header = cloneHeader(t.Header)
			}
		case *pb.ResponseOp_ResponseDeleteRange:
			if v.ResponseDeleteRange != nil {
				v.ResponseDeleteRange.Header = cloneHeader(t.Header)
			}
		case *pb.ResponseOp_ResponseTxn:
			if v.ResponseTxn != nil {
				v.ResponseTxn.Header = cloneHeader(t.Header)
				s.fillTxnHeaders(v.ResponseTxn)
			}
		}
	}
}

func cloneHeader(h *pb.ResponseHeader) *pb.ResponseHeader {
	return &pb.ResponseHeader{ClusterId: h.ClusterId, MemberId: h.MemberId, Revision: h.Revision, RaftTerm: h.RaftTerm}
}

// Validation, as etcd's API layer does it before anything is proposed.

func checkRange(r *pb.RangeRequest) error {
	if len(r.Key) == 0 {
		return rpctypes.ErrGRPCEmptyKey
	}
	if _, ok := pb.RangeRequest_SortOrder_name[int32(r.SortOrder)]; !ok {
		return rpctypes.ErrGRPCInvalidSortOption
	}
	if _, ok := pb.RangeRequest_SortTarget_name[int32(r.SortTarget)]; !ok {
		return rpctypes.ErrGRPCInvalidSortOption
	}
	return nil
}

func checkPut(r *pb.PutRequest) error {
	if len(r.Key) == 0 {
		return rpctypes.ErrGRPCEmptyKey
	}
	if r.IgnoreValue && len(r.Value) != 0 {
		return rpctypes.ErrGRPCValueProvided
	}
	if r.IgnoreLease && r.Lease != 0 {
		return rpctypes.ErrGRPCLeaseProvided
	}
	return nil
}

func checkTxn(r *pb.TxnRequest, maxOps int) error {
	if len(r.Compare) > maxOps || len(r.Success) > maxOps || len(r.Failure) > maxOps {
		return rpctypes.ErrGRPCTooManyOps
	}
	for _, c := range r.Compare {
		if len(c.Key) == 0 {
			return rpctypes.ErrGRPCEmptyKey
		}
	}
	for _, ops := range [][]*pb.RequestOp{r.Success, r.Failure} {
		for _, op := range ops {
			if err := checkOp(op, maxOps); err != nil {
				return err
			}
		}
	}
	if _, err := checkDupPuts(r.Success, nil); err != nil {
		return err
	}
	if _, err := checkDupPuts(r.Failure, nil); err != nil {
		return err
	}
	return nil
}

func checkOp(op *pb.RequestOp, maxOps int) error {
	switch v := op.Request.(type) {
	case *pb.RequestOp_RequestRange:
		return checkRange(v.RequestRange)
	case *pb.RequestOp_RequestPut:
		return checkPut(v.RequestPut)
	case *pb.RequestOp_RequestDeleteRange:
		if len(v.RequestDeleteRange.Key) == 0 {
			return rpctypes.ErrGRPCEmptyKey
		}
	case *pb.RequestOp_RequestTxn:
		return checkTxn(v.RequestTxn, maxOps)
	default:
		return rpctypes.ErrGRPCKeyNotFound
	}
	return nil
}

// checkDupPuts refuses a Txn branch that puts the same key twice, or puts
// a key it also deletes, as etcd does (nested Txns included).
func checkDupPuts(ops []*pb.RequestOp, seen map[string]bool) (map[string]bool, error) {
	if seen == nil {
		seen = map[string]bool{}
	}
	var dels []*pb.DeleteRangeRequest
	for _, op := range ops {
		switch v := op.Request.(type) {
		case *pb.RequestOp_RequestPut:
			k := string(v.RequestPut.Key)
			if seen[k] {
				return nil, rpctypes.ErrGRPCDuplicateKey
			}
			seen[k] = true
		case *pb.RequestOp_RequestDeleteRange:
			dels = append(dels, v.RequestDeleteRange)
		case *pb.RequestOp_RequestTxn:
			for _, branch := range [][]*pb.RequestOp{v.RequestTxn.Success, v.RequestTxn.Failure} {
				sub := map[string]bool{}
				for k := range seen {
					sub[k] = true
				}
				got, err := checkDupPuts(branch, sub)
				if err != nil {
					return nil, err
				}
				for k := range got {
					seen[k] = true
				}
			}
		}
	}
	for _, d := range dels {
		for k := range seen {
			if inRange([]byte(k), d.Key, d.RangeEnd) {
				return nil, rpctypes.ErrGRPCDuplicateKey
			}
		}
	}
	return seen, nil
}

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
