package quorum

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/ballotdb/ballot/consensus"
)

// seq returns the IDs first, first+1, …, first+n-1.
func seq(first, n int) []consensus.NodeID {
	ids := make([]consensus.NodeID, n)
	for i := range ids {
		ids[i] = consensus.NodeID(first + i)
	}
	return ids
}

// votesFor reads a vote per voter of ids: 'y' yes, 'n' no, '_' not voted.
func votesFor(ids []consensus.NodeID, spec string) map[consensus.NodeID]bool {
	if len(spec) != len(ids) {
		panic(fmt.Sprintf("vote spec %q for %d voters", spec, len(ids)))
	}
	votes := map[consensus.NodeID]bool{}
	for i, c := range spec {
		switch c {
		case 'y':
			votes[ids[i]] = true
		case 'n':
			votes[ids[i]] = false
		case '_':
		default:
			panic(fmt.Sprintf("bad vote %q", c))
		}
	}
	return votes
}

// missing marks a voter with no entry in the match function.
const missing = -1

// matchFor serves match[i] for ids[i]; a value of missing is absent.
func matchFor(ids []consensus.NodeID, match []int64) func(consensus.NodeID) (uint64, bool) {
	if len(match) != len(ids) {
		panic(fmt.Sprintf("%d match indexes for %d voters", len(match), len(ids)))
	}
	m := map[consensus.NodeID]uint64{}
	for i, v := range match {
		if v != missing {
			m[ids[i]] = uint64(v)
		}
	}
	return func(id consensus.NodeID) (uint64, bool) { v, ok := m[id]; return v, ok }
}

func TestMajorityVoteResult(t *testing.T) {
	P, L, W := VotePending, VoteLost, VoteWon
	for _, tc := range []struct {
		votes string // one per voter, voters 1..len
		want  VoteResult
	}{
		// An empty configuration wins every vote.
		{"", W},

		{"_", P}, {"y", W}, {"n", L},

		// Two voters need both.
		{"__", P}, {"y_", P}, {"_y", P}, {"yy", W}, {"yn", L}, {"n_", L}, {"nn", L},

		{"___", P}, {"y__", P}, {"n__", P}, {"yn_", P}, {"yy_", W}, {"yyn", W},
		{"ynn", L}, {"nn_", L}, {"nnn", L}, {"yyy", W},

		// Four voters need three: two noes lose.
		{"____", P}, {"yy__", P}, {"yyn_", P}, {"yyy_", W}, {"yyyn", W},
		{"n___", P}, {"nn__", L}, {"yynn", L}, {"ynn_", L},

		{"_____", P}, {"yy___", P}, {"yyy__", W}, {"yynn_", P}, {"yynnn", L},
		{"nn___", P}, {"nnn__", L}, {"yyyyy", W},

		{"_______", P}, {"yyy____", P}, {"yyyy___", W}, {"yyynnn_", P},
		{"yyynnnn", L}, {"nnn____", P}, {"nnnn___", L}, {"yyyyyyy", W}, {"nnnnnnn", L},
	} {
		ids := seq(1, len(tc.votes))
		c := NewMajority(ids...)
		votes := votesFor(ids, tc.votes)
		if got := c.VoteResult(votes); got != tc.want {
			t.Errorf("%d voters, votes %q: got %v, want %v", len(ids), tc.votes, got, tc.want)
		}
		// Votes from outside the configuration change nothing.
		votes[100] = true
		votes[101] = false
		if got := c.VoteResult(votes); got != tc.want {
			t.Errorf("%d voters, votes %q plus outsiders: got %v, want %v", len(ids), tc.votes, got, tc.want)
		}
	}
}

