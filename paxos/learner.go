package paxos

import (
	"math/bits"

	"github.com/ballotdb/ballot/consensus"
)

// Learner is the role that finds out which value each slot decided. On the
// leader it counts Accepted messages: a slot is decided once a phase-2
// quorum of its configuration accepted it in the leader's ballot. Elsewhere
// it takes decided slots from the leader's Decide messages, or a snapshot.
type Learner struct {
	// votes are, per slot proposed in the leader's ballot and not yet
	// decided, the acceptors that accepted it: a window over the slots in
	// flight, a bit per acceptor.
	votes slotRing[slotVotes]
	// bits numbers the acceptors heard from in this ballot: bit i of a
	// slot's mask is acceptor bitIDs[i]. Past 64 acceptors, the rest are
	// listed per slot (slotVotes.more).
	bits   map[consensus.NodeID]uint64
	bitIDs []consensus.NodeID
}

// slotVotes are the acceptances of one slot in the leader's ballot.
type slotVotes struct {
	counting bool // the slot was proposed and is not yet decided
	mask     uint64
	more     []consensus.NodeID // acceptors beyond the 64 with a bit
}

func (lr *Learner) reset() {
	lr.votes.reset()
	if lr.bits == nil {
		lr.bits = map[consensus.NodeID]uint64{}
	}
	clear(lr.bits)
	lr.bitIDs = lr.bitIDs[:0]
}

// bit returns id's bit, numbering it if it has none; 0 when every bit is
// taken.
func (lr *Learner) bit(id consensus.NodeID) uint64 {
	if b, ok := lr.bits[id]; ok {
		return b
	}
	if len(lr.bitIDs) == 64 {
		return 0
	}
	b := uint64(1) << len(lr.bitIDs)
	lr.bits[id] = b
	lr.bitIDs = append(lr.bitIDs, id)
	return b
}

// track starts counting acceptances for slot s.
func (lr *Learner) track(s uint64) { lr.votes.push(s).counting = true }

// has reports whether id accepted slot s (or s is not being counted).
func (lr *Learner) has(s uint64, id consensus.NodeID) bool {
	v := lr.votes.at(s)
	if v == nil || !v.counting {
		return true
	}
	return v.accepted(lr.bits[id], id)
}

func (v *slotVotes) accepted(bit uint64, id consensus.NodeID) bool {
	if bit != 0 {
		return v.mask&bit != 0
	}
	for _, x := range v.more {
		if x == id {
			return true
		}
	}
	return false
}

// forget stops counting the slots at or below commit.
func (lr *Learner) forget(commit uint64) { lr.votes.dropThrough(commit) }

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
	// The voters' bits, so that a slot's quorum is a popcount; voters
	// without a bit (past 64) are counted one by one.
	var voterMask uint64
	overflow := false
	for _, id := range cs.Voters {
		if b := lr.bit(id); b != 0 {
			voterMask |= b
		} else {
			overflow = true
		}
	}
	from := lr.bits[m.From]
	old := n.log.commit
	for s := max(m.Index, lr.votes.first); s <= m.LogEpoch; s++ {
		v := lr.votes.at(s)
		if v == nil {
			break
		}
		if !v.counting {
			continue
		}
		if from != 0 {
			v.mask |= from
		} else if !v.accepted(0, m.From) {
			v.more = append(v.more, m.From)
		}
		c := bits.OnesCount64(v.mask & voterMask)
		if overflow {
			for _, id := range cs.Voters {
				if lr.bits[id] == 0 && v.accepted(0, id) {
					c++
				}
			}
		}
		if c >= q2 {
			v.counting = false
			n.log.learn(*p.proposals.at(s))
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
