// Package synod is single-decree Paxos (the Synod protocol): a group of
// acceptors chooses at most one value, proposed by any number of proposers,
// and learners find out which. It is ballot's tool for one-off decisions
// and the starting point for reading package paxos.
//
// Like the engines, it is pure: no goroutines, no clock, no I/O, no
// randomness. Each role takes a Message and returns the Messages to send.
// An Acceptor's durable record (AcceptorState) must be on stable storage
// before any message it returned leaves the process.
//
// # The protocol
//
// A ballot is a pair (round, node), ordered by round then node, so no two
// proposers ever use the same ballot.
//
//	phase 1a  proposer → acceptors  Prepare(b)
//	phase 1b  acceptor → proposer   Promise(b, accepted ballot, accepted value)
//	          (the acceptor promises to take part in no ballot below b)
//	phase 2a  proposer → acceptors  Accept(b, v), where v is the value of the
//	          highest-ballot acceptance reported by a quorum of promises, or
//	          the proposer's own value if none of them accepted anything
//	phase 2b  acceptor → learners   Accepted(b, v), unless it promised a
//	          higher ballot meanwhile
//
// A value is chosen once a quorum of acceptors accepted it in the same
// ballot. Any two quorums intersect, so a later ballot's phase 1 meets an
// acceptor that accepted the chosen value, and the highest-ballot rule makes
// the later proposer propose that same value again.
//
// # From Synod to Multi-Paxos
//
// A replicated log is an unbounded sequence of Synod instances, one per
// slot. Multi-Paxos (package paxos) makes three observations. First, a
// promise can cover every slot at once: phase 1 for ballot b is run once,
// from the proposer's first unchosen slot onwards, and each promise reports
// what the acceptor accepted in all those slots. Second, as long as that
// proposer (the distinguished proposer, or leader) keeps its ballot, it runs
// only phase 2, one round trip per slot, for many slots in flight and
// several slots per message. Third, the slots the promises reported are
// re-proposed with the highest-ballot values and the slots nobody reported
// below the highest reported one (holes) are filled with no-ops, so the log
// has no gaps and can be applied in order. Everything else — leader failure
// detection, catch-up of slow learners, snapshots and "decided through slot
// k" answers from acceptors that compacted their log, reconfiguration — is
// engineering around those three steps.
package synod

import (
	"bytes"
	"fmt"
	"slices"
)

// NodeID names a proposer, acceptor or learner. Zero is no node.
type NodeID uint64

// Ballot is a (round, node) pair. The zero Ballot is below every real one
// and means "nothing".
type Ballot struct {
	Round uint64
	Node  NodeID
}

// Less orders ballots by round, then by node.
func (b Ballot) Less(o Ballot) bool {
	return b.Round < o.Round || (b.Round == o.Round && b.Node < o.Node)
}

// IsZero reports whether b is the zero Ballot.
func (b Ballot) IsZero() bool { return b == Ballot{} }

func (b Ballot) String() string { return fmt.Sprintf("(%d,%d)", b.Round, b.Node) }

// MsgType is the kind of a Message.
type MsgType uint8

const (
	Prepare  MsgType = iota // 1a
	Promise                 // 1b
	Accept                  // 2a
	Accepted                // 2b
	Nack                    // the acceptor promised a higher ballot
)

func (t MsgType) String() string {
	return [...]string{"Prepare", "Promise", "Accept", "Accepted", "Nack"}[t]
}

// Message is what the roles exchange. Ballot is the ballot the message is
// about; in a Promise, VBallot and Value are the acceptor's last acceptance
// (zero and nil when it accepted nothing); in a Nack, Ballot is the higher
// ballot the acceptor promised.
type Message struct {
	Type     MsgType
	From, To NodeID
	Ballot   Ballot
	VBallot  Ballot
	Value    []byte
}

func (m Message) String() string {
	return fmt.Sprintf("%s %d->%d b=%s vb=%s v=%q", m.Type, m.From, m.To, m.Ballot, m.VBallot, m.Value)
}

// AcceptorState is an acceptor's durable record: the highest ballot it
// promised and its last acceptance. It must reach stable storage before any
// reply the acceptor produced in the same step is sent.
type AcceptorState struct {
	Promised Ballot
	Accepted Ballot
	Value    []byte
}

// Acceptor is one voter of the Synod protocol.
type Acceptor struct {
	id       NodeID
	learners []NodeID
	st       AcceptorState
}

// NewAcceptor returns an acceptor restored from its durable record (the zero
// AcceptorState for a new one). Accepted messages go to learners.
func NewAcceptor(id NodeID, learners []NodeID, st AcceptorState) *Acceptor {
	return &Acceptor{id: id, learners: slices.Clone(learners), st: st}
}

// State returns the durable record to persist after a Step.
func (a *Acceptor) State() AcceptorState {
	st := a.st
	st.Value = bytes.Clone(st.Value)
	return st
}

