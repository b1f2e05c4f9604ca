package kv

import (
	"slices"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

func TestLeases(t *testing.T) {
	s := New()
	r, err := s.LeaseGrant(&pb.LeaseGrantRequest{ID: 100, TTL: 30})
	if err != nil || r.ID != 100 || r.TTL != 30 || r.Header.Revision != 1 {
		t.Fatalf("grant %v %v", r, err)
	}
	if _, err := s.LeaseGrant(&pb.LeaseGrantRequest{ID: -3, TTL: 1}); err != nil {
		t.Fatal(err)
	}
	if ids := s.Leases(); !slices.Equal(ids, []int64{-3, 100}) {
		t.Fatalf("leases %v", ids)
	}
	if s.Rev() != 1 {
		t.Fatal("grant advanced the revision")
	}
	mustPutLease(t, s, "b", "1", 100) // 2
	mustPutLease(t, s, "a", "1", 100) // 3
	mustPutLease(t, s, "c", "1", -3)  // 4
	mustPut(t, s, "d", "1")           // 5
	// Txn attach.
	if _, err := s.Txn(&pb.TxnRequest{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte("e"), Lease: 100}}}}}); err != nil {
		t.Fatal(err)
	}
	ttl, keys, err := s.LeaseTimeToLive(100, true)
	if err != nil || ttl != 30 || len(keys) != 3 || string(keys[0]) != "a" || string(keys[1]) != "b" || string(keys[2]) != "e" {
		t.Fatalf("ttl %d keys %q err %v", ttl, keys, err)
	}
	if _, keys, _ := s.LeaseTimeToLive(100, false); keys != nil {
		t.Fatalf("keys without asking %q", keys)
	}
	// Deleting a key detaches it.
	mustDel(t, s, "e", "") // 7
	// Checkpoint.
	if _, err := s.LeaseCheckpoint(&pb.LeaseCheckpointRequest{Checkpoints: []*pb.LeaseCheckpoint{{ID: 100, Remaining_TTL: 12}, {ID: 555, Remaining_TTL: 1}}}); err != nil {
		t.Fatal(err)
	}
	if rem, err := s.LeaseCheckpointedTTL(100); err != nil || rem != 12 {
		t.Fatalf("remaining %d %v", rem, err)
	}
	if s.Rev() != 7 {
		t.Fatalf("rev %d", s.Rev())
	}
	var evs []*mvccpb.Event
	var evRev int64
	calls := 0
	s.SetObserver(func(rev int64, e []*mvccpb.Event) { evRev, evs = rev, e; calls++ })
	rr, err := s.LeaseRevoke(&pb.LeaseRevokeRequest{ID: 100})
	if err != nil || rr.Header.Revision != 8 || s.Rev() != 8 {
		t.Fatalf("revoke %v %v rev %d", rr, err, s.Rev())
	}
	if calls != 1 || evRev != 8 || len(evs) != 2 || string(evs[0].Kv.Key) != "a" || string(evs[1].Kv.Key) != "b" {
		t.Fatalf("revoke events %d %d %v", calls, evRev, evs)
	}
	for _, e := range evs {
		if e.Type != mvccpb.DELETE || e.Kv.ModRevision != 8 || e.PrevKv == nil || e.PrevKv.Lease != 100 {
			t.Fatalf("event %v", e)
		}
	}
	if r := mustRange(t, s, &pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}}); !slices.Equal(keysOf(r.Kvs), []string{"c", "d"}) {
		t.Fatalf("keys after revoke %v", keysOf(r.Kvs))
	}
	_, _, err = s.LeaseTimeToLive(100, false)
	wantErr(t, err, rpctypes.ErrGRPCLeaseNotFound)
	_, err = s.Put(&pb.PutRequest{Key: []byte("x"), Lease: 100})
	wantErr(t, err, rpctypes.ErrGRPCLeaseNotFound)
	// Revoking a lease without keys does not advance the revision.
	if _, err := s.LeaseGrant(&pb.LeaseGrantRequest{ID: 7, TTL: 1}); err != nil {
		t.Fatal(err)
	}
	if rr, err := s.LeaseRevoke(&pb.LeaseRevokeRequest{ID: 7}); err != nil || rr.Header.Revision != 8 || calls != 1 {
		t.Fatalf("empty revoke %v %v calls %d", rr, err, calls)
	}
	// A re-granted ID starts with no keys.
	if _, err := s.LeaseGrant(&pb.LeaseGrantRequest{ID: 100, TTL: 5}); err != nil {
		t.Fatal(err)
	}
	if ttl, keys, _ := s.LeaseTimeToLive(100, true); ttl != 5 || len(keys) != 0 {
		t.Fatalf("regranted %d %q", ttl, keys)
	}
}
