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
	// dirty are slots written since the last Ready.
	dirty map[uint64]struct{}
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
	l := &slotLog{snap: snap, dirty: map[uint64]struct{}{}, decided: map[uint64]struct{}{}}
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
		l.dirty[idx] = struct{}{}
	}
	l.ents[e.Index-l.snap.Index-1] = e
	l.dirty[e.Index] = struct{}{}
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

// takeDirty returns the written slots in index order and forgets them.
func (l *slotLog) takeDirty() []consensus.Entry {
	if len(l.dirty) == 0 {
		return nil
	}
	idx := make([]uint64, 0, len(l.dirty))
	for i := range l.dirty {
		if i > l.snap.Index && i <= l.lastIndex() {
			idx = append(idx, i)
		}
	}
	slices.Sort(idx)
	out := make([]consensus.Entry, len(idx))
	for k, i := range idx {
		out[k] = *l.entry(i)
	}
	clear(l.dirty)
	return out
}

func (l *slotLog) hasNextCommitted() bool {
	return l.pendingSnapshot == nil && l.handed < l.commit
}

// nextCommitted returns decided entries after handed, at least one and at
// most maxBytes of data.
func (l *slotLog) nextCommitted(maxBytes uint64) []consensus.Entry {
	var out []consensus.Entry
	var size uint64
	for i := l.handed + 1; i <= l.commit; i++ {
		e := l.entry(i)
		if e == nil {
			panic(fmt.Sprintf("paxos: decided slot %d missing (snapshot %d, last %d)", i, l.snap.Index, l.lastIndex()))
		}
		size += e.Size()
		if len(out) > 0 && size > maxBytes {
			break
		}
		out = append(out, *e)
	}
	return out
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
	l.ents = slices.Clone(l.ents[drop:])
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
	for i := range l.dirty {
		if i <= s.Meta.Index {
			delete(l.dirty, i)
		}
	}
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
