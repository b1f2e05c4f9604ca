package transport

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"

	"github.com/ballotdb/ballot/consensus"
)

// ErrGroupExists is returned by Mux.Group for a group the mux already hosts.
var ErrGroupExists = errors.New("transport: group already on this mux")

// Mux is the transport of a host that runs many consensus groups: one TCP
// transport, speaking wire version 3, whose connections every group shares.
// Group hands out one Transport per group, which is what node.Config's
// NewTransport needs. See the package doc ("Mux") for what is shared and
// what is kept per group. A Mux is safe for concurrent use.
type Mux struct {
	t   *TCP
	log *slog.Logger

	mu     sync.RWMutex
	groups map[uint64]*muxGroup
	// peers holds, for each peer in the shared transport, the groups that
	// have it: the peer stays while the set is not empty.
	// Invariant: m.peers[id][g.id] == g iff g.peers has id.
	peers  map[consensus.NodeID]map[uint64]*muxGroup
	closed bool

	unknownGroup atomic.Uint64
}

// MuxStats are a mux's counters.
type MuxStats struct {
	// Stats are the shared transport's counters, over every group:
	// Received counts messages read off the wire, including those dropped
	// for an unknown group.
	Stats
	// UnknownGroup counts messages received for a group this mux does not
	// host (not created yet, or already closed); they were dropped.
	UnknownGroup uint64
	// Groups and Peers are how many groups the mux hosts and how many
	// distinct peers they have between them.
	Groups, Peers int
}

// NewMux starts one TCP transport for a host: cfg.ID is the host's node ID
// (the same member ID is used by this host in every group), cfg.ClusterID
// the host cluster's ID, cfg.Listener the host's peer port. cfg.Handler is
// ignored: each group's handler is given to Group.
func NewMux(cfg Config) (*Mux, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	m := &Mux{log: cfg.Logger, groups: map[uint64]*muxGroup{}, peers: map[consensus.NodeID]map[uint64]*muxGroup{}}
	t, err := newTCP(cfg, m)
	if err != nil {
		return nil, err
	}
	m.t = t
	return m, nil
}

// Addr is the address the mux listens on.
func (m *Mux) Addr() net.Addr { return m.t.Addr() }

// Stats returns the counters.
func (m *Mux) Stats() MuxStats {
	m.mu.RLock()
	groups, peers := len(m.groups), len(m.peers)
	m.mu.RUnlock()
	return MuxStats{Stats: m.t.Stats(), UnknownGroup: m.unknownGroup.Load(), Groups: groups, Peers: peers}
}

// Group returns a Transport for one group, identified by a non-zero group
// ID (the group's cluster ID), delivering that group's incoming messages to
// h. Its Close removes the group from the mux; the group ID may then be
// used again.
func (m *Mux) Group(group uint64, h Handler) (Transport, error) {
	if group == 0 {
		return nil, errors.New("transport: group ID must not be 0")
	}
	if h == nil {
		return nil, errors.New("transport: group handler is required")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, ErrClosed
	}
	if m.groups[group] != nil {
		return nil, fmt.Errorf("%w: group %d", ErrGroupExists, group)
	}
	g := &muxGroup{m: m, id: group, h: h, peers: map[consensus.NodeID]struct{}{}}
	m.groups[group] = g
	return g, nil
}

// Close stops the shared transport and every group, and waits for the
// transport's goroutines. No handler is called after it returns. It must
// not be called from a handler.
func (m *Mux) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	groups := m.groups
	for _, g := range groups {
		g.removed = true
	}
	m.groups = map[uint64]*muxGroup{}
	m.peers = map[consensus.NodeID]map[uint64]*muxGroup{}
	m.mu.Unlock()
	err := m.t.Close()
	for _, g := range groups {
		g.stop()
	}
	return err
}

// lookup returns a group by ID, or nil.
func (m *Mux) lookup(group uint64) *muxGroup {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.groups[group]
}

// receive delivers a message read off the wire to its group, or counts and
// drops it. Called by the transport's readers.
func (m *Mux) receive(group uint64, msg consensus.Message) {
	if g := m.lookup(group); g != nil && g.receive(msg) {
		return
	}
	m.unknownGroup.Add(1)
	m.log.Debug("message for an unknown group dropped", "peer", msg.From, "group", group, "type", msg.Type.String())
}

// unreachable reports a dropped message to the group that sent it.
func (m *Mux) unreachable(group uint64, peer consensus.NodeID) {
	if g := m.lookup(group); g != nil {
		g.unreachable(peer)
	}
}

// snapshotStatus reports how sending a snapshot ended to the group whose
// snapshot it was.
func (m *Mux) snapshotStatus(group uint64, peer consensus.NodeID, ok bool) {
	if g := m.lookup(group); g != nil {
		g.snapshotStatus(peer, ok)
	}
}

