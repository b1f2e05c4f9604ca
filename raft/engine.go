package raft

import (
	"fmt"

	"github.com/ballotdb/ballot/consensus"
)

// Propose appends data to the log (leader) or forwards it to the leader
// (follower). It returns an error matching consensus.ErrNotLeader when no
// leader is known or forwarding is disabled.
func (r *Raft) Propose(data []byte) error {
	if uint64(len(data)) > r.cfg.MaxEntrySize {
		return fmt.Errorf("%w: proposal of %d bytes exceeds MaxEntrySize %d", consensus.ErrTooLarge, len(data), r.cfg.MaxEntrySize)
	}
	if r.role == consensus.Leader {
		// What stepping the MsgProp below comes to on a leader (a local
		// message has no epoch, and r.step is stepLeader), with the entry
		// on the stack: the log copies it, so the proposal costs no
		// allocation of its own.
		ents := [1]consensus.Entry{{Type: consensus.EntryNormal, Data: data}}
		err := r.leaderPropose(consensus.Message{Type: consensus.MsgProp, From: r.id, Entries: ents[:]})
		r.checkInvariants()
		return err
	}
	return r.local(consensus.Message{Type: consensus.MsgProp, From: r.id,
		Entries: []consensus.Entry{{Type: consensus.EntryNormal, Data: data}}})
}

// ProposeConfChange proposes a membership change. The leader refuses it with
// consensus.ErrConfChangePending while an earlier change is unapplied, and
// with consensus.ErrInvalidConfChange when it is not allowed.
func (r *Raft) ProposeConfChange(cc consensus.ConfChange) error {
	return r.local(consensus.Message{Type: consensus.MsgProp, From: r.id,
		Entries: []consensus.Entry{{Type: consensus.EntryConfChange, Data: cc.Marshal()}}})
}

// ReadIndex requests a linearizable read. The confirmation arrives as a
// ReadState carrying rctx, which should be unique per request.
func (r *Raft) ReadIndex(rctx []byte) error {
	return r.local(consensus.Message{Type: consensus.MsgReadIndex, From: r.id, Context: rctx})
}

// TransferLeadership asks the leader to hand leadership to target, a voter.
// The target is first brought up to date, then told to campaign at once;
// proposals are refused meanwhile. A transfer not done within an election
// timeout is abandoned.
func (r *Raft) TransferLeadership(target consensus.NodeID) error {
	if !r.isVoter(target) {
		return fmt.Errorf("%w: node %d is not a voter", consensus.ErrTransferInvalid, target)
	}
	return r.local(consensus.Message{Type: consensus.MsgTransferLeader, From: r.id, Index: uint64(target)})
}

// Campaign makes this node start an election now, as if its election timer
// had fired (used by tests and by operators forcing an election).
func (r *Raft) Campaign() { r.hup(campaignElection); r.checkInvariants() }

func (r *Raft) local(m consensus.Message) error {
	err := r.stepMsg(m)
	r.checkInvariants()
	return err
}

// ReportUnreachable tells the leader that a message to peer was lost, so it
// stops streaming optimistically and probes instead.
func (r *Raft) ReportUnreachable(peer consensus.NodeID) {
	if r.role != consensus.Leader {
		return
	}
	if pr := r.trk.prs[peer]; pr != nil && pr.state == stateReplicate {
		pr.becomeProbe()
	}
}

// ReportSnapshot tells the leader how sending a snapshot to peer ended. On
// success the leader waits for the follower's acknowledgement; on failure it
// sends the snapshot again after the next heartbeat.
func (r *Raft) ReportSnapshot(peer consensus.NodeID, ok bool) {
	if r.role != consensus.Leader {
		return
	}
	pr := r.trk.prs[peer]
	if pr == nil || pr.state != stateSnapshot {
		return
	}
	if !ok {
		pr.pendingSnapshot = 0
	}
	pr.becomeProbe()
	pr.probeSent = true
}

