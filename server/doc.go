// Package server is ballot's etcd-compatible service: the etcd v3 gRPC
// API (KV, Watch, Lease, Cluster, Maintenance; not Auth) served by one
// member, with writes replicated through a node.Node (on Raft or
// Multi-Paxos) and applied to the kv MVCC store. Membership is in
// members.go, alarms and the quota in alarm.go and quota.go, the
// consistency check in corrupt.go, TLS and the shared client port in
// tls.go and listen.go.
//
// # The client port
//
// One listener serves gRPC and etcd's JSON gateway (POST /v3/kv/range and
// the rest, etcd's own generated grpc-gateway handlers with etcd's JSON
// settings), in plain text or, with Config.TLS, over TLS with optional
// client-certificate authentication. Each new connection is classified
// once (listen.go): gRPC clients get grpc.Server's own transport, HTTP
// clients net/http and the gateway, which calls the same grpc.Server over
// an in-memory connection. Certificate files are read again, at most once
// a second, when they change (tls.go).
//
// # Requests
//
// Writes (Put, DeleteRange, Txn with writes, Compact, lease grant and
// revoke) are validated as etcd's API layer validates them, encoded as an
// etcdserverpb.InternalRaftRequest and proposed; a follower's proposal is
// forwarded to the leader by the node runtime, and the caller gets the
// store's response once the entry is applied on this member. Linearizable
// reads (Range, read-only Txn, lease queries) wait on a ReadIndex read
// barrier, then read local state; serializable reads read local state at
// once. Errors are etcd's gRPC errors (codes and messages from
// go.etcd.io/etcd/api/v3/v3rpc/rpctypes), so clientv3 and etcdctl react to
// them as they do against etcd.
//
// # Leases
//
// The leader alone expires leases (see lessor), by proposing their
// revocation; keep-alives sent to a follower are relayed through the log.
// A new leader gives every lease a fresh TTL.
//
// # Watches
//
// See watch.go: apply never waits for a watcher; slow watchers catch up
// from the store's history; a watcher behind a compaction is cancelled
// with the compact revision, never left with a silent gap.
package server
