// Package sim is ballot's deterministic simulator: it drives several
// consensus engines (any consensus.Engine, chosen by name from Engines)
// through a hostile virtual world and checks every invariant after every
// step. One seed fixes the whole run, so every failure replays exactly.
//
// # The world
//
//   - Virtual time: ten time units make one engine tick. There is no clock
//     and no goroutine in a run; Sweep runs independent seeds in parallel.
//   - One seeded RNG (PCG) for the world and one for the network; each
//     node's engine gets its own seed derived from the run seed and its ID
//     (identical seeds would give identical election timeouts).
//   - A network that drops, delays (1–8 units, some messages up to 60
//     more, which reorders them), duplicates, and cuts links: symmetric
//     splits, an isolated node (often the leader), one-way links, a bridge
//     node that sees both halves, random asymmetric cuts. A link cut while a
//     message is in flight loses it; a lost snapshot is reported to its
//     sender as a transport would.
//   - Disks: each Ready's writes (snapshot, truncation, entries by index,
//     HardState) are applied to the node's view at once but become durable
//     only at a sync a few units later, and only then are its messages
//     sent and its committed entries applied (the contract in package
//     consensus). A crash keeps a random prefix of the unsynced writes: the
//     torn tail a WAL repairs. Application snapshots are taken every
//     10–50 applied entries and the engine compacts its log under them.
//   - A nemesis, scaled per run (intensity 1–4): crashes (a third restart
//     at once, as under a supervisor), crashes aimed between a write and
//     its sync and right after a vote, partitions of every shape, flaky
//     periods, and in half the runs leader churn: a new leader is crashed or
//     isolated at once or within a few ticks, which leaves logs that differ
//     in their last terms (the ground of the Figure 8 hazard).
//   - Membership changes during the faults: add a learner (a new node,
//     IDs never reused), promote it (sometimes swapping a voter out in the
//     same change: joint consensus), demote a voter, remove voters
//     (including the leader) and learners. Leadership transfers too.
//   - Four clients issue puts and linearizable gets (ReadIndex) on three
//     keys throughout, to the leader or any node. A write is acknowledged
//     when the node it was sent to applies it; a write whose node crashed
//     or whose deadline passed has an unknown outcome and may take effect
//     at any later time. The state machine applies each client's sequence
//     once (the network duplicates forwarded proposals).
//
// # Invariants
//
// Checked at the step that could break them (see checker.go): election
// safety, log matching (by induction: an (index, epoch) pair names one entry
// with one predecessor epoch), leader completeness (a node writing an entry
// of epoch e holds every entry committed by an earlier epoch), state
// machine safety (same entry and same state hash at every applied index,
// snapshot installs included), monotonic commit and applied within an
// incarnation and no restart below the durable commit, and at the end
// linearizability of the client history, checked with porcupine, where a
// timeout (Unknown) is a failure. A panic inside an engine (its own
// invariant checks) is reported as a violation of the run, not a crash.
//
// # Engines
//
// Options.Engine picks "raft" (the default) or "paxos". Both face the same
// world and the same clients. Log matching and leader completeness are
// Raft properties and are checked for Raft only; for Paxos, whose
// acceptors hold whatever each slot's latest ballot sent them and whose
// learners may learn one decided value under different ballots, agreement
// compares the applied value and the state after it, not its epoch. Every
// engine is checked for validity (only a value some client proposed is
// applied), in-order delivery, monotonic progress and linearizability. A
// Paxos node's snapshot install keeps the slots it accepted after the
// snapshot, as the WAL does; the nemesis also aims crashes right after a
// Paxos acceptor's promise to another proposer, the counterpart of a vote.
//
// A run has a safety phase with faults, then a liveness phase: the network
// heals, crashed nodes restart, and within Options.LivenessBound ticks one
// leader must be followed by every running member, everything in its log
// applied everywhere, and a fresh operation of every client completed.
//
// # Multi-group mode
//
// Options.Groups (ballot sim --groups G) places G independent consensus
// groups on the same virtual nodes, as a sharded node process hosts many:
// each group has its own engines, state machine, four clients on its own
// keys, history and checker; the nodes, their links and their disks are
// shared. Groups 1 (the default) is the single-group simulator: the same
// runs, event for event, for every existing seed.
//
//   - Placement: a replica's ID is its virtual node's ID. Every group starts
//     with voters on nodes 1..Nodes; a learner a group adds gets the group's
//     next ID (never reused within the group), so groups that grow land on
//     the same new nodes. A node whose replicas are all retired stops.
//   - Nodes: a crash and a restart hit every group's replica on the node
//     at once (the simulator has no pause fault apart from a crash the
//     supervisor restarts at once). The nemesis's rates
//     are per node: a crash aimed at a group's dangerous moment (between a
//     write and its sync, after a vote or a promise) and leader churn are
//     drawn per group with their chance divided by G, so a node does not
//     crash more often for hosting more groups.
//   - Links: one connection per node pair carries every group's messages
//     (tagged with the group): a partition, a one-way cut or a flaky period
//     hits all of them, and they share one queue, one delay distribution
//     and its reordering, and one bound on messages in flight (scaled by
//     G).
//   - Shared log: each node has one disk holding one write-ahead log. Every
//     group's writes (snapshot, truncation, entries, HardState) go through
//     it as records tagged with the group's disk, which keeps each group's
//     durable state separately addressable for its recovery. One fsync
//     makes every group's writes durable together (a Ready that must be
//     synced joins the node's next fsync, or schedules it: group commit),
//     and a crash keeps a prefix of the log's unsynced records, of whatever
//     groups, and loses the rest: the torn tail cuts across groups. The
//     trace of a crash shows it: "n3 CRASH (keeps 1 of 3 unsynced writes:
//     g2 | g1 g2)".
//
// Every invariant and the linearizability check run per group, and a
// violation names its group (Violation.Group; "group 2: monotonic: ...");
// the run stops at the first. Liveness needs every group converged. Sweep
// reports each group's stats (Result.GroupStats) and asserts the activity
// minimums per group, so a busy group cannot hide an idle one.
// Options.BrokenGroup switches a broken variant on in one group only; the
// tests show it caught and named in that group (multigroup_test.go).
//
// # Proving the checkers
//
// Each broken Variant (three Raft knobs, four Paxos knobs, three runtime
// bugs and a network that never heals) must be caught within its seed
// budget (sim_test.go, paxos_test.go), and
// every checker must catch one on its own (with the checkers that would
// fire first switched off by Options.Disable). sim_test.go asserts both,
// and a sweep asserts activity minimums so that a simulator that stopped
// exercising something cannot pass.
package sim
