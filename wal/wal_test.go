package wal

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/ballotdb/ballot/consensus"
	"github.com/ballotdb/ballot/vfs"
)

var ctx = context.Background()

func ent(i, epoch uint64, data string) consensus.Entry {
	return consensus.Entry{Index: i, Epoch: epoch, Data: []byte(data)}
}

func mustOpen(t *testing.T, fsys vfs.FS, opts Options) (*WAL, *State) {
	t.Helper()
	w, st, err := Open(fsys, "/wal", opts)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	return w, st
}

func indexes(es []consensus.Entry) string {
	var b strings.Builder
	for _, e := range es {
		fmt.Fprintf(&b, "%d/%d:%s ", e.Index, e.Epoch, e.Data)
	}
	return strings.TrimSpace(b.String())
}

func TestRoundTripReplaceAndTruncate(t *testing.T) {
	m := vfs.NewMem()
	w, st := mustOpen(t, m, Options{Meta: Metadata{ClusterID: 7, NodeID: 1}, SegmentBytes: 4096})
	if len(st.Entries) != 0 || !st.HardState.IsEmpty() {
		t.Fatalf("fresh state %+v", st)
	}
	save := func(b Batch) {
		if err := w.Save(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	save(Batch{Entries: []consensus.Entry{ent(1, 1, "a"), ent(2, 1, "b"), ent(3, 1, "c")}, HardState: consensus.HardState{Epoch: 1, Vote: 1, Commit: 1}})
	// A Paxos-style overwrite of slot 2 keeps slot 3.
	save(Batch{Entries: []consensus.Entry{ent(2, 2, "B")}})
	// A Raft-style conflict: explicit truncation, then new entries.
	save(Batch{Truncate: true, TruncateAfter: 2, Entries: []consensus.Entry{ent(3, 3, "C"), ent(4, 3, "D")}, HardState: consensus.HardState{Epoch: 3, Vote: 2, Commit: 3}})
	w.Close()
	_, st = mustOpen(t, m, Options{Meta: Metadata{ClusterID: 7, NodeID: 1}, SegmentBytes: 4096})
	if got, want := indexes(st.Entries), "1/1:a 2/2:B 3/3:C 4/3:D"; got != want {
		t.Fatalf("entries %q, want %q", got, want)
	}
	if st.HardState != (consensus.HardState{Epoch: 3, Vote: 2, Commit: 3}) {
		t.Fatalf("hard state %+v", st.HardState)
	}
}

func TestMismatchRefused(t *testing.T) {
	m := vfs.NewMem()
	w, _ := mustOpen(t, m, Options{Meta: Metadata{ClusterID: 7, NodeID: 1}})
	w.Close()
	_, _, err := Open(m, "/wal", Options{Meta: Metadata{ClusterID: 8, NodeID: 1}})
	if !errors.Is(err, ErrMismatch) {
		t.Fatalf("other cluster: %v", err)
	}
	_, _, err = Open(m, "/wal", Options{Meta: Metadata{ClusterID: 7, NodeID: 2}})
	if !errors.Is(err, ErrMismatch) {
		t.Fatalf("other node: %v", err)
	}
}

func TestSegmentsRollAndRelease(t *testing.T) {
	m := vfs.NewMem()
	opts := Options{Meta: Metadata{ClusterID: 1, NodeID: 1}, SegmentBytes: 4096}
	w, _ := mustOpen(t, m, opts)
	payload := strings.Repeat("x", 200)
	for i := uint64(1); i <= 100; i++ {
		if err := w.Save(ctx, Batch{Entries: []consensus.Entry{ent(i, 1, payload)}, HardState: consensus.HardState{Epoch: 1, Commit: i}}); err != nil {
			t.Fatal(err)
		}
	}
	before := w.Stats().Segments
	if before < 5 {
		t.Fatalf("only %d segments for 100 entries of 200 B in 4 KiB segments", before)
	}
	snap := consensus.SnapshotMeta{Index: 80, Epoch: 1, ConfState: consensus.ConfState{Voters: []consensus.NodeID{1}}}
	if err := w.Save(ctx, Batch{Snapshot: &snap}); err != nil {
		t.Fatal(err)
	}
	if err := w.ReleaseTo(80); err != nil {
		t.Fatal(err)
	}
	after := w.Stats().Segments
	if after >= before {
		t.Fatalf("ReleaseTo removed nothing: %d -> %d segments", before, after)
	}
	w.Close()
	_, st := mustOpen(t, m, opts)
	if st.Snapshot.Index != 80 || len(st.Entries) != 20 || st.Entries[0].Index != 81 || st.HardState.Commit != 100 {
		t.Fatalf("after release: snap %d, %d entries from %v, commit %d", st.Snapshot.Index, len(st.Entries), st.Entries[0].Index, st.HardState.Commit)
	}
}

func TestCorruptionBeforeTailRefused(t *testing.T) {
	m := vfs.NewMem()
	opts := Options{Meta: Metadata{ClusterID: 1, NodeID: 1}, SegmentBytes: 1 << 16}
	w, _ := mustOpen(t, m, opts)
	for i := uint64(1); i <= 10; i++ {
		if err := w.Save(ctx, Batch{Entries: []consensus.Entry{ent(i, 1, "payload")}}); err != nil {
			t.Fatal(err)
		}
	}
	w.Close()
	name := m.Files()[0]
	// Flip a bit inside the third frame's payload.
	if err := m.FlipBit(name, 150, 3); err != nil {
		t.Fatal(err)
	}
	_, _, err := Open(m, "/wal", opts)
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), name) || !strings.Contains(err.Error(), "offset") {
		t.Fatalf("corruption not refused with file and offset: %v", err)
	}
}

