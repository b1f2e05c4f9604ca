package raft

import (
	"fmt"

	"github.com/ballotdb/ballot/consensus"
)

// ReadOnlyOption selects how ReadIndex requests are confirmed.
type ReadOnlyOption uint8

const (
	// ReadOnlySafe confirms each read with a round of heartbeats acknowledged
	// by a quorum after the read arrived (Raft thesis §6.4). The default.
	ReadOnlySafe ReadOnlyOption = iota
	// ReadOnlyLeaseBased serves reads from the leader's lease without a
	// round trip. It requires CheckQuorum and assumes that the clocks of the
	// members advance at the same rate within a bounded drift: a leader
	// believes its lease for an election timeout after it last heard from a
	// quorum, and no other node can be elected before its own election
	// timeout passes. A paused process or a skewed tick rate breaks this, so
	// it is an opt-in. The lease is void during a leadership transfer.
	ReadOnlyLeaseBased
)

// Config configures one Raft engine. Zero limits take the defaults below;
// Validate names the field of any bad value.
type Config struct {
	// ID is this node's ID; never None, never reused.
	ID consensus.NodeID

	// ElectionTick is the base election timeout in ticks. A follower that
	// hears no leader for a timeout drawn uniformly from
	// [ElectionTick, 2*ElectionTick) campaigns. Default 10.
	ElectionTick int
	// HeartbeatTick is the leader's heartbeat interval in ticks; it must be
	// less than ElectionTick. Default 1.
	HeartbeatTick int

	// Seed seeds this node's election-timeout randomness. Each node must be
	// given its own seed: nodes with identical seeds draw identical timeouts
	// and keep splitting votes. The engine draws no other randomness.
	Seed uint64

	// PreVote runs a pre-election that changes no term, so a node rejoining
	// after a partition cannot disrupt a working leader (thesis §9.6).
	PreVote bool
	// CheckQuorum makes a leader step down when it has not heard from a
	// quorum for an election timeout, and makes followers that heard from a
	// leader within the timeout ignore vote requests (leader stickiness).
	CheckQuorum bool
	// ReadOnly selects how ReadIndex is confirmed; see ReadOnlyOption.
	ReadOnly ReadOnlyOption
	// DisableProposalForwarding makes followers refuse proposals with
	// ErrNotLeader instead of forwarding them to the leader.
	DisableProposalForwarding bool

	// MaxSizePerMsg bounds the bytes of entries in one append. Default 1 MiB.
	MaxSizePerMsg uint64
	// MaxInflightMsgs bounds appends in flight to one follower. Default 256.
	MaxInflightMsgs int
	// MaxInflightBytes bounds entry bytes in flight to one follower.
	// Default 32 MiB.
	MaxInflightBytes uint64
	// MaxUncommittedEntriesSize bounds the bytes of entries the leader holds
	// uncommitted; proposals beyond it fail with ErrProposalDropped.
	// Default 64 MiB.
	MaxUncommittedEntriesSize uint64
	// MaxCommittedSizePerReady bounds the bytes of committed entries in one
	// Ready. Default 16 MiB.
	MaxCommittedSizePerReady uint64
	// MaxPendingReadIndex bounds ReadIndex requests awaiting confirmation;
	// beyond it ReadIndex fails with ErrProposalDropped. Default 4096.
	MaxPendingReadIndex int
	// MaxEntrySize bounds one proposal's bytes; larger ones fail with
	// ErrTooLarge. Default MaxSizePerMsg.
	MaxEntrySize uint64

	// Knobs switch on deliberately broken behaviour. Only tests set them,
	// to prove that the simulator's checkers catch each broken variant.
	Knobs *TestingKnobs
}

