package paxos

import (
	"fmt"

	"github.com/ballotdb/ballot/consensus"
)

// Config configures one Multi-Paxos engine. Zero limits take the defaults
// below; Validate names the field of any bad value.
type Config struct {
	// ID is this node's ID: never None, never reused. Its ballot tag (the
	// ID if below 1<<24, else a fold of it; see ballotTag) is packed into
	// its ballots.
	ID consensus.NodeID

	// ElectionTick is the base leader-failure timeout in ticks: a voter
	// that hears no leader for a timeout drawn uniformly from
	// [ElectionTick, 2*ElectionTick) starts phase 1. Default 10.
	ElectionTick int
	// HeartbeatTick is the leader's Decide interval in ticks; less than
	// ElectionTick. Default 1.
	HeartbeatTick int
	// Seed seeds this node's timeout randomness, the only randomness the
	// engine draws. Nodes must not share a seed.
	Seed uint64

	// Phase1Quorum and Phase2Quorum are the quorum sizes of phase 1
	// (prepare) and phase 2 (accept). Zero Phase2Quorum is a majority;
	// zero Phase1Quorum is the smallest that intersects every phase-2
	// quorum (N - Q2 + 1). Every configuration must have Q1 + Q2 > N and
	// Q2 <= N.
	Phase1Quorum, Phase2Quorum int

	// DisableProposalForwarding makes followers refuse proposals with
	// ErrNotLeader instead of forwarding them to the leader.
	DisableProposalForwarding bool

	// MaxSizePerMsg bounds the entry bytes of one Accept, Promise page or
	// Decide; a message always carries at least one entry. Default 1 MiB.
	MaxSizePerMsg uint64
	// MaxEntrySize bounds one proposal. Default MaxSizePerMsg.
	MaxEntrySize uint64
	// MaxInflightSlots bounds how far past the decided prefix the leader
	// proposes. Default 256.
	MaxInflightSlots int
	// MaxPendingProposals bounds proposals waiting for a slot; beyond it
	// Propose fails with ErrProposalDropped. Default 4096.
	MaxPendingProposals int
	// MaxCommittedSizePerReady bounds the bytes of committed entries in one
	// Ready. Default 16 MiB.
	MaxCommittedSizePerReady uint64
	// MaxPendingReadIndex bounds reads awaiting confirmation. Default 4096.
	MaxPendingReadIndex int

	// Knobs switch on deliberately broken behaviour, for the simulator's
	// tests only.
	Knobs *TestingKnobs
}

// TestingKnobs are deliberately broken variants of the protocol. Never set
// outside tests.
type TestingKnobs struct {
	// ForgetPromiseOnRestart: the acceptor comes back from a restart
	// without the ballot it promised.
	ForgetPromiseOnRestart bool
	// IgnoreAcceptedValues: the proposer disregards the values promises
	// report and proposes no-ops (or new commands) in their slots.
	IgnoreAcceptedValues bool
	// TruncateSuffixOnAccept: the acceptor drops every slot after the last
	// one of each Accept it takes.
	TruncateSuffixOnAccept bool
	// OmitDecidedThrough: a compacted acceptor answers prepare with the
	// entries it still holds but without "decided through" or a snapshot.
	OmitDecidedThrough bool
}

const (
	defaultElectionTick     = 10
	defaultHeartbeatTick    = 1
	defaultMaxSizePerMsg    = 1 << 20
	defaultMaxInflightSlots = 256
	defaultMaxPendingProps  = 4096
	defaultMaxCommittedSize = 16 << 20
	defaultMaxPendingReads  = 4096
	// nodeBits is how many low bits of a ballot hold the node ID.
	nodeBits = 24
)

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
	if c.MaxEntrySize == 0 {
		c.MaxEntrySize = c.MaxSizePerMsg
	}
	if c.MaxInflightSlots == 0 {
		c.MaxInflightSlots = defaultMaxInflightSlots
	}
	if c.MaxPendingProposals == 0 {
		c.MaxPendingProposals = defaultMaxPendingProps
	}
	if c.MaxCommittedSizePerReady == 0 {
		c.MaxCommittedSizePerReady = defaultMaxCommittedSize
	}
	if c.MaxPendingReadIndex == 0 {
		c.MaxPendingReadIndex = defaultMaxPendingReads
	}
	return c
}

// Validate reports the first bad field of c (after defaults), by name.
func (c Config) Validate() error {
	c = c.withDefaults()
	switch {
	case c.ID == consensus.None:
		return fmt.Errorf("paxos: Config.ID must not be 0 (None)")
	case c.ElectionTick < 0 || c.HeartbeatTick < 0:
		return fmt.Errorf("paxos: Config.ElectionTick and Config.HeartbeatTick must be positive")
	case c.HeartbeatTick >= c.ElectionTick:
		return fmt.Errorf("paxos: Config.HeartbeatTick (%d) must be less than Config.ElectionTick (%d)", c.HeartbeatTick, c.ElectionTick)
	case c.Phase1Quorum < 0 || c.Phase2Quorum < 0:
		return fmt.Errorf("paxos: Config.Phase1Quorum and Config.Phase2Quorum must not be negative")
	case c.MaxInflightSlots < 0 || c.MaxPendingProposals < 0 || c.MaxPendingReadIndex < 0:
		return fmt.Errorf("paxos: Config.MaxInflightSlots, MaxPendingProposals and MaxPendingReadIndex must be positive")
	}
	return nil
}

// quorums returns the phase-1 and phase-2 quorum sizes for n voters.
func (c *Config) quorums(n int) (q1, q2 int) {
	q2 = c.Phase2Quorum
	if q2 == 0 {
		q2 = n/2 + 1
	}
	q1 = c.Phase1Quorum
	if q1 == 0 {
		q1 = n - q2 + 1
	}
	return q1, q2
}

// checkQuorums reports whether n voters can decide with the configured
// quorum sizes: Q1 + Q2 > N (every phase-1 quorum meets every phase-2
// quorum) and both fit in N.
func (c *Config) checkQuorums(n int) error {
	q1, q2 := c.quorums(n)
	switch {
	case n == 0:
		return fmt.Errorf("paxos: a configuration needs at least one voter")
	case q1+q2 <= n:
		return fmt.Errorf("paxos: quorums Q1=%d + Q2=%d must exceed the %d voters", q1, q2, n)
	case q1 > n || q2 > n:
		return fmt.Errorf("paxos: quorums Q1=%d, Q2=%d exceed the %d voters", q1, q2, n)
	}
	return nil
}
