package paxos

import (
	"fmt"
	"slices"

	"github.com/ballotdb/ballot/consensus"
)

// slotLog is the acceptor's log together with the learner's decided prefix:
// a snapshot, then one entry per slot (placeholders, Epoch 0, where nothing
// was accepted), written by index and never truncated.
//
// Invariants: applied <= handed <= commit <= lastIndex(), snap.Index <= applied
// once the snapshot is handed out; every entry at or below commit holds the
// decided value.
type slotLog struct {
	snap consensus.SnapshotMeta
	ents []consensus.Entry // slots snap.Index+1 .. lastIndex()
	// dirty are the slots written since the last Ready, in the order
	// written. dirtySorted says they are strictly increasing, as appends
	// and a pipeline write them; otherwise a slot may appear more than
	// once, and takeDirty sorts them.
	dirty       []uint64
	dirtySorted bool
	// commit is the decided prefix: every slot at or below it is decided.
	commit uint64
	// decided are slots above commit known decided (learned out of order).
	decided map[uint64]struct{}
	// handed is the last slot handed out in Ready.Committed; applied the
	// last the application reported applied.
	handed, applied uint64
	// pendingSnapshot was received from a peer and awaits a Ready.
	pendingSnapshot *consensus.Snapshot
	// truncateAfter, when truncate, drops slots after it (broken variant).
	truncate      bool
	truncateAfter uint64
}

func newSlotLog(snap consensus.SnapshotMeta, ents []consensus.Entry, commit, applied uint64) (*slotLog, error) {
	l := &slotLog{snap: snap, dirtySorted: true, decided: map[uint64]struct{}{}}
	for i, e := range ents {
		if want := snap.Index + 1 + uint64(i); e.Index != want {
			return nil, fmt.Errorf("paxos: log entry %d found where slot %d belongs: %w", e.Index, want, consensus.ErrCompacted)
		}
	}
	l.ents = slices.Clone(ents)
	commit = max(commit, snap.Index)
	if commit > l.lastIndex() {
		return nil, fmt.Errorf("paxos: hard state commit %d is beyond the last slot %d", commit, l.lastIndex())
	}
	applied = max(applied, snap.Index)
	if applied > commit {
		return nil, fmt.Errorf("paxos: applied %d is beyond the decided prefix %d", applied, commit)
	}
	l.commit, l.applied, l.handed = commit, applied, applied
	return l, nil
}

func (l *slotLog) lastIndex() uint64 { return l.snap.Index + uint64(len(l.ents)) }

// entry returns the entry at slot i, or nil when i is compacted or beyond
// the end.
func (l *slotLog) entry(i uint64) *consensus.Entry {
	if i <= l.snap.Index || i > l.lastIndex() {
		return nil
	}
	return &l.ents[i-l.snap.Index-1]
}

// accepted reports whether slot i holds an accepted value (not a placeholder).
func (l *slotLog) accepted(i uint64) (consensus.Entry, bool) {
	e := l.entry(i)
	if e == nil || e.Epoch == 0 {
		return consensus.Entry{}, false
	}
	return *e, true
}

// write puts e at its slot, extending the log with placeholders as needed.
func (l *slotLog) write(e consensus.Entry) {
	if e.Index <= l.snap.Index {
		return
	}
	for l.lastIndex() < e.Index {
		idx := l.lastIndex() + 1
		l.ents = append(l.ents, consensus.Entry{Index: idx, Type: consensus.EntryNoop})
		l.markDirty(idx)
	}
	l.ents[e.Index-l.snap.Index-1] = e
	l.markDirty(e.Index)
}

func (l *slotLog) markDirty(i uint64) {
	if k := len(l.dirty); k > 0 {
		if last := l.dirty[k-1]; i == last {
			return
		} else if i < last {
			l.dirtySorted = false
		}
	}
	l.dirty = append(l.dirty, i)
}

// learn records that slot e.Index is decided with e, and advances the
// decided prefix. It reports whether the prefix moved.
func (l *slotLog) learn(e consensus.Entry) bool {
	if e.Index <= l.commit {
		return false
	}
	if cur := l.entry(e.Index); cur == nil || !sameEntry(*cur, e) {
		l.write(e)
	}
	if e.Index == l.commit+1 && len(l.decided) == 0 {
		// In order, the usual case: no bookkeeping.
		l.commit++
		return true
	}
	l.decided[e.Index] = struct{}{}
	moved := false
	for {
		if _, ok := l.decided[l.commit+1]; !ok {
			break
		}
		delete(l.decided, l.commit+1)
		l.commit++
		moved = true
	}
	return moved
}

func sameEntry(a, b consensus.Entry) bool {
	return a.Index == b.Index && a.Epoch == b.Epoch && a.Type == b.Type && string(a.Data) == string(b.Data)
}

