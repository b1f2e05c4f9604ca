package sim

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"github.com/ballotdb/ballot/consensus"
)

// unitsPerTick is how many time units make one engine tick. Messages take a
// few units, so several round trips fit in a heartbeat.
const unitsPerTick = 10

// Options configures one run.
type Options struct {
	Engine string // a key of Engines; default "raft"
	Nodes  int    // initial voters: 3, 5 or 7
	Seed   uint64 // fixes the whole run
	// SafetyTicks is the length of the faulty phase, in ticks. Default 500.
	SafetyTicks int
	// LivenessBound is how many ticks the healed cluster has to elect a
	// leader and commit every pending proposal. Default 250.
	LivenessBound int
	// Variant switches on a deliberately broken variant.
	Variant Variant
	// Trace, when set, receives every event of the run as it happens.
	Trace io.Writer
	// TraceTail, when positive, keeps the last TraceTail events; they are
	// returned in Result.Trace.
	TraceTail int
	// LinearizabilityTimeout bounds porcupine. Default 10s.
	LinearizabilityTimeout time.Duration
	// Disable turns invariants off by name (tests use it to show that each
	// checker on its own catches a broken variant).
	Disable []string
	// Groups is how many consensus groups share the virtual nodes (see
	// "Multi-group mode" in the package doc). Default 1: a single group,
	// the same run, event for event, as before the mode existed.
	Groups int
	// BrokenGroup, when positive, switches Variant on in that group only
	// (numbered from 1); the other groups run correctly. Zero: every group.
	BrokenGroup int
}

// maxGroups bounds Options.Groups.
const maxGroups = 16

func (o *Options) defaults() error {
	if o.Engine == "" {
		o.Engine = "raft"
	}
	if _, ok := Engines[o.Engine]; !ok {
		return fmt.Errorf("sim: unknown engine %q (known: %s)", o.Engine, strings.Join(EngineNames(), ", "))
	}
	if o.Nodes < 1 || o.Nodes > 9 {
		return fmt.Errorf("sim: Nodes must be between 1 and 9, got %d", o.Nodes)
	}
	if o.SafetyTicks == 0 {
		o.SafetyTicks = 500
	}
	if o.LivenessBound == 0 {
		o.LivenessBound = 250
	}
	if o.LinearizabilityTimeout == 0 {
		o.LinearizabilityTimeout = 10 * time.Second
	}
	if o.Groups == 0 {
		o.Groups = 1
	}
	if o.Groups < 1 || o.Groups > maxGroups {
		return fmt.Errorf("sim: Groups must be between 1 and %d, got %d", maxGroups, o.Groups)
	}
	switch {
	case o.BrokenGroup < 0 || o.BrokenGroup > o.Groups:
		return fmt.Errorf("sim: BrokenGroup %d is not a group of 1..%d", o.BrokenGroup, o.Groups)
	case o.BrokenGroup > 0 && o.Variant == Correct:
		return fmt.Errorf("sim: BrokenGroup %d names no broken variant", o.BrokenGroup)
	case o.BrokenGroup > 0 && o.Variant == NeverHeal:
		// The network is every group's: it cannot stay cut for one.
		return fmt.Errorf("sim: %s breaks the shared network, not one group", NeverHeal)
	}
	return nil
}

// Stats is what a run exercised. Sweeps add them up and assert minimums, so
// a sweep that does little cannot pass.
type Stats struct {
	Runs          int
	Ticks         int64
	Elections     int // distinct (epoch, leader) pairs
	Commits       int // distinct log indexes applied
	ConfChanges   int // membership entries applied
	Transfers     int // leadership transfers started
	Partitions    int
	Crashes       int
	Writes        int // client writes acknowledged
	WritesUnknown int // client writes whose outcome was never learned
	Reads         int // linearizable reads completed and checked
	Snapshots     int // snapshots installed from a leader
	Compactions   int // application snapshots taken (log compacted)
	Messages      int
	Dropped       int
}

// Add accumulates o into s.
func (s *Stats) Add(o Stats) {
	s.Runs += o.Runs
	s.Ticks += o.Ticks
	s.Elections += o.Elections
	s.Commits += o.Commits
	s.ConfChanges += o.ConfChanges
	s.Transfers += o.Transfers
	s.Partitions += o.Partitions
	s.Crashes += o.Crashes
	s.Writes += o.Writes
	s.WritesUnknown += o.WritesUnknown
	s.Reads += o.Reads
	s.Snapshots += o.Snapshots
	s.Compactions += o.Compactions
	s.Messages += o.Messages
	s.Dropped += o.Dropped
}

func (s Stats) String() string {
	return fmt.Sprintf("runs=%d ticks=%d elections=%d commits=%d conf-changes=%d transfers=%d partitions=%d crashes=%d "+
		"writes=%d writes-unknown=%d reads=%d snapshots-installed=%d compactions=%d messages=%d dropped=%d",
		s.Runs, s.Ticks, s.Elections, s.Commits, s.ConfChanges, s.Transfers, s.Partitions, s.Crashes,
		s.Writes, s.WritesUnknown, s.Reads, s.Snapshots, s.Compactions, s.Messages, s.Dropped)
}

