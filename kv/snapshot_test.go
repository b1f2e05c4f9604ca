package kv

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/proto"
)

func snapshotBytes(t *testing.T, s *Store) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := s.Snapshot(&b); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// buildStore makes a store with history, a compaction, leases and a
// checkpoint.
func buildStore(t *testing.T) *Store {
	t.Helper()
	s := New()
	for _, id := range []int64{30, 10, 20} {
		if _, err := s.LeaseGrant(&pb.LeaseGrantRequest{ID: id, TTL: id * 2}); err != nil {
			t.Fatal(err)
		}
	}
	mustPutLease(t, s, "a", "1", 10)
	mustPut(t, s, "b", "1")
	mustPutLease(t, s, "c", "1", 20)
	mustPut(t, s, "a", "2")
	mustPutLease(t, s, "d", "", 10)
	mustDel(t, s, "b", "")
	if _, err := s.Txn(&pb.TxnRequest{Success: []*pb.RequestOp{opPut("e", "1"), opPut("f", "1"), opDel("c", "")}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Compact(&pb.CompactionRequest{Revision: 4}); err != nil {
		t.Fatal(err)
	}
	mustPut(t, s, "e", "2")
	if _, err := s.LeaseCheckpoint(&pb.LeaseCheckpointRequest{Checkpoints: []*pb.LeaseCheckpoint{{ID: 20, Remaining_TTL: 7}}}); err != nil {
		t.Fatal(err)
	}
	s.Apply(42, nil) // records the applied index; an empty request is an error result
	return s
}

func TestSnapshotRoundTrip(t *testing.T) {
	s := buildStore(t)
	snap := snapshotBytes(t, s)
	r := New()
	mustPut(t, r, "junk", "x") // replaced by Restore
	if err := r.Restore(bytes.NewReader(snap)); err != nil {
		t.Fatal(err)
	}
	if got := snapshotBytes(t, r); !bytes.Equal(got, snap) {
		t.Fatal("snapshot of the restored store differs")
	}
	if r.Rev() != s.Rev() || r.CompactRev() != s.CompactRev() || r.AppliedIndex() != 42 {
		t.Fatalf("rev %d/%d compact %d/%d applied %d", r.Rev(), s.Rev(), r.CompactRev(), s.CompactRev(), r.AppliedIndex())
	}
	if ls := r.Leases(); len(ls) != 3 || ls[0] != 10 || ls[2] != 30 {
		t.Fatalf("leases %v", ls)
	}
	// a was put again without a lease, so only d is still on lease 10.
	ttl, keys, err := r.LeaseTimeToLive(10, true)
	if err != nil || ttl != 20 || len(keys) != 1 || string(keys[0]) != "d" {
		t.Fatalf("lease 10: ttl %d keys %q err %v", ttl, keys, err)
	}
	if rem, _ := r.LeaseCheckpointedTTL(20); rem != 7 {
		t.Fatalf("checkpointed ttl %d", rem)
	}
	// Identical results for the same subsequent commands.
	cmds := [][]byte{}
	for _, req := range []*pb.InternalRaftRequest{
		{Put: &pb.PutRequest{Key: []byte("a"), Value: []byte("3"), PrevKv: true}},
		{Range: &pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}, Revision: 4}},
		{Range: &pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}, Revision: 3}},
		{LeaseRevoke: &pb.LeaseRevokeRequest{ID: 10}},
		{DeleteRange: &pb.DeleteRangeRequest{Key: []byte("a"), RangeEnd: []byte{0}, PrevKv: true}},
		{Compaction: &pb.CompactionRequest{Revision: 9}},
		{LeaseGrant: &pb.LeaseGrantRequest{ID: 20, TTL: 1}},
	} {
		b, err := EncodeRequest(req)
		if err != nil {
			t.Fatal(err)
		}
		cmds = append(cmds, b)
	}
	for i, c := range cmds {
		a, b := s.Apply(uint64(43+i), c), r.Apply(uint64(43+i), c)
		if !bytes.Equal(a, b) {
			t.Fatalf("command %d: results differ", i)
		}
	}
	if !bytes.Equal(snapshotBytes(t, s), snapshotBytes(t, r)) {
		t.Fatal("states differ after the same commands")
	}
}

func TestSnapshotEmpty(t *testing.T) {
	s := New()
	snap := snapshotBytes(t, s)
	r := buildStore(t)
	if err := r.Restore(bytes.NewReader(snap)); err != nil {
		t.Fatal(err)
	}
	if r.Rev() != 1 || len(r.Leases()) != 0 || !bytes.Equal(snapshotBytes(t, r), snap) {
		t.Fatal("restore of an empty snapshot")
	}
}

