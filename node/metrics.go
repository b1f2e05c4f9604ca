package node

import (
	"errors"
	"time"

	"github.com/ballotdb/ballot/consensus"
)

// Observer is told what the node does, for metrics and dashboards
// (package metrics and package web implement it; the node imports
// neither). Its methods are called synchronously on the node's own
// goroutines — the engine goroutine, the persister, the snapshotter and
// the transport's receiving goroutines — so each must return at once:
// never block, never call back into the Node, and drop (and count) what
// it cannot keep up with. Slices handed to it are the node's: read them
// during the call, never keep or change them.
//
// Embed NopObserver to implement only some methods.
type Observer interface {
	// MessageSent is called for each message handed to the transport.
	MessageSent(m consensus.Message)
	// MessageReceived is called for each message from a peer that was
	// queued for the engine.
	MessageReceived(m consensus.Message)
	// MessageDropped is called for each message the node dropped:
	// DropInboxFull (received, inbox full) or DropSnapshotBusy (a
	// snapshot to send while another was being prepared).
	MessageDropped(m consensus.Message, reason string)
	// StatusChanged is called on the engine goroutine when the role,
	// term or leader changed.
	StatusChanged(c StatusChange)
	// WALWritten is called by the persister after each WAL write and its
	// fsync, with the entries it held.
	WALWritten(w WALWrite)
	// SnapshotSaved is called when a snapshot was made durable: a local
	// one, or one received from the leader.
	SnapshotSaved(s SnapshotSave)
	// ProposalDone is called once for each proposal made on this node:
	// err is nil when it was applied, otherwise why it failed (ErrBusy,
	// the caller gave up, the engine refused it, the node stopped).
	ProposalDone(err error)
	// MembershipChanged is called on the engine goroutine when an
	// applied membership change altered the membership.
	MembershipChanged(index uint64, cs consensus.ConfState)
}

// Reasons given to Observer.MessageDropped.
const (
	DropInboxFull    = "inbox_full"
	DropSnapshotBusy = "snapshot_busy"
)

// StatusChange is a change of role, term or leader.
type StatusChange struct {
	ID                 consensus.NodeID
	Role, PrevRole     consensus.Role
	Term, PrevTerm     uint64
	Leader, PrevLeader consensus.NodeID
}

// WALWrite is one WAL write, fsync included.
type WALWrite struct {
	Duration time.Duration
	// Bytes counts the entries' sizes (consensus.Entry.Size).
	Bytes   uint64
	Entries []consensus.Entry // do not keep
	// Truncate says entries after TruncateAfter were dropped first.
	Truncate      bool
	TruncateAfter uint64
	Err           error
}

// SnapshotSave is a snapshot made durable.
type SnapshotSave struct {
	Index, Term uint64
	Bytes       int
	Duration    time.Duration
	FromLeader  bool // received from the leader, not taken here
}

// ErrAbandoned is what Observer.ProposalDone reports for a proposal whose
// caller stopped waiting (its context ended) before it settled.
var ErrAbandoned = errors.New("node: proposal abandoned by its caller")

// NopObserver observes nothing; embed it to implement part of Observer.
type NopObserver struct{}

func (NopObserver) MessageSent(consensus.Message)                 {}
func (NopObserver) MessageReceived(consensus.Message)             {}
func (NopObserver) MessageDropped(consensus.Message, string)      {}
func (NopObserver) StatusChanged(StatusChange)                    {}
func (NopObserver) WALWritten(WALWrite)                           {}
func (NopObserver) SnapshotSaved(SnapshotSave)                    {}
func (NopObserver) ProposalDone(error)                            {}
func (NopObserver) MembershipChanged(uint64, consensus.ConfState) {}

// Observers returns one Observer that tells each of obs, in order (nil ones
// are skipped).
func Observers(obs ...Observer) Observer {
	var m multiObserver
	for _, o := range obs {
		if o != nil {
			m = append(m, o)
		}
	}
	switch len(m) {
	case 0:
		return NopObserver{}
	case 1:
		return m[0]
	}
	return m
}

type multiObserver []Observer

func (o multiObserver) each(fn func(Observer)) {
	for _, x := range o {
		fn(x)
	}
}

func (o multiObserver) MessageSent(m consensus.Message) {
	o.each(func(x Observer) { x.MessageSent(m) })
}
func (o multiObserver) MessageReceived(m consensus.Message) {
	o.each(func(x Observer) { x.MessageReceived(m) })
}
func (o multiObserver) MessageDropped(m consensus.Message, r string) {
	o.each(func(x Observer) { x.MessageDropped(m, r) })
}
func (o multiObserver) StatusChanged(c StatusChange) { o.each(func(x Observer) { x.StatusChanged(c) }) }
func (o multiObserver) WALWritten(w WALWrite)        { o.each(func(x Observer) { x.WALWritten(w) }) }
func (o multiObserver) SnapshotSaved(s SnapshotSave) { o.each(func(x Observer) { x.SnapshotSaved(s) }) }
func (o multiObserver) ProposalDone(err error)       { o.each(func(x Observer) { x.ProposalDone(err) }) }
func (o multiObserver) MembershipChanged(i uint64, cs consensus.ConfState) {
	o.each(func(x Observer) { x.MembershipChanged(i, cs) })
}

// PendingProposals returns how many proposals made on this node wait for
// their outcome.
func (n *Node) PendingProposals() int { return n.props.len() }

// LastStatus returns the status the engine goroutine published last (every
// tick and after every Ready), without asking the engine: cheap enough for
// every scrape. Applied is the state machine's.
func (n *Node) LastStatus() consensus.Status {
	st := *n.lastStatus.Load()
	st.Applied = n.applied.Load()
	return st
}

// entriesBytes is the size of entries as the WAL metrics count it.
func entriesBytes(ents []consensus.Entry) uint64 {
	var s uint64
	for i := range ents {
		s += ents[i].Size()
	}
	return s
}