// Result is the outcome of one run.
type Result struct {
	Seed      uint64
	Violation *Violation // nil when every invariant held
	// Stats is what the run exercised. In a multi-group run it sums the
	// groups' stats, except Crashes and Partitions, which count each
	// node crash and each partition once however many groups it hit.
	Stats Stats
	// GroupStats is what each group exercised, in group order (one entry
	// in a single-group run, equal to Stats).
	GroupStats []Stats
	// Trace holds the last Options.TraceTail events, when asked for.
	Trace []string
}

// node is one group's replica on a virtual node (a machine): the engine
// and the state machine around it. In a single-group run a node and its
// machine are one simulated process.
type node struct {
	id      consensus.NodeID
	g       *group
	m       *machine
	eng     consensus.Engine
	up      bool // the engine runs. Invariant: up implies m.up.
	retired bool // removed from the group for good
	member  bool // has been seen in the leader's configuration
	// removing says the simulator proposed this node's removal; it is
	// retired once the leading configuration no longer holds it.
	removing bool
	joinAt   int64
	inc      int   // incarnation: bumped at every restart
	disk     *disk // the group's storage in the machine's shared log
	kv       *kvState
	applied  uint64
	// appliedEpoch is the epoch of the entry at applied.
	appliedEpoch uint64
	lastSnap     uint64
	// pending is a Ready whose durable parts await the machine's sync.
	pending *consensus.Ready
	floor   uint64 // durable commit when this incarnation started
	dirty   bool
	role    consensus.Role
	// Client operations this incarnation is serving.
	writes   map[[2]int]*clientOp
	reads    map[string]*clientOp
	readWait []consensus.ReadState
	staleHS  consensus.HardState // the durable HardState before the latest (for StaleCommit)
	// lastPromise is the last Paxos promise written (for aimCrash).
	lastPromise uint64
	lastEpoch   uint64
}

// machine is a virtual node: one process hosting a replica of each group
// placed on it (replica IDs are machine IDs), with one disk holding one
// shared log, and one link to each other machine. A crash, restart or
// partition of a machine hits all its replicas at once.
type machine struct {
	id       consensus.NodeID
	up       bool
	log      *sharedLog
	replicas []*node // by group index; nil where the group has none
	// syncAt, when non-negative, is the time of the shared log's next
	// fsync, which completes the pending Ready of every replica.
	syncAt    int64
	restartAt int64
	// crashAt, when non-negative, is a crash the nemesis aimed at a
	// moment: between a write and its sync, or right after a vote.
	crashAt int64
	// quickRestart makes the next crash restart at once (set by aimCrash).
	quickRestart bool
}

// active reports whether some group still has a replica on m.
func (m *machine) active() bool {
	for _, n := range m.replicas {
		if n != nil && !n.retired {
			return true
		}
	}
	return false
}

// churnEvent is a planned failure of the leader of epoch, if it still leads.
type churnEvent struct {
	at    int64
	id    consensus.NodeID
	epoch uint64
}

type client struct {
	id     int
	nextOp int
	cur    *clientOp
	// livenessDone is set once an operation called in the liveness phase
	// completed.
	livenessDone bool
}

// world is one run: virtual time, the RNGs, the network and the machines,
// shared by every group.
type world struct {
	opts     Options
	rng      *rand.Rand
	net      *network
	factory  EngineFactory
	now      int64
	machines map[consensus.NodeID]*machine
	order    []consensus.NodeID // machine IDs, sorted
	groups   []*group
	// stats counts what happens to machines, once per event: crashes and
	// partitions (each group counts them too, in its own stats).
	stats         Stats
	err           *Violation
	liveness      bool
	livenessStart int64
	healAt        int64
	flakyEnd      int64
	// intensity scales the nemesis (1 = mild, 4 = brutal), fixed per run.
	intensity float64
	// churn is the chance that a newly elected leader is crashed soon.
	churn     float64
	faulty    bool
	trace     []string
	traceHead int
	traceFull bool
}

// group is one consensus group: its replicas, state machine, clients,
// history and checker. Its replicas live on the world's machines.
type group struct {
	w       *world
	idx     int // index in w.groups
	num     int // idx+1, as printed
	variant Variant
	flavor  uint64
	chk     *checker
	nodes   map[consensus.NodeID]*node
	order   []consensus.NodeID
	nextID  consensus.NodeID
	clients []*client
	keys    []string
	hist    history
	stats   Stats
	// leader is the last node seen leading (a hint for clients and admin).
	leader consensus.NodeID
	// markEpoch and markIndex: the leader's epoch and last index when it was
	// first seen leading in the liveness phase; everything up to markIndex
	// must be applied on every member.
	markEpoch, markIndex uint64
	// leaderEpoch is the highest epoch seen led.
	leaderEpoch uint64
	// snapEvery is how many applied entries between application snapshots.
	snapEvery uint64
	churnAt   []churnEvent
}

// Run executes one seeded run and reports what it found.
func Run(opts Options) (res Result) {
	w, err := newWorld(opts)
	if err != nil {
		return Result{Seed: opts.Seed, Violation: violation(Contract, "%v", err)}
	}
	defer func() {
		// A panic in an engine is an invariant it checks itself: report
		// it as a violation of the run, with the seed, not a crash.
		if p := recover(); p != nil {
			w.fail(violation(Contract, "panic at t=%d: %v", w.now, p))
			res = w.result()
		}
	}()
	w.boot()
	w.run()
	return w.result()
}

