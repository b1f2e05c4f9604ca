package synod

import (
	"bytes"
	"testing"
)

// world is a hand-driven network: tests decide which message arrives when.
type world struct {
	acc      map[NodeID]*Acceptor
	durable  map[NodeID]AcceptorState
	learners map[NodeID]*Learner
}

func newWorld(acceptors []NodeID, learners []NodeID) *world {
	w := &world{acc: map[NodeID]*Acceptor{}, durable: map[NodeID]AcceptorState{}, learners: map[NodeID]*Learner{}}
	for _, id := range acceptors {
		w.acc[id] = NewAcceptor(id, learners, AcceptorState{})
	}
	for _, id := range learners {
		w.learners[id] = NewLearner(len(acceptors))
	}
	return w
}

// toAcceptor delivers m to its acceptor, persists its record, and queues
// the replies (persist before send).
func (w *world) toAcceptor(m Message) []Message {
	a := w.acc[m.To]
	out := a.Step(m)
	w.durable[m.To] = a.State()
	for _, r := range out {
		if l := w.learners[r.To]; l != nil {
			l.Step(r)
		}
	}
	return out
}

// pick returns the messages in ms addressed to one of ids.
func pick(ms []Message, ids ...NodeID) []Message {
	var out []Message
	for _, m := range ms {
		for _, id := range ids {
			if m.To == id {
				out = append(out, m)
			}
		}
	}
	return out
}

func (w *world) run(p *Proposer, ms []Message) []Message {
	var replies []Message
	for _, m := range ms {
		for _, r := range w.toAcceptor(m) {
			if r.To == p.id {
				replies = append(replies, p.Step(r)...)
			}
		}
	}
	return replies
}

func chosen(t *testing.T, l *Learner) []byte {
	t.Helper()
	v, ok := l.Chosen()
	if !ok {
		t.Fatalf("learner has learned nothing")
	}
	return v
}

// TestChooseOne: one proposer, three acceptors: its value is chosen and the
// learner learns it once a quorum accepted.
func TestChooseOne(t *testing.T) {
	w := newWorld([]NodeID{1, 2, 3}, []NodeID{9})
	p := NewProposer(1, []NodeID{1, 2, 3})
	accepts := w.run(p, p.Propose([]byte("A")))
	if len(accepts) != 3 {
		t.Fatalf("want 3 accepts after a quorum of promises, got %v", accepts)
	}
	w.run(p, pick(accepts, 1))
	if _, ok := w.learners[9].Chosen(); ok {
		t.Fatalf("learned after one acceptance of three")
	}
	w.run(p, pick(accepts, 2))
	if v := chosen(t, w.learners[9]); string(v) != "A" {
		t.Fatalf("learned %q, want A", v)
	}
}

// TestDuelingProposers: two proposers preempt each other's ballots (Lamport,
// "Paxos Made Simple" §2.4, the progress hazard); every Accept of a
// preempted ballot is refused, and once one proposer runs undisturbed one
// value is chosen and both proposers' later runs keep it.
func TestDuelingProposers(t *testing.T) {
	acc := []NodeID{1, 2, 3}
	w := newWorld(acc, []NodeID{9})
	p1, p2 := NewProposer(1, acc), NewProposer(2, acc)

	a1 := w.run(p1, p1.Propose([]byte("A"))) // p1 at (1,1) reaches phase 2
	nacks := w.run(p2, p2.Propose([]byte("B")))
	if len(nacks) != 3 { // p2 at (1,2) > (1,1): promised by all, phase 2 ready
		t.Fatalf("p2 should reach phase 2, got %v", nacks)
	}
	// p1's accepts arrive late: all refused.
	for _, m := range a1 {
		for _, r := range w.toAcceptor(m) {
			if r.Type != Nack {
				t.Fatalf("accept of a preempted ballot got %v", r)
			}
			p1.Step(r)
		}
	}
	// p1 retries above everything it saw and preempts p2 in turn.
	a1 = w.run(p1, p1.Propose(nil))
	for _, m := range nacks { // p2's accepts, now late
		for _, r := range w.toAcceptor(m) {
			if r.Type != Nack {
				t.Fatalf("accept of a preempted ballot got %v", r)
			}
		}
	}
	if _, ok := w.learners[9].Chosen(); ok {
		t.Fatalf("something was chosen while the proposers duelled")
	}
	// p1 finally runs undisturbed.
	w.run(p1, a1)
	if v := chosen(t, w.learners[9]); string(v) != "A" {
		t.Fatalf("learned %q, want A", v)
	}
	// p2 tries again: it must adopt A.
	w.run(p2, w.run(p2, p2.Propose([]byte("B"))))
	if v := chosen(t, w.learners[9]); string(v) != "A" {
		t.Fatalf("after p2's retry learned %q, want A", v)
	}
}

