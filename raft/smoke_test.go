package raft

import (
	"errors"
	"fmt"
	"testing"

	"github.com/ballotdb/ballot/consensus"
)

func ids(v ...consensus.NodeID) []consensus.NodeID { return v }

func electLeader(t *testing.T, n *testNet) consensus.NodeID {
	t.Helper()
	for range 100 {
		n.tickAll(1)
		if l := n.leader(); l != consensus.None && n.nodes[l].r.committedEntryInCurrentTerm() {
			return l
		}
	}
	t.Fatalf("no leader elected within 100 ticks")
	return 0
}

func TestElectAndReplicate(t *testing.T) {
	n := newTestNet(t, ids(1, 2, 3), nil, nil)
	l := electLeader(t, n)
	for i := range 10 {
		if err := n.nodes[l].r.Propose([]byte(fmt.Sprintf("cmd-%d", i))); err != nil {
			t.Fatalf("propose: %v", err)
		}
	}
	n.stabilize()
	for _, id := range n.ids() {
		tn := n.nodes[id]
		var got int
		for _, e := range tn.applied {
			if e.Type == consensus.EntryNormal {
				got++
			}
		}
		if got != 10 {
			t.Fatalf("node %d applied %d normal entries, want 10", id, got)
		}
	}
}

func TestSingleNodeCommits(t *testing.T) {
	n := newTestNet(t, ids(1), nil, nil)
	l := electLeader(t, n)
	if l != 1 {
		t.Fatalf("leader %d", l)
	}
	if err := n.nodes[1].r.Propose([]byte("x")); err != nil {
		t.Fatal(err)
	}
	n.stabilize()
	last := n.nodes[1].applied[len(n.nodes[1].applied)-1]
	if string(last.Data) != "x" {
		t.Fatalf("last applied %v", last)
	}
}

func TestFollowerForwardsAndNotLeader(t *testing.T) {
	n := newTestNet(t, ids(1, 2, 3), nil, func(c *Config) {})
	l := electLeader(t, n)
	f := consensus.NodeID(1)
	if f == l {
		f = 2
	}
	if err := n.nodes[f].r.Propose([]byte("fwd")); err != nil {
		t.Fatalf("forward: %v", err)
	}
	n.stabilize()
	found := false
	for _, e := range n.nodes[l].applied {
		if string(e.Data) == "fwd" {
			found = true
		}
	}
	if !found {
		t.Fatalf("forwarded proposal not applied on leader")
	}
	n2 := newTestNet(t, ids(1, 2, 3), nil, func(c *Config) { c.DisableProposalForwarding = true })
	l2 := electLeader(t, n2)
	f2 := consensus.NodeID(1)
	if f2 == l2 {
		f2 = 2
	}
	err := n2.nodes[f2].r.Propose([]byte("x"))
	var nle *consensus.NotLeaderError
	if !errors.Is(err, consensus.ErrNotLeader) || !errors.As(err, &nle) || nle.Leader != l2 {
		t.Fatalf("got %v, want NotLeader with hint %d", err, l2)
	}
}

func TestLeaderCrashAndReelect(t *testing.T) {
	n := newTestNet(t, ids(1, 2, 3), nil, nil)
	l := electLeader(t, n)
	_ = n.nodes[l].r.Propose([]byte("a"))
	n.stabilize()
	old := l
	n.drop = func(m consensus.Message) bool { return m.From == old || m.To == old }
	var nl consensus.NodeID
	for range 200 {
		n.tickAll(1)
		for _, id := range n.ids() {
			if id != old && n.nodes[id].r.role == consensus.Leader {
				nl = id
			}
		}
		if nl != 0 {
			break
		}
	}
	if nl == 0 {
		t.Fatalf("no new leader after isolating %d", old)
	}
	// CheckQuorum: the isolated old leader steps down.
	n.tickAll(25)
	if n.nodes[old].r.role == consensus.Leader {
		t.Fatalf("isolated leader %d did not step down", old)
	}
	n.drop = nil
	n.restart(old)
	_ = n.nodes[nl].r.Propose([]byte("b"))
	n.tickAll(5)
	if got := n.nodes[old].r.log.committed; got != n.nodes[nl].r.log.committed {
		t.Fatalf("old leader commit %d, new leader %d", got, n.nodes[nl].r.log.committed)
	}
}