// newWorld draws a run's parameters from its seed.
func newWorld(opts Options) (*world, error) {
	if err := opts.defaults(); err != nil {
		return nil, err
	}
	w := &world{
		opts:     opts,
		rng:      rand.New(rand.NewPCG(opts.Seed, opts.Seed^0x5851f42d4c957f2d)),
		factory:  Engines[opts.Engine],
		machines: map[consensus.NodeID]*machine{},
	}
	w.net = newNetwork(rand.New(rand.NewPCG(opts.Seed^0xda942042e4dd58b5, opts.Seed)))
	// One connection per machine pair carries every group: its bound on
	// messages in flight grows with them.
	w.net.limit *= opts.Groups
	for i := range opts.Groups {
		g := &group{w: w, idx: i, num: i + 1, chk: newChecker(), nodes: map[consensus.NodeID]*node{}, keys: []string{"a", "b", "c"}}
		g.chk.logMatching = logMatchingEngines[opts.Engine]
		if opts.BrokenGroup == 0 || opts.BrokenGroup == g.num {
			g.variant = opts.Variant
		}
		w.groups = append(w.groups, g)
	}
	// The first group draws what a single-group run draws, in the same
	// order; the others draw theirs after, so a single group replays the
	// runs it always did.
	g1 := w.groups[0]
	g1.flavor = w.rng.Uint64()
	g1.snapEvery = uint64(10 + w.rng.IntN(40))
	w.intensity = float64(1 + w.rng.IntN(4))
	if w.rng.IntN(2) == 0 {
		w.churn = 0.8
	}
	for _, g := range w.groups[1:] {
		g.flavor = w.rng.Uint64()
		g.snapEvery = uint64(10 + w.rng.IntN(40))
	}
	w.net.drop, w.net.dup = 0.01, 0.01
	if opts.TraceTail > 0 {
		w.trace = make([]string, opts.TraceTail)
	}
	return w, nil
}

func (w *world) multi() bool { return w.opts.Groups > 1 }

func (w *world) result() Result {
	ticks := w.now / unitsPerTick
	res := Result{Seed: w.opts.Seed, Violation: w.err}
	for _, g := range w.groups {
		gs := g.stats
		gs.Runs, gs.Ticks = 1, ticks
		res.GroupStats = append(res.GroupStats, gs)
		res.Stats.Add(gs)
	}
	res.Stats.Runs, res.Stats.Ticks = 1, ticks
	if w.multi() {
		res.Stats.Crashes, res.Stats.Partitions = w.stats.Crashes, w.stats.Partitions
	}
	if w.trace != nil {
		if w.traceFull {
			res.Trace = append(slices.Clone(w.trace[w.traceHead:]), w.trace[:w.traceHead]...)
		} else {
			res.Trace = slices.Clone(w.trace[:w.traceHead])
		}
	}
	return res
}

func (w *world) tracing() bool { return w.opts.Trace != nil || w.trace != nil }

func (w *world) tracef(format string, args ...any) {
	if !w.tracing() {
		return
	}
	line := fmt.Sprintf("t=%d.%d ", w.now/unitsPerTick, w.now%unitsPerTick) + fmt.Sprintf(format, args...)
	if w.opts.Trace != nil {
		fmt.Fprintln(w.opts.Trace, line)
	}
	if w.trace != nil {
		w.trace[w.traceHead] = line
		w.traceHead++
		if w.traceHead == len(w.trace) {
			w.traceHead, w.traceFull = 0, true
		}
	}
}

// tracef traces an event of the group, tagged with it in a multi-group run.
func (g *group) tracef(format string, args ...any) {
	if !g.w.tracing() {
		return
	}
	if g.w.multi() {
		format = "g%d " + format
		args = append([]any{g.num}, args...)
	}
	g.w.tracef(format, args...)
}

func (w *world) fail(v *Violation) {
	if v == nil || w.err != nil || slices.Contains(w.opts.Disable, v.Invariant) {
		return
	}
	w.err = v
	w.tracef("VIOLATION %s", v)
}

// fail reports a violation of the group's invariants, naming the group in a
// multi-group run.
func (g *group) fail(v *Violation) {
	if v == nil {
		return
	}
	if g.w.multi() {
		v.Group = g.num
	}
	g.w.fail(v)
}

// failStorage reports a record of machine m's log that could not be
// replayed, against the group it belongs to.
func (w *world) failStorage(m *machine, err error) {
	v := violation(Contract, "node %d: %v", m.id, err)
	var re *recordError
	if errors.As(err, &re) && w.multi() {
		v.Group = re.group
	}
	w.fail(v)
}

// boot places every group's initial voters on the first Nodes machines.
func (w *world) boot() {
	initial := make([]consensus.NodeID, w.opts.Nodes)
	for i := range initial {
		initial[i] = consensus.NodeID(i + 1)
	}
	for _, g := range w.groups {
		g.nextID = consensus.NodeID(w.opts.Nodes + 1)
		preVote, checkQuorum := RaftFlavor(g.flavor)
		if !w.multi() {
			w.tracef("run seed=%d engine=%s nodes=%d flavor: prevote=%v checkquorum=%v snapshot every %d, variant=%q",
				w.opts.Seed, w.opts.Engine, w.opts.Nodes, preVote, checkQuorum, g.snapEvery, w.opts.Variant)
		} else {
			if g.idx == 0 {
				w.tracef("run seed=%d engine=%s nodes=%d groups=%d variant=%q in group %d (0: all)",
					w.opts.Seed, w.opts.Engine, w.opts.Nodes, w.opts.Groups, w.opts.Variant, w.opts.BrokenGroup)
			}
			g.tracef("flavor: prevote=%v checkquorum=%v snapshot every %d, variant=%q",
				preVote, checkQuorum, g.snapEvery, g.variant)
		}
		for _, id := range initial {
			n := g.addNode(id, consensus.ConfState{Voters: initial})
			n.member = true
		}
		for i := range 4 {
			g.clients = append(g.clients, &client{id: i + 1, nextOp: 1})
		}
	}
}

