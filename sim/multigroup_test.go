package sim

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/ballotdb/ballot/consensus"
)

// TestSweepMultiGroup: three groups sharing the virtual nodes, their links
// and each node's log pass a sweep on both engines, and every group on its
// own reaches the activity minimums.
func TestSweepMultiGroup(t *testing.T) {
	seeds := 200
	if testing.Short() {
		seeds = 50
	}
	for _, engine := range EngineNames() {
		t.Run(engine, func(t *testing.T) {
			var out strings.Builder
			m := DefaultMinimums
			res := Sweep(SweepOptions{Run: Options{Engine: engine, Groups: 3}, Start: 9_000, Seeds: seeds,
				NodeCounts: []int{3, 5, 7}, Minimums: &m, TraceDir: t.TempDir(), Out: &out})
			t.Log(out.String())
			if !res.OK() {
				t.Fatalf("sweep failed:\n%s", out.String())
			}
			if len(res.GroupStats) != 3 {
				t.Fatalf("sweep has stats for %d groups, want 3", len(res.GroupStats))
			}
			for g := 1; g <= 3; g++ {
				if want := fmt.Sprintf("exercised by group %d: runs=%d ", g, seeds); !strings.Contains(out.String(), want) {
					t.Fatalf("report lacks %q:\n%s", want, out.String())
				}
			}
			if want := fmt.Sprintf("%d passed, 0 failed\n", seeds); !strings.HasSuffix(out.String(), want) {
				t.Fatalf("sweep report does not end with %q", want)
			}
		})
	}
}

// groupTag matches a trace line of one group in a multi-group run.
var groupTag = regexp.MustCompile(`^t=\d+\.\d+ g\d+ `)

// TestSingleGroupUnchanged: Groups 1 is the default and changes nothing:
// the same run, event for event, as Groups 0, with no group in any trace
// line, report or violation, and per-group stats equal to the run's. (That
// the events are the ones the simulator drew before multi-group mode was
// checked by building both against one tree and comparing traces.)
func TestSingleGroupUnchanged(t *testing.T) {
	for _, engine := range EngineNames() {
		for _, seed := range []uint64{4, 21} {
			o := Options{Engine: engine, Nodes: 5, Seed: seed, SafetyTicks: 300, TraceTail: 1 << 20}
			a := Run(o)
			o.Groups = 1
			b := Run(o)
			if a.Stats != b.Stats || !slices.Equal(a.Trace, b.Trace) {
				t.Fatalf("%s seed %d: Groups 1 and the default differ", engine, seed)
			}
			if len(b.GroupStats) != 1 || b.GroupStats[0] != b.Stats {
				t.Fatalf("%s seed %d: group stats %v, run stats %v", engine, seed, b.GroupStats, b.Stats)
			}
			first := fmt.Sprintf("t=0.0 run seed=%d engine=%s nodes=5 flavor: ", seed, engine)
			if len(b.Trace) < 1000 || !strings.HasPrefix(b.Trace[0], first) {
				t.Fatalf("%s seed %d: trace starts %q, want %q", engine, seed, b.Trace[0], first)
			}
			for _, l := range b.Trace {
				if groupTag.MatchString(l) || strings.Contains(l, "groups=") {
					t.Fatalf("%s seed %d: a single-group trace names a group: %q", engine, seed, l)
				}
			}
		}
	}
	var out strings.Builder
	res := Sweep(SweepOptions{Run: Options{Nodes: 3, Groups: 1, SafetyTicks: 500, Variant: StaleCommit}, Start: 1, Seeds: 4,
		TraceDir: t.TempDir(), Out: &out})
	if res.Failed == 0 {
		t.Fatalf("no failure to report:\n%s", out.String())
	}
	if s := out.String(); strings.Contains(s, "group") {
		t.Fatalf("a single-group report names a group:\n%s", s)
	}
	if v := res.Failures[0].Violation; v.Group != 0 || !strings.HasPrefix(v.Error(), Monotonic+": ") {
		t.Fatalf("single-group violation: group %d, %q", v.Group, v.Error())
	}
}

