package core

import (
	"fmt"
	"time"
)

// Cluster is a running three-node cluster of one engine whose leader is
// known and has applied an entry of its own term.
type Cluster interface {
	// Run proposes payload n times on the leader with at most window
	// proposals proposed and not yet applied by the leader, and returns
	// once the leader has applied all n.
	Run(n, window int, payload []byte) error
	// Close stops the cluster and frees what it holds.
	Close()
}

// Engine names an engine and builds a cluster of it.
type Engine struct {
	Name string
	New  func() (Cluster, error)
}

// Engines is every engine the benchmarks compare, ballot's first. The
// names are stable: benchall matches on them to compute ratios.
var Engines = []Engine{
	{Name: "ballot-raft", New: newBallotRaft},
	// ballot-paxos: the Multi-Paxos engine behind the same
	// consensus.Engine contract and the same driver as ballot-raft.
	{Name: "ballot-paxos", New: newBallotPaxos},
	{Name: "etcd-raft", New: newEtcdRaft},
	{Name: "hashicorp-raft", New: newHashicorpRaft},
}

// Limits shared by every engine that has the knob, so that none is held to
// a tighter flow control than another. They are ballot's and etcd's
// defaults, except MaxUncommittedBytes which is large enough for 1024
// proposals of 4 KiB in flight.
const (
	maxSizePerMsg       = 1 << 20
	maxInflightMsgs     = 256
	maxInflightBytes    = 32 << 20
	maxUncommittedBytes = 64 << 20
	// compactEvery is how many applied entries a node lets its log grow
	// by before it compacts, as a runtime taking snapshots would.
	compactEvery = 8192
	// stallRounds bounds the rounds a driver runs without the leader
	// applying anything before it gives up with an error.
	stallRounds = 100000
	// electionRounds bounds the rounds spent electing the first leader.
	electionRounds = 10000
	// hashicorpTimeout bounds one hashicorp Apply and its election.
	hashicorpTimeout = 30 * time.Second
)

// errStall is returned when a driver makes no progress.
func errStall(name string, applied, want int) error {
	return fmt.Errorf("%s: stalled after %d of %d proposals applied", name, applied, want)
}
