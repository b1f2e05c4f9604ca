package paxos

import (
	"fmt"
	"slices"
	"testing"

	"github.com/ballotdb/ballot/consensus"
)

// disk is a node's durable state in the tests, following the WAL's rules:
// a snapshot drops the slots it covers, entries replace their slot.
type disk struct {
	hs   consensus.HardState
	snap consensus.SnapshotMeta
	ents map[uint64]consensus.Entry
}

func (d *disk) initial() consensus.InitialState {
	st := consensus.InitialState{HardState: d.hs, Snapshot: d.snap, Applied: d.snap.Index}
	for i := d.snap.Index + 1; ; i++ {
		e, ok := d.ents[i]
		if !ok {
			break
		}
		st.Entries = append(st.Entries, e)
	}
	return st
}

// cluster drives Nodes by hand: the test chooses what is delivered, dropped
// or held, and every Ready is persisted before its messages are queued.
type cluster struct {
	t       *testing.T
	cfg     func(id consensus.NodeID) Config
	nodes   map[consensus.NodeID]*Node
	disks   map[consensus.NodeID]*disk
	applied map[consensus.NodeID][]consensus.Entry
	reads   map[consensus.NodeID][]consensus.ReadState
	queue   []consensus.Message
	// drop, when set, loses the messages it returns true for.
	drop func(m consensus.Message) bool
}

func baseConfig(id consensus.NodeID) Config {
	return Config{ID: id, ElectionTick: 10, HeartbeatTick: 1, Seed: uint64(id), MaxSizePerMsg: 1, MaxEntrySize: 64}
}

func newCluster(t *testing.T, n int, cfg func(consensus.NodeID) Config) *cluster {
	t.Helper()
	if cfg == nil {
		cfg = baseConfig
	}
	c := &cluster{t: t, cfg: cfg, nodes: map[consensus.NodeID]*Node{}, disks: map[consensus.NodeID]*disk{},
		applied: map[consensus.NodeID][]consensus.Entry{}, reads: map[consensus.NodeID][]consensus.ReadState{}}
	var voters []consensus.NodeID
	for i := 1; i <= n; i++ {
		voters = append(voters, consensus.NodeID(i))
	}
	for _, id := range voters {
		c.add(id, consensus.ConfState{Voters: voters})
	}
	return c
}

// add starts a node with an empty disk and the given bootstrap membership
// (empty for a node that joins later).
func (c *cluster) add(id consensus.NodeID, cs consensus.ConfState) {
	c.disks[id] = &disk{snap: consensus.SnapshotMeta{ConfState: cs}, ents: map[uint64]consensus.Entry{}}
	c.start(id)
}

func (c *cluster) start(id consensus.NodeID) {
	c.t.Helper()
	n, err := New(c.cfg(id), c.disks[id].initial())
	if err != nil {
		c.t.Fatalf("node %d: %v", id, err)
	}
	c.nodes[id] = n
	c.applied[id] = c.applied[id][:0]
	c.drain(id)
}

// crash stops a node; restart brings it back from its disk.
func (c *cluster) crash(id consensus.NodeID) { delete(c.nodes, id) }

func (c *cluster) restart(id consensus.NodeID) {
	c.start(id)
	// What it applied before is not reapplied from a snapshot here: the
	// tests only compare slots, so keep the old record.
}

// drain handles a node's Readies: persist, queue messages, apply, advance.
func (c *cluster) drain(id consensus.NodeID) {
	n := c.nodes[id]
	for n != nil && n.HasReady() {
		rd := n.Ready()
		d := c.disks[id]
		if rd.Snapshot != nil {
			d.snap = rd.Snapshot.Meta
			for i := range d.ents {
				if i <= d.snap.Index {
					delete(d.ents, i)
				}
			}
		}
		if rd.Truncate {
			for i := range d.ents {
				if i > rd.TruncateAfter {
					delete(d.ents, i)
				}
			}
		}
		for _, e := range rd.Entries {
			d.ents[e.Index] = e
		}
		if !rd.HardState.IsEmpty() {
			d.hs = rd.HardState
		}
		c.queue = append(c.queue, rd.Messages...)
		c.reads[id] = append(c.reads[id], rd.ReadStates...)
		applied := n.log.applied
		if rd.Snapshot != nil {
			applied = rd.Snapshot.Meta.Index
		}
		for _, e := range rd.Committed {
			if e.Index != applied+1 && applied != 0 {
				c.t.Fatalf("node %d: handed slot %d after %d", id, e.Index, applied)
			}
			applied = e.Index
			c.applied[id] = append(c.applied[id], e)
		}
		n.Advance(applied)
	}
}

