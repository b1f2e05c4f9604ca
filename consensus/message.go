package consensus

import (
	"fmt"
	"strconv"
)

// MessageType is the kind of a Message. The set is the union of the Raft and
// Paxos protocols; each engine ignores (with ErrUnknownMessage) the other's.
// Values are part of the wire format and never change.
type MessageType uint8

const (
	// Local messages: never sent over the wire, fed to Step by the engine
	// itself or its runtime.
	MsgHup    MessageType = 0 // start an election now
	MsgBeat   MessageType = 1 // leader: send heartbeats now
	MsgProp   MessageType = 2 // a proposal; also forwarded follower → leader
	MsgUnused MessageType = 3

	// Raft.
	MsgApp            MessageType = 10 // append entries (leader → follower)
	MsgAppResp        MessageType = 11
	MsgVote           MessageType = 12 // request vote
	MsgVoteResp       MessageType = 13
	MsgPreVote        MessageType = 14 // would you vote for me? (no term change)
	MsgPreVoteResp    MessageType = 15
	MsgSnap           MessageType = 16 // install snapshot (meta only from the core)
	MsgHeartbeat      MessageType = 17
	MsgHeartbeatResp  MessageType = 18
	MsgTimeoutNow     MessageType = 19 // leadership transfer: campaign at once
	MsgReadIndex      MessageType = 20 // follower → leader read request
	MsgReadIndexResp  MessageType = 21
	MsgTransferLeader MessageType = 22 // forwarded transfer request

	// Paxos.
	MsgPrepare  MessageType = 40 // phase 1a
	MsgPromise  MessageType = 41 // phase 1b
	MsgAccept   MessageType = 42 // phase 2a
	MsgAccepted MessageType = 43 // phase 2b
	MsgDecide   MessageType = 44 // learner catch-up: chosen values
	MsgNack     MessageType = 45 // a higher ballot was promised
	// MsgDecideResp answers MsgDecide: the member's decided prefix and the
	// read round it confirms, or a rejection (a higher ballot promised).
	MsgDecideResp MessageType = 46
)

var msgNames = map[MessageType]string{
	MsgHup: "MsgHup", MsgBeat: "MsgBeat", MsgProp: "MsgProp",
	MsgApp: "MsgApp", MsgAppResp: "MsgAppResp", MsgVote: "MsgVote", MsgVoteResp: "MsgVoteResp",
	MsgPreVote: "MsgPreVote", MsgPreVoteResp: "MsgPreVoteResp", MsgSnap: "MsgSnap",
	MsgHeartbeat: "MsgHeartbeat", MsgHeartbeatResp: "MsgHeartbeatResp", MsgTimeoutNow: "MsgTimeoutNow",
	MsgReadIndex: "MsgReadIndex", MsgReadIndexResp: "MsgReadIndexResp", MsgTransferLeader: "MsgTransferLeader",
	MsgPrepare: "MsgPrepare", MsgPromise: "MsgPromise", MsgAccept: "MsgAccept", MsgAccepted: "MsgAccepted",
	MsgDecide: "MsgDecide", MsgNack: "MsgNack", MsgDecideResp: "MsgDecideResp",
}

func (t MessageType) String() string {
	if s, ok := msgNames[t]; ok {
		return s
	}
	return "MessageType(" + strconv.Itoa(int(t)) + ")"
}

// Known reports whether t is a defined message type.
func (t MessageType) Known() bool { _, ok := msgNames[t]; return ok }

// IsLocal reports whether t is a message an engine feeds itself and that never
// crosses the wire.
func (t MessageType) IsLocal() bool { return t == MsgHup || t == MsgBeat }

// IsResponse reports whether t answers an earlier message.
func (t MessageType) IsResponse() bool {
	switch t {
	case MsgAppResp, MsgVoteResp, MsgPreVoteResp, MsgHeartbeatResp, MsgReadIndexResp, MsgPromise, MsgAccepted, MsgNack, MsgDecideResp:
		return true
	}
	return false
}

// Message is what engines exchange. Field meanings per type are documented by
// each engine; the common ones are:
//
//   - Epoch: the sender's term (Raft) or ballot (Paxos).
//   - LogEpoch, Index: the log position the message refers to (Raft: the
//     previous entry's term and index of an append; Paxos: a slot).
//   - Entries: log entries carried.
//   - Commit: the sender's commit index.
//   - Reject, RejectHint: a refusal and where the receiver suggests to retry.
//   - Context: opaque bytes (read-request context, campaign kind).
type Message struct {
	Type       MessageType
	From, To   NodeID
	Epoch      uint64
	LogEpoch   uint64
	Index      uint64
	Commit     uint64
	Reject     bool
	RejectHint uint64
	Entries    []Entry
	Snapshot   *Snapshot
	Context    []byte
}

func (m Message) String() string {
	s := fmt.Sprintf("%s %d->%d e=%d", m.Type, m.From, m.To, m.Epoch)
	if m.LogEpoch != 0 || m.Index != 0 {
		s += fmt.Sprintf(" log=%d/%d", m.LogEpoch, m.Index)
	}
	if m.Commit != 0 {
		s += fmt.Sprintf(" commit=%d", m.Commit)
	}
	if m.Reject {
		s += fmt.Sprintf(" rejected(hint=%d)", m.RejectHint)
	}
	if len(m.Entries) > 0 {
		s += fmt.Sprintf(" entries=%v", m.Entries)
	}
	if m.Snapshot != nil {
		s += fmt.Sprintf(" snap=%d/%d", m.Snapshot.Meta.Index, m.Snapshot.Meta.Epoch)
	}
	return s
}

// Size is the number of bytes m accounts for in flow-control limits.
func (m *Message) Size() uint64 {
	n := uint64(64 + len(m.Context))
	for i := range m.Entries {
		n += m.Entries[i].Size()
	}
	if m.Snapshot != nil {
		n += uint64(len(m.Snapshot.Data))
	}
	return n
}
