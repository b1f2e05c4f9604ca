// Package chaos is ballot's answer to Jepsen: it runs real ballot
// processes, injects faults with a seeded nemesis, records what concurrent
// clients were told, and checks it.
//
// # What runs
//
// A cluster of `ballot serve` processes on loopback, or (Options.Containers)
// one container per member on a private Docker network. On processes, peer
// traffic between every ordered pair of members passes through a proxy, so
// any direction of any link can be cut (ballot's peer connections are
// one-way: each member dials the others for what it sends); in containers
// the cut is a packet filter rule in the receiver's network namespace.
//
// # Nemesis
//
// One fault at a time, on a schedule drawn from the seed: kill -9 a member
// (half the time the leader) and restart it on its data directory; SIGSTOP
// a member for longer than an election timeout, then SIGCONT; partitions —
// isolate the leader, split a majority from a minority, two halves bridged
// by one member, or one-way loss where a member hears no one; fill a
// member's file system (each member's data directory then lives on its own
// loop-mounted ext4 image; processes and root only) and free it again; run
// a member's clock 2–4× fast or slow (a binary built with -tags chaosclock,
// whose node.RateClock reads its rate from a file in the data directory).
// A nemesis that cannot run here is skipped loudly (Report.Skipped).
//
// # Sharded clusters
//
// With Options.Shards every member runs `serve --shards N`. Partitions
// then go through one proxy per host that names the sender from the peer
// transport's handshake (hostproxy.go), since a sharded host takes no
// --unsafe-peer-routes. The split and move nemeses reshape the shard map
// through the shard service on their own schedule, beside the faults, and
// the workloads keep to sharded semantics (see keyspace in sharded.go):
// watches on a prefix no split cuts, leases homed in their keys' shard,
// recipes' leases homed by shard.LeaseKeyHeader.
//
// # Workloads and checks
//
//   - register: clients pinned to members do reads, writes, compare-and-
//     swaps and deletes on a few keys (fresh keys every five seconds, so each
//     key's history stays short); the history is checked with porcupine
//     against a per-key register model. A write whose outcome is unknown may
//     take effect at any time after its call; a porcupine Unknown (checker
//     timeout) is a failure, not a pass. A failing history is saved with
//     porcupine's HTML visualization and the nemesis schedule.
//   - set: unique keys added throughout; every acknowledged add must be
//     present once all faults heal.
//   - watch: one watcher per member from revision 1; events must never go
//     back or repeat, every watcher's sequence must be a prefix of the
//     longest, and replaying it must give the final state.
//   - lease: holders grant short leases, attach a key to each, keep some
//     alive and abandon others at a recorded time. No lease may be seen
//     expired (its key's deletion, a keep-alive answered "not found", or
//     gone from LeaseLeases) before the invoke time of its last
//     acknowledged keep-alive plus the TTL answered; once faults heal, every
//     abandoned lease must be gone within TTL and a bound, and every kept
//     one present.
//   - bank: transfers between accounts (cross-shard transactions in a
//     sharded run) by compare-and-swap Txns that log their IDs in both
//     accounts, and full reads of every account in one Txn. Every full read
//     and the final state hold the opening total and show each transfer
//     applied to both accounts or neither; every acknowledged transfer is
//     applied, no refused one.
//   - no member may exit except by the nemesis.
//
// The checkers bite: Options.Unsafe switches on deliberately broken builds
// (stale-reads: linearizable reads served from local state; early-ack:
// writes acknowledged before they commit; lease-early-expiry: leases
// expired at half their TTL), and the tests show each is caught.
package chaos
