package paxos

import (
	"github.com/ballotdb/ballot/consensus"
)

// Learner is the role that finds out which value each slot decided. On the
// leader it counts Accepted messages: a slot is decided once a phase-2
// quorum of its configuration accepted it in the leader's ballot. Elsewhere
// it takes decided slots from the leader's Decide messages, or a snapshot.
type Learner struct {
	// votes are, per slot proposed in the leader's ballot, the acceptors
	// that accepted it.
	votes map[uint64]map[consensus.NodeID]bool
}

func (lr *Learner) reset() { lr.votes = map[uint64]map[consensus.NodeID]bool{} }

// track starts counting acceptances for slot s.
func (lr *Learner) track(s uint64) { lr.votes[s] = map[consensus.NodeID]bool{} }

// has reports whether id accepted slot s (or s is not being counted).
func (lr *Learner) has(s uint64, id consensus.NodeID) bool {
	v, ok := lr.votes[s]
	return !ok || v[id]
}

// forget stops counting the slots at or below commit.
func (lr *Learner) forget(commit uint64) {
	for s := range lr.votes {
		if s <= commit {
			delete(lr.votes, s)
		}
	}
}

// onAccepted counts one acceptor's phase-2b answer for a run of slots.
func (lr *Learner) onAccepted(n *Node, m consensus.Message) {
	p := &n.prop
	if n.role != consensus.Leader || Ballot(m.Epoch) != p.ballot {
		return
	}
	p.active[m.From] = true
	if pr := p.peers[m.From]; pr != nil && m.Commit > pr.decided {
		pr.decided, pr.reported = m.Commit, true
	}
	cs := n.conf()
	if !cs.IsVoter(m.From) || m.LogEpoch < m.Index || m.LogEpoch-m.Index > uint64(n.cfg.MaxInflightSlots)*4 {
		return
	}
	_, q2 := n.cfg.quorums(len(cs.Voters))
	old := n.log.commit
	for s := m.Index; s <= m.LogEpoch; s++ {
		v, ok := lr.votes[s]
		if !ok {
			continue
		}
		v[m.From] = true
		if quorum(cs, q2, func(id consensus.NodeID) bool { return v[id] }) {
			delete(lr.votes, s)
			n.log.learn(p.proposals[s])
		}
	}
	n.learned(old)
}

// onDecide takes the leader's Decide: the decided slots it carries, and the
// leader's ballot, which this node promises (promising more is always safe)
// so every member reports the same epoch.
func (lr *Learner) onDecide(n *Node, m consensus.Message) {
	b := Ballot(m.Epoch)
	n.observe(b)
	if b < n.acc.promised {
		n.send(consensus.Message{Type: consensus.MsgDecideResp, To: m.From, Epoch: uint64(n.acc.promised), Reject: true})
		return
	}
	n.acc.promised = b
	n.followLeader(b, m.From)
	old := n.log.commit
	for _, e := range m.Entries {
		if e.Index <= m.Commit {
			n.log.learn(e)
		}
	}
	n.learned(old)
	n.send(consensus.Message{Type: consensus.MsgDecideResp, To: m.From, Epoch: uint64(b), Index: n.log.commit, LogEpoch: m.LogEpoch})
}

// onSnap installs a snapshot of decided slots beyond what this node
// decided, from the leader or from an acceptor answering our Prepare.
func (lr *Learner) onSnap(n *Node, m consensus.Message) {
	if m.Snapshot == nil || m.Snapshot.Meta.Index <= n.log.commit {
		if Ballot(m.Epoch) == n.acc.promised && m.From == n.leader {
			n.send(consensus.Message{Type: consensus.MsgDecideResp, To: m.From, Epoch: m.Epoch, Index: n.log.commit})
		}
		return
	}
	s := *m.Snapshot
	old := s.Meta.Index
	n.log.restore(&s)
	n.confs = []confAt{{s.Meta.Index, s.Meta.ConfState.Clone()}}
	n.applyDecidedConfs(old)
	if n.role == consensus.Leader {
		n.prop.decided(n)
		if !n.isVoter(n.id) {
			n.becomeFollower(consensus.None)
		} else {
			n.prop.maybePropose(n)
		}
	} else if n.role == consensus.Candidate {
		n.prop.checkPhase1(n)
	}
	if Ballot(m.Epoch) == n.acc.promised && m.From == n.leader {
		n.send(consensus.Message{Type: consensus.MsgDecideResp, To: m.From, Epoch: m.Epoch, Index: n.log.commit})
	}
}
