package kv

import (
	"bytes"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

// TestSplitOffPartitionsTheKeyspace: after SplitOff at "m", the two stores
// together answer every read (at every revision still kept) exactly as the
// one store did, each for its own half; neither revision moved; leases are
// in both, with their keys' attachments moved along; nothing is emitted.
func TestSplitOffPartitionsTheKeyspace(t *testing.T) {
	s := New()
	if _, err := s.LeaseGrant(&pb.LeaseGrantRequest{ID: 7, TTL: 60}); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"a", "k", "m", "n", "z"} {
		mustPut(t, s, k, k+"1")
	}
	mustPutLease(t, s, "b", "leased", 7)
	mustPutLease(t, s, "p", "leased", 7)
	mustPut(t, s, "n", "n2")
	mustDel(t, s, "z", "")
	before := s.Rev()
	var events int
	s.SetObserver(func(int64, []*mvccpb.Event) { events++ })

	child := s.SplitOff([]byte("m"), nil)
	if events != 0 {
		t.Fatalf("SplitOff emitted %d event batches", events)
	}
	if s.Rev() != before || child.Rev() != before {
		t.Fatalf("revisions after split: parent %d child %d, want %d", s.Rev(), child.Rev(), before)
	}
	keys := func(st *Store, rev int64) string {
		r := mustRange(t, st, &pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}, Revision: rev})
		var b bytes.Buffer
		for _, kv := range r.Kvs {
			b.WriteString(string(kv.Key) + "=" + string(kv.Value) + " ")
		}
		return b.String()
	}
	if got := keys(s, 0); got != "a=a1 b=leased k=k1 " {
		t.Fatalf("parent keeps %q", got)
	}
	if got := keys(child, 0); got != "m=m1 n=n2 p=leased " {
		t.Fatalf("child holds %q", got)
	}
	// History moved too: the child answers at an old revision, with z.
	if got := keys(child, before-2); got != "m=m1 n=n1 p=leased z=z1 " {
		t.Fatalf("child at revision %d: %q", before-2, got)
	}
	// The lease lives in both, each with its own keys attached.
	for _, c := range []struct {
		st   *Store
		want string
	}{{s, "b"}, {child, "p"}} {
		_, ks, err := c.st.LeaseTimeToLive(7, true)
		if err != nil || len(ks) != 1 || string(ks[0]) != c.want {
			t.Fatalf("lease 7 keys %q (%v), want %q", ks, err, c.want)
		}
	}
	// Revoking the lease in the parent deletes only the parent's key.
	if _, err := s.LeaseRevoke(&pb.LeaseRevokeRequest{ID: 7}); err != nil {
		t.Fatal(err)
	}
	if got := keys(child, 0); got != "m=m1 n=n2 p=leased " {
		t.Fatalf("child after the parent's revoke: %q", got)
	}
	// Both go on writing from the same revision.
	if r := mustPut(t, child, "q", "1"); r.Header.Revision != before+1 {
		t.Fatalf("child's next revision %d, want %d", r.Header.Revision, before+1)
	}
	// The child's snapshot restores to the same state.
	var buf bytes.Buffer
	if err := child.Snapshot(&buf); err != nil {
		t.Fatal(err)
	}
	back := New()
	if err := back.Restore(&buf); err != nil {
		t.Fatal(err)
	}
	if keys(back, 0) != keys(child, 0) {
		t.Fatal("child snapshot round trip differs")
	}
}