// run is the safety phase, the liveness phase and the final checks.
func (w *world) run() {
	end := int64(w.opts.SafetyTicks) * unitsPerTick
	for ; w.now < end && w.err == nil; w.now++ {
		w.step(true)
	}
	if w.err != nil {
		return
	}
	w.beginLiveness()
	deadline := w.now + int64(w.opts.LivenessBound)*unitsPerTick
	for ; w.now < deadline && w.err == nil; w.now++ {
		w.step(false)
		if w.now%unitsPerTick == 0 && w.live() {
			w.tracef("liveness: healed cluster converged")
			break
		}
	}
	if w.err != nil {
		return
	}
	for _, g := range w.groups {
		if !g.live() {
			g.fail(violation(Liveness, "%d ticks after healing: %s", w.opts.LivenessBound, g.livenessReport()))
			return
		}
	}
	for _, g := range w.groups {
		// Operations still outstanding never learned their outcome.
		for _, c := range g.clients {
			g.abandon(c)
		}
		g.fail(checkLinearizable(g.hist.ops, w.opts.LinearizabilityTimeout))
		if w.err != nil {
			return
		}
	}
}

// live reports whether every group has converged. Each group is asked, so
// each sets its liveness mark when it first sees its leader.
func (w *world) live() bool {
	ok := true
	for _, g := range w.groups {
		if !g.live() {
			ok = false
		}
	}
	return ok
}

// addNode places a replica of g with the given ID on the machine of that
// ID, booting the machine if nothing runs on it. On a machine that is down
// the replica starts when the machine restarts.
func (g *group) addNode(id consensus.NodeID, cs consensus.ConfState) *node {
	w := g.w
	m := w.machines[id]
	if m == nil {
		m = &machine{id: id, log: &sharedLog{}, replicas: make([]*node, len(w.groups)), syncAt: -1, crashAt: -1}
		w.machines[id] = m
		w.order = append(w.order, id)
		slices.Sort(w.order)
	}
	if !m.active() {
		// Nothing runs there: a fresh process.
		m.up, m.syncAt, m.crashAt, m.quickRestart = true, -1, -1, false
	}
	group := 0
	if w.multi() {
		group = g.num
	}
	n := &node{id: id, g: g, m: m, disk: m.log.attach(cs, group), joinAt: w.now}
	// Raft's storage drops the whole log on a snapshot install; a Paxos
	// acceptor keeps what it accepted after the snapshot (the WAL's rule).
	n.disk.installKeepsSuffix = !logMatchingEngines[w.opts.Engine]
	m.replicas[g.idx] = n
	g.nodes[id] = n
	g.order = append(g.order, id)
	slices.Sort(g.order)
	if m.up {
		g.start(n)
	}
	return n
}

// start (re)creates n's engine from its durable storage.
func (g *group) start(n *node) {
	w := g.w
	st := n.disk.initial()
	switch g.variant {
	case ForgetVote:
		st.HardState.Vote = consensus.None
	case StaleCommit:
		if n.staleHS.Commit >= st.Snapshot.Index {
			st.HardState.Commit = n.staleHS.Commit
		}
	}
	eng, err := w.factory(EngineConfig{
		ID: n.id, Seed: nodeSeed(groupSeed(w.opts.Seed, g.num), n.id) + uint64(n.inc), ElectionTicks: 10, HeartbeatTicks: 1,
		Flavor: g.flavor, Variant: g.variant, Nodes: w.opts.Nodes,
	}, st)
	if err != nil {
		g.fail(violation(Contract, "node %d cannot restart from its durable state: %v", n.id, err))
		return
	}
	n.eng, n.up, n.inc = eng, true, n.inc+1
	n.kv = newKV()
	n.applied, n.appliedEpoch, n.lastSnap = st.Snapshot.Index, st.Snapshot.Epoch, st.Snapshot.Index
	if st.Snapshot.Index > 0 {
		kv, err := decodeKV(n.disk.durable.snap.Data)
		if err != nil {
			g.fail(violation(Contract, "node %d: snapshot at %d unreadable: %v", n.id, st.Snapshot.Index, err))
			return
		}
		n.kv = kv
	}
	n.floor = n.disk.durable.hs.Commit
	n.pending, n.readWait = nil, nil
	n.writes, n.reads = map[[2]int]*clientOp{}, map[string]*clientOp{}
	n.dirty, n.role = true, consensus.Follower
	g.tracef("n%d start inc=%d hs=%+v snap=%d entries=%d", n.id, n.inc, st.HardState, st.Snapshot.Index, len(st.Entries))
}

// restart brings machine m back: every replica still in its group starts
// from what its group's disk holds.
func (w *world) restart(m *machine) {
	m.up, m.syncAt = true, -1
	for _, n := range m.replicas {
		if n != nil && !n.retired {
			n.g.start(n)
		}
	}
}

