package kv

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// hashWorkload writes a history with overwrites, deletes, a lease and a
// txn, the first n steps of it.
func hashWorkload(t *testing.T, s *Store, n int) {
	t.Helper()
	for i := range n {
		switch i % 5 {
		case 0, 1:
			mustPut(t, s, fmt.Sprintf("k%d", i%7), fmt.Sprintf("v%d", i))
		case 2:
			mustDel(t, s, fmt.Sprintf("k%d", (i+3)%7), "")
		case 3:
			id := s.Rev()*1000 + int64(i) // unique when called again on the same store
			if _, err := s.LeaseGrant(&pb.LeaseGrantRequest{ID: id, TTL: 60}); err != nil {
				t.Fatal(err)
			}
			mustPutLease(t, s, fmt.Sprintf("l%d", i), "x", id)
		case 4:
			if _, err := s.Txn(&pb.TxnRequest{Success: []*pb.RequestOp{
				{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte("t"), Value: []byte{byte(i)}}}},
				{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte("u"), Value: []byte{byte(i)}}}},
			}}); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func mustHashKV(t *testing.T, s *Store, rev int64) (uint32, int64, int64) {
	t.Helper()
	h, c, r, err := s.HashKV(rev)
	if err != nil {
		t.Fatalf("HashKV(%d): %v", rev, err)
	}
	return h, c, r
}

// TestHashKVIdenticalStores: stores with the same history hash the same,
// at the current revision and at any earlier one; a store restored from a
// snapshot too.
func TestHashKVIdenticalStores(t *testing.T) {
	a, b := New(), New()
	hashWorkload(t, a, 40)
	hashWorkload(t, b, 40)
	ha, ca, ra := mustHashKV(t, a, 0)
	hb, cb, rb := mustHashKV(t, b, 0)
	if ha != hb || ca != cb || ra != rb {
		t.Fatalf("same history, different HashKV: %x/%d/%d vs %x/%d/%d", ha, ca, ra, hb, cb, rb)
	}
	if ca != -1 || ra != a.Rev() {
		t.Fatalf("HashKV(0) on a never-compacted store: compact %d rev %d, want -1 and %d", ca, ra, a.Rev())
	}
	if h1, _ := a.Hash(); func() uint32 { h2, _ := b.Hash(); return h2 }() != h1 {
		t.Fatal("same state, different Hash")
	}
	// A store that stopped earlier hashes like the longer one at its revision.
	short := New()
	hashWorkload(t, short, 20)
	hs, _, rs := mustHashKV(t, short, 0)
	if h, _, _ := mustHashKV(t, a, rs); h != hs {
		t.Fatalf("HashKV(%d) of a longer history %x differs from the shorter store's %x", rs, h, hs)
	}
	// A restored copy hashes the same, Hash included.
	var buf bytes.Buffer
	if err := a.Snapshot(&buf); err != nil {
		t.Fatal(err)
	}
	r := New()
	if err := r.Restore(&buf); err != nil {
		t.Fatal(err)
	}
	if h, _, _ := mustHashKV(t, r, 0); h != ha {
		t.Fatal("restored store hashes differently")
	}
	h1, _ := a.Hash()
	if h2, _ := r.Hash(); h1 != h2 {
		t.Fatal("restored store's Hash differs")
	}
}

// TestHashKVDiffers: one differing value, one extra tombstone, or a
// different lease on a key each change the hash; meta does not change
// HashKV but changes Hash.
func TestHashKVDiffers(t *testing.T) {
	base := func() *Store { s := New(); hashWorkload(t, s, 30); return s }
	ref := base()
	want, _, rev := mustHashKV(t, ref, 0)

	val := base()
	// Same revisions, one value differs by one byte.
	mustPut(t, ref, "z", "1")
	mustPut(t, val, "z", "2")
	if a, b := func() uint32 { h, _, _ := mustHashKV(t, ref, 0); return h }(), func() uint32 { h, _, _ := mustHashKV(t, val, 0); return h }(); a == b {
		t.Fatal("a differing value left HashKV unchanged")
	}
	// Up to the revision before the difference they still agree.
	if h, _, _ := mustHashKV(t, val, rev); h != want {
		t.Fatal("stores agreeing up to rev hash differently at rev")
	}

	lease := base()
	lease2 := base()
	if _, err := lease.LeaseGrant(&pb.LeaseGrantRequest{ID: 7, TTL: 10}); err != nil {
		t.Fatal(err)
	}
	if _, err := lease2.LeaseGrant(&pb.LeaseGrantRequest{ID: 8, TTL: 10}); err != nil {
		t.Fatal(err)
	}
	mustPutLease(t, lease, "y", "v", 7)
	mustPutLease(t, lease2, "y", "v", 8)
	h1, _, _ := mustHashKV(t, lease, 0)
	h2, _, _ := mustHashKV(t, lease2, 0)
	if h1 == h2 {
		t.Fatal("a different lease on a key left HashKV unchanged")
	}

	meta := base()
	meta.SetMeta("alarm/x", []byte{1})
	plain := base()
	if a, b := func() uint32 { h, _, _ := mustHashKV(t, meta, 0); return h }(), func() uint32 { h, _, _ := mustHashKV(t, plain, 0); return h }(); a != b {
		t.Fatal("meta changed HashKV")
	}
	if a, _ := meta.Hash(); func() uint32 { h, _ := plain.Hash(); return h }() == a {
		t.Fatal("meta left Hash unchanged")
	}
}