func TestMajorityCommittedIndex(t *testing.T) {
	const m = missing
	for _, tc := range []struct {
		match []int64 // per voter 1..len; missing counts as 0
		want  uint64
	}{
		// An empty configuration never limits the other half of a joint one.
		{nil, math.MaxUint64},

		{[]int64{5}, 5},
		{[]int64{0}, 0},
		{[]int64{m}, 0},

		{[]int64{5, 3}, 3},
		{[]int64{3, 5}, 3},
		{[]int64{5, m}, 0},
		{[]int64{7, 7}, 7},

		{[]int64{5, 3, 1}, 3},
		{[]int64{2, 9, 4}, 4},
		{[]int64{5, 5, m}, 5},
		{[]int64{5, m, m}, 0},
		{[]int64{m, m, m}, 0},

		{[]int64{1, 2, 3, 4}, 2},
		{[]int64{4, 4, 4, m}, 4},
		{[]int64{9, 8, m, m}, 0},
		{[]int64{9, 8, 7, m}, 7},

		{[]int64{1, 2, 3, 4, 5}, 3},
		{[]int64{5, 5, m, m, 1}, 1},
		{[]int64{7, 7, 7, m, m}, 7},
		{[]int64{math.MaxInt64, math.MaxInt64, math.MaxInt64, 0, 0}, math.MaxInt64},

		{[]int64{1, 2, 3, 4, 5, 6, 7}, 4},
		{[]int64{7, 6, 5, 4, 3, 2, 1}, 4},
		{[]int64{10, 10, 10, 10, m, m, m}, 10},
		{[]int64{10, 10, 10, m, m, m, 9}, 9},
		{[]int64{10, 10, 10, m, m, m, m}, 0},
	} {
		ids := seq(1, len(tc.match))
		got := NewMajority(ids...).CommittedIndex(matchFor(ids, tc.match))
		if got != tc.want {
			t.Errorf("match %v: got %d, want %d", tc.match, got, tc.want)
		}
	}
}

func TestJointVoteResult(t *testing.T) {
	P, L, W := VotePending, VoteLost, VoteWon
	for _, tc := range []struct {
		incoming, outgoing []consensus.NodeID
		votes              map[consensus.NodeID]bool
		want               VoteResult
	}{
		// An empty second half is neutral: the first decides alone.
		{seq(1, 3), nil, map[consensus.NodeID]bool{1: true, 2: true}, W},
		{seq(1, 3), nil, map[consensus.NodeID]bool{1: true}, P},
		{seq(1, 3), nil, map[consensus.NodeID]bool{1: false, 2: false}, L},
		// So is an empty first half.
		{nil, seq(1, 3), map[consensus.NodeID]bool{1: true, 2: true}, W},
		{nil, nil, nil, W},

		// Both halves must win.
		{seq(1, 3), seq(4, 3), map[consensus.NodeID]bool{1: true, 2: true, 4: true, 5: true}, W},
		{seq(1, 3), seq(4, 3), map[consensus.NodeID]bool{1: true, 2: true}, P},
		{seq(1, 3), seq(4, 3), map[consensus.NodeID]bool{1: true, 2: true, 4: true}, P},
		{seq(1, 3), seq(4, 3), map[consensus.NodeID]bool{4: true, 5: true}, P},

		// A loss in either half loses, whatever the other says.
		{seq(1, 3), seq(4, 3), map[consensus.NodeID]bool{1: true, 2: true, 4: false, 5: false}, L},
		{seq(1, 3), seq(4, 3), map[consensus.NodeID]bool{1: false, 2: false, 4: true, 5: true}, L},
		{seq(1, 3), seq(4, 3), map[consensus.NodeID]bool{1: false, 2: false}, L},
		{seq(1, 3), seq(4, 3), map[consensus.NodeID]bool{5: false, 6: false}, L},
		{seq(1, 3), seq(4, 3), map[consensus.NodeID]bool{1: false, 2: false, 4: false, 5: false}, L},

		// Overlapping halves (1 2 3)&&(2 3 4): a shared voter counts in both.
		{seq(1, 3), seq(2, 3), map[consensus.NodeID]bool{2: true, 3: true}, W},
		{seq(1, 3), seq(2, 3), map[consensus.NodeID]bool{1: true, 2: true}, P},
		{seq(1, 3), seq(2, 3), map[consensus.NodeID]bool{1: true, 2: true, 3: false, 4: false}, L},
		{seq(1, 3), seq(2, 3), map[consensus.NodeID]bool{2: false, 3: false}, L},

		// A single-voter half decides with its only voter.
		{seq(1, 3), seq(9, 1), map[consensus.NodeID]bool{1: true, 2: true}, P},
		{seq(1, 3), seq(9, 1), map[consensus.NodeID]bool{1: true, 2: true, 9: true}, W},
		{seq(1, 3), seq(9, 1), map[consensus.NodeID]bool{1: true, 2: true, 9: false}, L},
	} {
		c := JointConfig{NewMajority(tc.incoming...), NewMajority(tc.outgoing...)}
		if got := c.VoteResult(tc.votes); got != tc.want {
			t.Errorf("(%v)&&(%v) votes %v: got %v, want %v", tc.incoming, tc.outgoing, tc.votes, got, tc.want)
		}
	}
}

