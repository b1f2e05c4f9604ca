package kv

import (
	"errors"
	"io"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// Store has node.StateMachine's method set.
var _ interface {
	Apply(index uint64, cmd []byte) []byte
	Snapshot(w io.Writer) error
	Restore(r io.Reader) error
} = (*Store)(nil)

func applyReq(t *testing.T, s *Store, idx uint64, r *pb.InternalRaftRequest) Result {
	t.Helper()
	b, err := EncodeRequest(r)
	if err != nil {
		t.Fatal(err)
	}
	res, err := DecodeResult(s.Apply(idx, b))
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func TestApplyRoundTrip(t *testing.T) {
	s := New()
	res := applyReq(t, s, 1, &pb.InternalRaftRequest{LeaseGrant: &pb.LeaseGrantRequest{ID: 9, TTL: 10}})
	protoEqual(t, res.Resp, &pb.LeaseGrantResponse{Header: &pb.ResponseHeader{Revision: 1}, ID: 9, TTL: 10})

	res = applyReq(t, s, 2, &pb.InternalRaftRequest{Put: &pb.PutRequest{Key: []byte("a"), Value: []byte("1"), Lease: 9}})
	protoEqual(t, res.Resp, &pb.PutResponse{Header: &pb.ResponseHeader{Revision: 2}})

	res = applyReq(t, s, 3, &pb.InternalRaftRequest{Txn: &pb.TxnRequest{
		Compare: []*pb.Compare{cmpValue("a", pb.Compare_EQUAL, "1")},
		Success: []*pb.RequestOp{opPut("b", "2"), opGet("a", "c")},
	}})
	tr, ok := res.Resp.(*pb.TxnResponse)
	if !ok || !tr.Succeeded || tr.Header.Revision != 3 || len(tr.Responses[1].GetResponseRange().Kvs) != 2 {
		t.Fatalf("txn %v", res)
	}
	res = applyReq(t, s, 4, &pb.InternalRaftRequest{Range: &pb.RangeRequest{Key: []byte("a")}})
	if rr := res.Resp.(*pb.RangeResponse); len(rr.Kvs) != 1 || rr.Kvs[0].Lease != 9 {
		t.Fatalf("range %v", rr)
	}
	res = applyReq(t, s, 5, &pb.InternalRaftRequest{DeleteRange: &pb.DeleteRangeRequest{Key: []byte("b")}})
	protoEqual(t, res.Resp, &pb.DeleteRangeResponse{Header: &pb.ResponseHeader{Revision: 4}, Deleted: 1})
	res = applyReq(t, s, 6, &pb.InternalRaftRequest{Compaction: &pb.CompactionRequest{Revision: 3}})
	protoEqual(t, res.Resp, &pb.CompactionResponse{Header: &pb.ResponseHeader{Revision: 4}})
	res = applyReq(t, s, 7, &pb.InternalRaftRequest{LeaseCheckpoint: &pb.LeaseCheckpointRequest{Checkpoints: []*pb.LeaseCheckpoint{{ID: 9, Remaining_TTL: 3}}}})
	protoEqual(t, res.Resp, &pb.LeaseCheckpointResponse{Header: &pb.ResponseHeader{Revision: 4}})
	res = applyReq(t, s, 8, &pb.InternalRaftRequest{LeaseRevoke: &pb.LeaseRevokeRequest{ID: 9}})
	protoEqual(t, res.Resp, &pb.LeaseRevokeResponse{Header: &pb.ResponseHeader{Revision: 5}})
	if s.AppliedIndex() != 8 {
		t.Fatalf("applied %d", s.AppliedIndex())
	}
}

func TestApplyErrors(t *testing.T) {
	s := NewWithOptions(Options{MaxRequestBytes: 1024})
	mustPut(t, s, "k", "v")
	big := make([]byte, 2048)
	cases := []struct {
		name string
		req  *pb.InternalRaftRequest
		want error
	}{
		{"empty key", &pb.InternalRaftRequest{Put: &pb.PutRequest{Value: []byte("x")}}, rpctypes.ErrGRPCEmptyKey},
		{"key not found", &pb.InternalRaftRequest{Put: &pb.PutRequest{Key: []byte("nope"), IgnoreValue: true}}, rpctypes.ErrGRPCKeyNotFound},
		{"future rev", &pb.InternalRaftRequest{Compaction: &pb.CompactionRequest{Revision: 10}}, rpctypes.ErrGRPCFutureRev},
		{"lease not found", &pb.InternalRaftRequest{LeaseRevoke: &pb.LeaseRevokeRequest{ID: 1}}, rpctypes.ErrGRPCLeaseNotFound},
		{"duplicate key", &pb.InternalRaftRequest{Txn: &pb.TxnRequest{Success: []*pb.RequestOp{opPut("a", "1"), opPut("a", "1")}}}, rpctypes.ErrGRPCDuplicateKey},
		{"too large", &pb.InternalRaftRequest{Put: &pb.PutRequest{Key: []byte("k"), Value: big}}, rpctypes.ErrGRPCRequestTooLarge},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			res := applyReq(t, s, uint64(10+i), c.req)
			if res.Resp != nil {
				t.Fatalf("resp %v", res.Resp)
			}
			if res.Err != c.want || !errors.Is(res.Err, c.want) {
				t.Fatalf("err %v, want %v", res.Err, c.want)
			}
			if status.Code(res.Err) != status.Code(c.want) || status.Convert(res.Err).Message() != status.Convert(c.want).Message() {
				t.Fatalf("status %v", status.Convert(res.Err))
			}
		})
	}
	// Undecodable and unsupported commands give error results, not panics.
	res, err := DecodeResult(s.Apply(50, []byte{0xff, 0xff, 0xff}))
	if err != nil || status.Code(res.Err) != codes.InvalidArgument {
		t.Fatalf("garbage: %v %v", res, err)
	}
	b, _ := EncodeRequest(&pb.InternalRaftRequest{Alarm: &pb.AlarmRequest{}})
	res, err = DecodeResult(s.Apply(51, b))
	if err != nil || status.Code(res.Err) != codes.Unimplemented {
		t.Fatalf("alarm: %v %v", res, err)
	}
	if s.Rev() != 2 {
		t.Fatalf("errors changed the revision: %d", s.Rev())
	}
}