// TestAdoptAcceptedValue: A is chosen by acceptors 1 and 2; a second
// proposer whose phase-1 quorum is {2, 3} learns of A from acceptor 2 and
// must propose A, not its own B. With the rule switched off (the
// IgnoreAccepted knob) the learner sees two values chosen.
func TestAdoptAcceptedValue(t *testing.T) {
	for _, ignore := range []bool{false, true} {
		acc := []NodeID{1, 2, 3}
		w := newWorld(acc, []NodeID{9})
		p1, p2 := NewProposer(1, acc), NewProposer(2, acc)
		p2.IgnoreAccepted = ignore
		w.run(p1, pick(w.run(p1, p1.Propose([]byte("A"))), 1, 2))
		if v := chosen(t, w.learners[9]); string(v) != "A" {
			t.Fatalf("learned %q, want A", v)
		}
		prep := p2.Propose([]byte("B"))
		accepts := w.run(p2, pick(prep, 2, 3))
		if len(accepts) == 0 {
			t.Fatalf("p2 did not reach phase 2")
		}
		if got := accepts[0].Value; !ignore && string(got) != "A" {
			t.Fatalf("p2 proposes %q, want the possibly chosen A", got)
		}
		broke := func() (broke bool) {
			defer func() { broke = recover() != nil }()
			w.run(p2, pick(accepts, 2, 3))
			return false
		}()
		if broke != ignore {
			t.Fatalf("ignore=%v: agreement broken=%v", ignore, broke)
		}
	}
}

// TestPromisePersistsAcrossCrash: acceptor 3 promises ballot (1,2), crashes
// and is restored from its durable record; the late Accept of the lower
// ballot (1,1) must still be refused. Restored without the record (as if the
// promise were never persisted), it accepts, and the value p2 chose with
// {2, 3} is contradicted by a quorum {1, 3} for p1's value.
func TestPromisePersistsAcrossCrash(t *testing.T) {
	for _, forget := range []bool{false, true} {
		acc := []NodeID{1, 2, 3}
		w := newWorld(acc, []NodeID{9})
		p1, p2 := NewProposer(1, acc), NewProposer(2, acc)
		a1 := w.run(p1, pick(p1.Propose([]byte("A")), 1, 3)) // p1 promised by {1,3}
		a2 := w.run(p2, pick(p2.Propose([]byte("B")), 2, 3)) // p2 promised by {2,3}: nothing accepted yet
		w.run(p2, pick(a2, 2))                               // B accepted by 2 only
		// Acceptor 3 crashes and restarts.
		st := w.durable[3]
		if forget {
			st = AcceptorState{}
		}
		w.acc[3] = NewAcceptor(3, []NodeID{9}, st)
		replies := w.toAcceptor(pick(a1, 3)[0])
		refused := len(replies) == 1 && replies[0].Type == Nack
		if refused == forget {
			t.Fatalf("forget=%v: late accept of the lower ballot refused=%v", forget, refused)
		}
		w.toAcceptor(pick(a1, 1)[0]) // A accepted by 1: chosen only if 3 accepted it too
		broke := func() (broke bool) {
			defer func() { broke = recover() != nil }()
			w.run(p2, pick(a2, 3)) // B accepted by 3: chosen with {2,3}
			return false
		}()
		if broke != forget {
			t.Fatalf("forget=%v: agreement broken=%v", forget, broke)
		}
		if !forget {
			if v := chosen(t, w.learners[9]); !bytes.Equal(v, []byte("B")) {
				t.Fatalf("learned %q, want B", v)
			}
		}
	}
}

// TestLearnOnlyOnSameBallot: two of three acceptors accepted the same value
// but in different ballots: nothing is learned (a value accepted by a
// quorum across ballots is not necessarily chosen). A second acceptance in
// one ballot is.
func TestLearnOnlyOnSameBallot(t *testing.T) {
	l := NewLearner(3)
	b1, b2 := Ballot{1, 1}, Ballot{2, 2}
	l.Step(Message{Type: Accepted, From: 1, Ballot: b1, Value: []byte("A")})
	l.Step(Message{Type: Accepted, From: 2, Ballot: b2, Value: []byte("A")})
	if _, ok := l.Chosen(); ok {
		t.Fatalf("learned from a quorum split across ballots")
	}
	l.Step(Message{Type: Accepted, From: 2, Ballot: b2, Value: []byte("A")}) // duplicate
	if _, ok := l.Chosen(); ok {
		t.Fatalf("a duplicate counted twice")
	}
	l.Step(Message{Type: Accepted, From: 3, Ballot: b2, Value: []byte("A")})
	if v, ok := l.Chosen(); !ok || string(v) != "A" {
		t.Fatalf("want A learned from {2,3} in %s, got %q %v", b2, v, ok)
	}
}