// crash stops machine m and every replica on it. Its shared log keeps a
// random prefix of the unsynced records, whatever group wrote them.
func (w *world) crash(m *machine) {
	keep := w.rng.IntN(len(m.log.unsynced) + 1)
	if w.multi() && w.tracing() {
		// Which groups' records the torn tail kept, and which it lost.
		var b strings.Builder
		for i, r := range m.log.unsynced {
			if i == keep {
				b.WriteString(" |")
			}
			fmt.Fprintf(&b, " g%d", r.d.group)
		}
		if keep == len(m.log.unsynced) {
			b.WriteString(" |")
		}
		w.tracef("n%d CRASH (keeps %d of %d unsynced writes:%s)", m.id, keep, len(m.log.unsynced), b.String())
	} else {
		w.tracef("n%d CRASH (keeps %d of %d unsynced writes)", m.id, keep, len(m.log.unsynced))
	}
	before := make([]consensus.HardState, len(m.replicas))
	for i, n := range m.replicas {
		if n != nil {
			before[i] = n.disk.durable.hs
		}
	}
	if err := m.log.crash(keep); err != nil {
		w.failStorage(m, err)
	}
	var wasUp []*node
	for i, n := range m.replicas {
		if n == nil {
			continue
		}
		if n.disk.durable.hs != before[i] {
			n.staleHS = before[i]
		}
		if n.up {
			wasUp = append(wasUp, n)
			n.up, n.eng = false, nil
		}
	}
	m.up, m.crashAt = false, -1
	m.restartAt = w.now + int64(10+w.rng.IntN(70))*unitsPerTick
	if w.rng.IntN(3) == 0 {
		// A supervisor restarts the process at once.
		m.restartAt = w.now + int64(w.rng.IntN(2))*unitsPerTick
	}
	if m.quickRestart {
		m.restartAt, m.quickRestart = w.now, false
	}
	w.stats.Crashes++
	for _, n := range wasUp {
		n.g.stats.Crashes++
		n.g.failOps(n)
	}
}

// failOps ends the client operations n was serving: writes become unknown
// (they may still commit), reads are dropped (they had no effect).
func (g *group) failOps(n *node) {
	for _, c := range g.clients {
		if c.cur != nil && c.cur.node == n.id && c.cur.inc == n.inc {
			g.abandon(c)
		}
	}
	n.writes, n.reads, n.readWait = map[[2]int]*clientOp{}, map[string]*clientOp{}, nil
}

func (g *group) abandon(c *client) {
	if c.cur == nil {
		return
	}
	if c.cur.in.put {
		g.hist.unknown(c.cur)
		g.stats.WritesUnknown++
		g.tracef("client %d op %d outcome unknown", c.id, c.cur.op)
	}
	if n := g.nodes[c.cur.node]; n != nil && n.inc == c.cur.inc {
		delete(n.writes, [2]int{c.id, c.cur.op})
		delete(n.reads, readCtx(c.id, c.cur.op))
	}
	c.cur = nil
}

// step advances virtual time by one unit.
func (w *world) step(faults bool) {
	w.faulty = faults
	for _, id := range w.order {
		if m := w.machines[id]; m.up && m.crashAt >= 0 && m.crashAt <= w.now {
			w.crash(m)
		}
	}
	for _, g := range w.groups {
		g.churnStep()
	}
	if w.now%unitsPerTick == 0 {
		for _, g := range w.groups {
			for _, id := range g.order {
				if n := g.nodes[id]; n.up {
					n.eng.Tick()
					n.dirty = true
				}
			}
		}
		if faults {
			w.nemesis()
			for _, g := range w.groups {
				g.admin()
			}
		}
		w.restarts()
		for _, g := range w.groups {
			g.clientsTick()
		}
	}
	for w.err == nil {
		e, lost, ok := w.net.due(w.now)
		if !ok {
			break
		}
		g := w.groups[e.group]
		if lost {
			g.stats.Dropped++
			g.reportSnap(e, false)
			continue
		}
		g.deliver(e)
	}
	for _, id := range w.order {
		if m := w.machines[id]; m.up && m.syncAt >= 0 && m.syncAt <= w.now && w.err == nil {
			w.finishSync(m)
		}
	}
	for _, g := range w.groups {
		for _, id := range g.order {
			if n := g.nodes[id]; n.up && w.err == nil {
				g.drain(n)
			}
		}
	}
	for _, g := range w.groups {
		for _, id := range g.order {
			if n := g.nodes[id]; n.up && n.dirty && w.err == nil {
				g.checkNode(n)
			}
		}
	}
}

func (g *group) deliver(e envelope) {
	n := g.nodes[e.m.To]
	if n == nil || !n.up {
		g.reportSnap(e, false)
		return
	}
	g.tracef("deliver %s", e.m)
	if err := n.eng.Step(e.m); err != nil && !errors.Is(err, consensus.ErrProposalDropped) && !errors.Is(err, consensus.ErrNotLeader) {
		g.tracef("n%d step error: %v", n.id, err)
	}
	n.dirty = true
	g.reportSnap(e, true)
	g.drain(n)
}

// reportSnap tells a snapshot's sender, if still the same process, how the
// transfer ended, as a runtime's transport would.
func (g *group) reportSnap(e envelope, ok bool) {
	if e.m.Type != consensus.MsgSnap {
		return
	}
	if s := g.nodes[e.m.From]; s != nil && s.up && s.inc == e.fromInc {
		s.eng.ReportSnapshot(e.m.To, ok)
		s.dirty = true
	}
}