// TestMultiGroupBrokenGroupCaught: a broken variant switched on in one group
// of three is still caught, by the invariant that catches it in a
// single-group run, and the violation, the report and the replay command
// name that group and the seed. No correct group fails on the way.
func TestMultiGroupBrokenGroupCaught(t *testing.T) {
	o := Options{Nodes: 3, SafetyTicks: 500, Variant: StaleCommit, Groups: 3, BrokenGroup: 2}
	r, ok := hunt(o, 1, 100)
	if !ok {
		t.Fatalf("%s in group 2 of 3 not caught in 100 seeds", o.Variant)
	}
	if r.Violation.Invariant != Monotonic || r.Violation.Group != 2 {
		t.Fatalf("want a %s violation in group 2, got %v (group %d)", Monotonic, r.Violation, r.Violation.Group)
	}
	if want := "group 2: " + Monotonic + ": "; !strings.HasPrefix(r.Violation.Error(), want) {
		t.Fatalf("violation %q does not start with %q", r.Violation.Error(), want)
	}
	t.Logf("caught at seed %d: %s", r.Seed, firstLine(r.Violation.Error()))

	var out strings.Builder
	dir := t.TempDir()
	res := Sweep(SweepOptions{Run: o, Start: r.Seed, Seeds: 1, TraceDir: dir, TraceTail: 500, Out: &out})
	s := out.String()
	for _, want := range []string{
		fmt.Sprintf("FAIL seed %d (3 nodes): group 2: %s: ", r.Seed, Monotonic),
		fmt.Sprintf("replay: go run ./cmd/ballot sim --engine raft --nodes 3 --seed %d --trace --broken stale-commit --groups 3 --broken-group 2", r.Seed),
		"trace: " + dir,
	} {
		if !strings.Contains(s, want) {
			t.Fatalf("report lacks %q:\n%s", want, s)
		}
	}
	f := res.Failures[0]
	if len(f.Trace) == 0 || !strings.Contains(f.Trace[len(f.Trace)-1], "VIOLATION group 2: ") {
		t.Fatalf("trace does not end at group 2's violation: %v", f.Trace[max(0, len(f.Trace)-3):])
	}
}

// TestMultiGroupOptions: what multi-group mode refuses.
func TestMultiGroupOptions(t *testing.T) {
	for _, o := range []Options{
		{Nodes: 3, Groups: maxGroups + 1},
		{Nodes: 3, Groups: -1},
		{Nodes: 3, Groups: 2, BrokenGroup: 3, Variant: StaleCommit},
		{Nodes: 3, Groups: 2, BrokenGroup: 1},                     // no variant to switch on
		{Nodes: 3, Groups: 2, BrokenGroup: 1, Variant: NeverHeal}, // the network is every group's
	} {
		if r := Run(o); r.Violation == nil || r.Violation.Invariant != Contract {
			t.Fatalf("%+v accepted: %v", o, r.Violation)
		}
	}
}

// TestMultiGroupDeterminism: one seed fixes a multi-group run, event for
// event, and every group's events are tagged with it.
func TestMultiGroupDeterminism(t *testing.T) {
	for _, engine := range EngineNames() {
		o := Options{Engine: engine, Nodes: 5, Seed: 8, SafetyTicks: 300, Groups: 3, TraceTail: 1 << 20}
		a, b := Run(o), Run(o)
		if a.Violation != nil {
			t.Fatalf("%s: %v", engine, a.Violation)
		}
		if a.Stats != b.Stats || !slices.Equal(a.Trace, b.Trace) || !slices.Equal(a.GroupStats, b.GroupStats) {
			t.Fatalf("%s: two runs of one seed differ", engine)
		}
		for g := 1; g <= 3; g++ {
			tag := fmt.Sprintf(" g%d deliver ", g)
			if !slices.ContainsFunc(a.Trace, func(l string) bool { return strings.Contains(l, tag) }) {
				t.Fatalf("%s: no message of group %d delivered", engine, g)
			}
		}
	}
}

// quietWorld boots a three-group world and runs it a while without faults,
// so that every group has a leader and client traffic.
func quietWorld(t *testing.T, trace *strings.Builder) *world {
	t.Helper()
	o := Options{Nodes: 3, Seed: 11, Groups: 3}
	if trace != nil {
		o.Trace = trace
	}
	w, err := newWorld(o)
	if err != nil {
		t.Fatal(err)
	}
	w.net.drop, w.net.dup = 0, 0
	w.boot()
	for ; w.now < 100*unitsPerTick && w.err == nil; w.now++ {
		w.step(false)
	}
	if w.err != nil {
		t.Fatal(w.err)
	}
	for _, g := range w.groups {
		if g.stats.Elections == 0 || g.stats.Commits == 0 {
			t.Fatalf("group %d did nothing: %v", g.num, g.stats)
		}
	}
	return w
}