func TestResultEncoding(t *testing.T) {
	// Wrapped rpctypes errors keep their identity.
	res, err := DecodeResult(EncodeResult(nil, errorsJoinWrap(rpctypes.ErrGRPCCompacted)))
	if err != nil || res.Err != rpctypes.ErrGRPCCompacted {
		t.Fatalf("wrapped: %v %v", res, err)
	}
	// Other status errors keep code and message and compare equal.
	orig := status.Error(codes.Aborted, "something")
	res, _ = DecodeResult(EncodeResult(nil, orig))
	if !errors.Is(res.Err, orig) || status.Code(res.Err) != codes.Aborted {
		t.Fatalf("status: %v", res.Err)
	}
	// Plain errors become Unknown with their text.
	res, _ = DecodeResult(EncodeResult(nil, errors.New("plain")))
	if st := status.Convert(res.Err); st.Code() != codes.Unknown || st.Message() != "plain" {
		t.Fatalf("plain: %v", st)
	}
	// Empty.
	if res, err := DecodeResult(EncodeResult(nil, nil)); err != nil || res.Resp != nil || res.Err != nil {
		t.Fatalf("empty: %v %v", res, err)
	}
	// Unknown response type.
	res, _ = DecodeResult(EncodeResult(&pb.StatusResponse{}, nil))
	if status.Code(res.Err) != codes.Internal {
		t.Fatalf("unknown type: %v", res)
	}
	// Malformed results.
	for _, b := range [][]byte{nil, {1}, {2, 0}, {1, 99}, {1, kindError}, {1, kindPut, 0xff}} {
		if _, err := DecodeResult(b); err == nil {
			t.Fatalf("malformed %v accepted", b)
		}
	}
	// Responses round-trip.
	resp := &pb.PutResponse{Header: &pb.ResponseHeader{Revision: 5}}
	res, _ = DecodeResult(EncodeResult(resp, nil))
	if !proto.Equal(res.Resp, resp) {
		t.Fatalf("resp %v", res.Resp)
	}
}

type wrapErr struct{ err error }

func (w wrapErr) Error() string { return "outer: " + w.err.Error() }
func (w wrapErr) Unwrap() error { return w.err }

func errorsJoinWrap(err error) error { return wrapErr{err} }
