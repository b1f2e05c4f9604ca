package paxos

import (
	"fmt"

	"github.com/ballotdb/ballot/consensus"
)

var _ consensus.Engine = (*Node)(nil)

// Tick advances the logical clock: a voter that heard no leader for its
// randomized timeout starts phase 1; a leader sends heartbeats and steps
// down when a phase-2 quorum stopped answering.
func (n *Node) Tick() {
	switch n.role {
	case consensus.Leader:
		n.heartbeatElapsed++
		n.electionElapsed++
		if n.leadTransferee != consensus.None {
			n.transferElapsed++
			if n.transferElapsed >= n.cfg.ElectionTick {
				n.leadTransferee = consensus.None
			}
		}
		if n.electionElapsed >= n.cfg.ElectionTick {
			n.electionElapsed = 0
			cs := n.conf()
			_, q2 := n.cfg.quorums(len(cs.Voters))
			if !quorum(cs, q2, func(id consensus.NodeID) bool { return id == n.id || n.prop.active[id] }) {
				n.becomeFollower(consensus.None)
				break
			}
			clear(n.prop.active)
		}
		if n.heartbeatElapsed >= n.cfg.HeartbeatTick {
			n.heartbeatElapsed = 0
			n.prop.heartbeat(n)
		}
	default:
		n.electionElapsed++
		n.heartbeatElapsed++
		if n.role == consensus.Candidate && n.heartbeatElapsed >= n.cfg.HeartbeatTick {
			n.heartbeatElapsed = 0
			n.prop.ensurePrepared(n, true)
		}
		if n.electionElapsed >= n.randomizedTimeout && n.isVoter(n.id) {
			n.campaign(false)
		}
	}
	n.checkInvariants()
}

// Step feeds one message from a peer (or a local one: MsgHup, MsgProp).
func (n *Node) Step(m consensus.Message) error {
	err := n.step(m)
	n.checkInvariants()
	return err
}

func (n *Node) step(m consensus.Message) error {
	switch m.Type {
	case consensus.MsgHup:
		n.campaign(false)
	case consensus.MsgPrepare:
		n.acc.onPrepare(n, m)
	case consensus.MsgPromise:
		n.prop.onPromise(n, m)
	case consensus.MsgAccept:
		n.acc.onAccept(n, m)
	case consensus.MsgAccepted:
		n.lrn.onAccepted(n, m)
	case consensus.MsgDecide:
		n.lrn.onDecide(n, m)
	case consensus.MsgDecideResp:
		n.prop.onDecideResp(n, m)
	case consensus.MsgNack:
		n.prop.onNack(n, m)
	case consensus.MsgSnap:
		n.lrn.onSnap(n, m)
	case consensus.MsgProp:
		return n.stepProp(m)
	case consensus.MsgReadIndex:
		if n.role != consensus.Leader {
			return &consensus.NotLeaderError{Leader: n.leader}
		}
		return n.prop.readIndex(n, m.Context, m.From)
	case consensus.MsgReadIndexResp:
		if m.From == n.leader {
			n.readStates = append(n.readStates, consensus.ReadState{Index: m.Index, RequestCtx: m.Context})
		}
	case consensus.MsgTimeoutNow:
		if Ballot(m.Epoch) >= n.acc.promised || m.From == n.leader {
			n.campaign(true)
		}
	default:
		return fmt.Errorf("paxos: %w: %s", consensus.ErrUnknownMessage, m.Type)
	}
	return nil
}

// stepProp queues a proposal on the leader or forwards it there.
func (n *Node) stepProp(m consensus.Message) error {
	if n.role != consensus.Leader {
		if n.role == consensus.Candidate || n.leader == consensus.None || n.cfg.DisableProposalForwarding {
			return &consensus.NotLeaderError{Leader: n.leader}
		}
		m.To = n.leader
		n.send(m)
		return nil
	}
	return n.leaderPropose(m.Entries)
}

// leaderPropose queues proposals on the leader and proposes what the
// window allows. It keeps copies of the entries, not ents itself.
func (n *Node) leaderPropose(ents []consensus.Entry) error {
	p := &n.prop
	if p.queued()+len(ents) > n.cfg.MaxPendingProposals {
		return fmt.Errorf("paxos: %d proposals already wait for a slot: %w", p.queued(), consensus.ErrProposalDropped)
	}
	for _, e := range ents {
		if e.Type == consensus.EntryConfChange {
			if err := n.checkConfChange(e); err != nil {
				return err
			}
		}
		if e.Type == consensus.EntryNoop {
			continue
		}
		p.enqueue(consensus.Entry{Type: e.Type, Data: e.Data})
	}
	p.maybePropose(n)
	return nil
}

