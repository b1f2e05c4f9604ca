package node

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/ballotdb/ballot/consensus"
	"github.com/ballotdb/ballot/paxos"
	"github.com/ballotdb/ballot/raft"
	"github.com/ballotdb/ballot/transport"
	"github.com/ballotdb/ballot/vfs"
)

// Config configures a Node. Zero values take the defaults named on each
// field; Start refuses a bad value with an error naming the field.
type Config struct {
	// ID is this member's ID: never 0, never reused after a removal.
	ID consensus.NodeID
	// ClusterID names the group. It is written into the data directory
	// and every peer connection: a data directory or a peer of another
	// cluster is refused. Never 0.
	ClusterID uint64

	// Peers maps member IDs to peer addresses (host:port). On an empty
	// data directory without Join they are the initial voters, and must
	// include ID. Afterwards the membership recorded on disk wins: Peers
	// then only tells the transport where those members are (overriding
	// addresses learned from the log for the IDs it names).
	Peers map[consensus.NodeID]string
	// Join starts an empty data directory with no membership: the node
	// waits to be added (AddLearner on the leader) and learns the
	// membership from the leader's log or snapshot. Peers then lists the
	// members to accept connections from. Ignored when the data directory
	// holds state.
	Join bool
	// ForceNewCluster turns the data directory's state into a one-member
	// group of this node, keeping all its data: disaster recovery when a
	// majority of the members is lost for good (see forceNewCluster). Use
	// it once, then restart without it and add new members.
	ForceNewCluster bool

	// DataDir holds the write-ahead log (DataDir/wal) and snapshots
	// (DataDir/snap). Required.
	DataDir string
	// FS is the file system for DataDir. Default vfs.Default (the OS).
	FS vfs.FS
	// WALSegmentBytes is the preallocated size of each WAL segment.
	// Default wal.DefaultSegmentBytes.
	WALSegmentBytes int64

	// Listen accepts peer connections for the TCP transport (tests pass
	// one bound to 127.0.0.1:0). The node owns it and closes it on Stop.
	// Exactly one of Listen and NewTransport must be set.
	Listen net.Listener
	// TLS secures peer connections with mutual TLS (TCP transport only).
	TLS *transport.TLSConfig
	// NewTransport replaces the TCP transport, for example with an
	// in-memory twin: it is called once with the node's handler. The node
	// closes the transport on Stop.
	NewTransport func(h transport.Handler) (transport.Transport, error)

	// TickInterval is the length of one engine tick. Default 100 ms.
	TickInterval time.Duration
	// ElectionTicks is the election timeout in ticks. Default 10.
	ElectionTicks int
	// HeartbeatTicks is the heartbeat interval in ticks; less than
	// ElectionTicks. Default 1.
	HeartbeatTicks int
	// Seed seeds this member's election randomness. 0 draws one from
	// crypto/rand at Start; tests set it to replay a run. Members must
	// never share a seed.
	Seed uint64

	// SnapshotEntries and SnapshotBytes trigger an automatic snapshot
	// (and the log compaction after it) once that many entries, or bytes
	// of entry data, were applied since the last one.
	// Defaults 10000 and 64 MiB.
	SnapshotEntries uint64
	SnapshotBytes   uint64

	// MaxPendingProposals bounds proposals (and, separately, reads)
	// waiting for their outcome; beyond it Propose fails with ErrBusy.
	// Default 1024.
	MaxPendingProposals int
	// FsyncStallTimeout bounds how long a leader waits on its own WAL
	// fsync before handing leadership to an up-to-date follower. Default:
	// the election timeout.
	FsyncStallTimeout time.Duration

	// EngineKind picks the default engine when Engine is nil: EngineRaft
	// (the default) or EnginePaxos.
	EngineKind EngineKind
	// Engine builds the consensus engine. Default: the EngineKind's, Raft
	// with PreVote and CheckQuorum, or Multi-Paxos.
	Engine func(EngineConfig, consensus.InitialState) (consensus.Engine, error)
	// RecvQueue bounds the messages received from peers waiting for the
	// engine loop; beyond it they are dropped (and counted), as a lossy
	// network would. Default 4096; a host of many groups passes less.
	RecvQueue int
	// WrapEngine, when set, wraps the engine the node drives (after
	// Engine built it): a host of many groups wraps each in a quiescer
	// that stops ticking an idle group (see shard/quiesce.go).
	WrapEngine func(consensus.Engine) consensus.Engine
	// Logger receives the node's logs, with stable keys node, term,
	// index, peer, err. Default: discard.
	Logger *slog.Logger
	// Clock is the source of ticks. Default: the real monotonic clock.
	Clock Clock
	// Observer is told what the node does, for metrics and dashboards
	// (see Observer: it must never block). Default: none.
	Observer Observer

	// knobs are test-only behaviours.
	knobs testingKnobs
}

// EngineKind names a consensus engine.
type EngineKind string

const (
	EngineRaft  EngineKind = "raft"  // package raft
	EnginePaxos EngineKind = "paxos" // package paxos
)

// EngineConfig is what the node tells an engine factory.
type EngineConfig struct {
	ID             consensus.NodeID
	ElectionTicks  int
	HeartbeatTicks int
	Seed           uint64
}