func TestJointCommittedIndex(t *testing.T) {
	match := map[consensus.NodeID]uint64{1: 10, 2: 8, 3: 6, 4: 4, 5: 2}
	fn := func(id consensus.NodeID) (uint64, bool) { v, ok := match[id]; return v, ok }
	for _, tc := range []struct {
		incoming, outgoing []consensus.NodeID
		want               uint64
	}{
		{seq(1, 3), nil, 8},        // empty second half is neutral
		{nil, seq(1, 3), 8},        // and so is an empty first half
		{nil, nil, math.MaxUint64}, // no voters at all: nothing limits
		{seq(1, 3), seq(3, 3), 4},  // (1 2 3)=8 && (3 4 5)=4
		{seq(3, 3), seq(1, 3), 4},  // order of halves does not matter
		{seq(1, 3), seq(1, 3), 8},  // identical halves
		{seq(1, 3), seq(6, 3), 0},  // (6 7 8) have acknowledged nothing
		{seq(1, 2), seq(2, 2), 6},  // (1 2)=8 && (2 3)=6
		{seq(1, 5), seq(1, 1), 6},  // (1..5)=6 && (1)=10
	} {
		c := JointConfig{NewMajority(tc.incoming...), NewMajority(tc.outgoing...)}
		if got := c.CommittedIndex(fn); got != tc.want {
			t.Errorf("(%v)&&(%v): got %d, want %d", tc.incoming, tc.outgoing, got, tc.want)
		}
	}
}

func TestJointIDsAndContains(t *testing.T) {
	c := JointConfig{NewMajority(3, 1, 2), NewMajority(4, 2, 3)}
	if got, want := c.IDs(), []consensus.NodeID{1, 2, 3, 4}; !slices.Equal(got, want) {
		t.Fatalf("IDs: got %v, want %v", got, want)
	}
	for id, want := range map[consensus.NodeID]bool{1: true, 2: true, 4: true, 5: false, 0: false} {
		if got := c.Contains(id); got != want {
			t.Errorf("Contains(%d): got %v, want %v", id, got, want)
		}
	}
	if got := (JointConfig{}).IDs(); len(got) != 0 {
		t.Fatalf("empty IDs: %v", got)
	}
}

// bruteCommitted is the definition of a committed index: the largest i such
// that a majority of each non-empty half has match >= i (a missing voter has
// match 0). It can only be 0 or one of the match values, so those are the
// candidates tried; with no voters at all nothing limits it.
func bruteCommitted(halves [][]consensus.NodeID, match map[consensus.NodeID]uint64) uint64 {
	nonEmpty := 0
	candidates := []uint64{0}
	for _, h := range halves {
		if len(h) > 0 {
			nonEmpty++
		}
		for _, id := range h {
			candidates = append(candidates, match[id])
		}
	}
	if nonEmpty == 0 {
		return math.MaxUint64
	}
	best := uint64(0)
	for _, i := range candidates {
		ok := true
		for _, h := range halves {
			if len(h) == 0 {
				continue
			}
			acked := 0
			for _, id := range h {
				if match[id] >= i {
					acked++
				}
			}
			if acked < len(h)/2+1 {
				ok = false
			}
		}
		if ok && i > best {
			best = i
		}
	}
	return best
}