// TestHashKVCompaction: the same compaction on two copies keeps them
// equal; revisions out of range fail with etcd's errors; the compact
// revision is reported.
func TestHashKVCompaction(t *testing.T) {
	a, b := New(), New()
	hashWorkload(t, a, 30)
	hashWorkload(t, b, 30)
	before, _, _ := mustHashKV(t, a, 0)
	for _, s := range []*Store{a, b} {
		if _, err := s.Compact(&pb.CompactionRequest{Revision: 10}); err != nil {
			t.Fatal(err)
		}
	}
	ha, ca, _ := mustHashKV(t, a, 0)
	hb, _, _ := mustHashKV(t, b, 0)
	if ha != hb || ca != 10 {
		t.Fatalf("after the same compaction: %x vs %x, compact %d", ha, hb, ca)
	}
	if ha == before {
		t.Fatal("compaction dropped entries but the hash did not change")
	}
	if _, _, _, err := a.HashKV(a.Rev() + 1); !errors.Is(err, rpctypes.ErrGRPCFutureRev) {
		t.Fatalf("future revision: %v", err)
	}
	if _, _, _, err := a.HashKV(5); !errors.Is(err, rpctypes.ErrGRPCCompacted) {
		t.Fatalf("compacted revision: %v", err)
	}
	if _, _, r, err := a.HashKV(10); err != nil || r != 10 {
		t.Fatalf("HashKV at the compact revision: rev %d err %v", r, err)
	}
}

// TestByteCounter: the running count equals a fresh count after writes,
// after a compaction and after a restore.
func TestByteCounter(t *testing.T) {
	s := New()
	var c ByteCounter
	if got := s.CountBytes(&c); got != 0 {
		t.Fatalf("empty store counts %d bytes", got)
	}
	check := func(what string) {
		t.Helper()
		got := s.CountBytes(&c)
		var fresh ByteCounter
		if want := s.CountBytes(&fresh); got != want || c.Entries() != fresh.Entries() {
			t.Fatalf("%s: running count %d bytes/%d entries, fresh count %d/%d", what, got, c.Entries(), want, fresh.Entries())
		}
	}
	hashWorkload(t, s, 10)
	check("after writes")
	mustPut(t, s, "big", string(make([]byte, 1000)))
	check("after a big put")
	if c.bytes < 1000+EntryOverheadBytes {
		t.Fatalf("a 1000-byte value counted as %d bytes in all", c.bytes)
	}
	hashWorkload(t, s, 25)
	before := s.CountBytes(&c)
	if _, err := s.Compact(&pb.CompactionRequest{Revision: s.Rev()}); err != nil {
		t.Fatal(err)
	}
	check("after a compaction")
	if c.bytes >= before {
		t.Fatalf("compaction did not shrink the count: %d -> %d", before, c.bytes)
	}
	other := New()
	hashWorkload(t, other, 3)
	var buf bytes.Buffer
	if err := other.Snapshot(&buf); err != nil {
		t.Fatal(err)
	}
	if err := s.Restore(&buf); err != nil {
		t.Fatal(err)
	}
	check("after a restore to an earlier revision")
	st := s.Stats()
	if st.Revision != other.Rev() || st.Bytes != c.bytes || st.Entries != c.Entries() || st.Keys == 0 {
		t.Fatalf("stats %+v", st)
	}
}
