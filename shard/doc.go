// Package shard runs ballot in sharded mode: the keyspace split into
// shards, each a key range kept by its own consensus group, many groups in
// one process. docs/sharding.md says what sharded mode means for a client
// and how it differs from etcd; this package builds it:
//
//   - Map (map.go): the shard map — shards in key order covering the whole
//     keyspace, each with its members, and a version — kept in the meta
//     group under one key written by compare-and-swap.
//   - Host (host.go): one process with one peer port (a transport.Mux that
//     carries every group's messages over one connection per peer host),
//     the meta group, and a member of each shard. Each member is a whole
//     server.Server with its own WAL directory, given an in-memory client
//     listener; the host uses the same member ID in every group, so the
//     mux needs one address per host.
//   - router (router.go): the etcd v3 API on the host's client port. Each
//     request goes to the shard(s) its keys are in through this host's
//     member, which forwards proposals to its group's leader and confirms
//     reads with ReadIndex as in single-group mode; ranges across shards
//     are split and merged in key order; a shard refuses keys it does not
//     keep (server.ErrGRPCWrongShard), and the router then re-reads the
//     map and retries, so a stale map never reaches the client.
//   - the shard service (service.go): `ballot shard list` over the same
//     port, with JSON bodies.
//
// # Why a whole server per group
//
// The router could call each group's node and store directly; going
// through a server.Server per group instead keeps every single-group rule
// (validation, quotas, alarms, leases, watch semantics, forwarding,
// exactly-once) in one place, so a shard behaves exactly as a one-group
// ballot does, which is what docs/sharding.md promises. The price is one
// in-memory gRPC hop per request, measured in docs/benchmarks.
//
// # Goroutines
//
// Per host: the router's gRPC server, keepMap (stores the initial map,
// then re-reads it every second), and each group's own (see server and
// node). Per Watch or LeaseKeepAlive stream: one reader of the client and
// one relay per shard the stream uses.
package shard
