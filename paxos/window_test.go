package paxos

import (
	"math/rand/v2"
	"testing"

	"github.com/ballotdb/ballot/consensus"
)

// TestSlotRing drives the ring and a map side by side through pushes (with
// gaps, held as zero values unless the ring is empty), drops and resets,
// across wrap-arounds and growth.
func TestSlotRing(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var r slotRing[uint64]
	model := map[uint64]uint64{}
	next, low := uint64(1), uint64(1) // next slot to push; lowest held
	grown, wrapped := 0, 0
	for step := range 20000 {
		switch op := rng.IntN(10); {
		case op < 6:
			s := next
			if rng.IntN(8) == 0 {
				s += uint64(rng.IntN(5)) // a gap, held as zero values
			}
			*r.push(s) = s * 7
			if len(model) > 0 { // an empty ring starts at s
				for g := next; g < s; g++ {
					model[g] = 0
				}
			}
			model[s] = s * 7
			next = s + 1
		case op < 8:
			through := low + uint64(rng.IntN(int(next-low)+1)) - 1
			r.dropThrough(through)
			for s := range model {
				if s <= through {
					delete(model, s)
				}
			}
			low = max(low, through+1)
		default:
			if rng.IntN(50) == 0 {
				r.reset()
				clear(model)
				low = next
			}
		}
		grown = max(grown, len(r.buf))
		if r.n > 0 && r.head+r.n > len(r.buf) {
			wrapped++
		}
		if r.n != len(model) {
			t.Fatalf("step %d: ring holds %d slots, model %d", step, r.n, len(model))
		}
		for s := low - 2; s < next+2; s++ {
			got := r.at(s)
			want, ok := model[s]
			if (got != nil) != ok || (ok && *got != want) {
				t.Fatalf("step %d: slot %d: ring %v, model %d (held %v)", step, s, got, want, ok)
			}
		}
	}
	if grown < 64 || wrapped == 0 {
		t.Fatalf("the ring grew to %d and wrapped %d times: the test does not exercise it", grown, wrapped)
	}
}

// TestLearnerPastSixtyFourVoters: the learner keeps a bit per acceptor for
// the first 64 and a list beyond; a slot is decided exactly when a phase-2
// quorum accepted it, whichever side its acceptors are on.
func TestLearnerPastSixtyFourVoters(t *testing.T) {
	const voters = 70
	c := newCluster(t, voters, nil)
	c.campaign(1)
	c.stabilize()
	if c.leader() != 1 {
		t.Fatalf("node 1 did not become leader")
	}
	_, q2 := c.nodes[1].cfg.quorums(voters)
	// Acceptances from the leader and the highest IDs only, so the
	// acceptors without a bit (65..70) are needed for every quorum.
	acceptFrom := func(k int) {
		c.drop = func(m consensus.Message) bool {
			return m.Type == consensus.MsgAccepted && m.From != 1 && int(m.From) <= voters-(k-1)
		}
	}
	acceptFrom(q2 - 1)
	c.propose(1, "short")
	c.stabilize()
	slot := c.nodes[1].prop.next - 1
	if c.nodes[1].log.commit >= slot {
		t.Fatalf("slot %d decided with %d acceptances, below the quorum of %d", slot, q2-1, q2)
	}
	acceptFrom(q2)
	c.propose(1, "full")
	c.stabilize()
	if c.nodes[1].log.commit >= slot {
		t.Fatalf("decided prefix %d passed the undecided slot %d", c.nodes[1].log.commit, slot)
	}
	if _, ok := c.nodes[1].log.decided[slot+1]; !ok {
		t.Fatalf("slot %d not decided with a quorum of %d acceptances", slot+1, q2)
	}
	if !c.nodes[1].lrn.has(slot, voters) || c.nodes[1].lrn.has(slot, 2) {
		t.Fatalf("votes of slot %d miscounted", slot)
	}
	// Heartbeats resend the Accepts of the short slot; one more
	// acceptance decides both.
	c.tick(1)
	if c.nodes[1].log.commit < slot+1 {
		t.Fatalf("slots %d and %d not decided with %d acceptances (commit %d)", slot, slot+1, q2, c.nodes[1].log.commit)
	}
	c.drop = nil
	c.tick(2)
	if v := c.checkAgreement(); v[slot] != "short" || v[slot+1] != "full" {
		t.Fatalf("decided %q and %q, want short and full", v[slot], v[slot+1])
	}
}
