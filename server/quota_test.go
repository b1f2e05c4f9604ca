package server

import (
	"bytes"
	"errors"
	"slices"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/protobuf/proto"

	"github.com/ballotdb/ballot/kv"
)

// TestAlarmsRefuseAtApply drives the apply path alone (no API check in
// front): with NOSPACE active, entries that grow the data are refused with
// etcd's error, the others applied; with CORRUPT active every keyspace
// write is refused; disarming lets writes apply again. Two members fed the
// same entries end in byte-identical states.
func TestAlarmsRefuseAtApply(t *testing.T) {
	put := &pb.InternalRaftRequest{Put: &pb.PutRequest{Key: []byte("k"), Value: []byte("v")}}
	del := &pb.InternalRaftRequest{DeleteRange: &pb.DeleteRangeRequest{Key: []byte("k")}}
	grant := &pb.InternalRaftRequest{LeaseGrant: &pb.LeaseGrantRequest{ID: 5, TTL: 60}}
	revoke := &pb.InternalRaftRequest{LeaseRevoke: &pb.LeaseRevokeRequest{ID: 5}}
	txnPut := &pb.InternalRaftRequest{Txn: &pb.TxnRequest{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestPut{
		RequestPut: &pb.PutRequest{Key: []byte("t"), Value: []byte("v")}}}}}}
	txnDel := &pb.InternalRaftRequest{Txn: &pb.TxnRequest{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestDeleteRange{
		RequestDeleteRange: &pb.DeleteRangeRequest{Key: []byte("t")}}}}}}
	compact := func(rev int64) *pb.InternalRaftRequest {
		return &pb.InternalRaftRequest{Compaction: &pb.CompactionRequest{Revision: rev}}
	}
	alarm := func(a pb.AlarmRequest_AlarmAction, t pb.AlarmType) *pb.InternalRaftRequest {
		return &pb.InternalRaftRequest{Alarm: &pb.AlarmRequest{Action: a, MemberID: 7, Alarm: t}}
	}
	steps := []struct {
		req  *pb.InternalRaftRequest
		want error
	}{
		{put, nil},
		{grant, nil},
		{alarm(pb.AlarmRequest_ACTIVATE, pb.AlarmType_NOSPACE), nil},
		{put, rpctypes.ErrGRPCNoSpace},
		{txnPut, rpctypes.ErrGRPCNoSpace},
		{&pb.InternalRaftRequest{LeaseGrant: &pb.LeaseGrantRequest{ID: 6, TTL: 60}}, rpctypes.ErrGRPCNoSpace},
		{txnDel, nil},
		{del, nil},
		{revoke, nil},
		{compact(2), nil},
		{alarm(pb.AlarmRequest_DEACTIVATE, pb.AlarmType_NOSPACE), nil},
		{put, nil},
		{alarm(pb.AlarmRequest_ACTIVATE, pb.AlarmType_CORRUPT), nil},
		{put, rpctypes.ErrGRPCCorrupt},
		{del, rpctypes.ErrGRPCCorrupt},
		{txnDel, rpctypes.ErrGRPCCorrupt},
		{compact(3), rpctypes.ErrGRPCCorrupt},
		{alarm(pb.AlarmRequest_DEACTIVATE, pb.AlarmType_NONE), nil},
		{del, nil},
	}
	var snaps [][]byte
	for range 2 {
		s := &Server{store: kv.New()}
		s.store.SetApplyHook(s.applyHook)
		for i, st := range steps {
			cmd, err := proto.Marshal(st.req)
			if err != nil {
				t.Fatal(err)
			}
			res, err := kv.DecodeResult(s.store.Apply(uint64(i+1), cmd))
			if err != nil {
				t.Fatal(err)
			}
			if !errors.Is(res.Err, st.want) || (st.want == nil && res.Err != nil) {
				t.Fatalf("step %d (%v): %v, want %v", i, st.req, res.Err, st.want)
			}
		}
		var b bytes.Buffer
		if err := s.store.Snapshot(&b); err != nil {
			t.Fatal(err)
		}
		snaps = append(snaps, b.Bytes())
	}
	if !bytes.Equal(snaps[0], snaps[1]) {
		t.Fatal("two members applying the same entries differ")
	}
}

// TestCorruptMembers: a majority of the cluster decides; without one,
// the leader does if every member answered; otherwise nobody is blamed.
func TestCorruptMembers(t *testing.T) {
	cases := []struct {
		answers []memberHash
		members int
		want    []uint64
		decided bool
	}{
		{[]memberHash{{id: 1, hash: 5}, {id: 2, hash: 5}, {id: 3, hash: 5}}, 3, nil, true},
		{[]memberHash{{id: 1, hash: 5}, {id: 2, hash: 5}, {id: 3, hash: 6}}, 3, []uint64{3}, true},
		{[]memberHash{{id: 1, hash: 6}, {id: 2, hash: 5}, {id: 3, hash: 5}}, 3, []uint64{1}, true}, // the leader itself
		{[]memberHash{{id: 1, hash: 5}, {id: 2, hash: 6}}, 2, []uint64{2}, true},
		{[]memberHash{{id: 1, hash: 6}, {id: 2, hash: 5}}, 3, nil, false}, // member 3 did not answer
		{[]memberHash{{id: 1, hash: 5}, {id: 2, hash: 6}, {id: 3, hash: 7}}, 3, []uint64{2, 3}, true},
		{[]memberHash{{id: 1, hash: 5}, {id: 2, hash: 5}, {id: 4, hash: 6}}, 5, nil, false},
		{[]memberHash{{id: 1, hash: 5}, {id: 2, hash: 5}, {id: 3, hash: 5}, {id: 4, hash: 6}}, 5, []uint64{4}, true},
	}
	for i, c := range cases {
		got, decided := corruptMembers(c.answers, 1, c.members)
		if !slices.Equal(got, c.want) || decided != c.decided {
			t.Errorf("case %d: %v decided %v, want %v decided %v", i, got, decided, c.want, c.decided)
		}
	}
}