// Compact tells the engine that the application has saved a snapshot of its
// state at index (which it has applied): the log at or below index is
// dropped, and followers too far behind are sent that snapshot.
func (r *Raft) Compact(index uint64) error {
	if err := r.log.compact(index); err != nil {
		return err
	}
	// Keep the membership as of the snapshot and everything after it.
	keep := 0
	for i, c := range r.confHistory {
		if c.index <= index {
			keep = i
		}
	}
	r.confHistory = append([]confAt(nil), r.confHistory[keep:]...)
	r.checkInvariants()
	return nil
}

// HasReady reports whether Ready has work to hand out. It is false while a
// Ready is outstanding (not yet advanced).
func (r *Raft) HasReady() bool {
	if r.outstanding {
		return false
	}
	return r.hardState() != r.prevHS || r.log.pendingSnapshot != nil || r.log.truncate ||
		r.log.written < r.log.lastIndex() || r.log.hasNextCommitted() ||
		len(r.msgs) > 0 || len(r.readStates) > 0
}

// msgsKeepMax bounds the message buffer the engine keeps for reuse.
const msgsKeepMax = 4096

// Ready returns the work to do; see consensus.Ready for the order. It must
// be handed back with Advance before Ready is called again. The Messages
// slice is the engine's again at Advance (it is reused): a caller that
// keeps messages past Advance copies them out first.
func (r *Raft) Ready() consensus.Ready {
	if r.outstanding {
		panic("raft: Ready called again before Advance")
	}
	var rd consensus.Ready
	l := r.log
	if hs := r.hardState(); hs != r.prevHS {
		rd.HardState = hs
		rd.MustSync = hs.Epoch != r.prevHS.Epoch || hs.Vote != r.prevHS.Vote
		r.prevHS = hs
	}
	if l.pendingSnapshot != nil {
		rd.Snapshot = l.pendingSnapshot
		l.pendingSnapshot = nil
		rd.MustSync = true
	}
	if l.truncate {
		rd.Truncate, rd.TruncateAfter = true, l.truncateAfter
		l.truncate = false
		rd.MustSync = true
	}
	r.readyLast = 0
	if last := l.lastIndex(); l.written < last {
		// A sub-slice of the log, not a copy: the log never writes over
		// an entry in place (see raftLog), and the capacity is clipped.
		lo, hi := l.written-l.snapIndex, last-l.snapIndex
		rd.Entries = l.entries[lo:hi:hi]
		l.written = last
		r.readyLast = last
		rd.MustSync = true
	}
	r.readyGen = l.truncGen
	if l.hasNextCommitted() {
		rd.Committed = l.nextCommitted(r.cfg.MaxCommittedSizePerReady)
		l.handed = rd.Committed[len(rd.Committed)-1].Index
		var payload uint64
		for _, e := range rd.Committed {
			payload += uint64(len(e.Data))
			if e.Type == consensus.EntryConfChange {
				r.confQueue = append(r.confQueue, e)
			}
		}
		if r.role == consensus.Leader {
			r.uncommittedSize -= min(payload, r.uncommittedSize)
		}
	}
	if len(r.msgs) > 0 {
		// The caller holds rd.Messages until Advance; the engine collects
		// into the other buffer meanwhile.
		rd.Messages, r.msgsOut = r.msgs, r.msgs
		r.msgs, r.msgsFree = r.msgsFree[:0], nil
	}
	rd.ReadStates, r.readStates = r.readStates, nil
	r.outstanding = true
	return rd
}

