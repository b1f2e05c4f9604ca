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
// The listener answers one byte: 0 accepted, or a refusal code (another
// cluster, a node ID it does not know, a version it does not speak), after
// which it closes the connection and logs why. Then the dialer sends frames:
//
//	| length (4B, LE) | payload: count (uvarint), then count × (length uvarint, consensus message) |
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