// TestingKnobs are deliberately broken variants of the protocol. Never set
// outside tests.
type TestingKnobs struct {
	// CommitPriorTermByCounting lets a leader commit entries of earlier terms
	// by counting replicas (the Figure 8 hazard).
	CommitPriorTermByCounting bool
	// GrantVoteWithoutLogCheck grants votes without the up-to-date check
	// (§5.4.1).
	GrantVoteWithoutLogCheck bool
	// ReadIndexBeforeNoopCommit serves ReadIndex before the leader's no-op of
	// its term is committed.
	ReadIndexBeforeNoopCommit bool
}

const (
	defaultElectionTick     = 10
	defaultHeartbeatTick    = 1
	defaultMaxSizePerMsg    = 1 << 20
	defaultMaxInflightMsgs  = 256
	defaultMaxInflightBytes = 32 << 20
	defaultMaxUncommitted   = 64 << 20
	defaultMaxCommittedSize = 16 << 20
	defaultMaxPendingReads  = 4096
)

// withDefaults returns c with zero limits set to their defaults.
func (c Config) withDefaults() Config {
	if c.ElectionTick == 0 {
		c.ElectionTick = defaultElectionTick
	}
	if c.HeartbeatTick == 0 {
		c.HeartbeatTick = defaultHeartbeatTick
	}
	if c.MaxSizePerMsg == 0 {
		c.MaxSizePerMsg = defaultMaxSizePerMsg
	}
	if c.MaxInflightMsgs == 0 {
		c.MaxInflightMsgs = defaultMaxInflightMsgs
	}
	if c.MaxInflightBytes == 0 {
		c.MaxInflightBytes = defaultMaxInflightBytes
	}
	if c.MaxUncommittedEntriesSize == 0 {
		c.MaxUncommittedEntriesSize = defaultMaxUncommitted
	}
	if c.MaxCommittedSizePerReady == 0 {
		c.MaxCommittedSizePerReady = defaultMaxCommittedSize
	}
	if c.MaxPendingReadIndex == 0 {
		c.MaxPendingReadIndex = defaultMaxPendingReads
	}
	if c.MaxEntrySize == 0 {
		c.MaxEntrySize = c.MaxSizePerMsg
	}
	return c
}

// Validate reports the first bad field of c (after defaults), by name.
func (c Config) Validate() error {
	c = c.withDefaults()
	switch {
	case c.ID == consensus.None:
		return fmt.Errorf("raft: Config.ID must not be 0 (None)")
	case c.ElectionTick < 0 || c.HeartbeatTick < 0:
		return fmt.Errorf("raft: Config.ElectionTick and Config.HeartbeatTick must be positive")
	case c.HeartbeatTick >= c.ElectionTick:
		return fmt.Errorf("raft: Config.HeartbeatTick (%d) must be less than Config.ElectionTick (%d)", c.HeartbeatTick, c.ElectionTick)
	case c.MaxInflightMsgs < 0:
		return fmt.Errorf("raft: Config.MaxInflightMsgs must be positive, got %d", c.MaxInflightMsgs)
	case c.MaxPendingReadIndex < 0:
		return fmt.Errorf("raft: Config.MaxPendingReadIndex must be positive, got %d", c.MaxPendingReadIndex)
	case c.MaxInflightBytes < c.MaxSizePerMsg:
		return fmt.Errorf("raft: Config.MaxInflightBytes (%d) must be at least Config.MaxSizePerMsg (%d)", c.MaxInflightBytes, c.MaxSizePerMsg)
	case c.MaxEntrySize > c.MaxUncommittedEntriesSize:
		return fmt.Errorf("raft: Config.MaxEntrySize (%d) must not exceed Config.MaxUncommittedEntriesSize (%d)", c.MaxEntrySize, c.MaxUncommittedEntriesSize)
	case c.ReadOnly == ReadOnlyLeaseBased && !c.CheckQuorum:
		return fmt.Errorf("raft: Config.ReadOnly=ReadOnlyLeaseBased requires Config.CheckQuorum")
	case c.ReadOnly > ReadOnlyLeaseBased:
		return fmt.Errorf("raft: Config.ReadOnly has unknown value %d", c.ReadOnly)
	}
	return nil
}