// drain handles n's Readies until one must wait for the disk. A Ready that
// must be synced joins the machine's next fsync of its shared log (group
// commit) or schedules one.
func (g *group) drain(n *node) {
	w, m := g.w, n.m
	for n.up && n.pending == nil && w.err == nil && n.eng.HasReady() {
		rd := n.eng.Ready()
		n.dirty = true
		g.write(n, &rd)
		if w.err != nil {
			return
		}
		if !rd.MustSync {
			g.complete(n, &rd)
			continue
		}
		if m.syncAt < 0 {
			m.syncAt = w.now + 1 + w.rng.Int64N(6)
			if w.rng.IntN(50) == 0 {
				m.syncAt += w.rng.Int64N(40) // a slow disk
			}
		}
		g.aimCrash(n, &rd)
		if g.variant == SendBeforePersist {
			g.complete(n, &rd)
			continue
		}
		n.pending = &rd
	}
}

// churnStep carries out the leader failures planned for now: a crash of the
// leader's machine, or its isolation when the network is whole.
func (g *group) churnStep() {
	w := g.w
	keep := g.churnAt[:0]
	for _, ev := range g.churnAt {
		if ev.at > w.now {
			keep = append(keep, ev)
			continue
		}
		n := g.nodes[ev.id]
		if !w.faulty || n == nil || !n.up || n.eng.Status().Epoch != ev.epoch {
			continue
		}
		if w.net.partitioned() || w.rng.IntN(2) == 0 {
			w.crash(n.m)
			continue
		}
		desc := w.net.partition(shapeIsolate, w.activeMachines(), n.id, w.rng)
		w.healAt = w.now + int64(2+w.rng.IntN(30))*unitsPerTick
		w.countPartition()
		g.tracef("nemesis: churn: %s until t=%d", desc, w.healAt/unitsPerTick)
	}
	g.churnAt = keep
}

// activeMachines lists the machines some group still has a replica on.
func (w *world) activeMachines() []consensus.NodeID {
	var ids []consensus.NodeID
	for _, id := range w.order {
		if w.machines[id].active() {
			ids = append(ids, id)
		}
	}
	return ids
}

// countPartition counts a partition once for the run and once for each
// group, all of whose messages it cuts.
func (w *world) countPartition() {
	w.stats.Partitions++
	for _, g := range w.groups {
		g.stats.Partitions++
	}
}

// aimCrash sometimes schedules a crash at the most dangerous moments: after
// a Ready is written but before it is synced (what was not synced is lost),
// and right after a vote is made durable and sent (the voter restarts at
// once, while the election is still going on). The crash is the machine's:
// it takes every group on it down. Each group's chance is divided by the
// number of groups, so a machine is not crashed more often for hosting more.
func (g *group) aimCrash(n *node, rd *consensus.Ready) {
	w, m := g.w, n.m
	if !w.faulty || m.crashAt >= 0 {
		return
	}
	switch {
	case (rd.HardState.Vote != consensus.None || g.promised(n, rd)) && w.rng.Float64() < 0.05*w.intensity/float64(len(w.groups)):
		m.crashAt = m.syncAt + 1 + w.rng.Int64N(unitsPerTick)
		// A Paxos acceptor comes back at once, while the proposers it
		// promised and the ones it refused are both still at work.
		m.quickRestart = !g.chk.logMatching
	case w.rng.Float64() < 0.002*w.intensity/float64(len(w.groups)):
		m.crashAt = w.now + w.rng.Int64N(m.syncAt-w.now+1)
	}
}

// promised reports whether rd makes a new Paxos promise durable (to another
// proposer's ballot, or to the node's own when it starts phase 1): the
// Paxos counterpart of a vote. Always false for Raft, whose runs draw no
// randomness for it.
func (g *group) promised(n *node, rd *consensus.Ready) bool {
	if g.chk.logMatching || rd.HardState.IsEmpty() || rd.HardState.Epoch == n.lastPromise {
		return false
	}
	n.lastPromise = rd.HardState.Epoch
	return true
}

// finishSync is the fsync of m's shared log: every group's writes become
// durable together, and every replica whose Ready waited for it goes on.
func (w *world) finishSync(m *machine) {
	if err := m.log.sync(); err != nil {
		w.failStorage(m, err)
		return
	}
	m.syncAt = -1
	// Every pending Ready was written before this sync; one that a
	// replica's drain writes below waits for the next.
	for _, n := range m.replicas {
		if n == nil || !n.up || w.err != nil {
			continue
		}
		if rd := n.pending; rd != nil {
			n.pending = nil
			n.g.complete(n, rd)
		}
		n.g.drain(n)
	}
}

