package node

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/ballotdb/ballot/consensus"
	"github.com/ballotdb/ballot/internal/testutil"
)

// retryOp retries a membership operation on the current leader until it
// succeeds: the engine refuses a change while another is pending and a
// promotion until the learner caught up.
func retryOp(t *testing.T, c *testCluster, what string, op func(ctx context.Context, lead *Node) error) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		lead := c.leader()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err := op(ctx, lead)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		t.Logf("%s: %v (retrying)", what, err)
		select {
		case <-time.After(20 * time.Millisecond): // back off before retrying
		case <-lead.Done():
		}
	}
}

// TestMembershipOverTCP: a fourth node joins as a learner, catches up, is
// promoted; a voter is removed; the group keeps working, and a member
// restarted with a wrong Peers list still finds its membership on disk.
func TestMembershipOverTCP(t *testing.T) {
	c := newCluster(t, 3, true, nil)
	var acked []string
	write := func(prefix string, n int) {
		for i := range n {
			cmd := fmt.Sprintf("%s-%d", prefix, i)
			if err := proposeRetry(t, c.leader(), cmd, 5*time.Second); err != nil {
				t.Fatalf("propose %s: %v", cmd, err)
			}
			acked = append(acked, cmd)
		}
	}
	write("before", 20)

	addr4 := c.addPeer(4)
	c.start(4, true)
	retryOp(t, c, "add learner 4", func(ctx context.Context, lead *Node) error { return lead.AddLearner(ctx, 4, addr4) })
	c.waitConverged(len(acked))
	if st := c.node(4).Status(); st.Role != consensus.Learner || !st.ConfState.IsLearner(4) {
		t.Fatalf("node 4 is %s with membership %s, want a learner", st.Role, st.ConfState)
	}
	// A follower refuses membership changes, naming the leader.
	lead := c.leader()
	for _, n := range c.running() {
		if n.id == lead.id {
			continue
		}
		err := n.PromoteMember(context.Background(), 4)
		var nl *consensus.NotLeaderError
		if !errors.As(err, &nl) || nl.Leader != lead.id {
			t.Fatalf("PromoteMember on follower %d: %v, want ErrNotLeader naming %d", n.id, err, lead.id)
		}
		break
	}
	retryOp(t, c, "promote 4", func(ctx context.Context, lead *Node) error { return lead.PromoteMember(ctx, 4) })
	write("promoted", 20)

	// Remove a voter other than the leader and 4.
	var victim consensus.NodeID
	for _, n := range c.running() {
		if n.id != c.leader().id && n.id != 4 {
			victim = n.id
			break
		}
	}
	retryOp(t, c, "remove", func(ctx context.Context, lead *Node) error {
		if lead.id == victim {
			return errors.New("victim leads")
		}
		return lead.RemoveMember(ctx, victim)
	})
	// The removed node stops itself once it applies its removal (if it
	// was reachable; it was).
	select {
	case <-c.node(victim).Done():
		if err := c.node(victim).Err(); !errors.Is(err, ErrRemoved) {
			t.Fatalf("removed node stopped with %v, want ErrRemoved", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("removed node did not stop")
	}
	c.node(victim).Stop()
	write("removed", 20)
	c.waitConverged(len(acked))
	c.checkExactlyOnce(acked)
	for _, n := range c.running() {
		cs := n.Status().ConfState
		if !slices.Contains(cs.Voters, 4) || cs.IsMember(victim) || len(cs.Voters) != 3 {
			t.Fatalf("node %d membership %s, want 3 voters with 4 and without %d", n.id, cs, victim)
		}
	}

	// Restart node 4 with a Peers list naming only itself: on an empty
	// dir that would bootstrap a one-node group; its disk says otherwise.
	c.node(4).Stop()
	c.mu.Lock()
	saved := c.peers
	c.peers = map[consensus.NodeID]string{4: addr4}
	c.mu.Unlock()
	n4 := c.start(4, false)
	c.mu.Lock()
	c.peers = saved
	c.mu.Unlock()
	// The membership is rebuilt as the log on disk is applied again.
	testutil.Eventually(t, 10*time.Second, func() bool { return len(n4.Status().ConfState.Voters) == 3 },
		"restarted node 4 has membership %s, want the 3 voters on disk", n4.Status().ConfState)
	write("after", 10)
	c.waitConverged(len(acked))
	c.checkExactlyOnce(acked)
}

// TestSnapshotCatchUp: with snapshots every few entries, a member that was
// down while the log was compacted past it catches up from the leader's
// snapshot; a member restarted from its own snapshot keeps its state.
func TestSnapshotCatchUp(t *testing.T) {
	c := newCluster(t, 3, false, func(cfg *Config) { cfg.SnapshotEntries = 10 })
	lead := c.leader()
	var lag consensus.NodeID
	for _, n := range c.running() {
		if n.id != lead.id {
			lag = n.id
		}
	}
	var acked []string
	write := func(prefix string, n int) {
		for i := range n {
			cmd := fmt.Sprintf("%s-%d", prefix, i)
			if err := proposeRetry(t, c.leader(), cmd, 5*time.Second); err != nil {
				t.Fatalf("propose %s: %v", cmd, err)
			}
			acked = append(acked, cmd)
		}
	}
	write("a", 10)
	c.waitConverged(len(acked))
	c.crash(lag, false)
	lagApplied := c.sm(lag).len()
	write("b", 100)
	testutil.Eventually(t, 10*time.Second, func() bool {
		return c.leader().Status().FirstIndex > uint64(lagApplied)+20
	}, "leader did not compact its log")
	c.start(lag, false)
	c.waitConverged(len(acked))
	c.checkExactlyOnce(acked)
	names, err := c.fss[lag].List("/data/" + fmt.Sprint(lag) + "/snap")
	if err != nil || len(names) == 0 {
		t.Fatalf("lagging node %d has no snapshot files (%v): it did not catch up by snapshot", lag, err)
	}

	// Restart everyone from their own snapshots and logs.
	for _, n := range c.running() {
		c.crash(n.id, false)
	}
	for id := range consensus.NodeID(3) {
		c.start(id+1, false)
	}
	write("c", 5)
	c.waitConverged(len(acked))
	c.checkExactlyOnce(acked)
}

// TestConfChangeSettledWhenLeadershipLost: a membership change proposed to
// a leader that loses its leadership before the change commits is
// answered "outcome unknown" as soon as the leadership goes, on either
// engine, not left to its caller's deadline (the chaos rig's member
// nemesis waited out whole deadlines on Multi-Paxos for this).
func TestConfChangeSettledWhenLeadershipLost(t *testing.T) {
	for _, kind := range []EngineKind{EngineRaft, EnginePaxos} {
		t.Run(string(kind), func(t *testing.T) {
			c := newCluster(t, 3, false, func(cfg *Config) { cfg.EngineKind = kind })
			lead := c.leader()
			for _, n := range c.running() {
				if n.id != lead.id {
					c.crash(n.id, false)
				}
			}
			addr := c.addPeer(4)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			err := lead.AddLearner(ctx, 4, addr)
			if !errors.Is(err, ErrOutcomeUnknown) {
				t.Fatalf("add learner without a quorum: %v, want ErrOutcomeUnknown", err)
			}
			if ctx.Err() != nil {
				t.Fatalf("answered only at the caller's deadline: %v", err)
			}
		})
	}
}
