package sim

import (
	"fmt"
	"sort"
	"strings"

	"github.com/ballotdb/ballot/consensus"
	"github.com/ballotdb/ballot/paxos"
	"github.com/ballotdb/ballot/raft"
)

// Variant is a deliberately broken variant of the protocol or of the runtime
// that drives it. The simulator must catch every one within its seed budget;
// the tests prove it does.
type Variant string

const (
	// Correct is the protocol as written.
	Correct Variant = ""
	// CommitPriorTerm lets a leader commit an earlier term's entry by
	// counting replicas (the Figure 8 hazard). Engine knob.
	CommitPriorTerm Variant = "commit-prior-term"
	// VoteWithoutLogCheck grants votes without the up-to-date check
	// (§5.4.1). Engine knob.
	VoteWithoutLogCheck Variant = "vote-without-log-check"
	// ReadIndexBeforeNoop serves ReadIndex before the leader's no-op of its
	// term commits. Engine knob.
	ReadIndexBeforeNoop Variant = "readindex-before-noop"
	// SendBeforePersist sends a Ready's messages (and applies and advances)
	// before its entries and HardState are durable. Runtime bug.
	SendBeforePersist Variant = "send-before-persist"
	// ForgetVote restarts nodes without the vote they gave. Runtime bug.
	ForgetVote Variant = "forget-vote"
	// StaleCommit restarts nodes from an older durable commit index than
	// the latest (a WAL replay that keeps the first HardState record, not
	// the last). Runtime bug.
	StaleCommit Variant = "stale-commit"
	// NeverHeal keeps the network partitioned in the liveness phase: the
	// liveness checker must notice the cluster cannot make progress.
	NeverHeal Variant = "never-heal"

	// ForgetPromise restarts Paxos acceptors without the ballot they
	// promised. Engine knob (paxos).
	ForgetPromise Variant = "forget-promise"
	// IgnoreAccepted makes a Paxos proposer disregard the values its
	// phase-1 promises report. Engine knob (paxos).
	IgnoreAccepted Variant = "ignore-accepted"
	// TruncateSuffix makes a Paxos acceptor drop the slots after the ones
	// it accepts. Engine knob (paxos).
	TruncateSuffix Variant = "truncate-suffix"
	// OmitDecidedThrough makes a compacted Paxos acceptor answer prepare
	// without "decided through slot k" (and without its snapshot). Engine
	// knob (paxos).
	OmitDecidedThrough Variant = "omit-decided-through"
)

// Variants lists every broken variant, for the command line and the tests.
var Variants = []Variant{CommitPriorTerm, VoteWithoutLogCheck, ReadIndexBeforeNoop, SendBeforePersist, ForgetVote, StaleCommit, NeverHeal,
	ForgetPromise, IgnoreAccepted, TruncateSuffix, OmitDecidedThrough}

// engineOf names the engine an engine-knob variant belongs to; runtime and
// world variants ("") apply to every engine.
var engineOf = map[Variant]string{
	CommitPriorTerm: "raft", VoteWithoutLogCheck: "raft", ReadIndexBeforeNoop: "raft",
	ForgetPromise: "paxos", IgnoreAccepted: "paxos", TruncateSuffix: "paxos", OmitDecidedThrough: "paxos",
}

// CheckVariant reports an error when v is a knob of another engine than
// engine, where it would silently do nothing.
func CheckVariant(engine string, v Variant) error {
	if e := engineOf[v]; e != "" && e != engine {
		return fmt.Errorf("sim: broken variant %q is a %s knob; it does nothing on engine %q", v, e, engine)
	}
	return nil
}

// ParseVariant turns a name into a Variant.
func ParseVariant(s string) (Variant, error) {
	if s == "" || s == "none" {
		return Correct, nil
	}
	for _, v := range Variants {
		if string(v) == s {
			return v, nil
		}
	}
	names := make([]string, len(Variants))
	for i, v := range Variants {
		names[i] = string(v)
	}
	return Correct, fmt.Errorf("sim: unknown broken variant %q (known: %s)", s, strings.Join(names, ", "))
}

// EngineConfig is what the simulator tells an engine factory about one node.
type EngineConfig struct {
	ID consensus.NodeID
	// Seed is this node's own seed, derived from the run seed and the node
	// ID, so no two nodes share election timeouts.
	Seed uint64
	// ElectionTicks and HeartbeatTicks are the timeouts in ticks.
	ElectionTicks, HeartbeatTicks int
	// Flavor picks among the engine's optional features (PreVote,
	// CheckQuorum, ...), fixed per run by the run seed.
	Flavor uint64
	// Variant is the broken variant to switch on, if it is the engine's.
	Variant Variant
	// Nodes is the run's initial cluster size.
	Nodes int
}

// EngineFactory builds an engine for one node from its stable storage.
type EngineFactory func(cfg EngineConfig, st consensus.InitialState) (consensus.Engine, error)

