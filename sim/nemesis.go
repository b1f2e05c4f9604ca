package sim

import (
	"fmt"
	"slices"
	"strings"

	"github.com/ballotdb/ballot/consensus"
)

// nemesis injects faults, once per tick of the safety phase: crashes (often
// of a node with writes not yet synced, so a torn tail is lost), partitions
// of every shape, and flaky periods of heavy loss and duplication.
func (w *world) nemesis() {
	if w.now >= w.flakyEnd {
		w.net.drop, w.net.dup = 0.01, 0.01
	}
	if w.rng.Float64() < 0.003*w.intensity {
		w.net.drop, w.net.dup = 0.3, 0.05
		w.flakyEnd = w.now + int64(10+w.rng.IntN(50))*unitsPerTick
		w.tracef("nemesis: flaky network until t=%d", w.flakyEnd/unitsPerTick)
	}

	if w.rng.Float64() < 0.004*w.intensity {
		var up, unsynced []*machine
		down, voters := 0, 0
		for _, id := range w.order {
			m := w.machines[id]
			if !m.active() {
				continue
			}
			voters++
			if !m.up {
				down++
				continue
			}
			up = append(up, m)
			if len(m.log.unsynced) > 0 {
				unsynced = append(unsynced, m)
			}
		}
		// Mostly keep a majority up; now and then take down more.
		if len(up) > 0 && (down < (voters-1)/2 || w.rng.IntN(10) == 0) {
			pick := up
			if len(unsynced) > 0 && w.rng.IntN(2) == 0 {
				pick = unsynced
			}
			w.crash(pick[w.rng.IntN(len(pick))])
		}
	}

	if w.net.partitioned() {
		if w.now >= w.healAt {
			w.net.heal()
			w.tracef("nemesis: heal")
		}
	} else if w.rng.Float64() < 0.006*w.intensity {
		if ids := w.activeMachines(); len(ids) > 1 {
			target := consensus.None
			if w.rng.IntN(2) == 0 {
				// Single out a group's leader (the one group's, in a
				// single-group run, which draws nothing more).
				g := w.groups[0]
				if w.multi() {
					g = w.groups[w.rng.IntN(len(w.groups))]
				}
				target = g.leader
			}
			shape := partitionShape(w.rng.IntN(int(numPartitionShapes)))
			desc := w.net.partition(shape, ids, target, w.rng)
			w.healAt = w.now + int64(10+w.rng.IntN(int(150/w.intensity)))*unitsPerTick
			w.countPartition()
			w.tracef("nemesis: partition %s until t=%d", desc, w.healAt/unitsPerTick)
		}
	}
}

// restarts brings crashed machines back when their time comes, with every
// replica on them.
func (w *world) restarts() {
	for _, id := range w.order {
		m := w.machines[id]
		if !m.up && m.active() && m.restartAt <= w.now {
			w.restart(m)
		}
	}
}

// admin changes membership and moves leadership while the faults go on.
func (g *group) admin() {
	w := g.w
	l := g.nodes[g.leader]
	if l == nil || !l.up || l.role != consensus.Leader {
		return
	}
	if w.rng.Float64() < 0.015 {
		g.confChange(l)
	}
	if w.rng.Float64() < 0.008 {
		st := l.eng.Status()
		var targets []consensus.NodeID
		for _, id := range st.ConfState.Voters {
			if id != l.id && g.nodes[id] != nil && g.nodes[id].up {
				targets = append(targets, id)
			}
		}
		if len(targets) > 0 {
			t := targets[w.rng.IntN(len(targets))]
			if err := l.eng.TransferLeadership(t); err == nil {
				g.stats.Transfers++
				g.tracef("admin: transfer leadership %d → %d", l.id, t)
			}
			l.dirty = true
		}
	}
}

