// Package core drives consensus engines in-process, side by side: three
// nodes each, no disk, an in-memory network, and the same workload for all
// of them — propose n payloads of one size with at most window of them in
// flight, and count a proposal done when the leader has applied it.
//
// The engines are ballot's Raft and Multi-Paxos (through the one
// consensus.Engine contract), etcd-io/raft's RawNode with its MemoryStorage,
// and hashicorp/raft with its InmemStore and InmemTransport. The pure cores
// (ballot's and etcd's) are driven by one goroutine that handles every
// node's Ready in contract order and delivers the messages by hand, so what
// is measured is the consensus logic alone; hashicorp/raft runs its own
// goroutines and cannot be driven that way, so it is measured as a user
// sees it: Apply futures, waited for in order.
//
// Adding an engine is one entry in Engines. BenchmarkCore (core_test.go)
// runs every engine for every payload and window; the sub-benchmarks of one
// payload and window sit next to each other so that the ratios between
// engines are measured back to back in the same process.
package core
