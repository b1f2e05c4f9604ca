package raft

import (
	"fmt"

	"github.com/ballotdb/ballot/consensus"
)

// raftLog is the engine's log: a snapshot boundary followed by the entries
// after it, all held in memory (as etcd's MemoryStorage holds them in
// practice), plus the bookkeeping that tells the runtime what to persist.
//
// Invariant: an element of the entries array is never written again once
// appended. Appends go after the end; truncation cuts the capacity, so the
// next append copies into a new array; compaction and restore start new
// arrays. So the sub-slices the engine hands out (a Ready's Entries and
// Committed, a MsgApp's Entries), each with its capacity clipped, stay as
// they were for as long as their holders keep them.
//
// Index bookkeeping, from left to right:
//
//	snapIndex <= applied <= handed <= committed <= lastIndex
//	stable <= written <= lastIndex
//
// handed is the last committed index given to the application in a Ready;
// applied is what the application reported back with Advance. written is the
// last index given to storage in a Ready; stable is the last index storage
// has confirmed durable (at Advance).
type raftLog struct {
	snapIndex uint64 // index of the last entry folded into the snapshot
	snapEpoch uint64 // its epoch
	entries   []consensus.Entry

	// Invariant: committed <= lastIndex(); committed entries never change.
	committed uint64
	// Invariant: applied <= handed <= committed.
	handed  uint64
	applied uint64

	// Invariant: stable <= written <= lastIndex().
	stable  uint64
	written uint64

	// truncate/truncateAfter: storage must drop entries after truncateAfter
	// before the next write. Set when the log is cut below written.
	truncate      bool
	truncateAfter uint64
	truncGen      uint64 // bumped at each truncation below written

	// pendingSnapshot is a snapshot received from the leader, to be handed
	// to the runtime in the next Ready.
	pendingSnapshot *consensus.Snapshot
}

func newLog(snap consensus.SnapshotMeta, ents []consensus.Entry, applied, commit uint64) (*raftLog, error) {
	l := &raftLog{snapIndex: snap.Index, snapEpoch: snap.Epoch}
	for i, e := range ents {
		if want := snap.Index + 1 + uint64(i); e.Index != want {
			return nil, fmt.Errorf("raft: initial entries not contiguous: entry %d has index %d, want %d", i, e.Index, want)
		}
	}
	l.entries = append([]consensus.Entry(nil), ents...)
	last := l.lastIndex()
	if commit < snap.Index {
		commit = snap.Index
	}
	if commit > last {
		return nil, fmt.Errorf("raft: hard state commit %d is beyond the last log index %d", commit, last)
	}
	applied = max(applied, snap.Index)
	if applied > commit {
		return nil, fmt.Errorf("raft: applied index %d is beyond commit %d", applied, commit)
	}
	l.committed, l.applied, l.handed = commit, applied, applied
	l.stable, l.written = last, last
	return l, nil
}

func (l *raftLog) firstIndex() uint64 { return l.snapIndex + 1 }

func (l *raftLog) lastIndex() uint64 { return l.snapIndex + uint64(len(l.entries)) }

func (l *raftLog) lastEpoch() uint64 {
	t, _ := l.term(l.lastIndex())
	return t
}

// term returns the epoch of the entry at i, ErrCompacted when i is below the
// snapshot, and ok=false with no error when i is beyond the log.
func (l *raftLog) term(i uint64) (uint64, error) {
	switch {
	case i == l.snapIndex:
		return l.snapEpoch, nil
	case i < l.snapIndex:
		return 0, consensus.ErrCompacted
	case i > l.lastIndex():
		return 0, errBeyondLog
	}
	return l.entries[i-l.snapIndex-1].Epoch, nil
}

var errBeyondLog = fmt.Errorf("raft: index beyond the log")

func (l *raftLog) matchTerm(i, t uint64) bool {
	lt, err := l.term(i)
	return err == nil && lt == t
}