// write performs the durable part of rd on n's disk (unsynced until the
// sync), checking log matching on every entry and leader completeness on the
// first entry of each new epoch.
func (g *group) write(n *node, rd *consensus.Ready) {
	w := g.w
	d := n.disk
	fail := func(err error) { g.fail(violation(Contract, "node %d: %v", n.id, err)) }
	if rd.Snapshot != nil {
		if err := d.write(diskOp{kind: opInstall, snap: *rd.Snapshot}); err != nil {
			fail(err)
			return
		}
	}
	if rd.Truncate {
		if err := d.write(diskOp{kind: opTruncate, after: rd.TruncateAfter}); err != nil {
			fail(err)
			return
		}
	}
	for _, e := range rd.Entries {
		prev, ok := d.view.epochAt(e.Index - 1)
		if err := d.write(diskOp{kind: opEntry, ent: e}); err != nil {
			fail(err)
			return
		}
		if ok && g.chk.logMatching {
			if v := g.chk.observeWrite(n.id, e, prev); v != nil {
				g.fail(v)
				return
			}
		}
	}
	if len(rd.Entries) > 0 && g.chk.logMatching {
		last := rd.Entries[len(rd.Entries)-1]
		if v := g.chk.checkCompleteness(n.id, last.Epoch, last.Index, d.view.snap.Meta.Index, d.view.entryAt); v != nil {
			g.fail(v)
			return
		}
	}
	if !rd.HardState.IsEmpty() {
		if err := d.write(diskOp{kind: opHardState, hs: rd.HardState}); err != nil {
			fail(err)
			return
		}
	}
	if w.tracing() && (rd.Snapshot != nil || rd.Truncate || len(rd.Entries) > 0 || !rd.HardState.IsEmpty()) {
		var b strings.Builder
		if rd.Snapshot != nil {
			fmt.Fprintf(&b, " install-snap=%d/%d", rd.Snapshot.Meta.Index, rd.Snapshot.Meta.Epoch)
		}
		if rd.Truncate {
			fmt.Fprintf(&b, " truncate-after=%d", rd.TruncateAfter)
		}
		if len(rd.Entries) > 0 {
			fmt.Fprintf(&b, " entries=%d..%d", rd.Entries[0].Index, rd.Entries[len(rd.Entries)-1].Index)
		}
		if !rd.HardState.IsEmpty() {
			fmt.Fprintf(&b, " hs=%+v", rd.HardState)
		}
		fmt.Fprintf(&b, " sync=%v", rd.MustSync)
		g.tracef("n%d write%s", n.id, b.String())
	}
}

// complete sends rd's messages, applies its snapshot and committed entries,
// serves reads, and advances the engine.
func (g *group) complete(n *node, rd *consensus.Ready) {
	w := g.w
	for _, m := range rd.Messages {
		g.send(n, m)
	}
	if s := rd.Snapshot; s != nil {
		kv, err := decodeKV(s.Data)
		if err != nil {
			g.fail(violation(Contract, "node %d: installed snapshot at %d unreadable: %v", n.id, s.Meta.Index, err))
			return
		}
		n.kv, n.applied, n.appliedEpoch, n.lastSnap = kv, s.Meta.Index, s.Meta.Epoch, s.Meta.Index
		g.stats.Snapshots++
		g.tracef("n%d installed snapshot %d/%d", n.id, s.Meta.Index, s.Meta.Epoch)
		if v := g.chk.observeInstall(n.id, s.Meta.Index, s.Meta.Epoch, kv.hash()); v != nil {
			g.fail(v)
			return
		}
	}
	for _, e := range rd.Committed {
		if e.Index != n.applied+1 {
			g.fail(violation(Contract, "node %d was handed entry %d to apply after %d", n.id, e.Index, n.applied))
			return
		}
		g.apply(n, e)
		if w.err != nil {
			return
		}
	}
	n.readWait = append(n.readWait, rd.ReadStates...)
	g.serveReads(n)
	n.eng.Advance(n.applied)
	g.maybeCompact(n)
}

func (g *group) send(n *node, m consensus.Message) {
	w := g.w
	if m.Type == consensus.MsgSnap {
		// The engine may have asked for a snapshot just before the
		// application took a newer one: the runtime keeps a few (as
		// snap.Store does on disk) and sends the one asked for.
		snap, ok := n.disk.snapAt(m.Snapshot)
		if !ok {
			g.fail(violation(Contract, "node %d sends a snapshot at %v, which it does not hold", n.id, m.Snapshot))
			return
		}
		cp := *m.Snapshot
		cp.Data = snap.Data
		m.Snapshot = &cp
	}
	g.stats.Messages++
	if w.net.send(w.now, g.idx, m, n.inc) {
		return
	}
	g.stats.Dropped++
	if m.Type == consensus.MsgSnap {
		n.eng.ReportSnapshot(m.To, false)
	}
	if w.net.blocked(m.From, m.To) {
		n.eng.ReportUnreachable(m.To)
	}
}

func (g *group) apply(n *node, e consensus.Entry) {
	w := g.w
	first := false
	if _, ok := g.chk.applied[e.Index]; !ok {
		first = true
		g.stats.Commits++
	}
	switch e.Type {
	case consensus.EntryNormal:
		c, err := decodeCommand(e.Data)
		if err != nil {
			g.fail(violation(Contract, "node %d applies index %d: %v", n.id, e.Index, err))
			return
		}
		if v := g.chk.observeValidity(n.id, e.Index, c); v != nil {
			g.fail(v)
			return
		}
		n.kv.apply(c)
		if op := n.writes[[2]int{c.client, c.op}]; op != nil {
			delete(n.writes, [2]int{c.client, c.op})
			g.hist.complete(op, kvOutput{}, w.now)
			g.stats.Writes++
			g.clients[c.client-1].finished(g, op)
			g.tracef("client %d op %d put(%s,%s) ok at n%d index %d", c.client, c.op, c.key, c.value, n.id, e.Index)
		}
	case consensus.EntryConfChange:
		// The bootstrap entries (raft.BootstrapEntries) are not changes.
		if first && (e.Epoch > 1 || e.Index > uint64(w.opts.Nodes)) {
			g.stats.ConfChanges++
			if cc, err := consensus.UnmarshalConfChange(e.Data); err == nil {
				g.tracef("n%d applies conf change %d: %v", n.id, e.Index, cc.Changes)
			}
		}
	}
	n.applied, n.appliedEpoch = e.Index, e.Epoch
	g.fail(g.chk.observeApply(n.id, e, n.kv.hash()))
}