func (g *group) confChange(l *node) {
	w := g.w
	cs := l.eng.Status().ConfState
	if cs.Joint() {
		return
	}
	pick := func(ids []consensus.NodeID, not consensus.NodeID) consensus.NodeID {
		var c []consensus.NodeID
		for _, id := range ids {
			if id != not {
				c = append(c, id)
			}
		}
		if len(c) == 0 {
			return consensus.None
		}
		return c[w.rng.IntN(len(c))]
	}
	joining := false
	for _, id := range g.order {
		if n := g.nodes[id]; !n.retired && !n.member {
			joining = true
		}
	}
	var upLearners []consensus.NodeID
	for _, id := range cs.Learners {
		if n := g.nodes[id]; n != nil && n.up {
			upLearners = append(upLearners, id)
		}
	}
	type option func() (consensus.ConfChange, *node)
	var opts []option
	if !joining && len(cs.Voters)+len(cs.Learners) < w.opts.Nodes+2 {
		opts = append(opts, func() (consensus.ConfChange, *node) {
			id := g.nextID
			g.nextID++ // IDs are never reused
			n := g.addNode(id, consensus.ConfState{})
			return consensus.ConfChange{Changes: []consensus.ConfChangeSingle{{Type: consensus.AddLearner, NodeID: id}}}, n
		})
	}
	if len(upLearners) > 0 {
		opts = append(opts, func() (consensus.ConfChange, *node) {
			id := pick(upLearners, consensus.None)
			cc := consensus.ConfChange{Changes: []consensus.ConfChangeSingle{{Type: consensus.AddVoter, NodeID: id}}}
			if len(cs.Voters) >= w.opts.Nodes && w.rng.IntN(2) == 0 {
				// Swap a voter out in the same change: joint consensus.
				out := pick(cs.Voters, consensus.None)
				cc.Changes = append(cc.Changes, consensus.ConfChangeSingle{Type: consensus.RemoveNode, NodeID: out})
				g.nodes[out].removing = true
			}
			return cc, nil
		})
		opts = append(opts, func() (consensus.ConfChange, *node) {
			id := pick(upLearners, consensus.None)
			g.nodes[id].removing = true
			return consensus.ConfChange{Changes: []consensus.ConfChangeSingle{{Type: consensus.RemoveNode, NodeID: id}}}, nil
		})
	}
	if len(cs.Voters) > w.opts.Nodes {
		opts = append(opts, func() (consensus.ConfChange, *node) {
			id := pick(cs.Voters, consensus.None) // possibly the leader itself
			g.nodes[id].removing = true
			return consensus.ConfChange{Changes: []consensus.ConfChangeSingle{{Type: consensus.RemoveNode, NodeID: id}}}, nil
		}, func() (consensus.ConfChange, *node) {
			id := pick(cs.Voters, l.id)
			return consensus.ConfChange{Changes: []consensus.ConfChangeSingle{{Type: consensus.AddLearner, NodeID: id}}}, nil
		})
	}
	if len(opts) == 0 {
		return
	}
	cc, joiner := opts[w.rng.IntN(len(opts))]()
	err := l.eng.ProposeConfChange(cc)
	l.dirty = true
	g.tracef("admin: propose conf change %v at n%d: err=%v", cc.Changes, l.id, err)
	if err != nil && joiner != nil {
		g.retire(joiner, "its addition was refused")
	}
}

func readCtx(client, op int) string { return fmt.Sprintf("R|%d|%d", client, op) }

