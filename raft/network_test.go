package raft

import (
	"fmt"
	"slices"
	"testing"

	"github.com/ballotdb/ballot/consensus"
)

// testStorage is a node's durable state in tests: what a crash keeps.
type testStorage struct {
	hs   consensus.HardState
	snap consensus.Snapshot
	ents []consensus.Entry // after snap.Meta.Index, contiguous
}

func (s *testStorage) persist(rd consensus.Ready) {
	if rd.Snapshot != nil {
		s.snap = *rd.Snapshot
		var keep []consensus.Entry
		for _, e := range s.ents {
			if e.Index > s.snap.Meta.Index {
				keep = append(keep, e)
			}
		}
		s.ents = keep
	}
	if rd.Truncate {
		var keep []consensus.Entry
		for _, e := range s.ents {
			if e.Index <= rd.TruncateAfter {
				keep = append(keep, e)
			}
		}
		s.ents = keep
	}
	for _, e := range rd.Entries {
		first := s.snap.Meta.Index + 1
		if e.Index < first {
			continue
		}
		pos := int(e.Index - first)
		switch {
		case pos < len(s.ents):
			s.ents[pos] = e
		case pos == len(s.ents):
			s.ents = append(s.ents, e)
		default:
			panic(fmt.Sprintf("storage gap: writing %d with %d entries after %d", e.Index, len(s.ents), s.snap.Meta.Index))
		}
	}
	if !rd.HardState.IsEmpty() {
		s.hs = rd.HardState
	}
}

func (s *testStorage) initial(applied uint64) consensus.InitialState {
	return consensus.InitialState{HardState: s.hs, Snapshot: s.snap.Meta,
		Entries: slices.Clone(s.ents), Applied: max(applied, s.snap.Meta.Index)}
}

type testNode struct {
	r            *Raft
	cfg          Config
	st           testStorage
	applied      []consensus.Entry // every entry applied, in order (after snap)
	appliedIndex uint64
	reads        []consensus.ReadState
}

// testNet is a tiny synchronous network of engines for unit tests.
type testNet struct {
	t     testing.TB
	nodes map[consensus.NodeID]*testNode
	queue []consensus.Message
	// drop returns true for a message that must be lost.
	drop func(m consensus.Message) bool
	log  []string
}

func newTestNet(t testing.TB, voters []consensus.NodeID, learners []consensus.NodeID, tweak func(*Config)) *testNet {
	n := &testNet{t: t, nodes: map[consensus.NodeID]*testNode{}}
	cs := consensus.ConfState{Voters: voters, Learners: learners}
	for _, id := range append(slices.Clone(voters), learners...) {
		cfg := Config{ID: id, ElectionTick: 10, HeartbeatTick: 1, Seed: uint64(id) * 7919, PreVote: true, CheckQuorum: true}
		if tweak != nil {
			tweak(&cfg)
		}
		tn := &testNode{cfg: cfg}
		tn.st.snap.Meta.ConfState = cs
		r, err := New(cfg, tn.st.initial(0))
		if err != nil {
			t.Fatalf("new node %d: %v", id, err)
		}
		tn.r = r
		n.nodes[id] = tn
	}
	return n
}

func (n *testNet) ids() []consensus.NodeID {
	ids := make([]consensus.NodeID, 0, len(n.nodes))
	for id := range n.nodes {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// processReady handles one node's Ready in contract order.
func (n *testNet) processReady(id consensus.NodeID) bool {
	tn := n.nodes[id]
	if tn == nil || !tn.r.HasReady() {
		return false
	}
	rd := tn.r.Ready()
	tn.st.persist(rd)
	n.queue = append(n.queue, rd.Messages...)
	if rd.Snapshot != nil {
		tn.applied = nil
		tn.appliedIndex = rd.Snapshot.Meta.Index
	}
	for _, e := range rd.Committed {
		if e.Index != tn.appliedIndex+1 {
			n.t.Fatalf("node %d applied %d after %d", id, e.Index, tn.appliedIndex)
		}
		tn.applied = append(tn.applied, e)
		tn.appliedIndex = e.Index
	}
	tn.reads = append(tn.reads, rd.ReadStates...)
	tn.r.Advance(tn.appliedIndex)
	return true
}

// deliver sends every queued message (and those they cause) once.
func (n *testNet) deliver() bool {
	q := n.queue
	n.queue = nil
	for _, m := range q {
		if n.drop != nil && n.drop(m) {
			continue
		}
		if tn := n.nodes[m.To]; tn != nil {
			n.log = append(n.log, m.String())
			_ = tn.r.Step(m)
		}
	}
	return len(q) > 0
}

// stabilize processes readies and delivers messages until quiet.
func (n *testNet) stabilize() {
	for i := 0; ; i++ {
		if i > 10000 {
			n.t.Fatalf("network did not stabilize")
		}
		busy := false
		for _, id := range n.ids() {
			for n.processReady(id) {
				busy = true
			}
		}
		if n.deliver() {
			busy = true
		}
		if !busy {
			return
		}
	}
}

func (n *testNet) tickAll(ticks int) {
	for range ticks {
		for _, id := range n.ids() {
			n.nodes[id].r.Tick()
		}
		n.stabilize()
	}
}

func (n *testNet) leader() consensus.NodeID {
	var lead consensus.NodeID
	for _, id := range n.ids() {
		if n.nodes[id].r.role == consensus.Leader {
			if lead != consensus.None {
				n.t.Fatalf("two leaders: %d and %d", lead, id)
			}
			lead = id
		}
	}
	return lead
}

// restart rebuilds a node from its durable storage, as after a crash.
func (n *testNet) restart(id consensus.NodeID) {
	tn := n.nodes[id]
	r, err := New(tn.cfg, tn.st.initial(0))
	if err != nil {
		n.t.Fatalf("restart %d: %v", id, err)
	}
	tn.r = r
	tn.applied = nil
	tn.appliedIndex = tn.st.snap.Meta.Index
}
