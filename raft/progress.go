package raft

import (
	"fmt"

	"github.com/ballotdb/ballot/consensus"
)

// progressState is how the leader is replicating to one follower.
type progressState uint8

const (
	// stateProbe: the leader does not know where the follower's log matches
	// its own. It sends one append per heartbeat interval and backs off on
	// rejection until one is accepted.
	stateProbe progressState = iota
	// stateReplicate: the follower's log matches up to match; the leader
	// streams appends optimistically, bounded by the inflight window.
	stateReplicate
	// stateSnapshot: the follower needs a snapshot; the leader sends nothing
	// else until the runtime reports the transfer's end.
	stateSnapshot
)

func (s progressState) String() string {
	return [...]string{"probe", "replicate", "snapshot"}[s]
}

// progress is the leader's view of one follower (or of itself).
type progress struct {
	// Invariant: match < next.
	match, next uint64
	state       progressState
	// pendingSnapshot is the index of the snapshot in flight (stateSnapshot).
	pendingSnapshot uint64
	// recentActive: heard from since the last CheckQuorum round.
	recentActive bool
	// probeSent: in stateProbe, an append is outstanding; wait for its
	// answer or the next heartbeat before sending another.
	probeSent bool
	inflights inflights
	isLearner bool
}

func (p *progress) resetState(s progressState) {
	p.probeSent = false
	p.pendingSnapshot = 0
	p.state = s
	p.inflights.reset()
}

func (p *progress) becomeProbe() {
	if p.state == stateSnapshot {
		pending := p.pendingSnapshot
		p.resetState(stateProbe)
		p.next = max(p.match+1, pending+1)
	} else {
		p.resetState(stateProbe)
		p.next = p.match + 1
	}
}

func (p *progress) becomeReplicate() {
	p.resetState(stateReplicate)
	p.next = p.match + 1
}

func (p *progress) becomeSnapshot(index uint64) {
	p.resetState(stateSnapshot)
	p.pendingSnapshot = index
}

// maybeUpdate records that the follower holds the leader's log up to n.
func (p *progress) maybeUpdate(n uint64) bool {
	updated := false
	if p.match < n {
		p.match = n
		updated = true
		p.probeSent = false
	}
	p.next = max(p.next, n+1)
	return updated
}

// maybeDecrTo handles a rejected append of prevIndex rejected; hint is the
// index the follower suggests to retry from. It reports false for a stale
// rejection.
func (p *progress) maybeDecrTo(rejected, hint uint64) bool {
	if p.state == stateReplicate {
		if rejected <= p.match {
			return false
		}
		p.next = p.match + 1
		return true
	}
	if p.next-1 != rejected {
		return false
	}
	p.next = max(min(rejected, hint+1), p.match+1)
	p.probeSent = false
	return true
}

// isPaused reports whether the leader must hold back appends to this peer.
func (p *progress) isPaused() bool {
	switch p.state {
	case stateProbe:
		return p.probeSent
	case stateReplicate:
		return p.inflights.full()
	default:
		return true
	}
}

func (p *progress) public() consensus.Progress {
	return consensus.Progress{Match: p.match, Next: p.next, State: p.state.String(), Inflight: p.inflights.count,
		RecentActive: p.recentActive, IsLearner: p.isLearner, PendingSnapID: p.pendingSnapshot}
}

func (p *progress) String() string {
	return fmt.Sprintf("%s match=%d next=%d inflight=%d", p.state, p.match, p.next, p.inflights.count)
}

// inflights is a bounded ring of appends in flight to one follower, by last
// index and bytes, freed as acknowledgements arrive.
type inflights struct {
	start, count int
	bytes        uint64
	maxCount     int
	maxBytes     uint64
	buf          []inflight
}

type inflight struct {
	index uint64
	bytes uint64
}

func newInflights(maxCount int, maxBytes uint64) inflights {
	return inflights{maxCount: maxCount, maxBytes: maxBytes}
}

func (in *inflights) add(index, bytes uint64) {
	if in.full() {
		panic("raft: invariant: add to a full inflight window")
	}
	if in.buf == nil {
		in.buf = make([]inflight, in.maxCount)
	}
	in.buf[(in.start+in.count)%in.maxCount] = inflight{index, bytes}
	in.count++
	in.bytes += bytes
}

// freeLE frees every inflight append whose last index is <= to.
func (in *inflights) freeLE(to uint64) {
	for in.count > 0 {
		f := in.buf[in.start]
		if f.index > to {
			break
		}
		in.bytes -= f.bytes
		in.start = (in.start + 1) % in.maxCount
		in.count--
	}
	if in.count == 0 {
		in.start = 0
	}
}

func (in *inflights) full() bool {
	return in.count >= in.maxCount || (in.maxBytes > 0 && in.bytes >= in.maxBytes)
}

func (in *inflights) reset() { in.start, in.count, in.bytes = 0, 0, 0 }
