package transport

import (
	"sync"

	"github.com/ballotdb/ballot/consensus"
)

// MemNetwork is the in-memory twin of the TCP transport for fast tests:
// bounded per-node inboxes, one delivery goroutine per node, and links that
// tests can cut and heal.
type MemNetwork struct {
	mu    sync.Mutex
	nodes map[consensus.NodeID]*MemTransport
	cut   map[[2]consensus.NodeID]bool // one-way: from → to
}

// NewMemNetwork returns an empty network.
func NewMemNetwork() *MemNetwork {
	return &MemNetwork{nodes: map[consensus.NodeID]*MemTransport{}, cut: map[[2]consensus.NodeID]bool{}}
}

// Join attaches a node; queueLen bounds its inbox (default 4096).
func (n *MemNetwork) Join(id consensus.NodeID, h Handler, queueLen int) *MemTransport {
	if queueLen == 0 {
		queueLen = 4096
	}
	t := &MemTransport{net: n, id: id, h: h, inbox: make(chan consensus.Message, queueLen), done: make(chan struct{})}
	n.mu.Lock()
	n.nodes[id] = t
	n.mu.Unlock()
	t.wg.Add(1)
	go t.deliverLoop()
	return t
}

// Cut drops every message from a to b (one way).
func (n *MemNetwork) Cut(a, b consensus.NodeID) {
	n.mu.Lock()
	n.cut[[2]consensus.NodeID{a, b}] = true
	n.mu.Unlock()
}

// Isolate cuts id off from every other node, both ways.
func (n *MemNetwork) Isolate(id consensus.NodeID) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for other := range n.nodes {
		if other != id {
			n.cut[[2]consensus.NodeID{id, other}] = true
			n.cut[[2]consensus.NodeID{other, id}] = true
		}
	}
}

// Heal restores every link.
func (n *MemNetwork) Heal() {
	n.mu.Lock()
	n.cut = map[[2]consensus.NodeID]bool{}
	n.mu.Unlock()
}

// MemTransport is one node's endpoint on a MemNetwork.
type MemTransport struct {
	net   *MemNetwork
	id    consensus.NodeID
	h     Handler
	inbox chan consensus.Message
	done  chan struct{}
	once  sync.Once
	wg    sync.WaitGroup
}

func (t *MemTransport) deliverLoop() {
	defer t.wg.Done()
	for {
		select {
		case <-t.done:
			return
		case m := <-t.inbox:
			t.h.Receive(m)
		}
	}
}

// Send delivers msgs to their targets' inboxes, dropping (and reporting) what
// is cut off, addressed to an unknown node, or over a full inbox.
func (t *MemTransport) Send(msgs []consensus.Message) {
	for _, m := range msgs {
		t.net.mu.Lock()
		dst := t.net.nodes[m.To]
		cut := t.net.cut[[2]consensus.NodeID{t.id, m.To}]
		t.net.mu.Unlock()
		ok := false
		if dst != nil && !cut {
			select {
			case <-dst.done:
			case dst.inbox <- m:
				ok = true
			default:
			}
		}
		switch {
		case m.Type == consensus.MsgSnap:
			t.h.SnapshotStatus(m.To, ok)
		case !ok:
			t.h.Unreachable(m.To)
		}
	}
}

// AddPeer is a no-op: every joined node is reachable by ID.
func (t *MemTransport) AddPeer(consensus.NodeID, string) {}

// RemovePeer is a no-op.
func (t *MemTransport) RemovePeer(consensus.NodeID) {}

// Close detaches the node and stops its delivery goroutine.
func (t *MemTransport) Close() error {
	t.once.Do(func() {
		t.net.mu.Lock()
		if t.net.nodes[t.id] == t {
			delete(t.net.nodes, t.id)
		}
		t.net.mu.Unlock()
		close(t.done)
	})
	t.wg.Wait()
	return nil
}

var (
	_ Transport = (*TCP)(nil)
	_ Transport = (*MemTransport)(nil)
)
