// Package service compares ballot's etcd-v3 service with etcd itself
// (go.etcd.io/etcd/server/v3, embedded), the way their users meet them:
// clusters of three (and five) members in this process, each member on its
// own data directory on the OS file system with fsync on, on loopback TCP,
// driven by one load generator through etcd's own Go client (clientv3).
//
// Both systems run with their default timing (100 ms ticks/heartbeats, an
// election timeout of about 1 s) and snapshot policy. The load generator
// opens at most maxConns clientv3.Clients per system, each on every
// member's endpoint (clientv3 spreads requests over them), and runs each
// row's clients as goroutines sharing them round-robin, as etcd's own
// benchmark tool shares --conns between --clients.
//
// BenchmarkService measures throughput and p50/p99/p99.9 latency per
// operation; BenchmarkMemory measures the memory a 3-member cluster holds
// for N keys of 256-byte values (run it with -benchtime 1x, one system per
// process, so that neither system's memory is counted against the other).
package service