// Advance hands back the last Ready (its durable parts are now on stable
// storage and its messages sent) and reports that the application has
// applied every committed entry up to applied (including an installed
// snapshot's index). Advance may also be called with no Ready outstanding,
// to report progress of an asynchronous apply.
func (r *Raft) Advance(applied uint64) {
	l := r.log
	if r.outstanding {
		r.outstanding = false
		if r.msgsOut != nil {
			// The caller is done with the Ready's messages: reuse the
			// buffer, emptied so it pins no entries, unless one burst
			// made it unusually large.
			if cap(r.msgsOut) <= msgsKeepMax {
				clear(r.msgsOut)
				r.msgsFree = r.msgsOut[:0]
			}
			r.msgsOut = nil
		}
		// What the Ready wrote is durable, unless the log was cut below it
		// since; then the next Ready rewrites from the cut.
		if l.truncGen == r.readyGen && r.readyLast > l.stable {
			l.stable = r.readyLast
		}
	}
	if applied > l.handed {
		panic(fmt.Sprintf("raft: Advance: applied %d is beyond the entries handed out (%d)", applied, l.handed))
	}
	if applied > l.applied {
		l.applied = applied
	}
	for len(r.confQueue) > 0 && r.confQueue[0].Index <= l.applied {
		e := r.confQueue[0]
		r.confQueue = r.confQueue[1:]
		r.applyConfEntry(e)
	}
	if r.role == consensus.Leader {
		if pr := r.trk.prs[r.id]; pr != nil {
			pr.maybeUpdate(l.stable)
		}
		if r.maybeCommit() {
			r.bcastAppend()
		}
		r.maybeAutoLeave()
	}
	r.checkInvariants()
}

// applyConfEntry applies a committed conf change to the membership.
func (r *Raft) applyConfEntry(e consensus.Entry) {
	cc, err := consensus.UnmarshalConfChange(e.Data)
	if err != nil {
		panic(fmt.Sprintf("raft: committed conf change at index %d is corrupt: %v", e.Index, err))
	}
	cs, err := applyConfChange(r.conf, cc)
	if err != nil {
		// Validated when proposed; a change that no longer fits is a
		// no-op on every member alike.
		return
	}
	r.setConf(cs)
	r.confHistory = append(r.confHistory, confAt{e.Index, cs.Clone()})
	if r.role != consensus.Leader {
		return
	}
	if !r.isVoter(r.id) {
		// Removed or demoted, and the change is committed: step down.
		r.becomeFollower(r.epoch, consensus.None)
		return
	}
	if r.leadTransferee != consensus.None && !r.isVoter(r.leadTransferee) {
		r.leadTransferee = consensus.None
	}
	// A smaller quorum may commit more, and new members need the log.
	r.maybeCommit()
	r.bcastAppend()
}

// maybeAutoLeave proposes leaving a joint configuration once the entry that
// entered it is applied.
func (r *Raft) maybeAutoLeave() {
	if !r.conf.Joint() || !r.conf.AutoLeave || r.pendingConfIndex > r.log.applied {
		return
	}
	e := consensus.Entry{Type: consensus.EntryConfChange, Data: consensus.ConfChange{}.Marshal()}
	if r.appendEntry(e) {
		r.pendingConfIndex = r.log.lastIndex()
		r.bcastAppend()
	}
}

// Status reports the engine's state.
func (r *Raft) Status() consensus.Status {
	s := consensus.Status{
		ID: r.id, Role: r.role, Epoch: r.epoch, Vote: r.vote, Leader: r.lead,
		Commit: r.log.committed, Applied: r.log.applied,
		FirstIndex: r.log.firstIndex(), LastIndex: r.log.lastIndex(),
		ConfState: r.conf.Clone(), LeadTransferee: r.leadTransferee,
	}
	if r.role == consensus.Leader {
		s.PendingReads = len(r.reads.queue)
	}
	if s.Role == consensus.Follower && r.conf.IsLearner(r.id) {
		s.Role = consensus.Learner
	}
	if r.role == consensus.Leader {
		s.Progress = make(map[consensus.NodeID]consensus.Progress, len(r.trk.prs))
		for id, pr := range r.trk.prs {
			s.Progress[id] = pr.public()
		}
	}
	return s
}