// peerDown reports peer unreachable to every group that has it.
func (m *Mux) peerDown(peer consensus.NodeID) {
	m.mu.RLock()
	groups := make([]*muxGroup, 0, len(m.peers[peer]))
	for _, g := range m.peers[peer] {
		groups = append(groups, g)
	}
	m.mu.RUnlock()
	for _, g := range groups {
		g.unreachable(peer)
	}
}

// removePeerLocked takes peer out of g and, if no group has it any more,
// out of the shared transport.
// REQUIRES: m.mu is held for writing.
func (m *Mux) removePeerLocked(g *muxGroup, peer consensus.NodeID) {
	if _, ok := g.peers[peer]; !ok {
		return
	}
	delete(g.peers, peer)
	set := m.peers[peer]
	delete(set, g.id)
	if len(set) == 0 {
		delete(m.peers, peer)
		m.t.RemovePeer(peer)
	}
}

// muxGroup is one group's Transport on a Mux.
type muxGroup struct {
	m  *Mux
	id uint64
	h  Handler
	// peers and removed are guarded by m.mu.
	peers   map[consensus.NodeID]struct{}
	removed bool
	// cb is held for reading around every call of h, and for writing by
	// stop, so that no call of h starts or is still running once the
	// group's Close has returned.
	cb      sync.RWMutex
	stopped bool // guarded by cb
}

// Send queues msgs for their peers on the shared connections; it never
// blocks. A message to a peer this group has not added is dropped and
// reported unreachable to this group, even if another group has the peer.
func (g *muxGroup) Send(msgs []consensus.Message) {
	m := g.m
	var unknown []consensus.Message
	kept := msgs
	m.mu.RLock()
	if g.removed {
		m.mu.RUnlock()
		return
	}
	for i, msg := range msgs {
		if _, ok := g.peers[msg.To]; ok {
			if unknown != nil {
				kept = append(kept, msg)
			}
			continue
		}
		if unknown == nil {
			kept = append([]consensus.Message(nil), msgs[:i]...)
		}
		unknown = append(unknown, msg)
	}
	m.mu.RUnlock()
	for _, msg := range unknown {
		m.t.drop(envelope{group: g.id, Message: msg}, "unknown peer in group")
	}
	m.t.send(g.id, kept)
}

// AddPeer adds a peer to this group, or updates its address. The address
// is the host's, shared by every group: the last AddPeer of any group
// wins, and a connection already open stays until it breaks.
func (g *muxGroup) AddPeer(id consensus.NodeID, addr string) {
	m := g.m
	if id == m.t.cfg.ID {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if g.removed {
		return
	}
	g.peers[id] = struct{}{}
	set := m.peers[id]
	if set == nil {
		set = map[uint64]*muxGroup{}
		m.peers[id] = set
	}
	set[g.id] = g
	m.t.AddPeer(id, addr)
}

// RemovePeer removes a peer from this group. The shared connections to it
// are closed only when no other group has it.
func (g *muxGroup) RemovePeer(id consensus.NodeID) {
	m := g.m
	m.mu.Lock()
	defer m.mu.Unlock()
	if !g.removed {
		m.removePeerLocked(g, id)
	}
}

// Close removes this group from the mux, leaving every other group and the
// shared connections as they are. Messages of the group already queued may
// still be sent. No call of its handler starts or is still running once
// Close has returned; Close must not be called from that handler.
func (g *muxGroup) Close() error {
	m := g.m
	m.mu.Lock()
	if g.removed {
		m.mu.Unlock()
		g.stop()
		return nil
	}
	g.removed = true
	delete(m.groups, g.id)
	for id := range g.peers {
		m.removePeerLocked(g, id)
	}
	m.mu.Unlock()
	m.t.dropPartials(g.id)
	g.stop()
	return nil
}

func (g *muxGroup) stop() {
	g.cb.Lock()
	g.stopped = true
	g.cb.Unlock()
}

// receive calls the handler unless the group is stopped; false if it was.
func (g *muxGroup) receive(msg consensus.Message) bool {
	g.cb.RLock()
	defer g.cb.RUnlock()
	if g.stopped {
		return false
	}
	g.h.Receive(msg)
	return true
}

func (g *muxGroup) unreachable(peer consensus.NodeID) {
	g.cb.RLock()
	defer g.cb.RUnlock()
	if !g.stopped {
		g.h.Unreachable(peer)
	}
}

func (g *muxGroup) snapshotStatus(peer consensus.NodeID, ok bool) {
	g.cb.RLock()
	defer g.cb.RUnlock()
	if !g.stopped {
		g.h.SnapshotStatus(peer, ok)
	}
}

// dropPartials forgets the partly received snapshots of a group.
func (t *TCP) dropPartials(group uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for id, ps := range t.partial {
		if ps.key.group == group {
			delete(t.partial, id)
		}
	}
}

var _ Transport = (*muxGroup)(nil)