// Engines are the engines the simulator can drive, by name.
var Engines = map[string]EngineFactory{
	"raft":  newRaft,
	"paxos": newPaxos,
}

// logMatchingEngines are the engines whose logs obey Raft's log matching and
// leader completeness properties, and whose entries carry the epoch they
// were committed in on every node. Paxos logs do not: an acceptor holds
// whatever each slot's latest ballot sent it, and one decided value may be
// learned under different ballots on different nodes. For those engines the
// simulator checks agreement on (type, data) and the state after it.
var logMatchingEngines = map[string]bool{"raft": true}

// EngineNames lists the registered engines, sorted.
func EngineNames() []string {
	names := make([]string, 0, len(Engines))
	for n := range Engines {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// RaftFlavor describes which optional Raft features a flavor turns on.
func RaftFlavor(flavor uint64) (preVote, checkQuorum bool) {
	// Three runs in four have each feature on.
	return flavor%4 != 0, (flavor/4)%4 != 0
}

func newRaft(ec EngineConfig, st consensus.InitialState) (consensus.Engine, error) {
	preVote, checkQuorum := RaftFlavor(ec.Flavor)
	cfg := raft.Config{
		ID: ec.ID, ElectionTick: ec.ElectionTicks, HeartbeatTick: ec.HeartbeatTicks, Seed: ec.Seed,
		PreVote: preVote, CheckQuorum: checkQuorum,
		// Small limits, so flow control, message splitting and
		// back-pressure are exercised.
		MaxSizePerMsg:             512,
		MaxEntrySize:              256,
		MaxInflightMsgs:           8,
		MaxInflightBytes:          8 << 10,
		MaxUncommittedEntriesSize: 64 << 10,
		MaxCommittedSizePerReady:  1 << 10,
		MaxPendingReadIndex:       64,
	}
	if (ec.Flavor/16)%3 != 0 {
		// One entry per append: acknowledgements then land between
		// the entries of a term, which is where the Figure 8 hazard lives.
		cfg.MaxSizePerMsg = 1
	}
	k := &raft.TestingKnobs{}
	switch ec.Variant {
	case CommitPriorTerm:
		k.CommitPriorTermByCounting = true
	case VoteWithoutLogCheck:
		k.GrantVoteWithoutLogCheck = true
	case ReadIndexBeforeNoop:
		k.ReadIndexBeforeNoopCommit = true
	}
	if *k != (raft.TestingKnobs{}) {
		cfg.Knobs = k
	}
	return raft.New(cfg, st)
}

// PaxosFlavor describes which optional Paxos features a flavor turns on:
// flexible quorums (a phase-2 quorum below a majority, so phase 1 needs
// more) for clusters of five or more.
func PaxosFlavor(flavor uint64, nodes int) (phase2Quorum int) {
	if nodes >= 5 && flavor%3 == 0 {
		return nodes / 2
	}
	return 0
}

func newPaxos(ec EngineConfig, st consensus.InitialState) (consensus.Engine, error) {
	cfg := paxos.Config{
		ID: ec.ID, ElectionTick: ec.ElectionTicks, HeartbeatTick: ec.HeartbeatTicks, Seed: ec.Seed,
		Phase2Quorum: PaxosFlavor(ec.Flavor, ec.Nodes),
		// Small limits, so paging, message splitting and back-pressure
		// are exercised.
		MaxSizePerMsg:            512,
		MaxEntrySize:             256,
		MaxInflightSlots:         32,
		MaxPendingProposals:      256,
		MaxCommittedSizePerReady: 1 << 10,
		MaxPendingReadIndex:      64,
	}
	if (ec.Flavor/16)%3 != 0 {
		cfg.MaxSizePerMsg = 1 // one slot per message: promises are paged slot by slot
	}
	k := &paxos.TestingKnobs{}
	switch ec.Variant {
	case ForgetPromise:
		k.ForgetPromiseOnRestart = true
	case IgnoreAccepted:
		k.IgnoreAcceptedValues = true
	case TruncateSuffix:
		k.TruncateSuffixOnAccept = true
	case OmitDecidedThrough:
		k.OmitDecidedThrough = true
	}
	if *k != (paxos.TestingKnobs{}) {
		cfg.Knobs = k
	}
	return paxos.New(cfg, st)
}

// nodeSeed derives a node's own seed from the run seed (splitmix64), so that
// one seed fixes the run and no two nodes draw the same timeouts.
func nodeSeed(run uint64, id consensus.NodeID) uint64 {
	z := run + uint64(id)*0x9e3779b97f4a7c15
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// groupSeed derives group num's seed from the run seed, from which its
// nodes' seeds are derived in turn. The first group's is the run seed
// itself, so a single-group run draws what it always drew.
func groupSeed(run uint64, num int) uint64 {
	if num <= 1 {
		return run
	}
	return nodeSeed(run^0x6a09e667f3bcc909, consensus.NodeID(num))
}