// checkConfChange refuses a conf change while another is undecided, and one
// that would leave a configuration the quorums cannot serve.
func (n *Node) checkConfChange(e consensus.Entry) error {
	p := &n.prop
	if p.confSlot > n.log.commit {
		return fmt.Errorf("paxos: conf change at slot %d undecided: %w", p.confSlot, consensus.ErrConfChangePending)
	}
	for _, q := range p.queue[p.queueHead:] {
		if q.Type == consensus.EntryConfChange {
			return fmt.Errorf("paxos: a conf change waits for a slot: %w", consensus.ErrConfChangePending)
		}
	}
	cc, err := consensus.UnmarshalConfChange(e.Data)
	if err != nil {
		return fmt.Errorf("paxos: %w: %w", consensus.ErrInvalidConfChange, err)
	}
	cur := n.conf()
	for _, c := range cc.Changes {
		if c.Type == consensus.RemoveNode || cur.IsMember(c.NodeID) {
			if c.Type == consensus.AddVoter && cur.IsLearner(c.NodeID) {
				// Promote only a learner that has caught up (within a
				// tenth of the decided prefix), as Raft does.
				pr := p.peers[c.NodeID]
				if pr == nil || !pr.reported || pr.decided+n.log.commit/10 < n.log.commit {
					return fmt.Errorf("%w: node %d", consensus.ErrLearnerNotReady, c.NodeID)
				}
			}
			continue
		}
		// An ID that was a member and was removed never comes back: a
		// fresh node under an old ID would have forgotten its promises.
		for _, ca := range n.confs {
			if ca.cs.IsMember(c.NodeID) {
				return fmt.Errorf("%w: node ID %d", consensus.ErrIDRemoved, c.NodeID)
			}
		}
	}
	cs, err := applyConfChange(cur, cc)
	if err != nil {
		return err
	}
	if err := n.cfg.checkQuorums(len(cs.Voters)); err != nil {
		return fmt.Errorf("%w: %w", consensus.ErrInvalidConfChange, err)
	}
	return nil
}

// Propose proposes data on the leader, or forwards it there.
func (n *Node) Propose(data []byte) error {
	if uint64(len(data)) > n.cfg.MaxEntrySize {
		return fmt.Errorf("%w: proposal of %d bytes exceeds MaxEntrySize %d", consensus.ErrTooLarge, len(data), n.cfg.MaxEntrySize)
	}
	if n.role == consensus.Leader {
		// What stepping the MsgProp below comes to on the leader, with
		// the entry on the stack: the queue copies it, so a proposal
		// costs no allocation of its own.
		ents := [1]consensus.Entry{{Type: consensus.EntryNormal, Data: data}}
		err := n.leaderPropose(ents[:])
		n.checkInvariants()
		return err
	}
	return n.Step(consensus.Message{Type: consensus.MsgProp, From: n.id,
		Entries: []consensus.Entry{{Type: consensus.EntryNormal, Data: data}}})
}

// ProposeConfChange proposes a membership change. Any change takes effect
// in one step, at the slot after the one it is decided in.
func (n *Node) ProposeConfChange(cc consensus.ConfChange) error {
	return n.Step(consensus.Message{Type: consensus.MsgProp, From: n.id,
		Entries: []consensus.Entry{{Type: consensus.EntryConfChange, Data: cc.Marshal()}}})
}

// ReadIndex requests a linearizable read; see the package doc.
func (n *Node) ReadIndex(rctx []byte) error {
	var err error
	switch {
	case n.role == consensus.Leader:
		err = n.prop.readIndex(n, rctx, n.id)
	case n.leader != consensus.None && n.role == consensus.Follower:
		n.send(consensus.Message{Type: consensus.MsgReadIndex, To: n.leader, Context: rctx})
	default:
		err = &consensus.NotLeaderError{Leader: n.leader}
	}
	n.checkInvariants()
	return err
}

// TransferLeadership asks the leader to hand over to target, a voter: the
// target is told to start phase 1 at once, and acceptors answer it even
// though they still hear from this leader.
func (n *Node) TransferLeadership(target consensus.NodeID) error {
	if n.role != consensus.Leader {
		return &consensus.NotLeaderError{Leader: n.leader}
	}
	if !n.isVoter(target) {
		return fmt.Errorf("%w: node %d is not a voter", consensus.ErrTransferInvalid, target)
	}
	if target == n.id {
		return nil
	}
	n.leadTransferee, n.transferElapsed = target, 0
	n.send(consensus.Message{Type: consensus.MsgTimeoutNow, To: target, Epoch: uint64(n.prop.ballot)})
	return nil
}

// Campaign starts phase 1 now, as if the timeout had fired.
func (n *Node) Campaign() { n.campaign(false); n.checkInvariants() }

// ReportUnreachable is a hint the engine does not need: lost messages are
// resent on the next heartbeat.
func (n *Node) ReportUnreachable(consensus.NodeID) {}