// entry returns the entry at i; the caller guarantees firstIndex <= i <= last.
func (l *raftLog) entry(i uint64) *consensus.Entry { return &l.entries[i-l.snapIndex-1] }

// isUpToDate reports whether a log ending at (lastEpoch, lastIndex) is at
// least as up to date as ours (§5.4.1).
func (l *raftLog) isUpToDate(lastEpoch, lastIndex uint64) bool {
	our := l.lastEpoch()
	return lastEpoch > our || (lastEpoch == our && lastIndex >= l.lastIndex())
}

// slice returns entries [lo, hi) limited to maxBytes (at least one entry).
func (l *raftLog) slice(lo, hi, maxBytes uint64) ([]consensus.Entry, error) {
	if lo <= l.snapIndex {
		return nil, consensus.ErrCompacted
	}
	if hi > l.lastIndex()+1 {
		hi = l.lastIndex() + 1
	}
	if lo >= hi {
		return nil, nil
	}
	ents := l.entries[lo-l.snapIndex-1 : hi-l.snapIndex-1]
	var size uint64
	for i := range ents {
		size += ents[i].Size()
		if size > maxBytes && i > 0 {
			ents = ents[:i]
			break
		}
	}
	return ents[:len(ents):len(ents)], nil
}

// append adds ents (contiguous, ents[0].Index <= lastIndex+1), cutting off
// any existing suffix from ents[0].Index on.
func (l *raftLog) append(ents ...consensus.Entry) {
	if len(ents) == 0 {
		return
	}
	after := ents[0].Index - 1
	if after < l.committed {
		panic(fmt.Sprintf("raft: invariant: append after %d would overwrite committed entries (commit %d)", after, l.committed))
	}
	if after > l.lastIndex() {
		panic(fmt.Sprintf("raft: invariant: append after %d leaves a gap (last index %d)", after, l.lastIndex()))
	}
	l.truncateTo(after)
	l.entries = append(l.entries, ents...)
}

// truncateTo drops entries after index, asking storage to do the same when
// any of them may have been given to it.
func (l *raftLog) truncateTo(index uint64) {
	if index >= l.lastIndex() {
		return
	}
	// The capacity is cut too, so the entries appended next go into a new
	// array and never over the ones dropped here: those may still be held
	// by an outstanding Ready (Entries), or by MsgApps this node sent as
	// leader and a transport has not encoded yet. With this, an entry in
	// the log's array never changes once written, which is what lets
	// Ready, slice and nextCommitted hand out sub-slices of it.
	keep := index - l.snapIndex
	l.entries = l.entries[:keep:keep]
	if index < l.written {
		if !l.truncate || index < l.truncateAfter {
			l.truncateAfter = index
		}
		l.truncate = true
		l.truncGen++
		l.written = index
		l.stable = min(l.stable, index)
	}
}

// findConflict returns the index of the first entry of ents that is absent
// from the log or differs in epoch, or 0 when all are present.
func (l *raftLog) findConflict(ents []consensus.Entry) uint64 {
	for _, e := range ents {
		if !l.matchTerm(e.Index, e.Epoch) {
			return e.Index
		}
	}
	return 0
}

// findConflictByTerm returns the largest index <= index whose epoch is <=
// epoch, with that epoch: the fast back-off of §5.3, letting the leader skip
// a whole term of mismatching entries per round trip.
func (l *raftLog) findConflictByTerm(index, epoch uint64) (uint64, uint64) {
	for ; index > l.snapIndex; index-- {
		if t, err := l.term(index); err == nil && t <= epoch {
			return index, t
		}
	}
	return l.snapIndex, l.snapEpoch
}

