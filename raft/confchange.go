package raft

import (
	"fmt"
	"slices"

	"github.com/ballotdb/ballot/consensus"
	"github.com/ballotdb/ballot/quorum"
)

// Membership changes (thesis §4, joint consensus §4.3).
//
// A change that alters at most one voter goes straight from C_old to C_new:
// any majority of the one overlaps any majority of the other. Any other
// change passes through the joint configuration C_old,new, written
// (1 2 3)&&(1 2 4), in which every decision needs a majority of both halves:
//
//	(1 2 3)  --enter-->  (1 2 4)&&(1 2 3)  --leave-->  (1 2 4)
//
// A voter that is demoted to learner inside a joint change stays a voter of
// the outgoing half and is listed in LearnersNext until the joint
// configuration is left. The engine leaves it on its own once the entering
// entry is applied (AutoLeave), by proposing an empty ConfChange.

// applyConfChange returns the membership that results from applying cc to cs,
// or an error wrapping consensus.ErrInvalidConfChange.
func applyConfChange(cs consensus.ConfState, cc consensus.ConfChange) (consensus.ConfState, error) {
	out := cs.Clone()
	if cc.LeaveJoint() {
		if !cs.Joint() {
			return cs, fmt.Errorf("%w: leaving a joint configuration that is not joint (%s)", consensus.ErrInvalidConfChange, cs)
		}
		out.VotersOutgoing = nil
		for _, id := range out.LearnersNext {
			out.Learners = addID(out.Learners, id)
		}
		out.LearnersNext = nil
		out.AutoLeave = false
		return out, nil
	}
	if cs.Joint() {
		return cs, fmt.Errorf("%w: a joint configuration must be left before another change (%s)", consensus.ErrInvalidConfChange, cs)
	}
	// Count voter changes to decide between a simple and a joint change.
	changed := map[consensus.NodeID]bool{}
	for _, c := range cc.Changes {
		if c.NodeID == consensus.None {
			return cs, fmt.Errorf("%w: node ID 0", consensus.ErrInvalidConfChange)
		}
		wasVoter := slices.Contains(cs.Voters, c.NodeID)
		isVoter := c.Type == consensus.AddVoter
		if wasVoter != isVoter {
			changed[c.NodeID] = true
		}
	}
	joint := len(changed) > 1
	if joint {
		out.VotersOutgoing = append([]consensus.NodeID(nil), cs.Voters...)
		out.AutoLeave = true
	}
	for _, c := range cc.Changes {
		id := c.NodeID
		switch c.Type {
		case consensus.AddVoter:
			out.Voters = addID(out.Voters, id)
			out.Learners = removeID(out.Learners, id)
			out.LearnersNext = removeID(out.LearnersNext, id)
		case consensus.AddLearner:
			out.Voters = removeID(out.Voters, id)
			if slices.Contains(out.VotersOutgoing, id) {
				// Still votes in the outgoing half: becomes a learner
				// only when the joint configuration is left.
				out.LearnersNext = addID(out.LearnersNext, id)
			} else {
				out.Learners = addID(out.Learners, id)
			}
		case consensus.RemoveNode:
			out.Voters = removeID(out.Voters, id)
			out.Learners = removeID(out.Learners, id)
			out.LearnersNext = removeID(out.LearnersNext, id)
		default:
			return cs, fmt.Errorf("%w: unknown change type %d", consensus.ErrInvalidConfChange, c.Type)
		}
	}
	if len(out.Voters) == 0 {
		return cs, fmt.Errorf("%w: removing every voter", consensus.ErrInvalidConfChange)
	}
	return out, nil
}

func addID(s []consensus.NodeID, id consensus.NodeID) []consensus.NodeID {
	if slices.Contains(s, id) {
		return s
	}
	s = append(s, id)
	slices.Sort(s)
	return s
}

func removeID(s []consensus.NodeID, id consensus.NodeID) []consensus.NodeID {
	i := slices.Index(s, id)
	if i < 0 {
		return s
	}
	return slices.Delete(slices.Clone(s), i, i+1)
}

// tracker is the leader-side view of the configuration: the voters as a
// joint quorum, the learners, and progress for every member.
type tracker struct {
	voters   quorum.JointConfig
	learners map[consensus.NodeID]bool
	prs      map[consensus.NodeID]*progress
	// ids are the keys of prs, sorted: every loop that sends messages
	// walks them in this order, so a run is a function of its inputs alone
	// (Go's map order is random, and the simulator replays by seed).
	ids []consensus.NodeID
}

// setConf rebuilds the tracker for cs, keeping progress of members that stay
// and creating probe progress at next for new ones.
func (r *Raft) setConf(cs consensus.ConfState) {
	r.conf = cs.Clone()
	r.trk.voters = quorum.JointConfig{quorum.NewMajority(cs.Voters...), quorum.NewMajority(cs.VotersOutgoing...)}
	r.trk.learners = map[consensus.NodeID]bool{}
	for _, id := range cs.Learners {
		r.trk.learners[id] = true
	}
	for _, id := range cs.LearnersNext {
		r.trk.learners[id] = true
	}
	old := r.trk.prs
	r.trk.prs = map[consensus.NodeID]*progress{}
	for _, id := range cs.Members() {
		pr, ok := old[id]
		if !ok {
			pr = &progress{next: r.log.lastIndex() + 1, inflights: newInflights(r.cfg.MaxInflightMsgs, r.cfg.MaxInflightBytes)}
			if id == r.id {
				pr.match = r.log.stable
			}
			// A new member counts as active so CheckQuorum does not
			// depose the leader before it has had a chance to answer.
			pr.recentActive = true
		}
		pr.isLearner = r.trk.learners[id] && !r.trk.voters.Contains(id)
		r.trk.prs[id] = pr
	}
	r.trk.ids = r.trk.ids[:0]
	for id := range r.trk.prs {
		r.trk.ids = append(r.trk.ids, id)
	}
	slices.Sort(r.trk.ids)
	for id := range old {
		if _, ok := r.trk.prs[id]; !ok {
			r.removed[id] = true
		}
	}
}

// isVoter reports whether id votes in the current configuration.
func (r *Raft) isVoter(id consensus.NodeID) bool { return r.trk.voters.Contains(id) }
