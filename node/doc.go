// Package node is ballot's embeddable runtime: it makes a pure consensus
// engine durable and networked and drives an application's state machine.
//
// # Usage
//
//	n, err := node.Start(ctx, node.Config{
//		ID: 1, ClusterID: 0xba11, DataDir: "/var/lib/app",
//		Peers:  map[consensus.NodeID]string{1: "10.0.0.1:2380", 2: "10.0.0.2:2380", 3: "10.0.0.3:2380"},
//		Listen: ln, // a net.Listener on this member's peer address
//	}, mySM)
//	res, err := n.Propose(ctx, cmd) // mySM.Apply's result, once committed and applied here
//	err = n.ReadBarrier(ctx)        // then read mySM: linearizable
//	n.Stop()                        // a leader hands leadership away first
//
// The StateMachine contract (determinism, snapshots) is on the interface.
//
// # Goroutine map
//
// A Node runs five goroutines of its own, plus the transport's:
//
//	         Propose / ReadBarrier / membership / Status
//	                       │ propc, reqc
//	transport ──recvc──▶ ┌─────────────┐ ──persist──▶ persister ──▶ WAL, snap store
//	(reports) ─note────▶ │   engine    │ ◀─persisted─┘
//	                     │  goroutine  │ ──snapSave/snapSend──▶ snapshotter ──▶ snap store, transport
//	transport ◀──Send─── │ (loop.run)  │ ◀─snapSaved──┘
//	                     └─────────────┘
//	                      │ applyc   ▲ appliedNote, snapTaken
//	                      ▼          │
//	                     apply goroutine ──▶ StateMachine, proposal results
//
// Who owns what:
//
//   - The engine goroutine (loop.run) owns the consensus.Engine and
//     everything in loop: it ticks from Config.Clock, steps incoming
//     messages, takes proposals, reads and admin requests, and handles one
//     Ready at a time. Messages that promise nothing about this node's log
//     (a leader's appends, heartbeats) leave at once, so a leader replicates
//     in parallel with its own fsync; the engine counts the leader's own
//     entries only once Advance reports them durable. Votes and append
//     acknowledgements leave only after the persister reports the Ready's
//     HardState and entries durable. It then hands committed entries to the
//     apply goroutine and advances the engine.
//   - The persister owns writes to the WAL (and installs leaders' snapshots
//     into the snap store first). One job is in flight at a time
//     (persist/persisted have capacity 1); the WAL's group commit shares
//     one fsync among the batches of a job.
//   - The apply goroutine owns the StateMachine and the session table that
//     suppresses duplicate proposals. It applies committed entries in index
//     order, settles waiting proposals, publishes the applied index, and
//     takes snapshots (Snapshot runs here, so no Apply runs concurrently).
//   - The snapshotter saves local snapshots (file, then WAL record, then
//     releases WAL segments and prunes old snapshots) and attaches snapshot
//     data to outgoing MsgSnap messages, so that reading a snapshot never
//     blocks the engine.
//   - The reaper waits for Stop (or a storage failure), then for the other
//     four, then closes the transport and the WAL and fails what still
//     waits with ErrStopped.
//
// Every channel between them is bounded: the inbox (recvc) drops when full,
// as a network would; propc is sized by Config.MaxPendingProposals and a
// full one fails Propose with ErrBusy; the transport's reports are
// coalesced per peer.
//
// # Observing
//
// Config.Observer (see metrics.go) is told what the node does — messages
// sent, received and dropped, role/term/leader changes, WAL writes with
// their fsync time, snapshots, proposals' outcomes, membership changes —
// synchronously, on the goroutine that did it. It must never block:
// package metrics counts, package web samples into a bounded stream.
//
// # Exactly once
//
// Every proposal is wrapped in an envelope (origin, incarnation, seq,
// floor; see envelope.go). A follower forwards proposals to the leader and
// sends them again when they may have been lost (a new term, or no result
// after a few election timeouts); the apply goroutine applies each
// (origin, incarnation, seq) at most once. The session table is part of
// every snapshot, so the guarantee survives restarts and catch-up.
//
// # Storage
//
// DataDir/wal is the write-ahead log (package wal: record format and
// durability contract in its doc) and DataDir/snap the snapshots (package
// snap). A full disk (ENOSPC) makes the node refuse new proposals with
// ErrNoSpace and retry its write until space returns; an fsync error stops
// the node (Err says why), which recovers from disk on restart rather than
// retry the fsync. A leader whose own WAL write stalls longer than
// Config.FsyncStallTimeout hands leadership to its most up-to-date voter.
// A data directory written for another cluster or member ID is refused.
//
// # Reads and paused processes
//
// ReadBarrier uses ReadIndex confirmed by a quorum round that starts after
// the request arrives, never a lease, so a process paused longer than an
// election timeout (seen as a gap in the monotonic clock, and logged) can
// never serve a stale read.
package node
