package snap

import (
	"errors"
	"strings"
	"testing"

	"github.com/ballotdb/ballot/consensus"
	"github.com/ballotdb/ballot/vfs"
)

func meta(i uint64) consensus.SnapshotMeta {
	return consensus.SnapshotMeta{Index: i, Epoch: 2, ConfState: consensus.ConfState{Voters: []consensus.NodeID{1, 2, 3}}}
}

func TestSaveLoadPrune(t *testing.T) {
	m := vfs.NewMem()
	s, err := Open(m, "/snap")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Latest(); !errors.Is(err, ErrNotFound) {
		t.Fatalf("empty store: %v", err)
	}
	for _, i := range []uint64{10, 20, 30} {
		if err := s.Save(meta(i), []byte(strings.Repeat("d", int(i)))); err != nil {
			t.Fatal(err)
		}
	}
	got, data, err := s.Latest()
	if err != nil || got.Index != 30 || len(data) != 30 || len(got.ConfState.Voters) != 3 {
		t.Fatalf("latest: %+v %d %v", got, len(data), err)
	}
	if err := s.Prune(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Load(10); !errors.Is(err, ErrNotFound) {
		t.Fatalf("pruned snapshot still loads: %v", err)
	}
	if _, _, err := s.Load(20); err != nil {
		t.Fatalf("kept snapshot: %v", err)
	}
	// A crash right after Save keeps the snapshot: it was made durable.
	c := m.Crash(nil)
	s2, _ := Open(c, "/snap")
	if got, _, err := s2.Latest(); err != nil || got.Index != 30 {
		t.Fatalf("after crash: %+v %v", got, err)
	}
}

func TestCorruptionRefused(t *testing.T) {
	m := vfs.NewMem()
	s, _ := Open(m, "/snap")
	if err := s.Save(meta(5), []byte("state machine image")); err != nil {
		t.Fatal(err)
	}
	name := m.Files()[0]
	b, err := vfs.ReadFile(m, name)
	if err != nil {
		t.Fatal(err)
	}
	// Flip a bit inside the payload, a few bytes before the end.
	if err := m.FlipBit(name, int64(len(b)-5), 1); err != nil {
		t.Fatal(err)
	}
	_, _, err = s.Latest()
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), name) || !strings.Contains(err.Error(), "offset") {
		t.Fatalf("corrupt snapshot not refused with file and offset: %v", err)
	}
}
