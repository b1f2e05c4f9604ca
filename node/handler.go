package node

import (
	"sync"

	"github.com/ballotdb/ballot/consensus"
)

// handler is the node's side of the transport. The transport calls it from
// its own goroutines (the in-memory twin even from the sender's), so it
// never blocks: messages go to a bounded inbox (full: dropped, as the
// network might), reports into a coalescing set.
type handler struct{ n *Node }

func (h handler) Receive(m consensus.Message) {
	select {
	case h.n.recvc <- m:
		h.n.obs.MessageReceived(m)
	default:
		h.n.obs.MessageDropped(m, DropInboxFull)
		h.n.log.Debug("inbox full: message dropped", "peer", m.From, "type", m.Type.String())
	}
}

func (h handler) Unreachable(peer consensus.NodeID) { h.n.reports.unreachable(peer) }

func (h handler) SnapshotStatus(peer consensus.NodeID, ok bool) { h.n.reports.snapshot(peer, ok) }

// reports coalesces the transport's reports for the engine goroutine: at
// most one entry per peer, so it is bounded by the membership.
type reports struct {
	mu    sync.Mutex
	unr   map[consensus.NodeID]struct{}
	snaps map[consensus.NodeID]bool
	note  chan struct{} // capacity 1
}

func newReports() *reports {
	return &reports{unr: map[consensus.NodeID]struct{}{}, snaps: map[consensus.NodeID]bool{}, note: make(chan struct{}, 1)}
}

func (r *reports) unreachable(peer consensus.NodeID) {
	r.mu.Lock()
	r.unr[peer] = struct{}{}
	r.mu.Unlock()
	r.poke()
}

func (r *reports) snapshot(peer consensus.NodeID, ok bool) {
	r.mu.Lock()
	r.snaps[peer] = ok
	r.mu.Unlock()
	r.poke()
}

func (r *reports) poke() {
	select {
	case r.note <- struct{}{}:
	default:
	}
}

func (r *reports) take() (map[consensus.NodeID]struct{}, map[consensus.NodeID]bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	u, s := r.unr, r.snaps
	r.unr, r.snaps = map[consensus.NodeID]struct{}{}, map[consensus.NodeID]bool{}
	return u, s
}