// clientsTick lets each idle client issue a put or a linearizable get, and
// gives up on operations past their deadline.
func (g *group) clientsTick() {
	w := g.w
	for _, c := range g.clients {
		if c.cur != nil {
			if w.now >= c.cur.deadline {
				g.tracef("client %d op %d timed out", c.id, c.cur.op)
				g.abandon(c)
			}
			continue
		}
		if w.rng.Float64() > 0.3 {
			continue
		}
		n := g.nodes[g.leader]
		if n == nil || !n.up || w.rng.IntN(10) < 3 {
			var up []*node
			for _, id := range g.order {
				if m := g.nodes[id]; m.up {
					up = append(up, m)
				}
			}
			if len(up) == 0 {
				continue
			}
			n = up[w.rng.IntN(len(up))]
		}
		op := &clientOp{client: c.id, op: c.nextOp, call: w.now, node: n.id, inc: n.inc, deadline: w.now + 40*unitsPerTick}
		c.nextOp++
		key := g.keys[w.rng.IntN(len(g.keys))]
		n.dirty = true
		if w.rng.IntN(2) == 0 {
			op.in = kvInput{put: true, key: key, value: fmt.Sprintf("%d.%d", c.id, op.op)}
			cmd := command{client: c.id, op: op.op, key: key, value: op.in.value}
			g.chk.proposed(cmd)
			if err := n.eng.Propose(cmd.encode()); err != nil {
				g.tracef("client %d op %d put refused by n%d: %v", c.id, op.op, n.id, err)
				continue
			}
			n.writes[[2]int{c.id, op.op}] = op
			g.tracef("client %d op %d put(%s,%s) → n%d", c.id, op.op, key, op.in.value, n.id)
		} else {
			op.in = kvInput{key: key}
			rctx := readCtx(c.id, op.op)
			if err := n.eng.ReadIndex([]byte(rctx)); err != nil {
				g.tracef("client %d op %d get refused by n%d: %v", c.id, op.op, n.id, err)
				continue
			}
			n.reads[rctx] = op
			g.tracef("client %d op %d get(%s) → n%d", c.id, op.op, key, n.id)
		}
		c.cur = op
	}
}

func (c *client) finished(g *group, op *clientOp) {
	if c.cur == op {
		c.cur = nil
	}
	if g.w.liveness && op.call >= g.w.livenessStart {
		c.livenessDone = true
	}
}

// beginLiveness heals every fault: the network, the crashed nodes. From here
// the cluster must elect a leader and commit everything pending within
// Options.LivenessBound ticks.
func (w *world) beginLiveness() {
	w.liveness, w.livenessStart = true, w.now
	w.net.drop, w.net.dup, w.net.slowRate = 0, 0, 0
	if w.opts.Variant == NeverHeal {
		ids := slices.Clone(w.order)
		for _, a := range ids {
			for _, b := range ids {
				if a != b {
					w.net.block(a, b)
				}
			}
		}
	} else {
		w.net.heal()
	}
	for _, id := range w.order {
		if m := w.machines[id]; !m.up && m.active() {
			m.restartAt = w.now
		}
	}
	w.tracef("liveness phase: network healed, crashed nodes restart")
}

// live reports whether the healed group has converged: one leader that
// every running member follows, everything in its log as of the start of
// its leadership applied everywhere, and a fresh operation by every client
// completed.
func (g *group) live() bool {
	l := g.nodes[g.leader]
	if l == nil || !l.up || l.role != consensus.Leader {
		return false
	}
	st := l.eng.Status()
	if st.Epoch != g.markEpoch {
		g.markEpoch, g.markIndex = st.Epoch, st.LastIndex
	}
	for _, id := range g.order {
		n := g.nodes[id]
		if n.retired || !st.ConfState.IsMember(id) {
			continue
		}
		if !n.up {
			return false
		}
		s := n.eng.Status()
		if s.Epoch != st.Epoch || s.Leader != l.id || s.Applied < g.markIndex {
			return false
		}
	}
	for _, c := range g.clients {
		if !c.livenessDone {
			return false
		}
	}
	return true
}

func (g *group) livenessReport() string {
	var b strings.Builder
	fmt.Fprintf(&b, "leader hint %d, mark %d@%d;", g.leader, g.markIndex, g.markEpoch)
	for _, id := range g.order {
		n := g.nodes[id]
		switch {
		case n.retired:
			fmt.Fprintf(&b, " n%d retired;", id)
		case !n.up:
			fmt.Fprintf(&b, " n%d down;", id)
		default:
			s := n.eng.Status()
			fmt.Fprintf(&b, " n%d %s epoch=%d leader=%d commit=%d applied=%d last=%d;", id, s.Role, s.Epoch, s.Leader, s.Commit, s.Applied, s.LastIndex)
		}
	}
	for _, c := range g.clients {
		if !c.livenessDone {
			fmt.Fprintf(&b, " client %d has no op completed since healing;", c.id)
		}
	}
	return b.String()
}
