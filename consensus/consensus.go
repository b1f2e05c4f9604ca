// Package consensus is the contract every ballot consensus engine implements
// and every runtime drives: the shared types (NodeID, Entry, Message,
// HardState, ConfState, Snapshot, Ready, Status), the Engine interface, and
// their compact binary encoding.
//
// An Engine is a pure state machine. It starts no goroutines, reads no clock,
// does no I/O and draws no randomness of its own: time arrives as Tick, input
// as Step, and output leaves as a Ready that the caller persists, sends and
// applies, then hands back with Advance. That is what lets one seeded
// simulator (package sim) replay any run exactly, and what lets the same
// runtime (package node) drive Raft or Multi-Paxos.
//
// Nothing here is Raft-only. An entry's Epoch is the Raft term or the Paxos
// ballot it was written under; a Message's type set is the union of both
// protocols' messages.
//
// # Driving an engine
//
//	for {
//		select {
//		case <-ticker: e.Tick()
//		case m := <-inbox: e.Step(m)
//		}
//		for e.HasReady() {
//			rd := e.Ready()
//			persist(rd.Snapshot, rd.Truncate, rd.Entries, rd.HardState) // durable first
//			send(rd.Messages)                                         // only then
//			applied = apply(rd.Committed)                              // in order
//			e.Advance(applied)
//		}
//	}
//
// The order inside one Ready is the durability contract: the snapshot, the
// truncation, the entries and the HardState are on stable storage before any
// message of the same Ready leaves the process.
package consensus

import (
	"errors"
	"fmt"
	"strconv"
)

// NodeID names a member of a group. IDs are never reused: a removed node's ID
// stays retired forever. Zero is None.
type NodeID uint64

// None is the zero NodeID: no node (no vote, no known leader).
const None NodeID = 0

func (id NodeID) String() string { return strconv.FormatUint(uint64(id), 10) }

// EntryType says how an entry's Data is to be read.
type EntryType uint8

const (
	// EntryNormal carries an application command in Data.
	EntryNormal EntryType = 0
	// EntryNoop opens a leader's term (Raft) or fills a hole (Paxos). It has
	// no Data and the application skips it, but it still occupies an index.
	EntryNoop EntryType = 1
	// EntryConfChange carries an encoded ConfChange in Data.
	EntryConfChange EntryType = 2
)

func (t EntryType) String() string {
	switch t {
	case EntryNormal:
		return "normal"
	case EntryNoop:
		return "noop"
	case EntryConfChange:
		return "confchange"
	}
	return "EntryType(" + strconv.Itoa(int(t)) + ")"
}

// Entry is one slot of the replicated log.
type Entry struct {
	Index uint64    // position in the log, from 1
	Epoch uint64    // the Raft term or Paxos ballot the entry was written under
	Type  EntryType // how to read Data
	Data  []byte    // the command; nil for EntryNoop
}

// Size is the number of bytes the entry accounts for in flow-control limits.
func (e *Entry) Size() uint64 { return uint64(len(e.Data)) + 24 }

func (e Entry) String() string {
	return fmt.Sprintf("%d/%d %s %dB", e.Index, e.Epoch, e.Type, len(e.Data))
}

// HardState is what an engine must find again after a crash: the epoch it has
// reached, the vote (or promise) it gave in that epoch, and how far it knows
// the log to be committed.
type HardState struct {
	Epoch  uint64 // Raft: current term. Paxos: highest ballot promised.
	Vote   NodeID // Raft: the candidate voted for in Epoch, or None.
	Commit uint64 // highest index known committed
}

// IsEmpty reports whether h is the zero HardState.
func (h HardState) IsEmpty() bool { return h == HardState{} }

// ConfState is a group's membership. Outside joint consensus VotersOutgoing is
// empty. During a joint configuration decisions need a majority of Voters
// and, separately, a majority of VotersOutgoing.
type ConfState struct {
	Voters         []NodeID // the incoming (or only) voter set
	VotersOutgoing []NodeID // the outgoing voter set while joint; else empty
	Learners       []NodeID // non-voting members that receive the log
	// LearnersNext are voters of the outgoing configuration that become
	// learners when the joint configuration is left.
	LearnersNext []NodeID
	// AutoLeave says the engine leaves the joint configuration on its own once
	// the entry that entered it is applied.
	AutoLeave bool
}

// Joint reports whether cs is a joint configuration.
func (cs ConfState) Joint() bool { return len(cs.VotersOutgoing) > 0 }

