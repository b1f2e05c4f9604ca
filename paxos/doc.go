// Package paxos is ballot's pure Multi-Paxos engine. It implements
// consensus.Engine, the contract package raft implements, so the runtime,
// the simulator and the service run on either.
//
// The engine starts no goroutines, reads no clock, does no I/O and draws no
// randomness beyond the seed in its Config. Construct it with New from what
// the runtime found on disk, then drive it as package consensus describes.
//
// # Roles
//
// A Node holds the protocol's three roles, each a type of its own:
//
//   - Acceptor: promises ballots and accepts values slot by slot. Its promise
//     is HardState.Epoch; its acceptances are the log entries (Entry.Epoch is
//     the ballot the value was accepted in). Both are durable through the
//     Ready before any reply leaves: replies travel in the same Ready.
//   - Proposer: when leader failure is detected (no word from a leader for a
//     randomized election timeout), picks a ballot (round, node) above any
//     seen and runs phase 1 once, from its first undecided slot, for all
//     slots; promises are paged under MaxSizePerMsg. It adopts, per slot, the
//     value accepted in the highest ballot any promise reports and fills the
//     holes below the highest reported slot with no-ops. Then it runs phase
//     2 alone, pipelined, several slots per Accept, at most MaxInflightSlots
//     beyond the decided prefix.
//   - Learner: learns a slot once a phase-2 quorum accepted it in the same
//     ballot (on the leader), or from the leader's Decide messages, or from a
//     snapshot once the leader compacted; decided slots are handed out in
//     order as Ready.Committed.
//
// # Storage: Paxos never truncates
//
// An acceptor writes each slot by index and never drops a suffix: accepting
// slot 5 under a new ballot leaves what it accepted in 6, 7, … in place. A
// slot accepted past the end of the log is preceded by placeholder entries
// (Epoch 0, no-op) for the slots in between, meaning "nothing accepted", so
// the log on disk stays dense. HardState.Commit is the decided prefix: every
// entry at or below it holds the decided value.
//
// # Decided through
//
// A promise carries the acceptor's decided prefix in Message.Commit. An
// acceptor that compacted its log below the proposer's first undecided slot
// also sends its snapshot. The proposer proposes nothing until it has learned
// every slot some promise reported decided, so it never re-proposes a chosen
// slot as a no-op.
//
// # Reconfiguration
//
// Membership changes go through the log. The configuration of slot s is the
// one after every conf change in slots below s — the alpha scheme with
// alpha = 1 — and the leader proposes nothing after a conf-change slot until
// that slot is decided. So the configuration of every slot in flight is
// known; the stall costs one round trip per change, instead of limiting the
// pipeline to alpha slots at all times. When a change is decided, the leader
// extends phase 1 (same ballot) until a phase-1 quorum of the new
// configuration has promised before proposing more. Because the
// configuration is per slot, any change is one step: there is no joint
// configuration, and ConfState.VotersOutgoing is always empty.
//
// # Reads
//
// ReadIndex is answered by the leader: it notes the highest slot it has
// proposed (or will re-propose), then sends a round of Decide heartbeats;
// once acceptors forming a phase-2 quorum answered one sent after the read
// arrived, without having promised a higher ballot, no other ballot can have
// completed phase 1 before the read arrived (a phase-1 quorum meets every
// phase-2 quorum), and the ReadState is released with that slot as Index.
//
// # Performance
//
// The leader's hot path does work in proportion to the slots it moves, not
// to the window in flight or the log. Slots in flight live in rings indexed
// by slot (the Proposer's proposals, the Learner's votes: a bit per acceptor
// and a popcount per quorum check) that drop the decided prefix from the
// front and reuse their buffers; there are no per-slot maps. Proposals
// arriving between two Readies go out as one Accept per voter: the next run
// of slots extends the Accepts still waiting for the Ready instead of adding
// a message per voter per proposal, and the messages to every voter share
// one array of proposed slots that is appended to, never written over. A
// proposal on the leader is queued from the stack. Each decided slot is sent
// to a member once, as it is decided; the heartbeat resends from the
// member's reported decided prefix, so a lost Decide costs a heartbeat, not
// a resend of the member's whole lag with every later decision. Decided
// slots are never written again, so Ready.Committed and Decide messages
// share the log's array instead of copying it (compaction moves the kept
// tail to a new array as long as the log was); only Ready.Entries, whose
// slots may still change, is a copy. The written slots and the in-order
// decided prefix need no sets: a run of increasing indexes and a counter
// cover the usual case.
//
// # Flexible quorums
//
// Config.Phase2Quorum (and Phase1Quorum) set the quorum sizes, with
// Q1 + Q2 > N checked by New and by ProposeConfChange for each
// configuration (Howard et al., "Flexible Paxos").
package paxos
