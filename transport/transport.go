// Package transport moves consensus messages between the members of a group.
// It knows no protocol: it frames, batches and delivers consensus.Messages,
// and reports peers it cannot reach.
//
// # Wire format (version 2)
//
// A connection starts with a handshake from the dialer:
//
//	| magic "BLT1" (4B) | version (1B) | stream (1B) | cluster ID (8B) | from (8B) | to (8B) |
//
// The listener answers one byte: 0 accepted, or a refusal code (1 another
// cluster, 2 a node ID it does not know, 3 a version it does not speak, 4
// addressed to another node ID), after which it closes the connection and
// logs why. Then the dialer sends frames:
//
//	| length (4B, LE) | payload: count (uvarint), then count × (length uvarint, consensus message) |
//
// # Wire format (version 3: a Mux)
//
// A Mux (mux.go) speaks version 3: the same handshake with version byte 3,
// where cluster ID is the host cluster's ID and from and to are host node
// IDs; then frames whose messages each carry the group they belong to:
//
//	| length (4B, LE) | payload: count (uvarint), then count × (group uvarint, length uvarint, consensus message) |
//
// On the snapshot stream each chunk frame starts with the group, and the
// handshake answer (what the receiver holds) ends with the group of the
// snapshot held: 32 bytes instead of 24. A listener speaks exactly one
// version: a plain transport (version 2) refuses a Mux's connections, and
// a Mux refuses a plain transport's, both with refusal code 3, which each
// end logs at warn ("peer speaks another wire version" on the dialer,
// "peer connection refused" with the reason on the listener) and the
// listener counts in Stats.Refused. The dialer's messages are dropped and
// reported unreachable, as for any refused connection. So a plain node and
// a multi-group host never exchange messages: every member of a cluster
// must run the same kind of transport. (A Mux could later fall back to
// version 2 per group; nothing in version 3 prevents it.)
//
// Connections are one-way: each node dials each peer for what it sends, so a
// node has one outbound connection per peer per stream and accepts one
// inbound per peer per stream. Stream 0 carries ordinary messages; stream 1
// carries snapshots, so a large snapshot never delays heartbeats. On stream
// 1 a snapshot travels in chunks (Config.SnapshotChunkBytes each, so no
// snapshot is bounded by MaxFrameBytes), and the receiver's handshake
// answer says how much of which snapshot it already holds, so a transfer
// broken half way resumes where it stopped (see sendSnapshot in tcp.go).
//
// # Limits and failure
//
// Each peer has a bounded send queue. Send never blocks: a message that does
// not fit is dropped, counted, and the peer reported unreachable to the
// engine (Handler.Unreachable), which then stops streaming to it optimistically.
// A broken connection is redialled with jittered exponential backoff. Frames
// larger than Config.MaxFrameBytes are refused by the reader.
//
// # Goroutines
//
// Per peer and stream one writer goroutine drains the queue; per inbound
// connection one reader goroutine decodes frames and calls Handler.Receive;
// one accept loop. Close stops them all and waits.
//
// # Mux
//
// A host that runs many consensus groups (shards) runs one Mux: one TCP
// transport for the host, and a Transport per group from Mux.Group, which
// delivers to that group's Handler. The groups share everything that is
// per peer, so a host has one outbound connection per peer per stream and
// one writer goroutine per peer per stream however many groups it hosts;
// a group costs no goroutine and no connection.
//
//   - Frames: messages of every group to the same peer share the peer's
//     queue and are batched into the same frames (up to 512 messages), each
//     tagged with its group. On receipt a message goes to its group's
//     Handler. A message for a group the mux does not host (not created
//     yet, or already closed) is dropped, counted (MuxStats.UnknownGroup)
//     and logged at debug. A message from a host that is a peer of some
//     group is delivered even if its own group has not added that peer.
//   - Peers are counted across groups: AddPeer in any group adds the peer
//     to the shared transport; RemovePeer in one group removes it from that
//     group only, and the connections close when no group has the peer.
//     The address is the host's: AddPeer with a different address for the
//     same ID updates it for every group (the last writer wins; an open
//     connection stays until it breaks). A group sends only to peers it
//     has added itself; a message to another is dropped and reported.
//   - Queue: the per-peer queues are shared and bounded as on a plain
//     transport (Config.QueueLen, Config.SnapshotQueueLen). There is no
//     fairness between groups: a busy group can fill a peer's queue, and
//     until the writer drains it every group's messages to that peer are
//     dropped and reported unreachable to their own group, as on a full
//     plain queue. Size QueueLen for the host, not for one group.
//   - Reports: a dropped message is reported to its own group
//     (Unreachable, or SnapshotStatus for a snapshot). When the message
//     stream to a peer cannot be dialled or written, every group that has
//     the peer is also told Unreachable, so idle groups hear of it too.
//     SnapshotStatus goes only to the group whose snapshot it was.
//   - Snapshots: one snapshot stream per peer, sending one snapshot at a
//     time. The receiver holds one partly received snapshot per peer,
//     keyed by group, index and epoch, and a resume happens only when all
//     three match, so one group's snapshot is never spliced into another's.
//     A snapshot of another group (or a newer one) replaces what is held.
//   - Close: a group's Close removes that group only (its peers' counts
//     drop, its partial snapshots are forgotten; its messages already
//     queued may still go out); Mux.Close stops everything and waits.
package transport

import (
	"errors"

	"github.com/ballotdb/ballot/consensus"
)

// Handler receives what the transport delivers. Its methods are called from
// the transport's goroutines and must not block for long.
type Handler interface {
	// Receive delivers a message from a peer.
	Receive(m consensus.Message)
	// Unreachable reports that messages to peer were lost.
	Unreachable(peer consensus.NodeID)
	// SnapshotStatus reports how sending a snapshot to peer ended.
	SnapshotStatus(peer consensus.NodeID, ok bool)
}

// Transport sends messages to peers.
type Transport interface {
	// Send queues messages for delivery; it never blocks.
	Send(msgs []consensus.Message)
	// AddPeer sets the address of a peer (adding or updating it).
	AddPeer(id consensus.NodeID, addr string)
	// RemovePeer forgets a peer and closes its connections.
	RemovePeer(id consensus.NodeID)
	// Close stops every goroutine of the transport.
	Close() error
}

// Errors.
var (
	ErrRefused  = errors.New("transport: connection refused by peer")
	ErrTooLarge = errors.New("transport: frame too large")
	ErrClosed   = errors.New("transport: closed")
)
