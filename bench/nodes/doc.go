// Package nodes compares consensus runtimes as an application embeds them:
// three members in one process, each with its own data directory on the OS
// file system with fsync on, talking over loopback TCP. Concurrent
// proposers submit 256-byte commands to the leader; an operation is one
// proposal from the call until the leader has committed and applied it.
//
// The runtimes are ballot's node package (its WAL and TCP transport, Raft
// engine) and hashicorp/raft with raft-boltdb (BoltDB, fsync on every
// append batch) and its NetworkTransport over TCP. Both are used with
// their defaults, as a user gets them.
//
// etcd-io/raft has no runtime to compare at this level: it ships neither
// a log store nor a transport. The runtime around it that users run is
// etcd's own server (its WAL, rafthttp and the apply loop), which the
// service-level benchmark (package service) measures against ballot's
// server through the same client; see BENCHMARKS.md.
package nodes
