package raft

import (
	"fmt"
	"reflect"
	"testing"

	"github.com/ballotdb/ballot/consensus"
)

// cloneMsgs deep-copies messages, so that a later change to the arrays
// they point into shows up as a difference.
func cloneMsgs(ms []consensus.Message) []consensus.Message {
	if ms == nil {
		return nil
	}
	out := make([]consensus.Message, len(ms))
	for i, m := range ms {
		m.Entries = cloneEnts(m.Entries)
		m.Context = append([]byte(nil), m.Context...)
		out[i] = m
	}
	return out
}

func cloneEnts(es []consensus.Entry) []consensus.Entry {
	if es == nil {
		return nil
	}
	out := make([]consensus.Entry, len(es))
	for i, e := range es {
		e.Data = append([]byte(nil), e.Data...)
		out[i] = e
	}
	return out
}

// TestReadyUntouchedUntilAdvance: the engine reuses its message buffer and
// compacts its log into new arrays, and neither may change what a Ready
// handed out while the caller still holds it: the Ready's messages until
// Advance, its committed entries (the apply goroutine's) and the entries
// its MsgApps point at (a transport's queue) even after.
func TestReadyUntouchedUntilAdvance(t *testing.T) {
	n := newTestNet(t, ids(1, 2, 3), nil, nil)
	l := electLeader(t, n)
	lr := n.nodes[l].r
	type held struct {
		msgs, msgsCopy []consensus.Message
		ents, entsCopy []consensus.Entry
	}
	var kept []held // slices handed out earlier, with deep copies
	check := func(when string) {
		t.Helper()
		for i, h := range kept {
			if !reflect.DeepEqual(cloneMsgs(h.msgs), h.msgsCopy) {
				t.Fatalf("%s: messages of Ready %d changed under their holder", when, i)
			}
			if !reflect.DeepEqual(cloneEnts(h.ents), h.entsCopy) {
				t.Fatalf("%s: committed entries of Ready %d changed under their holder", when, i)
			}
		}
	}
	for round := range 40 {
		for i := range 5 {
			if err := lr.Propose([]byte(fmt.Sprintf("r%d-%d", round, i))); err != nil {
				t.Fatal(err)
			}
		}
		if !lr.HasReady() {
			t.Fatalf("round %d: no Ready after proposals", round)
		}
		rd := lr.Ready()
		n.nodes[l].st.persist(rd)
		// The MsgApps' entries alias the log: keep them (as a transport
		// queue would) past Advance and past compaction.
		var apps []consensus.Message
		for _, m := range rd.Messages {
			if m.Type == consensus.MsgApp {
				apps = append(apps, m)
			}
		}
		h := held{msgs: rd.Messages, msgsCopy: cloneMsgs(rd.Messages)}
		// While the Ready is outstanding the engine keeps working: more
		// proposals, and the followers' acknowledgements.
		n.queue = append(n.queue, rd.Messages...)
		if err := lr.Propose([]byte("while outstanding")); err != nil {
			t.Fatal(err)
		}
		for _, id := range n.ids() {
			if id != l {
				for n.processReady(id) {
				}
			}
		}
		n.deliver()
		for _, id := range n.ids() {
			if id != l {
				for n.processReady(id) {
				}
			}
		}
		n.deliver()
		lr.Tick()
		kept = append(kept, h)
		check(fmt.Sprintf("round %d, Ready outstanding", round))
		tn := n.nodes[l]
		for _, e := range rd.Committed {
			tn.applied = append(tn.applied, e)
			tn.appliedIndex = e.Index
		}
		lr.Advance(tn.appliedIndex)
		// After Advance the messages are the engine's again; the entries
		// are not (applying and sending may lag).
		kept[len(kept)-1].msgs, kept[len(kept)-1].msgsCopy = apps, cloneMsgs(apps)
		kept = append(kept, held{ents: rd.Committed, entsCopy: cloneEnts(rd.Committed)})
		if round%7 == 6 && lr.log.applied > lr.log.snapIndex {
			if err := lr.Compact(lr.log.applied); err != nil {
				t.Fatal(err)
			}
		}
		n.stabilize()
		check(fmt.Sprintf("round %d, after Advance", round))
	}
	if lr.log.snapIndex == 0 {
		t.Fatal("the log was never compacted")
	}
}