// testingKnobs change the node's behaviour for tests only.
type testingKnobs struct {
	// retryEveryTick re-proposes every pending proposal on every tick,
	// leader or not, to exercise duplicate suppression.
	retryEveryTick bool
}

const (
	defaultTickInterval        = 100 * time.Millisecond
	defaultElectionTicks       = 10
	defaultHeartbeatTicks      = 1
	defaultSnapshotEntries     = 10000
	defaultSnapshotBytes       = 64 << 20
	defaultMaxPendingProposals = 1024
)

// withDefaults returns c with zero values replaced by defaults.
func (c Config) withDefaults() Config {
	if c.FS == nil {
		c.FS = vfs.Default
	}
	if c.TickInterval == 0 {
		c.TickInterval = defaultTickInterval
	}
	if c.ElectionTicks == 0 {
		c.ElectionTicks = defaultElectionTicks
	}
	if c.HeartbeatTicks == 0 {
		c.HeartbeatTicks = defaultHeartbeatTicks
	}
	if c.SnapshotEntries == 0 {
		c.SnapshotEntries = defaultSnapshotEntries
	}
	if c.SnapshotBytes == 0 {
		c.SnapshotBytes = defaultSnapshotBytes
	}
	if c.MaxPendingProposals == 0 {
		c.MaxPendingProposals = defaultMaxPendingProposals
	}
	if c.FsyncStallTimeout == 0 {
		c.FsyncStallTimeout = time.Duration(c.ElectionTicks) * c.TickInterval
	}
	if c.EngineKind == "" {
		c.EngineKind = EngineRaft
	}
	if c.Engine == nil {
		c.Engine = newRaft
		if c.EngineKind == EnginePaxos {
			c.Engine = newPaxos
		}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Clock == nil {
		c.Clock = realClock{}
	}
	if c.Observer == nil {
		c.Observer = NopObserver{}
	}
	return c
}

// Validate reports the first bad field of c (after defaults), by name.
func (c Config) Validate() error {
	c = c.withDefaults()
	switch {
	case c.ID == consensus.None:
		return errors.New("node: Config.ID must not be 0")
	case c.ClusterID == 0:
		return errors.New("node: Config.ClusterID must not be 0")
	case c.DataDir == "":
		return errors.New("node: Config.DataDir is required")
	case c.Listen == nil && c.NewTransport == nil:
		return errors.New("node: one of Config.Listen and Config.NewTransport is required")
	case c.Listen != nil && c.NewTransport != nil:
		return errors.New("node: Config.Listen and Config.NewTransport are mutually exclusive")
	case c.TLS != nil && c.NewTransport != nil:
		return errors.New("node: Config.TLS applies to the TCP transport only (Config.NewTransport is set)")
	case c.TickInterval < 0:
		return fmt.Errorf("node: Config.TickInterval must be positive, got %v", c.TickInterval)
	case c.ElectionTicks < 0 || c.HeartbeatTicks < 0:
		return errors.New("node: Config.ElectionTicks and Config.HeartbeatTicks must be positive")
	case c.HeartbeatTicks >= c.ElectionTicks:
		return fmt.Errorf("node: Config.HeartbeatTicks (%d) must be less than Config.ElectionTicks (%d)", c.HeartbeatTicks, c.ElectionTicks)
	case c.MaxPendingProposals < 0:
		return fmt.Errorf("node: Config.MaxPendingProposals must be positive, got %d", c.MaxPendingProposals)
	case c.FsyncStallTimeout < 0:
		return fmt.Errorf("node: Config.FsyncStallTimeout must be positive, got %v", c.FsyncStallTimeout)
	case c.EngineKind != EngineRaft && c.EngineKind != EnginePaxos:
		return fmt.Errorf("node: Config.EngineKind %q is not %q or %q", c.EngineKind, EngineRaft, EnginePaxos)
	case c.WALSegmentBytes != 0 && c.WALSegmentBytes < 64<<10:
		return fmt.Errorf("node: Config.WALSegmentBytes must be at least 64 KiB, got %d", c.WALSegmentBytes)
	}
	for id, addr := range c.Peers {
		if id == consensus.None {
			return fmt.Errorf("node: Config.Peers has node ID 0 (address %q)", addr)
		}
		if addr == "" && id != c.ID {
			return fmt.Errorf("node: Config.Peers has no address for node %d", id)
		}
	}
	return nil
}

// newRaft is the default engine: Raft with PreVote (a member rejoining after
// a partition cannot disrupt a working leader) and CheckQuorum (a leader cut
// off from a quorum steps down within an election timeout).
func newRaft(ec EngineConfig, st consensus.InitialState) (consensus.Engine, error) {
	return raft.New(raft.Config{
		ID: ec.ID, ElectionTick: ec.ElectionTicks, HeartbeatTick: ec.HeartbeatTicks, Seed: ec.Seed,
		PreVote: true, CheckQuorum: true,
	}, st)
}

// newPaxos is the Multi-Paxos engine with its defaults (majority quorums).
func newPaxos(ec EngineConfig, st consensus.InitialState) (consensus.Engine, error) {
	return paxos.New(paxos.Config{
		ID: ec.ID, ElectionTick: ec.ElectionTicks, HeartbeatTick: ec.HeartbeatTicks, Seed: ec.Seed,
	}, st)
}
