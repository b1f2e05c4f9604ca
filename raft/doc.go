// Package raft is ballot's pure Raft engine: leader election with PreVote and
// CheckQuorum, log replication with flow control, the Figure 8 commit rule,
// snapshots, joint-consensus membership with learners, leadership transfer
// and ReadIndex. It implements consensus.Engine.
//
// The engine starts no goroutines, reads no clock, does no I/O and draws no
// randomness beyond the seed in its Config. Construct it with New from what
// the runtime found on disk, then drive it as package consensus describes.
package raft