func (g *group) serveReads(n *node) {
	w := g.w
	keep := n.readWait[:0]
	for _, rs := range n.readWait {
		if rs.Index > n.applied {
			keep = append(keep, rs)
			continue
		}
		op := n.reads[string(rs.RequestCtx)]
		if op == nil {
			continue // the client gave up
		}
		delete(n.reads, string(rs.RequestCtx))
		v := n.kv.data[op.in.key]
		g.hist.complete(op, kvOutput{value: v}, w.now)
		g.stats.Reads++
		g.clients[op.client-1].finished(g, op)
		g.tracef("client %d op %d get(%s)=%q at n%d read index %d applied %d", op.client, op.op, op.in.key, v, n.id, rs.Index, n.applied)
	}
	n.readWait = keep
}

// maybeCompact takes an application snapshot every snapEvery entries and
// lets the engine drop the log under it.
func (g *group) maybeCompact(n *node) {
	if n.applied < n.lastSnap+g.snapEvery {
		return
	}
	meta := consensus.SnapshotMeta{Index: n.applied, Epoch: n.appliedEpoch, ConfState: n.eng.Status().ConfState}
	if err := n.disk.writeSynced(diskOp{kind: opCompact, snap: consensus.Snapshot{Meta: meta, Data: n.kv.encode()}}); err != nil {
		g.fail(violation(Contract, "node %d: %v", n.id, err))
		return
	}
	if err := n.eng.Compact(n.applied); err != nil {
		// The engine may already hold a newer snapshot from the leader,
		// not yet handed out in a Ready: nothing to compact.
		if !errors.Is(err, consensus.ErrCompacted) {
			g.fail(violation(Contract, "node %d: compact at %d: %v", n.id, n.applied, err))
		}
		n.lastSnap = n.applied
		return
	}
	n.lastSnap = n.applied
	g.stats.Compactions++
	g.tracef("n%d compacted at %d/%d", n.id, meta.Index, meta.Epoch)
}

// checkNode observes n's status after a step.
func (g *group) checkNode(n *node) {
	w := g.w
	n.dirty = false
	st := n.eng.Status()
	if st.Role == consensus.Leader {
		if _, seen := g.chk.leaders[st.Epoch]; !seen {
			g.stats.Elections++
			g.tracef("n%d is LEADER of epoch %d (conf %s)", n.id, st.Epoch, st.ConfState)
			if w.faulty && w.rng.Float64() < w.churn/float64(len(w.groups)) {
				// Leader churn: a leader that fails before its term's
				// entries reach a majority leaves logs that differ in
				// their last terms, the ground of the Figure 8 hazard.
				// Cutting its links also loses its appends in flight.
				// The chance is shared out among the groups: the
				// machine's crash or isolation hits them all.
				at := w.now + 1 + w.rng.Int64N(4*unitsPerTick)
				if w.rng.IntN(2) == 0 {
					at = w.now // at once: its first appends never arrive
				}
				g.churnAt = append(g.churnAt, churnEvent{at: at, id: n.id, epoch: st.Epoch})
			}
		}
		g.fail(g.chk.observeLeader(n.id, st.Epoch))
		g.leader = n.id
	} else if n.role == consensus.Leader {
		g.tracef("n%d steps down from epoch %d (now %s of %d)", n.id, n.lastEpoch, st.Role, st.Epoch)
	}
	n.role, n.lastEpoch = st.Role, st.Epoch
	g.chk.observeCommit(st.Commit, st.Epoch)
	g.fail(g.chk.observeProgress(n.id, n.inc, st.Commit, st.Applied, n.floor))
	if st.Role == consensus.Leader && st.Epoch >= g.leaderEpoch {
		g.leaderEpoch = st.Epoch
		g.membership(st.ConfState)
	}
}

// membership follows the leader's applied configuration: nodes that joined
// become members; members no longer in it are retired for good.
func (g *group) membership(cs consensus.ConfState) {
	w := g.w
	for _, id := range g.order {
		n := g.nodes[id]
		if n.retired {
			continue
		}
		in := cs.IsMember(id)
		switch {
		case in && !n.member:
			n.member = true
		case !in && n.member && n.removing:
			g.retire(n, "removed from the configuration")
		case !in && w.now-n.joinAt > 200*unitsPerTick:
			g.retire(n, "never joined")
		}
	}
}

func (g *group) retire(n *node, why string) {
	g.tracef("n%d retired: %s", n.id, why)
	if n.up {
		g.failOps(n)
	}
	n.up, n.retired, n.eng, n.pending = false, true, nil, nil
	if !n.m.active() {
		// Nothing runs on the machine any more: its process is gone
		// (until a group places a new replica on it).
		n.m.up = false
	}
}
