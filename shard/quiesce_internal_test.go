package shard

import (
	"sync/atomic"
	"testing"

	"github.com/ballotdb/ballot/consensus"
)

// statusEngine is an engine that only reports a status and counts ticks.
type statusEngine struct {
	consensus.Engine
	st    consensus.Status
	ticks int
}

func (e *statusEngine) Status() consensus.Status { return e.st }
func (e *statusEngine) Tick()                    { e.ticks++ }

// TestLeaderWithPendingReadsKeepsTicking: an idle leader sleeps, but not
// while a read waits for a heartbeat round to confirm it: if that round's
// answers were lost, only the next tick's round can (a chaos run saw every
// read of a shard time out for a minute after the faults healed).
func TestLeaderWithPendingReadsKeepsTicking(t *testing.T) {
	e := &statusEngine{st: consensus.Status{Role: consensus.Leader, Commit: 7, LastIndex: 7, Applied: 7}}
	q := &quiescer{Engine: e, live: func(consensus.NodeID) bool { return true }, quiet: &atomic.Bool{}, ticks: &atomic.Int64{}}
	for range 3 * quiesceAfter {
		q.Tick()
	}
	if !q.quiet.Load() {
		t.Fatal("an idle leader with nothing pending did not go quiet")
	}
	e.st.PendingReads = 1
	before := e.ticks
	for range 3 * quiesceAfter {
		q.Tick()
	}
	if q.quiet.Load() || e.ticks-before != 3*quiesceAfter {
		t.Fatalf("a leader with a read pending skipped ticks (quiet %v, %d of %d ticks passed on)", q.quiet.Load(), e.ticks-before, 3*quiesceAfter)
	}
}

// TestLeaderWithLaggingMemberKeepsTicking: an idle leader does not sleep
// while a live member is behind (a learner being caught up for a move): the
// answers to its heartbeats are what send it the rest. A member on a dead
// host does not keep it awake.
func TestLeaderWithLaggingMemberKeepsTicking(t *testing.T) {
	e := &statusEngine{st: consensus.Status{ID: 1, Role: consensus.Leader, Commit: 9, LastIndex: 9, Applied: 9,
		Progress: map[consensus.NodeID]consensus.Progress{1: {Match: 9}, 2: {Match: 9}, 3: {Match: 4}}}}
	alive := map[consensus.NodeID]bool{1: true, 2: true, 3: true}
	q := &quiescer{Engine: e, live: func(id consensus.NodeID) bool { return alive[id] }, quiet: &atomic.Bool{}, ticks: &atomic.Int64{}}
	for range 3 * quiesceAfter {
		q.Tick()
	}
	if q.quiet.Load() {
		t.Fatal("a leader went quiet while a live member was 5 entries behind")
	}
	alive[3] = false
	for range 3 * quiesceAfter {
		q.Tick()
	}
	if !q.quiet.Load() {
		t.Fatal("a leader kept ticking for a member on a dead host")
	}
}