func TestFsyncFailureBreaksWAL(t *testing.T) {
	m := vfs.NewMem()
	f := vfs.NewFault(m, nil)
	w, _ := mustOpen(t, f, Options{SegmentBytes: 1 << 16})
	f.SetInjector(vfs.FailNth(vfs.OpSync, f.Count(vfs.OpSync)+1, vfs.ErrIO))
	err := w.Save(ctx, Batch{Entries: []consensus.Entry{ent(1, 1, "a")}})
	if !errors.Is(err, ErrBroken) || !errors.Is(err, vfs.ErrIO) {
		t.Fatalf("fsync failure: %v", err)
	}
	f.SetInjector(nil)
	if err := w.Save(ctx, Batch{Entries: []consensus.Entry{ent(1, 1, "a")}}); !errors.Is(err, ErrBroken) {
		t.Fatalf("save after fsync failure: %v (must not retry)", err)
	}
}

func TestGroupCommitSharesFsyncs(t *testing.T) {
	m := vfs.NewMem()
	w, _ := mustOpen(t, m, Options{SegmentBytes: 1 << 20})
	base := w.Stats().Fsyncs
	var wg sync.WaitGroup
	const writers, each = 16, 50
	for g := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				idx := uint64(g*each + i + 1)
				if err := w.Save(ctx, Batch{Entries: []consensus.Entry{ent(idx, 1, "v")}}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	st := w.Stats()
	if st.Batches != writers*each {
		t.Fatalf("batches %d", st.Batches)
	}
	fsyncs := st.Fsyncs - base
	t.Logf("%d batches in %d fsyncs", st.Batches, fsyncs)
	if fsyncs > st.Batches {
		t.Fatalf("more fsyncs (%d) than batches (%d)", fsyncs, st.Batches)
	}
	w.Close()
	_, rec := mustOpen(t, m, Options{SegmentBytes: 1 << 20})
	if len(rec.Entries) != writers*each {
		t.Fatalf("recovered %d entries", len(rec.Entries))
	}
}

// TestCrashAtEveryPoint runs a scripted workload and, for every write and
// sync operation, takes the disk image a power loss at that moment would
// leave (with a random torn tail). Recovery must succeed and yield exactly a
// prefix of the workload containing every batch whose Save had returned.
func TestCrashAtEveryPoint(t *testing.T) {
	const batches = 30
	workload := func(i int) Batch {
		idx := uint64(i + 1)
		return Batch{Entries: []consensus.Entry{ent(idx, 1, strings.Repeat("e", 50+i*7))},
			HardState: consensus.HardState{Epoch: 1, Vote: 1, Commit: idx}}
	}
	opts := Options{Meta: Metadata{ClusterID: 3, NodeID: 3}, SegmentBytes: 4096}
	// Count the operations of one clean run.
	total := 0
	{
		f := vfs.NewFault(vfs.NewMem(), nil)
		f.OnOp = func(vfs.Op, int, string) { total++ }
		w, _ := mustOpen(t, f, opts)
		for i := range batches {
			w.Save(ctx, workload(i))
		}
		w.Close()
	}
	if total < batches*2 {
		t.Fatalf("only %d operations counted", total)
	}
	tornSeen := 0
	for point := 1; point <= total; point++ {
		rng := rand.New(rand.NewPCG(uint64(point), 99))
		m := vfs.NewMem()
		f := vfs.NewFault(m, nil)
		var image *vfs.Mem
		acked := 0
		ops := 0
		f.OnOp = func(vfs.Op, int, string) {
			ops++
			if ops == point {
				image = m.Crash(func(_ string, unsynced int) int { return rng.IntN(min(unsynced, 400) + 16) })
			}
		}
		w, _, err := Open(f, "/wal", opts)
		if err != nil {
			t.Fatal(err)
		}
		for i := range batches {
			if err := w.Save(ctx, workload(i)); err != nil {
				t.Fatal(err)
			}
			if image == nil {
				acked = i + 1
			}
		}
		w.Close()
		if image == nil {
			t.Fatalf("point %d never reached", point)
		}
		_, st, err := Open(image, "/wal", opts)
		if err != nil {
			t.Fatalf("crash at op %d: recovery failed: %v", point, err)
		}
		if st.TornTailRepaired != "" {
			tornSeen++
		}
		if len(st.Entries) < acked {
			t.Fatalf("crash at op %d: recovered %d entries, but %d saves had returned", point, len(st.Entries), acked)
		}
		for i, e := range st.Entries {
			want := workload(i).Entries[0]
			if e.Index != want.Index || string(e.Data) != string(want.Data) {
				t.Fatalf("crash at op %d: entry %d is %v, not the workload's", point, i, e)
			}
		}
		if n := uint64(len(st.Entries)); st.HardState.Commit > n {
			t.Fatalf("crash at op %d: hard state commit %d beyond %d recovered entries", point, st.HardState.Commit, n)
		}
	}
	if tornSeen == 0 {
		t.Fatalf("no crash point produced a torn tail: the test exercised nothing")
	}
	t.Logf("%d crash points, %d with a torn tail repaired", total, tornSeen)
}

// TestNoSpaceDoesNotBreakWAL: a full disk fails the Saves it hits with an
// error matching ENOSPC, never ErrBroken; once space returns the log goes
// on, and recovery — even after a crash, and across segment rolls that
// follow a short write — finds exactly the batches that were saved.
func TestNoSpaceDoesNotBreakWAL(t *testing.T) {
	m := vfs.NewMem()
	f := vfs.NewFault(m, nil)
	opts := Options{SegmentBytes: 1 << 14}
	w, _ := mustOpen(t, f, opts)
	var saved []uint64
	idx := uint64(0)
	save := func(size int) {
		t.Helper()
		idx++
		if err := w.Save(ctx, Batch{Entries: []consensus.Entry{ent(idx, 1, strings.Repeat("x", size))}}); err != nil {
			t.Fatalf("save %d: %v", idx, err)
		}
		saved = append(saved, idx)
	}
	fill := func(size, short int) {
		t.Helper()
		var once sync.Once
		f.SetInjector(func(op vfs.Op, n int, name string) vfs.Decision {
			if op != vfs.OpWrite && op != vfs.OpCreate && op != vfs.OpTruncate {
				return vfs.Decision{}
			}
			d := vfs.Decision{Err: vfs.ErrNoSpace}
			once.Do(func() { d.ShortBytes = short })
			return d
		})
		err := w.Save(ctx, Batch{Entries: []consensus.Entry{ent(idx+1, 1, strings.Repeat("y", size))}})
		if !errors.Is(err, syscall.ENOSPC) || errors.Is(err, ErrBroken) {
			t.Fatalf("save on a full disk: %v (want ENOSPC, not broken)", err)
		}
		f.SetInjector(nil)
	}
	for round := range 6 {
		save(4000 + round*10)
		save(4000)
		save(4000)
		// A short write leaves 3500 bytes of a frame; a small save
		// covers only its start; a big one rolls to a new segment,
		// closing the old one for good. The stale bytes must not stay
		// in it: only a last segment may end in a torn frame.
		fill(4000, 3500)
		save(100)
		fill(4200, 0) // fails creating the next segment
		save(4200)
	}
	if w.Stats().Segments < 6 {
		t.Fatalf("only %d segments: the test must cross segment rolls", w.Stats().Segments)
	}
	// Crash, losing what was not synced or keeping all of it.
	for _, keep := range []func(string, int) int{
		func(string, int) int { return 0 },
		func(_ string, unsynced int) int { return unsynced },
	} {
		_, st, err := Open(m.Crash(keep), "/wal", opts)
		if err != nil {
			t.Fatalf("recovery after full-disk failures: %v", err)
		}
		var got []uint64
		for _, e := range st.Entries {
			got = append(got, e.Index)
		}
		if !slices.Equal(got, saved) {
			t.Fatalf("recovered entries %v, want %v", got, saved)
		}
	}
}

// referenceRecords is the straightforward encoding of a batch, one record
// at a time through Marshal: what encodeBatch must produce byte for byte.
func referenceRecords(b *Batch) []byte {
	var out []byte
	if b.Snapshot != nil {
		out = appendRecord(out, recSnapshot, b.Snapshot.Marshal())
	}
	if b.Truncate {
		out = appendRecord(out, recTruncate, binary.AppendUvarint(nil, b.TruncateAfter))
	}
	for i := range b.Entries {
		out = appendRecord(out, recEntry, b.Entries[i].Marshal())
	}
	if !b.HardState.IsEmpty() {
		out = appendRecord(out, recHardState, b.HardState.Marshal())
	}
	return out
}

// TestEncodeBatchMatchesRecords: the one-pass encoding writes the same bytes
// as encoding record by record, appends after what dst holds, and batchLen
// predicts its length exactly.
func TestEncodeBatchMatchesRecords(t *testing.T) {
	big := bytes.Repeat([]byte{7}, 300) // a data length needing a 2-byte varint
	ents := []consensus.Entry{
		{Index: 1, Epoch: 1, Type: consensus.EntryNoop},
		{Index: 127, Epoch: 128, Data: []byte("x")},
		{Index: 1 << 40, Epoch: 1 << 20, Type: consensus.EntryConfChange, Data: big},
	}
	meta := consensus.SnapshotMeta{Index: 99, Epoch: 4, ConfState: consensus.ConfState{Voters: []consensus.NodeID{1, 2, 3}}}
	batches := []Batch{
		{Entries: ents[:1]},
		{Entries: ents, HardState: consensus.HardState{Epoch: 1 << 33, Vote: 3, Commit: 1 << 40}},
		{Truncate: true, TruncateAfter: 0, Entries: ents[1:2]},
		{Truncate: true, TruncateAfter: math.MaxUint64},
		{Snapshot: &meta, Truncate: true, TruncateAfter: 300, Entries: ents, HardState: consensus.HardState{Epoch: 5, Commit: 99}},
		{HardState: consensus.HardState{Epoch: 1}},
	}
	for i := range batches {
		b := &batches[i]
		want := referenceRecords(b)
		if n := batchLen(b); n != len(want) {
			t.Fatalf("#%d: batchLen %d, records are %d bytes", i, n, len(want))
		}
		if got := encodeBatch(nil, b); !bytes.Equal(got, want) {
			t.Fatalf("#%d: encodeBatch\n got %x\nwant %x", i, got, want)
		}
		prefix := []byte("frame hdr")
		got := encodeBatch(append(make([]byte, 0, 64), prefix...), b)
		if !bytes.Equal(got[:len(prefix)], prefix) || !bytes.Equal(got[len(prefix):], want) {
			t.Fatalf("#%d: encodeBatch after a prefix\n got %x\nwant %x%x", i, got, prefix, want)
		}
	}
}