// reseal recomputes the trailing checksum after a deliberate edit.
func reseal(b []byte) []byte {
	out := append([]byte(nil), b...)
	binary.BigEndian.PutUint32(out[len(out)-4:], crc32.Checksum(out[:len(out)-4], castagnoli))
	return out
}

func TestSnapshotCorrupt(t *testing.T) {
	s := buildStore(t)
	snap := snapshotBytes(t, s)
	flip := func(i int) []byte {
		b := append([]byte(nil), snap...)
		b[i] ^= 0x40
		return b
	}
	cases := []struct {
		name string
		data []byte
		want error
	}{
		{"empty", nil, ErrCorruptSnapshot},
		{"bad magic", flip(0), ErrCorruptSnapshot},
		{"flipped body byte", flip(20), ErrCorruptSnapshot},
		{"flipped last body byte", flip(len(snap) - 5), ErrCorruptSnapshot},
		{"flipped checksum", flip(len(snap) - 1), ErrCorruptSnapshot},
		{"truncated", snap[:len(snap)-9], ErrCorruptSnapshot},
		{"truncated resealed", reseal(append(append([]byte(nil), snap[:len(snap)-12]...), 0, 0, 0, 0)), ErrCorruptSnapshot},
		{"trailing garbage resealed", reseal(append(append(append([]byte(nil), snap[:len(snap)-4]...), 1), 0, 0, 0, 0)), ErrCorruptSnapshot},
		{"unknown version", func() []byte {
			b := append([]byte(nil), snap...)
			binary.BigEndian.PutUint32(b[8:], snapVersion+1)
			return reseal(b)
		}(), ErrSnapshotVersion},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := New()
			mustPut(t, r, "keep", "me")
			before := snapshotBytes(t, r)
			err := r.Restore(bytes.NewReader(c.data))
			if !errors.Is(err, c.want) {
				t.Fatalf("error %v, want %v", err, c.want)
			}
			if !bytes.Equal(before, snapshotBytes(t, r)) {
				t.Fatal("failed restore changed the store")
			}
		})
	}
	// Every single-byte corruption is refused.
	for i := range snap {
		r := New()
		if err := r.Restore(bytes.NewReader(flip(i))); err == nil {
			t.Fatalf("corruption at byte %d accepted", i)
		}
	}
}

type failingReader struct{}

func (failingReader) Read([]byte) (int, error) { return 0, errors.New("disk on fire") }

func TestRestoreReadError(t *testing.T) {
	err := New().Restore(failingReader{})
	if err == nil || errors.Is(err, ErrCorruptSnapshot) {
		t.Fatalf("error %v", err)
	}
}

// TestSnapshotMeta shows meta written by an apply hook survives a snapshot,
// stays out of the keyspace, and that a version 1 snapshot (no meta) is
// still read.
func TestSnapshotMeta(t *testing.T) {
	s := New()
	s.SetApplyHook(func(r *pb.InternalRaftRequest) (proto.Message, error, bool) {
		if r.Alarm != nil {
			s.SetMeta("alarm/1", []byte("NOSPACE"))
			return &pb.AlarmResponse{}, nil, true
		}
		return nil, nil, false
	})
	cmd, err := EncodeRequest(&pb.InternalRaftRequest{Alarm: &pb.AlarmRequest{}})
	if err != nil {
		t.Fatal(err)
	}
	if res, err := DecodeResult(s.Apply(1, cmd)); err != nil || res.Err != nil {
		t.Fatalf("hooked request failed: %v %v", err, res.Err)
	}
	mustPut(t, s, "k", "v")
	snap := snapshotBytes(t, s)
	r := New()
	if err := r.Restore(bytes.NewReader(snap)); err != nil {
		t.Fatal(err)
	}
	if got := string(r.Meta("alarm/1")); got != "NOSPACE" {
		t.Fatalf("meta after restore = %q", got)
	}
	if keys := r.MetaKeys("alarm/"); len(keys) != 1 {
		t.Fatalf("meta keys %v", keys)
	}
	resp, err := r.Range(&pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}})
	if err != nil || resp.Count != 1 {
		t.Fatalf("keyspace holds %v (err %v), want only k", resp, err)
	}

	// The same state as version 1: drop the meta section, which here is
	// the count 1 and the two strings.
	plain := New()
	mustPut(t, plain, "k", "v")
	v2 := snapshotBytes(t, plain)
	v1 := append([]byte(nil), v2[:len(v2)-5]...) // drop meta count (0) and checksum
	binary.BigEndian.PutUint32(v1[8:], 1)
	v1 = reseal(append(v1, 0, 0, 0, 0))
	back := New()
	if err := back.Restore(bytes.NewReader(v1)); err != nil {
		t.Fatalf("version 1 snapshot refused: %v", err)
	}
	if !bytes.Equal(snapshotBytes(t, back), v2) {
		t.Fatal("version 1 snapshot restored to a different state")
	}
}