// IsVoter reports whether id votes in either half of cs.
func (cs ConfState) IsVoter(id NodeID) bool {
	return contains(cs.Voters, id) || contains(cs.VotersOutgoing, id)
}

// IsLearner reports whether id is a learner in cs.
func (cs ConfState) IsLearner(id NodeID) bool { return contains(cs.Learners, id) }

// IsMember reports whether id is a voter or learner in cs.
func (cs ConfState) IsMember(id NodeID) bool { return cs.IsVoter(id) || cs.IsLearner(id) }

// Members returns every voter and learner of cs, each once.
func (cs ConfState) Members() []NodeID {
	var out []NodeID
	for _, set := range [][]NodeID{cs.Voters, cs.VotersOutgoing, cs.Learners, cs.LearnersNext} {
		for _, id := range set {
			if !contains(out, id) {
				out = append(out, id)
			}
		}
	}
	return out
}

// Clone returns a deep copy of cs.
func (cs ConfState) Clone() ConfState {
	cp := func(s []NodeID) []NodeID {
		if len(s) == 0 {
			return nil
		}
		return append([]NodeID(nil), s...)
	}
	return ConfState{cp(cs.Voters), cp(cs.VotersOutgoing), cp(cs.Learners), cp(cs.LearnersNext), cs.AutoLeave}
}

func (cs ConfState) String() string {
	s := fmt.Sprintf("voters=%v", cs.Voters)
	if cs.Joint() {
		s += fmt.Sprintf("&&%v", cs.VotersOutgoing)
	}
	if len(cs.Learners) > 0 {
		s += fmt.Sprintf(" learners=%v", cs.Learners)
	}
	if len(cs.LearnersNext) > 0 {
		s += fmt.Sprintf(" learners_next=%v", cs.LearnersNext)
	}
	if cs.AutoLeave {
		s += " autoleave"
	}
	return s
}

func contains(s []NodeID, id NodeID) bool {
	for _, x := range s {
		if x == id {
			return true
		}
	}
	return false
}

// ConfChangeType is one kind of membership step.
type ConfChangeType uint8

const (
	AddVoter   ConfChangeType = 0 // add a voter, or promote a learner
	AddLearner ConfChangeType = 1 // add a learner, or demote a voter
	RemoveNode ConfChangeType = 2 // remove a voter or learner for good
)

func (t ConfChangeType) String() string {
	switch t {
	case AddVoter:
		return "add-voter"
	case AddLearner:
		return "add-learner"
	case RemoveNode:
		return "remove"
	}
	return "ConfChangeType(" + strconv.Itoa(int(t)) + ")"
}

// ConfChangeSingle is one membership step of a ConfChange.
type ConfChangeSingle struct {
	Type   ConfChangeType
	NodeID NodeID
}

// ConfChange is a membership change proposed through the log. A change that
// alters at most one voter is applied directly; any other change enters a
// joint configuration (Raft §6), which the engine leaves on its own once the
// entering entry is applied. A ConfChange with no Changes leaves a joint
// configuration explicitly.
type ConfChange struct {
	Changes []ConfChangeSingle
	Context []byte // opaque to the engine; handed back with the applied entry
}

// LeaveJoint reports whether cc is the empty change that leaves a joint
// configuration.
func (cc ConfChange) LeaveJoint() bool { return len(cc.Changes) == 0 }

// SnapshotMeta says which prefix of the log a snapshot replaces.
type SnapshotMeta struct {
	Index     uint64    // last index included in the snapshot
	Epoch     uint64    // epoch of the entry at Index
	ConfState ConfState // membership as of Index
}

// Snapshot is a state-machine image with its metadata. Engines produce and
// consume only the metadata; Data is filled in by the runtime, which streams
// it in chunks, and handed to the application to install.
type Snapshot struct {
	Meta SnapshotMeta
	Data []byte
}

// IsEmpty reports whether s holds no snapshot.
func (s *Snapshot) IsEmpty() bool { return s == nil || s.Meta.Index == 0 }

// ReadState confirms a linearizable read: once the application has applied up
// to Index, it may serve the read that was requested with RequestCtx.
type ReadState struct {
	Index      uint64
	RequestCtx []byte
}