// Step handles a Prepare or an Accept and returns the replies, which may
// be sent only once State() is durable.
func (a *Acceptor) Step(m Message) []Message {
	switch m.Type {
	case Prepare:
		if m.Ballot.Less(a.st.Promised) {
			return []Message{{Type: Nack, From: a.id, To: m.From, Ballot: a.st.Promised}}
		}
		a.st.Promised = m.Ballot
		return []Message{{Type: Promise, From: a.id, To: m.From, Ballot: m.Ballot,
			VBallot: a.st.Accepted, Value: bytes.Clone(a.st.Value)}}
	case Accept:
		if m.Ballot.Less(a.st.Promised) {
			return []Message{{Type: Nack, From: a.id, To: m.From, Ballot: a.st.Promised}}
		}
		a.st.Promised, a.st.Accepted, a.st.Value = m.Ballot, m.Ballot, bytes.Clone(m.Value)
		out := make([]Message, 0, len(a.learners)+1)
		for _, l := range a.learners {
			out = append(out, Message{Type: Accepted, From: a.id, To: l, Ballot: m.Ballot, Value: bytes.Clone(m.Value)})
		}
		return out
	}
	return nil
}

// Proposer drives ballots until its value, or one already on its way to
// being chosen, is accepted by a quorum.
type Proposer struct {
	id        NodeID
	acceptors []NodeID
	quorum    int
	value     []byte // what this proposer wants chosen

	ballot   Ballot
	promised map[NodeID]bool
	// best is the highest-ballot acceptance reported by the promises so far.
	best      Ballot
	bestValue []byte
	accepting bool // phase 2 under ballot
	// maxSeen is the highest round seen, so the next ballot exceeds it.
	maxSeen uint64

	// Knobs, for tests that show what goes wrong without a rule.
	IgnoreAccepted bool // propose the own value even if promises report one
}

// NewProposer returns a proposer among acceptors with a majority quorum.
func NewProposer(id NodeID, acceptors []NodeID) *Proposer {
	return &Proposer{id: id, acceptors: slices.Clone(acceptors), quorum: len(acceptors)/2 + 1}
}

// Ballot is the ballot the proposer currently runs.
func (p *Proposer) Ballot() Ballot { return p.ballot }

// Propose starts phase 1 with a ballot above any it has seen, to get value
// (or a value already possibly chosen) chosen. It returns the Prepares.
func (p *Proposer) Propose(value []byte) []Message {
	if value != nil {
		p.value = bytes.Clone(value)
	}
	p.ballot = Ballot{Round: max(p.ballot.Round, p.maxSeen) + 1, Node: p.id}
	p.promised, p.best, p.bestValue, p.accepting = map[NodeID]bool{}, Ballot{}, nil, false
	out := make([]Message, 0, len(p.acceptors))
	for _, a := range p.acceptors {
		out = append(out, Message{Type: Prepare, From: p.id, To: a, Ballot: p.ballot})
	}
	return out
}

// Step handles a Promise or a Nack. Once a quorum promised, it returns the
// Accepts of phase 2. A Nack only records the higher round: the caller
// decides when to try again (with Propose), which is where randomized
// back-off lives in a real system.
func (p *Proposer) Step(m Message) []Message {
	switch m.Type {
	case Nack:
		p.maxSeen = max(p.maxSeen, m.Ballot.Round)
		return nil
	case Promise:
		if m.Ballot != p.ballot || p.accepting || p.promised[m.From] {
			return nil
		}
		p.promised[m.From] = true
		if !m.VBallot.IsZero() && p.best.Less(m.VBallot) {
			p.best, p.bestValue = m.VBallot, bytes.Clone(m.Value)
		}
		if len(p.promised) < p.quorum {
			return nil
		}
		p.accepting = true
		v := p.value
		if !p.best.IsZero() && !p.IgnoreAccepted {
			// The rule that makes Paxos safe: a value that may have
			// been chosen in a lower ballot is proposed again.
			v = p.bestValue
		}
		out := make([]Message, 0, len(p.acceptors))
		for _, a := range p.acceptors {
			out = append(out, Message{Type: Accept, From: p.id, To: a, Ballot: p.ballot, Value: bytes.Clone(v)})
		}
		return out
	}
	return nil
}

// Learner finds out the chosen value from Accepted messages: a value is
// learned only once a quorum of acceptors accepted it in the same ballot.
type Learner struct {
	quorum int
	votes  map[Ballot]map[NodeID]bool
	values map[Ballot][]byte
	chosen []byte
	done   bool
}

// NewLearner returns a learner for a group of n acceptors (majority quorum).
func NewLearner(n int) *Learner {
	return &Learner{quorum: n/2 + 1, votes: map[Ballot]map[NodeID]bool{}, values: map[Ballot][]byte{}}
}

// Step records an Accepted message.
func (l *Learner) Step(m Message) {
	if m.Type != Accepted {
		return
	}
	if l.votes[m.Ballot] == nil {
		l.votes[m.Ballot] = map[NodeID]bool{}
		l.values[m.Ballot] = bytes.Clone(m.Value)
	}
	if !bytes.Equal(l.values[m.Ballot], m.Value) {
		panic(fmt.Sprintf("synod: two values accepted in ballot %s: %q and %q", m.Ballot, l.values[m.Ballot], m.Value))
	}
	l.votes[m.Ballot][m.From] = true
	if len(l.votes[m.Ballot]) >= l.quorum {
		if l.done && !bytes.Equal(l.chosen, m.Value) {
			panic(fmt.Sprintf("synod: learned %q, then %q (agreement broken)", l.chosen, m.Value))
		}
		l.chosen, l.done = bytes.Clone(m.Value), true
	}
}

// Chosen returns the learned value, once there is one.
func (l *Learner) Chosen() ([]byte, bool) { return l.chosen, l.done }