func TestSnapshotCatchUp(t *testing.T) {
	n := newTestNet(t, ids(1, 2, 3), nil, nil)
	l := electLeader(t, n)
	lag := consensus.NodeID(3)
	if lag == l {
		lag = 2
	}
	n.drop = func(m consensus.Message) bool { return m.To == lag || m.From == lag }
	for i := range 20 {
		_ = n.nodes[l].r.Propose([]byte(fmt.Sprintf("v%d", i)))
		n.stabilize()
	}
	lr := n.nodes[l].r
	if err := lr.Compact(lr.log.applied); err != nil {
		t.Fatal(err)
	}
	n.drop = nil
	var sawSnap bool
	n.drop = func(m consensus.Message) bool {
		if m.Type == consensus.MsgSnap {
			sawSnap = true
			lr.ReportSnapshot(m.To, true)
		}
		return false
	}
	n.tickAll(5)
	if !sawSnap {
		t.Fatalf("no snapshot sent")
	}
	if got, want := n.nodes[lag].r.log.committed, lr.log.committed; got != want {
		t.Fatalf("lagging node commit %d, want %d", got, want)
	}
}

func TestJointConsensusAndLearner(t *testing.T) {
	n := newTestNet(t, ids(1, 2, 3), nil, nil)
	l := electLeader(t, n)
	// Add node 4 as learner.
	tn := &testNode{cfg: Config{ID: 4, ElectionTick: 10, HeartbeatTick: 1, Seed: 4, PreVote: true, CheckQuorum: true}}
	r4, err := New(tn.cfg, tn.st.initial(0))
	if err != nil {
		t.Fatal(err)
	}
	tn.r = r4
	n.nodes[4] = tn
	if err := n.nodes[l].r.ProposeConfChange(consensus.ConfChange{Changes: []consensus.ConfChangeSingle{{Type: consensus.AddLearner, NodeID: 4}}}); err != nil {
		t.Fatal(err)
	}
	n.tickAll(3)
	if !n.nodes[l].r.conf.IsLearner(4) {
		t.Fatalf("4 not a learner: %s", n.nodes[l].r.conf)
	}
	// Swap: promote 4, demote 1 in one change: joint consensus.
	cc := consensus.ConfChange{Changes: []consensus.ConfChangeSingle{{Type: consensus.AddVoter, NodeID: 4}, {Type: consensus.RemoveNode, NodeID: 1}}}
	if err := n.nodes[l].r.ProposeConfChange(cc); err != nil {
		t.Fatal(err)
	}
	n.tickAll(10)
	lead := n.leader()
	if lead == 0 {
		n.tickAll(40)
		lead = n.leader()
	}
	cs := n.nodes[lead].r.conf
	if cs.Joint() || !cs.IsVoter(4) || cs.IsMember(1) {
		t.Fatalf("after joint change: %s", cs)
	}
}

func TestReadIndex(t *testing.T) {
	n := newTestNet(t, ids(1, 2, 3), nil, nil)
	l := electLeader(t, n)
	_ = n.nodes[l].r.Propose([]byte("a"))
	n.stabilize()
	if err := n.nodes[l].r.ReadIndex([]byte("r1")); err != nil {
		t.Fatal(err)
	}
	n.stabilize()
	if len(n.nodes[l].reads) != 1 || n.nodes[l].reads[0].Index != n.nodes[l].r.log.committed {
		t.Fatalf("reads %+v commit %d", n.nodes[l].reads, n.nodes[l].r.log.committed)
	}
	f := consensus.NodeID(1)
	if f == l {
		f = 2
	}
	if err := n.nodes[f].r.ReadIndex([]byte("r2")); err != nil {
		t.Fatal(err)
	}
	n.stabilize()
	if len(n.nodes[f].reads) != 1 {
		t.Fatalf("follower reads %+v", n.nodes[f].reads)
	}
}

func TestTransferLeadership(t *testing.T) {
	n := newTestNet(t, ids(1, 2, 3), nil, nil)
	l := electLeader(t, n)
	target := consensus.NodeID(1)
	if target == l {
		target = 2
	}
	if err := n.nodes[l].r.TransferLeadership(target); err != nil {
		t.Fatal(err)
	}
	n.stabilize()
	if got := n.leader(); got != target {
		t.Fatalf("leader %d after transfer to %d", got, target)
	}
}