// Ready is a batch of work the engine hands to its runtime. Its fields must be
// handled in this order:
//
//  1. Snapshot, Truncate/TruncateAfter, Entries, HardState: made durable
//     (written and fsynced), in that order.
//  2. Messages: sent, only after step 1 is durable.
//  3. Committed: applied to the state machine in index order, after step 1.
//     Applying may run concurrently with step 2 and with later Readies, as
//     long as Advance reports only what has really been applied.
//  4. ReadStates: served once the applied index reaches their Index.
//
// Then the Ready is handed back with Advance. Until then the engine produces no
// new Ready.
//
// Ownership: the slices of a Ready belong to the caller until Advance and to
// the engine again after it — an engine may reuse the Messages array for a
// later Ready (raft does), so a caller that keeps messages past Advance
// copies the Message values (the transports queue copies). Entry data and
// the Entries slices are never overwritten once handed out.
type Ready struct {
	// HardState is the new HardState to persist, or the zero value when it is
	// unchanged. Durable before Messages are sent.
	HardState HardState

	// Snapshot, when non-nil, is a snapshot to install: persist it, drop every
	// log entry at or below its Index, and restore the state machine from it
	// before applying any later Committed entry. Durable before Messages.
	Snapshot *Snapshot

	// Truncate, when true, instructs storage to drop every entry with index
	// greater than TruncateAfter. It is separate from Entries: writing an
	// entry at an index replaces only that index and never implies dropping
	// the entries after it (a Paxos acceptor must keep them). Applied before
	// Entries are written. Durable before Messages.
	Truncate      bool
	TruncateAfter uint64

	// Entries are written by index, each replacing any earlier entry at the
	// same index. Durable before Messages are sent.
	Entries []Entry

	// MustSync says whether Entries and HardState need an fsync before
	// Messages may leave (false when only Commit changed, say).
	MustSync bool

	// Committed are entries known committed, in index order, to be applied
	// after the durable parts of this Ready are on disk.
	Committed []Entry

	// Messages are to be sent once the durable parts of this Ready are on
	// stable storage. A MsgSnap carries only Snapshot.Meta: the runtime
	// attaches the data before sending and calls Engine.ReportSnapshot when
	// the transfer ends.
	Messages []Message

	// ReadStates confirm ReadIndex requests (see ReadState).
	ReadStates []ReadState
}

// Empty reports whether rd holds nothing to do.
func (rd *Ready) Empty() bool {
	return rd.HardState.IsEmpty() && rd.Snapshot == nil && !rd.Truncate && len(rd.Entries) == 0 &&
		len(rd.Committed) == 0 && len(rd.Messages) == 0 && len(rd.ReadStates) == 0
}

// Role is a node's part in its group.
type Role uint8

const (
	Follower     Role = 0
	PreCandidate Role = 1
	Candidate    Role = 2
	Leader       Role = 3
	Learner      Role = 4 // a non-voting member receiving the log
)

func (r Role) String() string {
	switch r {
	case Follower:
		return "follower"
	case PreCandidate:
		return "pre-candidate"
	case Candidate:
		return "candidate"
	case Leader:
		return "leader"
	case Learner:
		return "learner"
	}
	return "Role(" + strconv.Itoa(int(r)) + ")"
}

// Progress is the leader's view of one follower.
type Progress struct {
	Match, Next   uint64
	State         string // "probe", "replicate" or "snapshot"
	Inflight      int    // messages in flight
	RecentActive  bool
	IsLearner     bool
	PendingSnapID uint64 // index of the snapshot being sent, in state snapshot
}

// Status is a snapshot of an engine's state for operators and dashboards.
type Status struct {
	ID         NodeID
	Role       Role
	Epoch      uint64
	Vote       NodeID
	Leader     NodeID
	Commit     uint64
	Applied    uint64
	FirstIndex uint64 // first index still in the log (after the snapshot)
	LastIndex  uint64
	ConfState  ConfState
	// LeadTransferee is the target of a leadership transfer under way, or None.
	LeadTransferee NodeID
	// PendingReads counts the ReadIndex requests the leader holds until a
	// quorum confirms its leadership (0 on other roles). They complete only
	// if heartbeat rounds keep going: a runtime that stops ticking an idle
	// group must not stop while any are pending.
	PendingReads int
	// Progress is the per-follower view; only on the leader.
	Progress map[NodeID]Progress
}

