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
}

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
	Stats     Stats
	// Trace holds the last Options.TraceTail events, when asked for.
	Trace []string
}

// node is one simulated process around an engine.
type node struct {
	id      consensus.NodeID
	eng     consensus.Engine
	up      bool
	retired bool // removed from the group for good
	member  bool // has been seen in the leader's configuration
	// removing says the simulator proposed this node's removal; it is
	// retired once the leading configuration no longer holds it.
	removing bool
	joinAt   int64
	inc      int // incarnation: bumped at every restart
	disk     *disk
	kv       *kvState
	applied  uint64
	// appliedEpoch is the epoch of the entry at applied.
	appliedEpoch uint64
	lastSnap     uint64
	// pending is a Ready whose durable parts await the sync at syncAt.
	pending   *consensus.Ready
	syncAt    int64
	restartAt int64
	floor     uint64 // durable commit when this incarnation started
	// crashAt, when non-negative, is a crash the nemesis aimed at a
	// moment: between a write and its sync, or right after a vote.
	crashAt int64
	dirty   bool
	role    consensus.Role
	// Client operations this incarnation is serving.
	writes   map[[2]int]*clientOp
	reads    map[string]*clientOp
	readWait []consensus.ReadState
	staleHS  consensus.HardState // the durable HardState before the latest (for StaleCommit)
	// lastPromise is the last Paxos promise written (for aimCrash).
	lastPromise uint64
	// quickRestart makes the next crash restart at once (set by aimCrash).
	quickRestart bool
	lastEpoch    uint64
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

type world struct {
	opts    Options
	rng     *rand.Rand
	net     *network
	chk     *checker
	factory EngineFactory
	flavor  uint64
	now     int64
	nodes   map[consensus.NodeID]*node
	order   []consensus.NodeID
	nextID  consensus.NodeID
	clients []*client
	keys    []string
	hist    history
	stats   Stats
	err     *Violation
	// leader is the last node seen leading (a hint for clients and admin).
	leader        consensus.NodeID
	liveness      bool
	livenessStart int64
	// markEpoch and markIndex: the leader's epoch and last index when it was
	// first seen leading in the liveness phase; everything up to markIndex
	// must be applied on every member.
	markEpoch, markIndex uint64
	// leaderEpoch is the highest epoch seen led.
	leaderEpoch uint64
	healAt      int64
	flakyEnd    int64
	// snapEvery is how many applied entries between application snapshots.
	snapEvery uint64
	// intensity scales the nemesis (1 = mild, 4 = brutal), fixed per run.
	intensity float64
	// churn is the chance that a newly elected leader is crashed soon.
	churn     float64
	churnAt   []churnEvent
	faulty    bool
	trace     []string
	traceHead int
	traceFull bool
}

// Run executes one seeded run and reports what it found.
func Run(opts Options) (res Result) {
	if err := opts.defaults(); err != nil {
		return Result{Seed: opts.Seed, Violation: violation(Contract, "%v", err)}
	}
	w := &world{
		opts:    opts,
		rng:     rand.New(rand.NewPCG(opts.Seed, opts.Seed^0x5851f42d4c957f2d)),
		chk:     newChecker(),
		factory: Engines[opts.Engine],
		nodes:   map[consensus.NodeID]*node{},
		keys:    []string{"a", "b", "c"},
	}
	w.chk.logMatching = logMatchingEngines[opts.Engine]
	w.net = newNetwork(rand.New(rand.NewPCG(opts.Seed^0xda942042e4dd58b5, opts.Seed)))
	w.flavor = w.rng.Uint64()
	w.snapEvery = uint64(10 + w.rng.IntN(40))
	w.intensity = float64(1 + w.rng.IntN(4))
	if w.rng.IntN(2) == 0 {
		w.churn = 0.8
	}
	w.net.drop, w.net.dup = 0.01, 0.01
	if opts.TraceTail > 0 {
		w.trace = make([]string, opts.TraceTail)
	}
	defer func() {
		// A panic in an engine is an invariant it checks itself: report
		// it as a violation of the run, with the seed, not a crash.
		if p := recover(); p != nil {
			w.fail(violation(Contract, "panic at t=%d: %v", w.now, p))
			res = w.result()
		}
	}()
	w.run()
	return w.result()
}

func (w *world) result() Result {
	w.stats.Runs = 1
	w.stats.Ticks = w.now / unitsPerTick
	res := Result{Seed: w.opts.Seed, Violation: w.err, Stats: w.stats}
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

func (w *world) fail(v *Violation) {
	if v == nil || w.err != nil || slices.Contains(w.opts.Disable, v.Invariant) {
		return
	}
	w.err = v
	w.tracef("VIOLATION %s", v)
}

func (w *world) run() {
	initial := make([]consensus.NodeID, w.opts.Nodes)
	for i := range initial {
		initial[i] = consensus.NodeID(i + 1)
	}
	w.nextID = consensus.NodeID(w.opts.Nodes + 1)
	preVote, checkQuorum := RaftFlavor(w.flavor)
	w.tracef("run seed=%d engine=%s nodes=%d flavor: prevote=%v checkquorum=%v snapshot every %d, variant=%q",
		w.opts.Seed, w.opts.Engine, w.opts.Nodes, preVote, checkQuorum, w.snapEvery, w.opts.Variant)
	for _, id := range initial {
		n := w.addNode(id, consensus.ConfState{Voters: initial})
		n.member = true
	}
	for i := range 4 {
		w.clients = append(w.clients, &client{id: i + 1, nextOp: 1})
	}

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
	if !w.live() {
		w.fail(violation(Liveness, "%d ticks after healing: %s", w.opts.LivenessBound, w.livenessReport()))
		return
	}
	// Operations still outstanding never learned their outcome.
	for _, c := range w.clients {
		w.abandon(c)
	}
	w.fail(checkLinearizable(w.hist.ops, w.opts.LinearizabilityTimeout))
}

func (w *world) addNode(id consensus.NodeID, cs consensus.ConfState) *node {
	n := &node{id: id, disk: newDisk(cs), joinAt: w.now, syncAt: -1, crashAt: -1}
	// Raft's storage drops the whole log on a snapshot install; a Paxos
	// acceptor keeps what it accepted after the snapshot (the WAL's rule).
	n.disk.installKeepsSuffix = !logMatchingEngines[w.opts.Engine]
	w.nodes[id] = n
	w.order = append(w.order, id)
	slices.Sort(w.order)
	w.start(n)
	return n
}

// start (re)creates n's engine from its durable storage.
func (w *world) start(n *node) {
	st := n.disk.initial()
	switch w.opts.Variant {
	case ForgetVote:
		st.HardState.Vote = consensus.None
	case StaleCommit:
		if n.staleHS.Commit >= st.Snapshot.Index {
			st.HardState.Commit = n.staleHS.Commit
		}
	}
	eng, err := w.factory(EngineConfig{
		ID: n.id, Seed: nodeSeed(w.opts.Seed, n.id) + uint64(n.inc), ElectionTicks: 10, HeartbeatTicks: 1,
		Flavor: w.flavor, Variant: w.opts.Variant, Nodes: w.opts.Nodes,
	}, st)
	if err != nil {
		w.fail(violation(Contract, "node %d cannot restart from its durable state: %v", n.id, err))
		return
	}
	n.eng, n.up, n.inc = eng, true, n.inc+1
	n.kv = newKV()
	n.applied, n.appliedEpoch, n.lastSnap = st.Snapshot.Index, st.Snapshot.Epoch, st.Snapshot.Index
	if st.Snapshot.Index > 0 {
		kv, err := decodeKV(n.disk.durable.snap.Data)
		if err != nil {
			w.fail(violation(Contract, "node %d: snapshot at %d unreadable: %v", n.id, st.Snapshot.Index, err))
			return
		}
		n.kv = kv
	}
	n.floor = n.disk.durable.hs.Commit
	n.pending, n.syncAt, n.readWait = nil, -1, nil
	n.writes, n.reads = map[[2]int]*clientOp{}, map[string]*clientOp{}
	n.dirty, n.role = true, consensus.Follower
	w.tracef("n%d start inc=%d hs=%+v snap=%d entries=%d", n.id, n.inc, st.HardState, st.Snapshot.Index, len(st.Entries))
}

func (w *world) crash(n *node) {
	keep := w.rng.IntN(len(n.disk.unsynced) + 1)
	w.tracef("n%d CRASH (keeps %d of %d unsynced writes)", n.id, keep, len(n.disk.unsynced))
	before := n.disk.durable.hs
	if err := n.disk.crash(keep); err != nil {
		w.fail(violation(Contract, "node %d: %v", n.id, err))
	}
	if n.disk.durable.hs != before {
		n.staleHS = before
	}
	n.up, n.eng, n.crashAt = false, nil, -1
	n.restartAt = w.now + int64(10+w.rng.IntN(70))*unitsPerTick
	if w.rng.IntN(3) == 0 {
		// A supervisor restarts the process at once.
		n.restartAt = w.now + int64(w.rng.IntN(2))*unitsPerTick
	}
	if n.quickRestart {
		n.restartAt, n.quickRestart = w.now, false
	}
	w.stats.Crashes++
	w.failOps(n)
}

// failOps ends the client operations n was serving: writes become unknown
// (they may still commit), reads are dropped (they had no effect).
func (w *world) failOps(n *node) {
	for _, c := range w.clients {
		if c.cur != nil && c.cur.node == n.id && c.cur.inc == n.inc {
			w.abandon(c)
		}
	}
	n.writes, n.reads, n.readWait = map[[2]int]*clientOp{}, map[string]*clientOp{}, nil
}

func (w *world) abandon(c *client) {
	if c.cur == nil {
		return
	}
	if c.cur.in.put {
		w.hist.unknown(c.cur)
		w.stats.WritesUnknown++
		w.tracef("client %d op %d outcome unknown", c.id, c.cur.op)
	}
	if n := w.nodes[c.cur.node]; n != nil && n.inc == c.cur.inc {
		delete(n.writes, [2]int{c.id, c.cur.op})
		delete(n.reads, readCtx(c.id, c.cur.op))
	}
	c.cur = nil
}

// step advances virtual time by one unit.
func (w *world) step(faults bool) {
	w.faulty = faults
	for _, id := range w.order {
		if n := w.nodes[id]; n.up && n.crashAt >= 0 && n.crashAt <= w.now {
			w.crash(n)
		}
	}
	w.churnStep()
	if w.now%unitsPerTick == 0 {
		for _, id := range w.order {
			if n := w.nodes[id]; n.up {
				n.eng.Tick()
				n.dirty = true
			}
		}
		if faults {
			w.nemesis()
			w.admin()
		}
		w.restarts()
		w.clientsTick()
	}
	for w.err == nil {
		e, lost, ok := w.net.due(w.now)
		if !ok {
			break
		}
		if lost {
			w.stats.Dropped++
			w.reportSnap(e, false)
			continue
		}
		w.deliver(e)
	}
	for _, id := range w.order {
		if n := w.nodes[id]; n.up && n.syncAt >= 0 && n.syncAt <= w.now && w.err == nil {
			w.finishSync(n)
		}
	}
	for _, id := range w.order {
		if n := w.nodes[id]; n.up && w.err == nil {
			w.drain(n)
		}
	}
	for _, id := range w.order {
		if n := w.nodes[id]; n.up && n.dirty && w.err == nil {
			w.checkNode(n)
		}
	}
}

func (w *world) deliver(e envelope) {
	n := w.nodes[e.m.To]
	if n == nil || !n.up {
		w.reportSnap(e, false)
		return
	}
	w.tracef("deliver %s", e.m)
	if err := n.eng.Step(e.m); err != nil && !errors.Is(err, consensus.ErrProposalDropped) && !errors.Is(err, consensus.ErrNotLeader) {
		w.tracef("n%d step error: %v", n.id, err)
	}
	n.dirty = true
	w.reportSnap(e, true)
	w.drain(n)
}

// reportSnap tells a snapshot's sender, if still the same process, how the
// transfer ended, as a runtime's transport would.
func (w *world) reportSnap(e envelope, ok bool) {
	if e.m.Type != consensus.MsgSnap {
		return
	}
	if s := w.nodes[e.m.From]; s != nil && s.up && s.inc == e.fromInc {
		s.eng.ReportSnapshot(e.m.To, ok)
		s.dirty = true
	}
}

// drain handles n's Readies until one must wait for the disk.
func (w *world) drain(n *node) {
	for n.up && n.pending == nil && w.err == nil && n.eng.HasReady() {
		rd := n.eng.Ready()
		n.dirty = true
		w.write(n, &rd)
		if w.err != nil {
			return
		}
		if !rd.MustSync {
			w.complete(n, &rd)
			continue
		}
		if n.syncAt < 0 {
			n.syncAt = w.now + 1 + w.rng.Int64N(6)
			if w.rng.IntN(50) == 0 {
				n.syncAt += w.rng.Int64N(40) // a slow disk
			}
		}
		w.aimCrash(n, &rd)
		if w.opts.Variant == SendBeforePersist {
			w.complete(n, &rd)
			continue
		}
		n.pending = &rd
	}
}

// churnStep carries out the leader failures planned for now: a crash, or
// isolation when the network is whole.
func (w *world) churnStep() {
	keep := w.churnAt[:0]
	for _, ev := range w.churnAt {
		if ev.at > w.now {
			keep = append(keep, ev)
			continue
		}
		n := w.nodes[ev.id]
		if !w.faulty || n == nil || !n.up || n.eng.Status().Epoch != ev.epoch {
			continue
		}
		if w.net.partitioned() || w.rng.IntN(2) == 0 {
			w.crash(n)
			continue
		}
		var ids []consensus.NodeID
		for _, id := range w.order {
			if !w.nodes[id].retired {
				ids = append(ids, id)
			}
		}
		desc := w.net.partition(shapeIsolate, ids, n.id, w.rng)
		w.healAt = w.now + int64(2+w.rng.IntN(30))*unitsPerTick
		w.stats.Partitions++
		w.tracef("nemesis: churn: %s until t=%d", desc, w.healAt/unitsPerTick)
	}
	w.churnAt = keep
}

// aimCrash sometimes schedules a crash at the most dangerous moments: after
// a Ready is written but before it is synced (what was not synced is lost),
// and right after a vote is made durable and sent (the voter restarts at
// once, while the election is still going on).
func (w *world) aimCrash(n *node, rd *consensus.Ready) {
	if !w.faulty || n.crashAt >= 0 {
		return
	}
	switch {
	case (rd.HardState.Vote != consensus.None || w.promised(n, rd)) && w.rng.Float64() < 0.05*w.intensity:
		n.crashAt = n.syncAt + 1 + w.rng.Int64N(unitsPerTick)
		// A Paxos acceptor comes back at once, while the proposers it
		// promised and the ones it refused are both still at work.
		n.quickRestart = !w.chk.logMatching
	case w.rng.Float64() < 0.002*w.intensity:
		n.crashAt = w.now + w.rng.Int64N(n.syncAt-w.now+1)
	}
}

// promised reports whether rd makes a new Paxos promise durable (to another
// proposer's ballot, or to the node's own when it starts phase 1): the
// Paxos counterpart of a vote. Always false for Raft, whose runs draw no
// randomness for it.
func (w *world) promised(n *node, rd *consensus.Ready) bool {
	if w.chk.logMatching || rd.HardState.IsEmpty() || rd.HardState.Epoch == n.lastPromise {
		return false
	}
	n.lastPromise = rd.HardState.Epoch
	return true
}

func (w *world) finishSync(n *node) {
	if err := n.disk.sync(); err != nil {
		w.fail(violation(Contract, "node %d: %v", n.id, err))
		return
	}
	n.syncAt = -1
	if rd := n.pending; rd != nil {
		n.pending = nil
		w.complete(n, rd)
	}
	w.drain(n)
}

// write performs the durable part of rd on n's disk (unsynced until the
// sync), checking log matching on every entry and leader completeness on the
// first entry of each new epoch.
func (w *world) write(n *node, rd *consensus.Ready) {
	d := n.disk
	fail := func(err error) { w.fail(violation(Contract, "node %d: %v", n.id, err)) }
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
		if ok && w.chk.logMatching {
			if v := w.chk.observeWrite(n.id, e, prev); v != nil {
				w.fail(v)
				return
			}
		}
	}
	if len(rd.Entries) > 0 && w.chk.logMatching {
		last := rd.Entries[len(rd.Entries)-1]
		if v := w.chk.checkCompleteness(n.id, last.Epoch, last.Index, d.view.snap.Meta.Index, d.view.entryAt); v != nil {
			w.fail(v)
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
		w.tracef("n%d write%s", n.id, b.String())
	}
}

// complete sends rd's messages, applies its snapshot and committed entries,
// serves reads, and advances the engine.
func (w *world) complete(n *node, rd *consensus.Ready) {
	for _, m := range rd.Messages {
		w.send(n, m)
	}
	if s := rd.Snapshot; s != nil {
		kv, err := decodeKV(s.Data)
		if err != nil {
			w.fail(violation(Contract, "node %d: installed snapshot at %d unreadable: %v", n.id, s.Meta.Index, err))
			return
		}
		n.kv, n.applied, n.appliedEpoch, n.lastSnap = kv, s.Meta.Index, s.Meta.Epoch, s.Meta.Index
		w.stats.Snapshots++
		w.tracef("n%d installed snapshot %d/%d", n.id, s.Meta.Index, s.Meta.Epoch)
		if v := w.chk.observeInstall(n.id, s.Meta.Index, s.Meta.Epoch, kv.hash()); v != nil {
			w.fail(v)
			return
		}
	}
	for _, e := range rd.Committed {
		if e.Index != n.applied+1 {
			w.fail(violation(Contract, "node %d was handed entry %d to apply after %d", n.id, e.Index, n.applied))
			return
		}
		w.apply(n, e)
		if w.err != nil {
			return
		}
	}
	n.readWait = append(n.readWait, rd.ReadStates...)
	w.serveReads(n)
	n.eng.Advance(n.applied)
	w.maybeCompact(n)
}

func (w *world) send(n *node, m consensus.Message) {
	if m.Type == consensus.MsgSnap {
		// The engine may have asked for a snapshot just before the
		// application took a newer one: the runtime keeps a few (as
		// snap.Store does on disk) and sends the one asked for.
		snap, ok := n.disk.snapAt(m.Snapshot)
		if !ok {
			w.fail(violation(Contract, "node %d sends a snapshot at %v, which it does not hold", n.id, m.Snapshot))
			return
		}
		cp := *m.Snapshot
		cp.Data = snap.Data
		m.Snapshot = &cp
	}
	w.stats.Messages++
	if w.net.send(w.now, m, n.inc) {
		return
	}
	w.stats.Dropped++
	if m.Type == consensus.MsgSnap {
		n.eng.ReportSnapshot(m.To, false)
	}
	if w.net.blocked(m.From, m.To) {
		n.eng.ReportUnreachable(m.To)
	}
}

func (w *world) apply(n *node, e consensus.Entry) {
	first := false
	if _, ok := w.chk.applied[e.Index]; !ok {
		first = true
		w.stats.Commits++
	}
	switch e.Type {
	case consensus.EntryNormal:
		c, err := decodeCommand(e.Data)
		if err != nil {
			w.fail(violation(Contract, "node %d applies index %d: %v", n.id, e.Index, err))
			return
		}
		if v := w.chk.observeValidity(n.id, e.Index, c); v != nil {
			w.fail(v)
			return
		}
		n.kv.apply(c)
		if op := n.writes[[2]int{c.client, c.op}]; op != nil {
			delete(n.writes, [2]int{c.client, c.op})
			w.hist.complete(op, kvOutput{}, w.now)
			w.stats.Writes++
			w.clients[c.client-1].finished(w, op)
			w.tracef("client %d op %d put(%s,%s) ok at n%d index %d", c.client, c.op, c.key, c.value, n.id, e.Index)
		}
	case consensus.EntryConfChange:
		// The bootstrap entries (raft.BootstrapEntries) are not changes.
		if first && (e.Epoch > 1 || e.Index > uint64(w.opts.Nodes)) {
			w.stats.ConfChanges++
			if cc, err := consensus.UnmarshalConfChange(e.Data); err == nil {
				w.tracef("n%d applies conf change %d: %v", n.id, e.Index, cc.Changes)
			}
		}
	}
	n.applied, n.appliedEpoch = e.Index, e.Epoch
	w.fail(w.chk.observeApply(n.id, e, n.kv.hash()))
}

func (w *world) serveReads(n *node) {
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
		w.hist.complete(op, kvOutput{value: v}, w.now)
		w.stats.Reads++
		w.clients[op.client-1].finished(w, op)
		w.tracef("client %d op %d get(%s)=%q at n%d read index %d applied %d", op.client, op.op, op.in.key, v, n.id, rs.Index, n.applied)
	}
	n.readWait = keep
}

// maybeCompact takes an application snapshot every snapEvery entries and
// lets the engine drop the log under it.
func (w *world) maybeCompact(n *node) {
	if n.applied < n.lastSnap+w.snapEvery {
		return
	}
	meta := consensus.SnapshotMeta{Index: n.applied, Epoch: n.appliedEpoch, ConfState: n.eng.Status().ConfState}
	if err := n.disk.writeSynced(diskOp{kind: opCompact, snap: consensus.Snapshot{Meta: meta, Data: n.kv.encode()}}); err != nil {
		w.fail(violation(Contract, "node %d: %v", n.id, err))
		return
	}
	if err := n.eng.Compact(n.applied); err != nil {
		// The engine may already hold a newer snapshot from the leader,
		// not yet handed out in a Ready: nothing to compact.
		if !errors.Is(err, consensus.ErrCompacted) {
			w.fail(violation(Contract, "node %d: compact at %d: %v", n.id, n.applied, err))
		}
		n.lastSnap = n.applied
		return
	}
	n.lastSnap = n.applied
	w.stats.Compactions++
	w.tracef("n%d compacted at %d/%d", n.id, meta.Index, meta.Epoch)
}

// checkNode observes n's status after a step.
func (w *world) checkNode(n *node) {
	n.dirty = false
	st := n.eng.Status()
	if st.Role == consensus.Leader {
		if _, seen := w.chk.leaders[st.Epoch]; !seen {
			w.stats.Elections++
			w.tracef("n%d is LEADER of epoch %d (conf %s)", n.id, st.Epoch, st.ConfState)
			if w.faulty && w.rng.Float64() < w.churn {
				// Leader churn: a leader that fails before its term's
				// entries reach a majority leaves logs that differ in
				// their last terms, the ground of the Figure 8 hazard.
				// Cutting its links also loses its appends in flight.
				at := w.now + 1 + w.rng.Int64N(4*unitsPerTick)
				if w.rng.IntN(2) == 0 {
					at = w.now // at once: its first appends never arrive
				}
				w.churnAt = append(w.churnAt, churnEvent{at: at, id: n.id, epoch: st.Epoch})
			}
		}
		w.fail(w.chk.observeLeader(n.id, st.Epoch))
		w.leader = n.id
	} else if n.role == consensus.Leader {
		w.tracef("n%d steps down from epoch %d (now %s of %d)", n.id, n.lastEpoch, st.Role, st.Epoch)
	}
	n.role, n.lastEpoch = st.Role, st.Epoch
	w.chk.observeCommit(st.Commit, st.Epoch)
	w.fail(w.chk.observeProgress(n.id, n.inc, st.Commit, st.Applied, n.floor))
	if st.Role == consensus.Leader && st.Epoch >= w.leaderEpoch {
		w.leaderEpoch = st.Epoch
		w.membership(st.ConfState)
	}
}

// membership follows the leader's applied configuration: nodes that joined
// become members; members no longer in it are retired for good.
func (w *world) membership(cs consensus.ConfState) {
	for _, id := range w.order {
		n := w.nodes[id]
		if n.retired {
			continue
		}
		in := cs.IsMember(id)
		switch {
		case in && !n.member:
			n.member = true
		case !in && n.member && n.removing:
			w.retire(n, "removed from the configuration")
		case !in && w.now-n.joinAt > 200*unitsPerTick:
			w.retire(n, "never joined")
		}
	}
}

func (w *world) retire(n *node, why string) {
	w.tracef("n%d retired: %s", n.id, why)
	if n.up {
		w.failOps(n)
	}
	n.up, n.retired, n.eng = false, true, nil
}
