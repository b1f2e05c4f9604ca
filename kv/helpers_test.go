package kv

import (
	"errors"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/proto"
)

func mustPut(t *testing.T, s *Store, k, v string) *pb.PutResponse {
	t.Helper()
	r, err := s.Put(&pb.PutRequest{Key: []byte(k), Value: []byte(v)})
	if err != nil {
		t.Fatalf("put %q: %v", k, err)
	}
	return r
}

func mustPutLease(t *testing.T, s *Store, k, v string, lease int64) *pb.PutResponse {
	t.Helper()
	r, err := s.Put(&pb.PutRequest{Key: []byte(k), Value: []byte(v), Lease: lease})
	if err != nil {
		t.Fatalf("put %q lease %d: %v", k, lease, err)
	}
	return r
}

func mustDel(t *testing.T, s *Store, k, end string) *pb.DeleteRangeResponse {
	t.Helper()
	r, err := s.DeleteRange(&pb.DeleteRangeRequest{Key: []byte(k), RangeEnd: bs(end)})
	if err != nil {
		t.Fatalf("delete %q..%q: %v", k, end, err)
	}
	return r
}

func mustRange(t *testing.T, s *Store, req *pb.RangeRequest) *pb.RangeResponse {
	t.Helper()
	r, err := s.Range(req)
	if err != nil {
		t.Fatalf("range %v: %v", req, err)
	}
	return r
}

// getAt returns the key's KeyValue at rev (0: current), or nil.
func getAt(t *testing.T, s *Store, k string, rev int64) *mvccpb.KeyValue {
	t.Helper()
	r := mustRange(t, s, &pb.RangeRequest{Key: []byte(k), Revision: rev})
	if len(r.Kvs) == 0 {
		return nil
	}
	return r.Kvs[0]
}

func bs(s string) []byte {
	if s == "" {
		return nil
	}
	return []byte(s)
}

func keysOf(kvs []*mvccpb.KeyValue) []string {
	out := []string{}
	for _, kv := range kvs {
		out = append(out, string(kv.Key))
	}
	return out
}

func wantErr(t *testing.T, got, want error) {
	t.Helper()
	if got != want || !errors.Is(got, want) {
		t.Fatalf("error = %v, want %v", got, want)
	}
}

func opPut(k, v string) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte(k), Value: []byte(v)}}}
}

func opDel(k, end string) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: &pb.DeleteRangeRequest{Key: []byte(k), RangeEnd: bs(end)}}}
}

func opGet(k, end string) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestRange{RequestRange: &pb.RangeRequest{Key: []byte(k), RangeEnd: bs(end)}}}
}

func opTxn(r *pb.TxnRequest) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestTxn{RequestTxn: r}}
}

func cmpValue(k string, res pb.Compare_CompareResult, v string) *pb.Compare {
	return &pb.Compare{Key: []byte(k), Target: pb.Compare_VALUE, Result: res, TargetUnion: &pb.Compare_Value{Value: []byte(v)}}
}

func cmpVersion(k string, res pb.Compare_CompareResult, v int64) *pb.Compare {
	return &pb.Compare{Key: []byte(k), Target: pb.Compare_VERSION, Result: res, TargetUnion: &pb.Compare_Version{Version: v}}
}

func protoEqual(t *testing.T, got, want proto.Message) {
	t.Helper()
	if !proto.Equal(got, want) {
		t.Fatalf("got  %v\nwant %v", got, want)
	}
}
