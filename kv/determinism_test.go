package kv

import (
	"bytes"
	"math/rand"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// randomCommands makes n encoded requests of every kind Apply handles.
// The generator only needs the current and compact revisions, which it
// takes from a store applying the commands as they are made.
func randomCommands(t *testing.T, seed int64, n int) [][]byte {
	t.Helper()
	g := &gen{r: rand.New(rand.NewSource(seed)), keys: []string{"a", "b", "c", "d", "e", "f", "g", "h", "i", "j"}}
	s := New()
	var cmds [][]byte
	for i := 0; i < n; i++ {
		m := &model{rev: s.Rev(), compact: s.CompactRev()}
		var r *pb.InternalRaftRequest
		switch op := g.r.Intn(100); {
		case op < 30:
			r = &pb.InternalRaftRequest{Put: g.putReq(m)}
		case op < 40:
			k := g.key()
			r = &pb.InternalRaftRequest{DeleteRange: &pb.DeleteRangeRequest{Key: []byte(k), RangeEnd: bs(g.end(k)), PrevKv: true}}
		case op < 65:
			req := &pb.TxnRequest{Compare: []*pb.Compare{g.compare(m)}}
			req.Success = g.branch(m, map[string]bool{}, 0)
			req.Failure = g.branch(m, map[string]bool{}, 0)
			r = &pb.InternalRaftRequest{Txn: req}
		case op < 75:
			r = &pb.InternalRaftRequest{Range: g.rangeReq(m)}
		case op < 80:
			r = &pb.InternalRaftRequest{Compaction: &pb.CompactionRequest{Revision: m.compact + int64(g.r.Intn(int(m.rev-m.compact)+3)) - 1}}
		case op < 88:
			r = &pb.InternalRaftRequest{LeaseGrant: &pb.LeaseGrantRequest{ID: int64(g.r.Intn(5)), TTL: 5}}
		case op < 94:
			r = &pb.InternalRaftRequest{LeaseRevoke: &pb.LeaseRevokeRequest{ID: int64(g.r.Intn(5))}}
		default:
			r = &pb.InternalRaftRequest{LeaseCheckpoint: &pb.LeaseCheckpointRequest{Checkpoints: []*pb.LeaseCheckpoint{{ID: int64(g.r.Intn(5)), Remaining_TTL: int64(g.r.Intn(9))}}}}
		}
		b, err := EncodeRequest(r)
		if err != nil {
			t.Fatal(err)
		}
		s.Apply(uint64(i+1), b)
		cmds = append(cmds, b)
	}
	return cmds
}

func TestDeterminism(t *testing.T) {
	cmds := randomCommands(t, 99, 3000)
	a, b := New(), New()
	for i, c := range cmds {
		ra, rb := a.Apply(uint64(i+1), c), b.Apply(uint64(i+1), c)
		if !bytes.Equal(ra, rb) {
			t.Fatalf("command %d: results differ", i)
		}
		if i%500 == 0 && !bytes.Equal(snapshotBytes(t, a), snapshotBytes(t, b)) {
			t.Fatalf("command %d: snapshots differ", i)
		}
	}
	sa, sb := snapshotBytes(t, a), snapshotBytes(t, b)
	if !bytes.Equal(sa, sb) {
		t.Fatal("final snapshots differ")
	}
	if a.Rev() < 100 {
		t.Fatalf("the commands did too little: rev %d", a.Rev())
	}
}

// A store restored from a snapshot taken mid-stream gives the same results
// for the rest of the stream as the store that never stopped.
func TestSnapshotMidStream(t *testing.T) {
	cmds := randomCommands(t, 7, 2000)
	a := New()
	var b *Store
	for i, c := range cmds {
		ra := a.Apply(uint64(i+1), c)
		if i == 1000 {
			b = New()
			if err := b.Restore(bytes.NewReader(snapshotBytes(t, a))); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if b != nil {
			if rb := b.Apply(uint64(i+1), c); !bytes.Equal(ra, rb) {
				t.Fatalf("command %d: results differ after restore", i)
			}
		}
	}
	if !bytes.Equal(snapshotBytes(t, a), snapshotBytes(t, b)) {
		t.Fatal("final snapshots differ")
	}
}