// ReportSnapshot tells the leader how sending a snapshot ended; on failure
// it is sent again at the next heartbeat.
func (n *Node) ReportSnapshot(peer consensus.NodeID, ok bool) {
	if n.role != consensus.Leader {
		return
	}
	if pr := n.prop.peers[peer]; pr != nil && !ok {
		pr.snapWait = 0
	}
}

// Compact drops the log at or below index, which the application holds a
// snapshot of. Decided slots are never needed again by an acceptor: a
// proposer asking for them is told "decided through" and sent the snapshot.
func (n *Node) Compact(index uint64) error {
	if err := n.log.compact(index, n.confAsOf(index)); err != nil {
		return err
	}
	keep := 0
	for i, c := range n.confs {
		if c.index <= index {
			keep = i
		}
	}
	n.confs = append([]confAt(nil), n.confs[keep:]...)
	n.checkInvariants()
	return nil
}

func (n *Node) hardState() consensus.HardState {
	return consensus.HardState{Epoch: uint64(n.acc.promised), Commit: n.log.commit}
}

// HasReady reports whether Ready has work to hand out. It is false while a
// Ready is outstanding.
func (n *Node) HasReady() bool {
	if n.outstanding {
		return false
	}
	l := n.log
	return n.hardState() != n.prevHS || l.pendingSnapshot != nil || l.truncate || len(l.dirty) > 0 ||
		l.hasNextCommitted() || len(n.msgs) > 0 || len(n.readStates) > 0
}

// Ready returns the work to do; see consensus.Ready for the order. It must
// be handed back with Advance before Ready is called again.
func (n *Node) Ready() consensus.Ready {
	if n.outstanding {
		panic("paxos: Ready called again before Advance")
	}
	var rd consensus.Ready
	l := n.log
	if hs := n.hardState(); hs != n.prevHS {
		rd.HardState = hs
		rd.MustSync = hs.Epoch != n.prevHS.Epoch
		n.prevHS = hs
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
	if ents := l.takeDirty(); len(ents) > 0 {
		rd.Entries = ents
		rd.MustSync = true
	}
	if l.hasNextCommitted() {
		rd.Committed = l.nextCommitted(n.cfg.MaxCommittedSizePerReady)
		l.handed = rd.Committed[len(rd.Committed)-1].Index
	}
	// The messages to peers are handed out in n.msgs's own buffer; those
	// to this node are kept for Advance.
	out := n.msgs[:0]
	for _, m := range n.msgs {
		if m.To == n.id {
			n.selfMsgs = append(n.selfMsgs, m)
		} else {
			out = append(out, m)
		}
	}
	clear(n.msgs[len(out):])
	n.msgsHint = len(n.msgs)
	if len(out) > 0 {
		rd.Messages = out
	}
	n.msgs = nil
	n.msgsGen++
	rd.ReadStates, n.readStates = n.readStates, nil
	n.outstanding = true
	return rd
}

// Advance hands back the last Ready (durable, sent) and reports what the
// application applied. Messages this node sent itself in that Ready are
// stepped now: its own promises and acceptances count once durable.
func (n *Node) Advance(applied uint64) {
	l := n.log
	if n.outstanding {
		n.outstanding = false
		self := n.selfMsgs
		n.selfMsgs = nil
		for _, m := range self {
			_ = n.step(m)
		}
		// Ready fills selfMsgs only, so its buffer is free again.
		clear(self)
		n.selfMsgs = self[:0]
	}
	if applied > l.handed {
		panic(fmt.Sprintf("paxos: Advance: applied %d is beyond the entries handed out (%d)", applied, l.handed))
	}
	l.applied = max(l.applied, applied)
	n.checkInvariants()
}

// Status reports the engine's state.
func (n *Node) Status() consensus.Status {
	l := n.log
	s := consensus.Status{
		ID: n.id, Role: n.role, Epoch: uint64(n.acc.promised), Leader: n.leader,
		Commit: l.commit, Applied: l.applied, FirstIndex: l.snap.Index + 1, LastIndex: l.lastIndex(),
		ConfState: n.confAsOf(l.applied).Clone(), LeadTransferee: n.leadTransferee,
	}
	if n.role == consensus.Leader {
		s.PendingReads = len(n.prop.reads)
	}
	if s.Role == consensus.Follower && n.conf().IsLearner(n.id) {
		s.Role = consensus.Learner
	}
	if n.role == consensus.Leader {
		s.Progress = map[consensus.NodeID]consensus.Progress{}
		for _, id := range n.conf().Members() {
			pr := consensus.Progress{Match: l.commit, Next: n.prop.next, State: "replicate", RecentActive: true, IsLearner: !n.isVoter(id)}
			if p := n.prop.peers[id]; p != nil && id != n.id {
				pr.Match, pr.RecentActive = p.decided, n.prop.active[id]
			}
			s.Progress[id] = pr
		}
	}
	return s
}
