package shard

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/ballotdb/ballot/consensus"
	"github.com/ballotdb/ballot/transport"
)

// Idle groups stop ticking.
//
// A host may keep thousands of groups, most of them idle. A ticking group
// costs its leader a heartbeat to every follower per tick and every
// member a wake-up per tick, for nothing. A quiescer wraps a group's
// engine and skips its ticks while the group is idle:
//
//   - idle means: no proposal, read, transfer or membership change was
//     asked of it, and no message other than a heartbeat (Raft's
//     heartbeat and its answer; Paxos's empty Decide and its answer) came
//     in or went out, for quiesceAfter ticks; and it is a leader or a
//     follower with a known leader, with everything committed applied
//     (a leader: everything in its log committed, no read waiting for a
//     heartbeat round to confirm it, and every live member caught up);
//   - a follower quiesces only while the host of its leader is live (see
//     liveness below); if that host goes silent, the follower ticks again
//     and its election timer runs as usual;
//   - anything else wakes it at once: a request, a message that is not a
//     heartbeat (a forwarded proposal, an append, a vote request).
//
// Skipping ticks never endangers safety — ticks only drive timeouts — and
// Raft's vote and pre-vote checks rely on how recently a follower heard
// its leader in ticks, which do not advance while it sleeps, so a sleeping
// follower still refuses to help depose a live leader.
//
// Liveness: instead of a heartbeat per group, a host pings every peer host
// once per tick over the shared transport (group livenessGroup); a peer
// host is live while it was heard from within the election timeout.

// livenessGroup is the transport group the hosts' pings travel in (no
// consensus group has a cluster ID this small: they are hashes).
const livenessGroup = 1

// quiesceAfter is how many idle ticks a group waits before it stops
// ticking: a few heartbeats, so followers are caught up first.
const quiesceAfter = 5

type quiescer struct {
	consensus.Engine
	live func(consensus.NodeID) bool
	idle int // ticks since the last activity
	// quiet says whether the group currently skips its ticks; ticks
	// counts the ticks it did not skip (for stats and tests).
	quiet *atomic.Bool
	ticks *atomic.Int64
}

func (q *quiescer) wake() {
	q.idle = 0
	q.quiet.Store(false)
}

func heartbeatLike(m consensus.Message) bool {
	switch m.Type {
	case consensus.MsgHeartbeat, consensus.MsgHeartbeatResp, consensus.MsgDecideResp:
		return true
	case consensus.MsgDecide:
		return len(m.Entries) == 0
	}
	return false
}

func (q *quiescer) Tick() {
	q.idle++
	if q.idle > quiesceAfter && q.settled() {
		q.quiet.Store(true)
		return
	}
	q.quiet.Store(false)
	q.ticks.Add(1)
	q.Engine.Tick()
}

// settled reports whether the group may sleep now.
func (q *quiescer) settled() bool {
	st := q.Engine.Status()
	if st.Applied < st.Commit {
		return false
	}
	switch st.Role {
	case consensus.Leader:
		// A read waiting for its heartbeat round must see rounds go on:
		// if this round's answers were lost, only the next tick's round
		// confirms it.
		if st.Commit != st.LastIndex || st.LeadTransferee != consensus.None || st.PendingReads > 0 {
			return false
		}
		// A live member still behind (a learner being caught up, a
		// follower back from a crash) is brought up to date by the
		// answers to heartbeats: without ticks it would wait for ever.
		for id, pr := range st.Progress {
			if id != st.ID && pr.Match < st.LastIndex && q.live(id) {
				return false
			}
		}
		return true
	case consensus.Follower, consensus.Learner:
		return st.Leader != consensus.None && q.live(st.Leader)
	}
	return false
}

func (q *quiescer) Step(m consensus.Message) error {
	if !heartbeatLike(m) {
		q.wake()
	}
	return q.Engine.Step(m)
}

func (q *quiescer) Propose(data []byte) error { q.wake(); return q.Engine.Propose(data) }
func (q *quiescer) ProposeConfChange(cc consensus.ConfChange) error {
	q.wake()
	return q.Engine.ProposeConfChange(cc)
}
func (q *quiescer) ReadIndex(rctx []byte) error { q.wake(); return q.Engine.ReadIndex(rctx) }
func (q *quiescer) TransferLeadership(t consensus.NodeID) error {
	q.wake()
	return q.Engine.TransferLeadership(t)
}
func (q *quiescer) ReportUnreachable(p consensus.NodeID) {
	q.wake()
	q.Engine.ReportUnreachable(p)
}

func (q *quiescer) Ready() consensus.Ready {
	rd := q.Engine.Ready()
	if len(rd.Entries) > 0 || len(rd.Committed) > 0 || rd.Snapshot != nil {
		q.wake()
	}
	for _, m := range rd.Messages {
		if !heartbeatLike(m) {
			q.wake()
			break
		}
	}
	return rd
}

// liveness pings every peer host once per interval over the host's shared
// transport and remembers when each was last heard from.
type liveness struct {
	tr     transport.Transport
	self   consensus.NodeID
	peers  []consensus.NodeID
	window time.Duration

	mu    sync.Mutex
	heard map[consensus.NodeID]time.Time
}

func (l *liveness) Receive(m consensus.Message) {
	l.mu.Lock()
	l.heard[m.From] = time.Now()
	l.mu.Unlock()
}
func (l *liveness) Unreachable(consensus.NodeID)          {}
func (l *liveness) SnapshotStatus(consensus.NodeID, bool) {}

// live reports whether peer was heard from within the window (this host
// itself is always live).
func (l *liveness) live(peer consensus.NodeID) bool {
	if peer == l.self {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return time.Since(l.heard[peer]) < l.window
}

// run pings until stop is closed.
func (l *liveness) run(interval time.Duration, stop <-chan struct{}) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		msgs := make([]consensus.Message, 0, len(l.peers))
		for _, p := range l.peers {
			msgs = append(msgs, consensus.Message{Type: consensus.MsgHeartbeat, From: l.self, To: p})
		}
		l.tr.Send(msgs)
		select {
		case <-stop:
			return
		case <-t.C:
		}
	}
}
