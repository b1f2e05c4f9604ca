// Package quorum counts votes and computes committed indexes for majority
// and joint-majority configurations. It is shared by the Raft and Paxos
// engines and is pure: no state beyond its arguments.
//
// A MajorityConfig is one voter set; a JointConfig is two, written
// (1 2 3)&&(4 5 6), and needs a majority of each. Outside joint consensus the
// second half is empty, and an empty half agrees to everything, so the same
// code serves both.
package quorum

import (
	"slices"

	"github.com/ballotdb/ballot/consensus"
)

// VoteResult is the outcome of a vote count.
type VoteResult uint8

const (
	// VotePending: neither a quorum of yes nor of no yet.
	VotePending VoteResult = 1 + iota
	// VoteLost: enough no votes that a quorum of yes is impossible.
	VoteLost
	// VoteWon: a quorum voted yes.
	VoteWon
)

func (r VoteResult) String() string {
	switch r {
	case VotePending:
		return "pending"
	case VoteLost:
		return "lost"
	case VoteWon:
		return "won"
	}
	return "VoteResult(?)"
}

// MajorityConfig is a set of voters deciding by simple majority.
type MajorityConfig map[consensus.NodeID]struct{}

// NewMajority builds a MajorityConfig from ids.
func NewMajority(ids ...consensus.NodeID) MajorityConfig {
	c := make(MajorityConfig, len(ids))
	for _, id := range ids {
		c[id] = struct{}{}
	}
	return c
}

// IDs returns the voters in ascending order.
func (c MajorityConfig) IDs() []consensus.NodeID {
	ids := make([]consensus.NodeID, 0, len(c))
	for id := range c {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// VoteResult counts votes (true = yes; a missing voter has not voted). An
// empty configuration wins every vote, which is what makes it a neutral
// second half of a JointConfig.
func (c MajorityConfig) VoteResult(votes map[consensus.NodeID]bool) VoteResult {
	if len(c) == 0 {
		return VoteWon
	}
	yes, missing := 0, 0
	for id := range c {
		v, ok := votes[id]
		switch {
		case !ok:
			missing++
		case v:
			yes++
		}
	}
	q := len(c)/2 + 1
	if yes >= q {
		return VoteWon
	}
	if yes+missing >= q {
		return VotePending
	}
	return VoteLost
}

// CommittedIndex returns the highest index acknowledged by a majority, given
// each voter's acknowledged (match) index. A voter missing from match counts
// as 0. An empty configuration returns the largest uint64, so that it never
// limits the other half of a JointConfig.
func (c MajorityConfig) CommittedIndex(match func(consensus.NodeID) (uint64, bool)) uint64 {
	n := len(c)
	if n == 0 {
		return ^uint64(0)
	}
	var stack [7]uint64
	var srt []uint64
	if n <= len(stack) {
		srt = stack[:n]
	} else {
		srt = make([]uint64, n)
	}
	i := 0
	for id := range c {
		if idx, ok := match(id); ok {
			srt[i] = idx
		} else {
			srt[i] = 0
		}
		i++
	}
	slices.Sort(srt)
	// The value at position n - q, counting from the smallest, is held by
	// at least q voters.
	return srt[n-(n/2+1)]
}

// JointConfig is the configuration during joint consensus: both halves must
// agree. Outside joint consensus the second half is empty.
type JointConfig [2]MajorityConfig

// VoteResult needs both halves to win; either losing loses.
func (c JointConfig) VoteResult(votes map[consensus.NodeID]bool) VoteResult {
	r1 := c[0].VoteResult(votes)
	r2 := c[1].VoteResult(votes)
	if r1 == r2 {
		return r1
	}
	if r1 == VoteLost || r2 == VoteLost {
		return VoteLost
	}
	return VotePending
}

// CommittedIndex is the smaller of the halves' committed indexes.
func (c JointConfig) CommittedIndex(match func(consensus.NodeID) (uint64, bool)) uint64 {
	return min(c[0].CommittedIndex(match), c[1].CommittedIndex(match))
}

// IDs returns every voter of either half, in ascending order, each once.
func (c JointConfig) IDs() []consensus.NodeID {
	ids := c[0].IDs()
	for _, id := range c[1].IDs() {
		if _, ok := c[0][id]; !ok {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids
}

// Contains reports whether id votes in either half.
func (c JointConfig) Contains(id consensus.NodeID) bool {
	_, a := c[0][id]
	_, b := c[1][id]
	return a || b
}