// TestCompactKeepsCapacity: compaction copies the kept tail into an array
// as long as the log was, so the log does not regrow by doubling.
func TestCompactKeepsCapacity(t *testing.T) {
	var ents []consensus.Entry
	for i := uint64(1); i <= 100; i++ {
		ents = append(ents, consensus.Entry{Index: i, Epoch: 1})
	}
	l, err := newLog(consensus.SnapshotMeta{}, ents, 90, 100)
	if err != nil {
		t.Fatal(err)
	}
	before := &l.entries[95]
	if err := l.compact(90); err != nil {
		t.Fatal(err)
	}
	if len(l.entries) != 10 || l.entries[0].Index != 91 || l.firstIndex() != 91 {
		t.Fatalf("after compaction: %d entries from %d, first index %d", len(l.entries), l.entries[0].Index, l.firstIndex())
	}
	if cap(l.entries) < 100 {
		t.Fatalf("capacity %d after compacting a log of 100 entries", cap(l.entries))
	}
	if &l.entries[5] == before {
		t.Fatal("compaction reused the old array: slices handed out would see it change")
	}
}

// TestTruncateKeepsOutstandingEntries: a follower whose Ready holds
// entries, not yet persisted, is told by a new leader to replace them. The
// Ready's Entries (a sub-slice of the log) must not change under the
// caller, nor the entries the new leader's append put in their place.
func TestTruncateKeepsOutstandingEntries(t *testing.T) {
	var ents []consensus.Entry
	for i := uint64(1); i <= 4; i++ {
		ents = append(ents, consensus.Entry{Index: i, Epoch: 1, Data: []byte{byte(i)}})
	}
	r, err := New(Config{ID: 3, ElectionTick: 10, HeartbeatTick: 1}, consensus.InitialState{
		HardState: consensus.HardState{Epoch: 1, Commit: 4},
		Snapshot:  consensus.SnapshotMeta{ConfState: consensus.ConfState{Voters: ids(1, 2, 3)}},
		Entries:   ents, Applied: 4,
	})
	if err != nil {
		t.Fatal(err)
	}
	old := []consensus.Entry{{Index: 5, Epoch: 2, Data: []byte("a5")}, {Index: 6, Epoch: 2, Data: []byte("a6")}, {Index: 7, Epoch: 2, Data: []byte("a7")}}
	if err := r.Step(consensus.Message{Type: consensus.MsgApp, From: 1, To: 3, Epoch: 2, Index: 4, LogEpoch: 1,
		Commit: 4, Entries: cloneEnts(old)}); err != nil {
		t.Fatal(err)
	}
	rd := r.Ready()
	if !reflect.DeepEqual(cloneEnts(rd.Entries), old) {
		t.Fatalf("Ready entries %v, want %v", rd.Entries, old)
	}
	// Leader 2 of epoch 3 has other entries at 5 and 6.
	repl := []consensus.Entry{{Index: 5, Epoch: 3, Data: []byte("b5")}, {Index: 6, Epoch: 3, Data: []byte("b6")}}
	if err := r.Step(consensus.Message{Type: consensus.MsgApp, From: 2, To: 3, Epoch: 3, Index: 4, LogEpoch: 1,
		Commit: 4, Entries: cloneEnts(repl)}); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(cloneEnts(rd.Entries), old) {
		t.Fatalf("outstanding Ready's entries changed to %v by a truncation, want %v", rd.Entries, old)
	}
	r.Advance(4)
	rd2 := r.Ready()
	if !rd2.Truncate || rd2.TruncateAfter != 4 || !reflect.DeepEqual(cloneEnts(rd2.Entries), repl) {
		t.Fatalf("next Ready: truncate %v after %d, entries %v; want truncate after 4, entries %v",
			rd2.Truncate, rd2.TruncateAfter, rd2.Entries, repl)
	}
	if !reflect.DeepEqual(cloneEnts(rd.Entries), old) {
		t.Fatalf("first Ready's entries changed to %v", rd.Entries)
	}
}