// takeDirty returns a copy of the written slots in index order and forgets
// them. (A copy: a slot above the decided prefix may be written again
// before the Ready that carries it is persisted.)
func (l *slotLog) takeDirty() []consensus.Entry {
	if len(l.dirty) == 0 {
		return nil
	}
	idx, sorted := l.dirty, l.dirtySorted
	l.dirty, l.dirtySorted = idx[:0], true
	if !sorted {
		slices.Sort(idx)
		idx = slices.Compact(idx)
	}
	// Slots since compacted, or dropped by a snapshot or the broken
	// truncating variant, are not written.
	lo, hi := 0, len(idx)
	for lo < hi && idx[lo] <= l.snap.Index {
		lo++
	}
	for hi > lo && idx[hi-1] > l.lastIndex() {
		hi--
	}
	idx = idx[lo:hi]
	if len(idx) == 0 {
		return nil
	}
	if first, last := idx[0], idx[len(idx)-1]; last-first+1 == uint64(len(idx)) {
		// One run, the usual case: one copy.
		return slices.Clone(l.ents[first-l.snap.Index-1 : last-l.snap.Index])
	}
	out := make([]consensus.Entry, len(idx))
	for k, i := range idx {
		out[k] = *l.entry(i)
	}
	return out
}

func (l *slotLog) hasNextCommitted() bool {
	return l.pendingSnapshot == nil && l.handed < l.commit
}

// nextCommitted returns decided entries after handed, at least one and at
// most maxBytes of data. The slice shares the log's array: a decided slot
// is never written again, and compaction and snapshots replace the array
// rather than write to it.
func (l *slotLog) nextCommitted(maxBytes uint64) []consensus.Entry {
	return l.decidedRun(l.handed+1, maxBytes)
}

// decidedRun returns the decided entries from slot from on, at least one
// and at most maxBytes of data (counted as Entry.Size), in the log's own
// array, capped so an append to it cannot reach the log.
func (l *slotLog) decidedRun(from, maxBytes uint64) []consensus.Entry {
	if from <= l.snap.Index || l.commit > l.lastIndex() {
		panic(fmt.Sprintf("paxos: decided slots from %d unavailable (snapshot %d, commit %d, last %d)", from, l.snap.Index, l.commit, l.lastIndex()))
	}
	if from > l.commit {
		return nil
	}
	ents := l.ents[from-l.snap.Index-1 : l.commit-l.snap.Index]
	var size uint64
	for k := range ents {
		size += ents[k].Size()
		if k > 0 && size > maxBytes {
			ents = ents[:k]
			break
		}
	}
	return ents[:len(ents):len(ents)]
}

// compact drops the log at or below index (which must be applied).
func (l *slotLog) compact(index uint64, cs consensus.ConfState) error {
	if index <= l.snap.Index {
		return fmt.Errorf("paxos: compact at %d: already compacted at %d: %w", index, l.snap.Index, consensus.ErrCompacted)
	}
	if index > l.applied {
		return fmt.Errorf("paxos: compact at %d beyond applied %d", index, l.applied)
	}
	e := l.entry(index)
	if l.truncate && l.truncateAfter < index {
		l.truncateAfter = index
	}
	drop := index - l.snap.Index
	l.snap = consensus.SnapshotMeta{Index: index, Epoch: e.Epoch, ConfState: cs.Clone()}
	// The kept slots go into a new array, never to the front of the old
	// one: Ready.Committed and Decide messages share the old array's
	// decided slots and must not change under their holders. The new
	// array is as long as the log was, so a log compacted at a steady
	// pace does not regrow from the kept tail by doubling each time.
	kept := l.ents[drop:]
	ents := make([]consensus.Entry, len(kept), max(len(l.ents), 2*len(kept)))
	copy(ents, kept)
	l.ents = ents
	return nil
}

// restore installs a snapshot received from a peer: the slots it covers are
// decided, and what this acceptor accepted after it is kept.
func (l *slotLog) restore(s *consensus.Snapshot) {
	var keep []consensus.Entry
	if s.Meta.Index >= l.snap.Index && s.Meta.Index < l.lastIndex() {
		keep = slices.Clone(l.ents[s.Meta.Index-l.snap.Index:])
	}
	if l.truncate && l.truncateAfter < s.Meta.Index {
		l.truncateAfter = s.Meta.Index
	}
	l.snap = s.Meta
	l.snap.ConfState = s.Meta.ConfState.Clone()
	l.ents = keep
	for i := range l.decided {
		if i <= s.Meta.Index {
			delete(l.decided, i)
		}
	}
	l.commit, l.handed = s.Meta.Index, s.Meta.Index
	l.applied = min(l.applied, s.Meta.Index)
	l.pendingSnapshot = s
	for {
		if _, ok := l.decided[l.commit+1]; !ok {
			break
		}
		delete(l.decided, l.commit+1)
		l.commit++
	}
}