// TestMachineCrashHitsEveryGroup: a virtual node's crash stops every
// group's replica on it, its restart starts them all, and a partition cuts
// every group's messages on the link.
func TestMachineCrashHitsEveryGroup(t *testing.T) {
	w := quietWorld(t, nil)
	m := w.machines[2]
	w.crash(m)
	for _, g := range w.groups {
		if n := g.nodes[2]; n.up || n.eng != nil {
			t.Fatalf("group %d's replica on the crashed node still runs", g.num)
		}
		if n := g.nodes[1]; !n.up {
			t.Fatalf("group %d's replica on another node went down", g.num)
		}
		if g.stats.Crashes != 1 {
			t.Fatalf("group %d counts %d crashes, want 1", g.num, g.stats.Crashes)
		}
	}
	if len(m.log.unsynced) != 0 || m.up {
		t.Fatalf("after the crash: up=%v, %d unsynced records", m.up, len(m.log.unsynced))
	}
	m.restartAt = w.now
	w.restarts()
	for _, g := range w.groups {
		if n := g.nodes[2]; !n.up || n.inc != 2 {
			t.Fatalf("group %d's replica did not restart with the node: up=%v inc=%d", g.num, n.up, n.inc)
		}
	}
	if w.stats.Crashes != 1 {
		t.Fatalf("the run counts %d crashes, want 1", w.stats.Crashes)
	}

	// Cut node 1 off: no group's message crosses its links.
	var trace strings.Builder
	w = quietWorld(t, &trace)
	for _, id := range []consensus.NodeID{2, 3} {
		w.net.block(1, id)
		w.net.block(id, 1)
	}
	trace.Reset()
	for end := w.now + 50*unitsPerTick; w.now < end && w.err == nil; w.now++ {
		w.step(false)
	}
	if w.err != nil {
		t.Fatal(w.err)
	}
	delivered := 0
	for _, l := range strings.Split(trace.String(), "\n") {
		if !strings.Contains(l, " deliver ") {
			continue
		}
		delivered++
		if strings.Contains(l, " 1->") || strings.Contains(l, "->1 ") {
			t.Fatalf("a message crossed a cut link: %s", l)
		}
	}
	if delivered == 0 {
		t.Fatalf("nothing delivered between the other nodes")
	}
}

// TestSharedLog: one node's log carries every group's records. One sync
// makes them all durable; a crash keeps a prefix of them whatever their
// groups, and each group recovers its own state from its own records.
func TestSharedLog(t *testing.T) {
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	cs := consensus.ConfState{Voters: []consensus.NodeID{1}}
	l := &sharedLog{}
	a, b := l.attach(cs, 1), l.attach(cs, 2)
	must(a.write(diskOp{kind: opEntry, ent: ent(1, 1, "a1")}))
	must(b.write(diskOp{kind: opEntry, ent: ent(1, 1, "b1")}))
	must(b.write(diskOp{kind: opHardState, hs: consensus.HardState{Epoch: 1, Commit: 1}}))
	must(l.sync()) // one fsync, both groups
	if a.durable.lastIndex() != 1 || b.durable.lastIndex() != 1 || b.durable.hs.Commit != 1 || a.durable.hs.Commit != 0 {
		t.Fatalf("after sync: a %d, b %d (commit %d)", a.durable.lastIndex(), b.durable.lastIndex(), b.durable.hs.Commit)
	}
	// Interleaved unsynced records: a2 b2 b3 a3. A torn tail keeps a2 b2.
	must(a.write(diskOp{kind: opEntry, ent: ent(2, 1, "a2")}))
	must(b.write(diskOp{kind: opEntry, ent: ent(2, 1, "b2")}))
	must(b.write(diskOp{kind: opEntry, ent: ent(3, 1, "b3")}))
	must(a.write(diskOp{kind: opEntry, ent: ent(3, 1, "a3")}))
	if len(l.unsynced) != 4 {
		t.Fatalf("%d unsynced records, want 4", len(l.unsynced))
	}
	must(l.crash(2))
	for _, c := range []struct {
		d    *disk
		want string
	}{{a, "a2"}, {b, "b2"}} {
		st := c.d.initial()
		if len(st.Entries) != 2 || string(st.Entries[1].Data) != c.want || c.d.view.lastIndex() != 2 {
			t.Fatalf("group %d after the crash: %v, view ends at %d", c.d.group, st.Entries, c.d.view.lastIndex())
		}
	}
	// One group's synced snapshot write is an fsync of the whole log: the
	// other group's earlier write becomes durable with it.
	must(b.write(diskOp{kind: opHardState, hs: consensus.HardState{Epoch: 2, Commit: 2}}))
	must(a.writeSynced(diskOp{kind: opCompact, snap: consensus.Snapshot{Meta: consensus.SnapshotMeta{Index: 2, Epoch: 1, ConfState: cs}}}))
	must(l.crash(0))
	if b.durable.hs.Commit != 2 || a.durable.snap.Meta.Index != 2 {
		t.Fatalf("after writeSynced and a crash: b commit %d, a snapshot %d", b.durable.hs.Commit, a.durable.snap.Meta.Index)
	}
}