// maybeAppend implements the follower side of AppendEntries. It returns the
// last index known to match the leader, and false if the consistency check
// failed.
func (l *raftLog) maybeAppend(prevIndex, prevEpoch, commit uint64, ents []consensus.Entry) (uint64, bool) {
	if !l.matchTerm(prevIndex, prevEpoch) {
		return 0, false
	}
	lastNew := prevIndex + uint64(len(ents))
	if c := l.findConflict(ents); c != 0 {
		if c <= l.committed {
			panic(fmt.Sprintf("raft: invariant: entry %d conflicts with a committed entry (commit %d)", c, l.committed))
		}
		l.append(ents[c-ents[0].Index:]...)
	}
	l.commitTo(min(commit, lastNew))
	return lastNew, true
}

func (l *raftLog) commitTo(i uint64) bool {
	if i <= l.committed {
		return false
	}
	if i > l.lastIndex() {
		panic(fmt.Sprintf("raft: invariant: commit %d is beyond the last index %d", i, l.lastIndex()))
	}
	l.committed = i
	return true
}

// restore replaces the log with a snapshot from the leader.
func (l *raftLog) restore(s *consensus.Snapshot) {
	l.truncateTo(s.Meta.Index)
	if l.written > s.Meta.Index {
		l.written = s.Meta.Index
	}
	l.entries = nil
	l.snapIndex, l.snapEpoch = s.Meta.Index, s.Meta.Epoch
	// Installing the snapshot is applying everything up to its index; the
	// application reports that index (or more) at the next Advance.
	l.committed = s.Meta.Index
	l.handed = s.Meta.Index
	l.applied = s.Meta.Index
	l.stable, l.written = s.Meta.Index, s.Meta.Index
	l.pendingSnapshot = s
}

// compact drops entries at or below index (index <= applied).
func (l *raftLog) compact(index uint64) error {
	if index <= l.snapIndex {
		return consensus.ErrCompacted
	}
	if index > l.applied {
		return fmt.Errorf("raft: compact at %d beyond applied index %d", index, l.applied)
	}
	t, err := l.term(index)
	if err != nil {
		return err
	}
	// The kept tail goes into a new array, never to the front of the old
	// one: slices of the old array are still out there (a Ready's
	// Committed entries being applied, MsgApps waiting in a transport
	// queue) and must not change under their holders. The new array has
	// room for as long a log as this one, so a log compacted at a steady
	// pace does
	// not regrow from the tail's length each time (a quarter more than
	// that, because the log is not quite as long at each compaction);
	// after a burst, the next compaction sizes it down again.
	kept := l.entries[index-l.snapIndex:]
	ents := make([]consensus.Entry, len(kept), max(len(l.entries)+len(l.entries)/4, 2*len(kept)))
	copy(ents, kept)
	l.entries = ents
	l.snapIndex, l.snapEpoch = index, t
	return nil
}

// hasNextCommitted reports whether committed entries wait to be handed out.
func (l *raftLog) hasNextCommitted() bool {
	return l.pendingSnapshot == nil && l.handed < l.committed
}

// nextCommitted returns the next committed entries to apply, at most
// maxBytes (at least one entry).
func (l *raftLog) nextCommitted(maxBytes uint64) []consensus.Entry {
	if !l.hasNextCommitted() {
		return nil
	}
	ents, err := l.slice(l.handed+1, l.committed+1, maxBytes)
	if err != nil {
		panic(fmt.Sprintf("raft: invariant: committed entries %d..%d unavailable: %v", l.handed+1, l.committed, err))
	}
	return ents
}

func (l *raftLog) checkInvariants() {
	last := l.lastIndex()
	if !(l.snapIndex <= l.applied && l.applied <= l.handed && l.handed <= l.committed && l.committed <= last) {
		panic(fmt.Sprintf("raft: invariant: snap %d <= applied %d <= handed %d <= committed %d <= last %d",
			l.snapIndex, l.applied, l.handed, l.committed, last))
	}
	if !(l.stable <= l.written && l.written <= last) {
		panic(fmt.Sprintf("raft: invariant: stable %d <= written %d <= last %d", l.stable, l.written, last))
	}
}