// deliver delivers queued messages (and what they cause) until none is
// left, dropping those c.drop or keep refuse; keep, when set, holds the
// messages it returns false for in the queue instead of delivering them.
func (c *cluster) deliver(keep func(m consensus.Message) bool) {
	for range 10000 {
		var held, now []consensus.Message
		for _, m := range c.queue {
			if keep != nil && !keep(m) {
				held = append(held, m)
			} else {
				now = append(now, m)
			}
		}
		if len(now) == 0 {
			c.queue = held
			return
		}
		c.queue = held
		for _, m := range now {
			n := c.nodes[m.To]
			if n == nil || (c.drop != nil && c.drop(m)) {
				continue
			}
			_ = n.Step(m)
			c.drain(m.To)
		}
	}
	c.t.Fatalf("messages never settle")
}

func (c *cluster) stabilize() { c.deliver(nil) }

// tick ticks every running node k times, delivering in between.
func (c *cluster) tick(k int) {
	for range k {
		for _, id := range c.ids() {
			c.nodes[id].Tick()
			c.drain(id)
		}
		c.stabilize()
	}
}

func (c *cluster) ids() []consensus.NodeID {
	var ids []consensus.NodeID
	for id := range c.nodes {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// campaign makes id start phase 1 now, as a leadership transfer does, so
// acceptors that still hear from a leader do not ignore it (leader
// stickiness would, until their timeout).
func (c *cluster) campaign(id consensus.NodeID) {
	c.nodes[id].campaign(true)
	c.drain(id)
}

func (c *cluster) propose(id consensus.NodeID, data string) {
	c.t.Helper()
	if err := c.nodes[id].Propose([]byte(data)); err != nil {
		c.t.Fatalf("propose %q at %d: %v", data, id, err)
	}
	c.drain(id)
}

func (c *cluster) leader() consensus.NodeID {
	for _, id := range c.ids() {
		if c.nodes[id].Status().Role == consensus.Leader {
			return id
		}
	}
	return consensus.None
}

// values returns what node id applied, normal entries as their data, no-ops
// as "-", conf changes as "cc", keyed by slot.
func (c *cluster) values(id consensus.NodeID) map[uint64]string {
	out := map[uint64]string{}
	for _, e := range c.applied[id] {
		switch e.Type {
		case consensus.EntryNormal:
			out[e.Index] = string(e.Data)
		case consensus.EntryNoop:
			out[e.Index] = "-"
		default:
			out[e.Index] = "cc"
		}
	}
	return out
}

// checkAgreement fails the test if two nodes applied different values at a
// slot (agreement), and returns the union.
func (c *cluster) checkAgreement() map[uint64]string {
	c.t.Helper()
	all := map[uint64]string{}
	owner := map[uint64]consensus.NodeID{}
	for id := range c.applied {
		for s, v := range c.values(id) {
			if prev, ok := all[s]; ok && prev != v {
				c.t.Fatalf("agreement broken at slot %d: node %d applied %q, node %d applied %q", s, owner[s], prev, id, v)
			}
			all[s], owner[s] = v, id
		}
	}
	return all
}

// slotsOf returns the slots holding normal values, in order, as "slot:value".
func slotsOf(m map[uint64]string) []string {
	var keys []uint64
	for s := range m {
		keys = append(keys, s)
	}
	slices.Sort(keys)
	var out []string
	for _, s := range keys {
		if m[s] != "cc" {
			out = append(out, fmt.Sprintf("%d:%s", s, m[s]))
		}
	}
	return out
}

func hasValue(m map[uint64]string, v string) bool {
	for _, x := range m {
		if x == v {
			return true
		}
	}
	return false
}