// Engine is a pure consensus engine (Raft or Multi-Paxos). It is not safe for
// concurrent use: one goroutine owns it. Each Ready obtained from Ready() must
// be handed back with Advance before the next.
type Engine interface {
	// Tick advances the engine's logical clock by one tick.
	Tick()
	// Step feeds one message received from a peer.
	Step(m Message) error
	// Propose appends data to the log, or forwards it to the leader. A
	// follower that cannot forward returns an error matching ErrNotLeader
	// (use errors.As with *NotLeaderError for the leader hint).
	Propose(data []byte) error
	// ProposeConfChange proposes a membership change.
	ProposeConfChange(cc ConfChange) error
	// ReadIndex requests a linearizable read; rctx comes back in a ReadState.
	ReadIndex(rctx []byte) error
	// TransferLeadership asks the leader to hand leadership to target.
	TransferLeadership(target NodeID) error
	// ReportUnreachable tells the engine that sending to peer failed.
	ReportUnreachable(peer NodeID)
	// ReportSnapshot tells the engine whether sending a snapshot to peer
	// succeeded.
	ReportSnapshot(peer NodeID, ok bool)
	// Compact tells the engine that the application holds a snapshot of its
	// state at index (index <= applied): the log at or below index may be
	// dropped and a lagging follower is sent that snapshot.
	Compact(index uint64) error
	// HasReady reports whether Ready would return something to do.
	HasReady() bool
	// Ready returns the pending work. See Ready for the order of handling.
	Ready() Ready
	// Advance hands back the last Ready and reports that the application has
	// applied every committed entry up to and including applied.
	Advance(applied uint64)
	// Status reports the engine's current state.
	Status() Status
}

// Sentinel errors callers branch on with errors.Is.
var (
	// ErrNotLeader: the request needs the leader. The concrete error is a
	// *NotLeaderError carrying the leader hint.
	ErrNotLeader = errors.New("consensus: not the leader")
	// ErrProposalDropped: the proposal was refused (for example during a
	// leadership transfer, or while there is no leader to forward to).
	ErrProposalDropped = errors.New("consensus: proposal dropped")
	// ErrTooLarge: the request is over a configured limit.
	ErrTooLarge = errors.New("consensus: request too large")
	// ErrConfChangePending: another membership change is not yet applied.
	ErrConfChangePending = errors.New("consensus: a configuration change is pending")
	// ErrCompacted: the requested index was compacted away.
	ErrCompacted = errors.New("consensus: index compacted")
	// ErrInvalidConfChange: the membership change is not allowed.
	ErrInvalidConfChange = errors.New("consensus: invalid configuration change")
	// ErrLearnerNotReady (an ErrInvalidConfChange): a learner may be
	// promoted only once it has caught up with the leader.
	ErrLearnerNotReady = fmt.Errorf("%w: learner has not caught up with the leader", ErrInvalidConfChange)
	// ErrIDRemoved (an ErrInvalidConfChange): a removed member's ID is
	// never reused.
	ErrIDRemoved = fmt.Errorf("%w: the node ID was removed and is never reused", ErrInvalidConfChange)
	// ErrTransferInvalid: the leadership transfer target is not allowed.
	ErrTransferInvalid = errors.New("consensus: invalid leadership transfer")
	// ErrUnknownMessage: Step got a message the engine does not understand.
	ErrUnknownMessage = errors.New("consensus: unknown message")
)

// NotLeaderError is returned when a request needs the leader. Leader is the
// current leader hint, or None when no leader is known.
type NotLeaderError struct{ Leader NodeID }

func (e *NotLeaderError) Error() string {
	if e.Leader == None {
		return "consensus: not the leader (leader unknown)"
	}
	return "consensus: not the leader (leader is " + e.Leader.String() + ")"
}

// Is makes errors.Is(err, ErrNotLeader) true.
func (e *NotLeaderError) Is(target error) bool { return target == ErrNotLeader }

// InitialState is what an engine is started from: what the runtime found on
// stable storage, or, for a brand-new member, only the bootstrap membership.
type InitialState struct {
	// HardState as last made durable.
	HardState HardState
	// Snapshot is the metadata of the latest durable snapshot. A new group
	// bootstraps with Snapshot.Index 0 and ConfState set to its initial
	// members; a node joining an existing group starts with an empty
	// ConfState and learns its membership from the leader.
	Snapshot SnapshotMeta
	// Entries are the durable log entries after Snapshot.Index, contiguous.
	Entries []Entry
	// Applied is the index the state machine has already applied (at least
	// Snapshot.Index); committed entries after it are delivered again.
	Applied uint64
}