// bruteVote is the definition of a vote's outcome in one half: won with a
// majority of yes, lost once a majority of yes is out of reach.
func bruteVote(half []consensus.NodeID, votes map[consensus.NodeID]bool) VoteResult {
	if len(half) == 0 {
		return VoteWon
	}
	yes, no := 0, 0
	for _, id := range half {
		if v, ok := votes[id]; ok {
			if v {
				yes++
			} else {
				no++
			}
		}
	}
	q := len(half)/2 + 1
	switch {
	case yes >= q:
		return VoteWon
	case len(half)-no < q:
		return VoteLost
	}
	return VotePending
}

// randomHalf draws up to maxVoters distinct IDs from 1..12, so halves
// overlap often.
func randomHalf(rng *rand.Rand, maxVoters int) []consensus.NodeID {
	n := rng.IntN(maxVoters + 1)
	perm := rng.Perm(12)[:n]
	ids := make([]consensus.NodeID, n)
	for i, p := range perm {
		ids[i] = consensus.NodeID(p + 1)
	}
	return ids
}

// TestCommittedIndexProperty compares CommittedIndex and VoteResult with
// their brute-force definitions on random configurations. A failure names
// its seed; rerun with that seed to replay it exactly.
func TestCommittedIndexProperty(t *testing.T) {
	const seeds = 2000
	for seed := uint64(1); seed <= seeds; seed++ {
		rng := rand.New(rand.NewPCG(seed, seed))
		in, out := randomHalf(rng, 9), randomHalf(rng, 7)
		if rng.IntN(3) == 0 {
			out = nil // not joint
		}

		// Small index range so ties are common; some voters have no entry,
		// and some large values exercise the full width.
		match := map[consensus.NodeID]uint64{}
		for id := consensus.NodeID(1); id <= 12; id++ {
			switch r := rng.IntN(10); {
			case r == 0: // missing
			case r == 1:
				match[id] = math.MaxUint64 - rng.Uint64N(3)
			default:
				match[id] = rng.Uint64N(20)
			}
		}
		fn := func(id consensus.NodeID) (uint64, bool) { v, ok := match[id]; return v, ok }

		maj := NewMajority(in...)
		if got, want := maj.CommittedIndex(fn), bruteCommitted([][]consensus.NodeID{in}, match); got != want {
			t.Fatalf("seed=%d: (%v) match %v: CommittedIndex %d, brute force %d", seed, in, match, got, want)
		}
		joint := JointConfig{maj, NewMajority(out...)}
		if got, want := joint.CommittedIndex(fn), bruteCommitted([][]consensus.NodeID{in, out}, match); got != want {
			t.Fatalf("seed=%d: (%v)&&(%v) match %v: CommittedIndex %d, brute force %d", seed, in, out, match, got, want)
		}

		votes := map[consensus.NodeID]bool{}
		for id := consensus.NodeID(1); id <= 12; id++ {
			switch rng.IntN(3) {
			case 0:
				votes[id] = true
			case 1:
				votes[id] = false
			}
		}
		if got, want := maj.VoteResult(votes), bruteVote(in, votes); got != want {
			t.Fatalf("seed=%d: (%v) votes %v: VoteResult %v, brute force %v", seed, in, votes, got, want)
		}
		r1, r2 := bruteVote(in, votes), bruteVote(out, votes)
		want := VotePending
		switch {
		case r1 == VoteLost || r2 == VoteLost:
			want = VoteLost
		case r1 == VoteWon && r2 == VoteWon:
			want = VoteWon
		}
		if got := joint.VoteResult(votes); got != want {
			t.Fatalf("seed=%d: (%v)&&(%v) votes %v: VoteResult %v, brute force %v", seed, in, out, votes, got, want)
		}
	}
}
