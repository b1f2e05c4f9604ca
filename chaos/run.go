package chaos

import (
	"context"
	"debug/buildinfo"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Options configure one chaos run.
type Options struct {
	Nodes    int           // members; default 3
	Duration time.Duration // how long clients and the nemesis run; default 30 s
	Nemeses  []string      // kinds to inject (see AllNemeses); none: a fault-free run
	// Workloads to run (see AllWorkloads); default all of them.
	Workloads []string
	Seed      uint64 // 0: drawn from the clock
	Clients   int    // register clients; default 2 per member
	Keys      int    // keys per window; default 5
	// Binary is the ballot binary to run. The clock nemesis needs one
	// built with -tags chaosclock: if Binary is not, the rig builds one
	// from Source.
	Binary string
	// Source is the root of ballot's module, to build a chaosclock binary
	// from; default the module containing the working directory.
	Source string
	// Dir holds the members' data and logs and, on failure, the history,
	// its visualization and the nemesis schedule. Default: a temporary
	// directory, kept only when the run fails.
	Dir string
	// Unsafe names deliberately broken behaviours to switch on in the
	// members ("stale-reads", "early-ack"), for proving the checkers bite.
	Unsafe []string
	// Containers runs each member in its own container on a private
	// Docker network (the binary must be static: CGO_ENABLED=0), with
	// partitions made by packet filters in the members' network
	// namespaces. Default: OS processes on loopback.
	Containers bool
	// Tick is the members' engine tick; default 50 ms (election timeout
	// 0.5–1 s), so faults and recoveries both happen often.
	Tick time.Duration
	// Engine is the members' consensus engine: "raft" (default) or
	// "paxos".
	Engine string
	// CheckTimeout bounds the linearizability check; default 2 min.
	CheckTimeout time.Duration
	// Shards > 0 runs a sharded cluster: every member is started with
	// `serve --shards Shards`, the workloads keep to sharded mode's
	// semantics (see keyspace), and the split and move nemeses may run.
	// Processes only; the deliberately broken builds are single-group
	// only (serve refuses the --unsafe-* flags in sharded mode).
	Shards int
	Logf   func(format string, args ...any)
}

// Workloads.
const (
	WorkloadRegister = "register" // linearizable reads, writes, CAS, deletes (porcupine)
	WorkloadSet      = "set"      // no acknowledged add lost
	WorkloadWatch    = "watch"    // no gap, repeat or reordering; replay gives the final state
	WorkloadLease    = "lease"    // leases expire when and only when their holders stop keeping them alive
	WorkloadLock     = "lock"     // recipes/lock: fenced increments are never lost, tokens never go down
	WorkloadElection = "election" // recipes/election: leaders' fenced writes never go back a term; leadership returns after faults
	WorkloadBank     = "bank"     // transfers between accounts (cross-shard Txns when sharded): totals hold, each applied exactly once or not at all
)

// AllWorkloads lists every workload, all run by default.
var AllWorkloads = []string{WorkloadRegister, WorkloadSet, WorkloadWatch, WorkloadLease, WorkloadLock, WorkloadElection, WorkloadBank}

// Report is the outcome of a run.
type Report struct {
	Seed                       uint64
	Workloads                  []string
	Ops, OK, Failed, Unknown   int64
	NoSpace                    int64 // client calls refused with etcd's "database space exceeded"
	SetAcked                   int
	WatchEvents                int
	Lease                      leaseStats
	Shards                     string   // a sharded run's line: shards, splits and moves
	Splits, Moves              int      // splits and moves that succeeded
	Lock                       string   // the lock workload's summary line, if it ran
	Election                   string   // the election workload's summary line, if it ran
	Bank                       string   // the bank workload's summary line, if it ran
	Replicas                   string   // the replica check's line
	Skipped                    []string // nemeses that could not run here, and why
	Faults                     map[string]int
	Schedule                   []string
	Violations                 []string
	Dir                        string
	Visualization              string
	Elapsed                    time.Duration
	LinearizabilityCheckedOver int
}

// HasViolations reports whether the run found any violation.
func (r *Report) HasViolations() bool { return len(r.Violations) > 0 }

// Summary is the report in a few lines.
func (r *Report) Summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "seed %d, %v, workloads %s\n", r.Seed, r.Elapsed.Round(time.Millisecond), strings.Join(r.Workloads, ","))
	for _, s := range r.Skipped {
		fmt.Fprintf(&b, "!!! SKIPPED: %s\n", s)
	}
	fmt.Fprintf(&b, "register: %d operations: %d ok, %d failed reads (left out), %d unknown writes\n", r.Ops, r.OK, r.Failed, r.Unknown)
	fmt.Fprintf(&b, "set: %d acknowledged adds; watch: %d events\n", r.SetAcked, r.WatchEvents)
	l := r.Lease
	fmt.Fprintf(&b, "lease: %d granted (%d kept to the end, %d abandoned or lost), %d grants unknown, %d keep-alives acknowledged; %d seen expired, %d kept leases lost under faults, latest expiry %v past its promise\n",
		l.Granted, l.Kept, l.Abandoned, l.Unknown, l.KeepAlivesOK, l.Expired, l.LostUnderFaults, l.MaxLate.Round(time.Millisecond))
	if r.Shards != "" {
		fmt.Fprintln(&b, r.Shards)
	}
	if r.Lock != "" {
		fmt.Fprintln(&b, r.Lock)
	}
	if r.Election != "" {
		fmt.Fprintln(&b, r.Election)
	}
	if r.Bank != "" {
		fmt.Fprintln(&b, r.Bank)
	}
	if r.Replicas != "" {
		fmt.Fprintln(&b, r.Replicas)
	}
	if r.NoSpace > 0 {
		fmt.Fprintf(&b, "disk full: %d client calls refused with \"database space exceeded\"\n", r.NoSpace)
	}
	var kinds []string
	for k := range r.Faults {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	var fs []string
	for _, k := range kinds {
		fs = append(fs, fmt.Sprintf("%s %d", k, r.Faults[k]))
	}
	fmt.Fprintf(&b, "faults: %s\n", strings.Join(fs, ", "))
	if len(r.Violations) == 0 {
		fmt.Fprintf(&b, "check: linearizable, no acknowledged write lost, watches complete, leases expire when and only when abandoned, replicas agree, no unexpected exit: 0 violations\n")
	} else {
		fmt.Fprintf(&b, "check: %d violations\n", len(r.Violations))
		for _, v := range r.Violations {
			fmt.Fprintf(&b, "  - %s\n", v)
		}
		fmt.Fprintf(&b, "evidence in %s\n", r.Dir)
	}
	return b.String()
}

// BuildBinary builds the ballot binary into dir from the module at root,
// with the given build tags (chaosclock: the clock nemesis's hook).
func BuildBinary(root, dir string, tags ...string) (string, error) {
	bin := filepath.Join(dir, "ballot")
	args := []string{"build", "-o", bin}
	if len(tags) > 0 {
		bin += "-" + strings.Join(tags, "-")
		args = []string{"build", "-tags", strings.Join(tags, ","), "-o", bin}
	}
	cmd := exec.Command("go", append(args, "./cmd/ballot")...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("chaos: build ballot: %w\n%s", err, out)
	}
	return bin, nil
}

// Run runs one bounded chaos round and checks what the clients saw.
func Run(ctx context.Context, o Options) (*Report, error) {
	if o.Nodes == 0 {
		o.Nodes = 3
	}
	if o.Duration == 0 {
		o.Duration = 30 * time.Second
	}
	if o.Clients == 0 {
		o.Clients = 2 * o.Nodes
	}
	if o.Keys == 0 {
		o.Keys = 5
	}
	if o.Tick == 0 {
		o.Tick = 50 * time.Millisecond
	}
	if o.CheckTimeout == 0 {
		o.CheckTimeout = 2 * time.Minute
	}
	if o.Seed == 0 {
		o.Seed = uint64(time.Now().UnixNano())
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	for _, k := range o.Nemeses {
		if !slices.Contains(AllNemeses, k) {
			return nil, fmt.Errorf("chaos: unknown nemesis %q (know %s)", k, strings.Join(AllNemeses, ", "))
		}
	}
	if len(o.Workloads) == 0 {
		o.Workloads = AllWorkloads
	}
	for _, w := range o.Workloads {
		if !slices.Contains(AllWorkloads, w) {
			return nil, fmt.Errorf("chaos: unknown workload %q (know %s)", w, strings.Join(AllWorkloads, ", "))
		}
	}
	has := func(w string) bool { return slices.Contains(o.Workloads, w) }
	ks := singleKeyspace
	if o.Shards > 0 {
		switch {
		case o.Shards > 256:
			return nil, fmt.Errorf("chaos: --shards %d: serve starts at most 256", o.Shards)
		case o.Containers:
			return nil, errors.New("chaos: --shards runs on processes only (the container rig does not start sharded hosts yet)")
		case len(o.Unsafe) > 0 && !slices.Equal(o.Unsafe, []string{UnsafeCorruptPuts}):
			return nil, errors.New("chaos: --unsafe builds but corrupt-puts are single-group only (serve --shards refuses the other --unsafe-* flags)")
		}
		ks = shardedKeyspace
	} else {
		for _, k := range o.Nemeses {
			if k == NemesisSplit || k == NemesisMove {
				return nil, fmt.Errorf("chaos: the %s nemesis needs a sharded cluster (--shards N)", k)
			}
		}
	}
	keepDir := o.Dir != ""
	if o.Dir == "" {
		d, err := os.MkdirTemp("", "ballot-chaos-")
		if err != nil {
			return nil, err
		}
		o.Dir = d
	}
	if o.Binary == "" {
		return nil, errNoBinary
	}
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("chaos: %w", err)
	}
	// Members must start empty: data left by an earlier run would make
	// this run's histories start from a state its clients never wrote.
	if ents, err := os.ReadDir(o.Dir); err != nil {
		return nil, fmt.Errorf("chaos: %w", err)
	} else if len(ents) > 0 {
		return nil, fmt.Errorf("chaos: %s is not empty (an earlier run's data would skew this one); give a new directory", o.Dir)
	}
	rep := &Report{Seed: o.Seed, Dir: o.Dir, Workloads: o.Workloads}
	started := time.Now()
	// The disk and clock nemeses need what not every machine has; one that
	// cannot run is skipped, loudly, never silently.
	var nemeses []string
	disks := false
	for _, k := range o.Nemeses {
		var why error
		if o.Shards > 0 {
			switch k {
			case NemesisDisk:
				why = errors.New("not in sharded mode yet (a sharded host's behaviour on a full disk is not built out)")
			case NemesisClock:
				why = errors.New("not in sharded mode (serve --shards gives its groups no chaosclock hook)")
			case NemesisMember:
				why = errors.New("not in sharded mode (member add is refused by a sharded cluster)")
			case NemesisTransfer:
				why = errors.New("not in sharded mode (MoveLeader is per group and not answered by a sharded host)")
			case NemesisMove:
				if o.Nodes <= shardReplicas {
					why = fmt.Errorf("needs more members than the %d replicas of a shard (--nodes %d)", shardReplicas, o.Nodes)
				}
			}
		}
		switch {
		case why != nil:
		case k == NemesisDisk:
			if o.Containers {
				why = errors.New("runs on processes only")
			} else if why = diskSupport(o.Dir); why == nil {
				disks = true
			}
		case k == NemesisClock:
			var bin string
			if bin, why = clockBinary(o); why == nil {
				o.Binary = bin
			}
		}
		if why != nil {
			msg := fmt.Sprintf("the %s nemesis did not run: %v", k, why)
			rep.Skipped = append(rep.Skipped, msg)
			fmt.Fprintf(os.Stderr, "chaos: !!! SKIPPED: %s\n", msg)
			o.Logf("!!! SKIPPED: %s", msg)
			continue
		}
		nemeses = append(nemeses, k)
	}
	if disks {
		// Mounts outlive the process: an interrupt must reach the deferred
		// cleanup below rather than end the process (a test binary, say).
		var stopSignals context.CancelFunc
		ctx, stopSignals = signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
		defer stopSignals()
	}
	var c cluster
	var err error
	if o.Containers {
		c, err = newDockerCluster(o.Binary, o.Dir, o.Nodes, o.Tick, o.Unsafe, engineArgs(o.Engine), o.Logf)
	} else {
		c, err = newProcCluster(o.Binary, o.Dir, o.Nodes, o.Shards, o.Tick, o.Unsafe, engineArgs(o.Engine), disks, o.Logf)
	}
	if err != nil {
		return nil, err
	}
	defer c.close()
	hctx, hcancel := context.WithTimeout(ctx, 60*time.Second)
	err = c.waitHealthy(hctx)
	hcancel()
	if err != nil {
		return nil, err
	}
	election := 10 * o.Tick

	rec := &recorder{start: time.Now()}
	set := &setWorkload{rec: rec, prefix: ks.set}
	runCtx, stop := context.WithTimeout(ctx, o.Duration)
	defer stop()
	var wg sync.WaitGroup
	var clients []*clientv3.Client
	defer func() {
		for _, cl := range clients {
			cl.Close()
		}
	}()
	opTimeout := 4 * election
	for i := range o.Clients {
		if !has(WorkloadRegister) {
			break
		}
		cli, err := newClient([]string{c.client(i % o.Nodes)}) // pinned: stale reads show
		if err != nil {
			return nil, err
		}
		clients = append(clients, cli)
		crng := rand.New(rand.NewPCG(o.Seed, uint64(i)))
		wg.Add(1)
		go func() {
			defer wg.Done()
			registerClient(runCtx, i, cli, crng, ks.reg, o.Keys, regWindow, opTimeout, rec)
		}()
	}
	var watchers []*watchRecorder
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	var wwg sync.WaitGroup
	// Lease holders keep their kept leases alive past the run, until the
	// lease check after the heal is done (leaseCtx).
	var lw *leaseWorkload
	leaseCtx, leaseStop := context.WithCancel(ctx)
	defer leaseStop()
	var lwg sync.WaitGroup
	// A sharded run keeps a copy of the shard map for the lease holders,
	// which home each lease in the shard that holds the lease keys.
	var maps *shardMapCache
	if o.Shards > 0 {
		maps = newShardMapCache(o.Shards, o.Nodes)
		var mclis []*clientv3.Client
		for i := range o.Nodes {
			cli, err := newClient([]string{c.client(i)})
			if err != nil {
				return nil, err
			}
			clients = append(clients, cli)
			mclis = append(mclis, cli)
		}
		wwg.Add(1)
		go func() { defer wwg.Done(); maps.refresh(wctx, mclis, 300*time.Millisecond) }()
	}
	if has(WorkloadLease) {
		var home func() uint64
		if maps != nil {
			home = func() uint64 { return maps.lookup(ks.lease) }
		}
		lw = newLeaseWorkload(rec, o.Seed, election, home)
	}
	var lockW *lockWorkload
	if has(WorkloadLock) {
		lockW = &lockWorkload{counterKey: ks.lockCounter, sharded: o.Shards > 0}
	}
	// The bank's accounts are created before any client or fault starts.
	var bankW *bankWorkload
	if has(WorkloadBank) {
		bankW = &bankWorkload{keys: ks.bank, start: rec.start}
		bc, err := newClient([]string{c.client(0)})
		if err != nil {
			return nil, err
		}
		clients = append(clients, bc)
		bctx, bcancel := context.WithTimeout(ctx, 30*time.Second)
		err = bankW.setup(bctx, bc, opTimeout)
		bcancel()
		if err != nil {
			return nil, fmt.Errorf("chaos: %w", err)
		}
	}
	// Candidates campaign past the run, until leadership has been seen to
	// return after the heal (electionCtx).
	var electionW *electionWorkload
	electionCtx, electionStop := context.WithCancel(ctx)
	defer electionStop()
	var ewg sync.WaitGroup
	if has(WorkloadElection) {
		electionW = &electionWorkload{registerKey: ks.electionReg, sharded: o.Shards > 0}
	}
	// pinned is a client of member i alone (faults show, no failover),
	// closed at the end with the others.
	pinned := func(i int) (*clientv3.Client, error) {
		cl, err := newClient([]string{c.client(i)})
		if err == nil {
			clients = append(clients, cl)
		}
		return cl, err
	}
	for i := range o.Nodes {
		cli, err := pinned(i)
		if err != nil {
			return nil, err
		}
		if has(WorkloadWatch) {
			w := &watchRecorder{member: i, prefix: ks.watch}
			watchers = append(watchers, w)
			wwg.Add(1)
			go func() { defer wwg.Done(); w.run(wctx, cli) }()
		}
		if has(WorkloadSet) {
			sc, err := pinned(i)
			if err != nil {
				return nil, err
			}
			wg.Add(1)
			go func() { defer wg.Done(); set.run(runCtx, 1000+i, sc, opTimeout) }()
		}
		if lockW != nil {
			kc, err := pinned(i)
			if err != nil {
				return nil, err
			}
			wg.Add(1)
			go func() { defer wg.Done(); lockW.holder(runCtx, kc, opTimeout) }()
		}
		if bankW != nil {
			bc, err := pinned(i) // pinned: faults show
			if err != nil {
				return nil, err
			}
			brng := rand.New(rand.NewPCG(o.Seed, uint64(3000+i)))
			wg.Add(1)
			go func() { defer wg.Done(); bankW.member(runCtx, i, o.Nodes, bc, brng, opTimeout) }()
		}
		if electionW != nil {
			ec, err := pinned(i)
			if err != nil {
				return nil, err
			}
			ewg.Add(1)
			go func() { defer ewg.Done(); electionW.candidate(electionCtx, i, ec, opTimeout) }()
		}
		if lw != nil {
			lc, err := pinned(i) // pinned: faults show
			if err != nil {
				return nil, err
			}
			lrng := rand.New(rand.NewPCG(o.Seed, uint64(2000+i)))
			lwg.Add(1)
			go func() { defer lwg.Done(); lw.holder(runCtx, leaseCtx, i, i, lc, lrng, opTimeout) }()
			wwg.Add(1)
			go func() { defer wwg.Done(); lw.watch(wctx, cli) }()
		}
	}
	var faults, changes, reshapes []string
	for _, k := range nemeses {
		switch k {
		case NemesisTransfer, NemesisMember:
			changes = append(changes, k)
		case NemesisSplit, NemesisMove:
			reshapes = append(reshapes, k)
		default:
			faults = append(faults, k)
		}
	}
	locks := &memberLocks{}
	nm := &nemesis{c: c, kinds: faults, rng: rand.New(rand.NewPCG(o.Seed, 0x9e5)), logf: o.Logf, counts: map[string]int{}, locks: locks}
	if len(faults) > 0 {
		wg.Add(1)
		go func() { defer wg.Done(); nm.run(runCtx, rec.start, election) }()
	}
	// Leadership transfers and membership changes run on their own
	// schedule, so they meet the faults above.
	cm := &nemesis{c: c, kinds: changes, rng: rand.New(rand.NewPCG(o.Seed, 0xc4a)), logf: o.Logf, counts: map[string]int{}, locks: locks}
	if len(changes) > 0 {
		wg.Add(1)
		go func() { defer wg.Done(); cm.runChanges(runCtx, ctx, rec.start, election, changes) }()
	}
	// Splits and moves, in a sharded run, on a schedule of their own too.
	var sn *shardNemesis
	if len(reshapes) > 0 {
		sn, err = newShardNemesis(&nemesis{c: c, kinds: reshapes, rng: rand.New(rand.NewPCG(o.Seed, 0x5a4d)), logf: o.Logf,
			counts: map[string]int{}, locks: locks}, c, maps, ks, regWindow)
		if err != nil {
			return nil, err
		}
		defer sn.close()
		wg.Add(1)
		go func() { defer wg.Done(); sn.run(runCtx, rec.start, election) }()
	}
	wg.Wait()
	nm.absorb(cm)
	if sn != nil {
		nm.absorb(sn.nemesis)
	}
	if err := ctx.Err(); err != nil {
		// Interrupted: the deferred close stops the members and unmounts
		// their disks; no verdict on a run cut short.
		return nil, fmt.Errorf("chaos: interrupted after %v (data and logs in %s): %w", time.Since(started).Round(time.Second), o.Dir, err)
	}

	// Heal everything and let the cluster settle before the final checks.
	if err := c.healAll(); err != nil {
		return nil, err
	}
	// Leadership must come back within a bound of the heal; waited for
	// beside the lease settling below.
	regained := make(chan struct{})
	if electionW != nil {
		healTime := time.Now()
		go func() { defer close(regained); electionW.awaitRegained(ctx, healTime) }()
	} else {
		close(regained)
	}
	hctx, hcancel = context.WithTimeout(ctx, 60*time.Second)
	defer hcancel()
	if err := c.waitHealthy(hctx); err != nil {
		rep.Violations = append(rep.Violations, "after healing: "+err.Error())
		dumpGoroutines(c)
	}
	healedAt := rec.now()
	// One client of each member, by index (nil: none), for the checks
	// after the heal that ask members one by one.
	memberClients := make([]*clientv3.Client, o.Nodes)
	for i := range o.Nodes {
		if cl, err := pinned(i); err == nil {
			memberClients[i] = cl
		}
	}
	{
		// Leadership may still change after the heal: a membership change
		// or transfer under way finishes, or (sharded) the balancer hands
		// shard leaderships back. A new leader gives its leases a full
		// TTL, so lease bounds count from the last change.
		sctx, scancel := context.WithTimeout(ctx, 30*time.Second)
		members := slices.DeleteFunc(slices.Clone(memberClients), func(c *clientv3.Client) bool { return c == nil })
		view := groupLeaders(members)
		if o.Shards > 0 && len(members) > 0 {
			view = shardLeaders(members[0])
		}
		last, err := waitLeadershipSettled(sctx, view, rec.now)
		scancel()
		if err != nil {
			o.Logf("after healing: %v; lease bounds counted from the last change seen", err)
		}
		healedAt = max(healedAt, last)
	}
	var all []string
	for i := range o.Nodes {
		all = append(all, c.client(i))
	}
	final, err := newClient(all)
	if err != nil {
		return nil, err
	}
	clients = append(clients, final)
	if lw != nil {
		// Abandoned leases must go, kept ones stay; then the holders stop
		// and what they held is revoked, before the final read.
		lctx, lcancel := context.WithTimeout(ctx, 2*time.Minute)
		rep.Violations = append(rep.Violations, lw.settle(lctx, final, healedAt)...)
		leaseStop()
		lwg.Wait()
		if err := lw.revokeKept(lctx, final); err != nil {
			rep.Violations = append(rep.Violations, "lease: revoking the kept leases at the end: "+err.Error())
		}
		lcancel()
		rep.Violations = append(rep.Violations, lw.check(healedAt)...)
		rep.Lease = lw.stats()
		if err := lw.writeHistories(filepath.Join(o.Dir, "leases.txt")); err != nil {
			o.Logf("%v", err)
		}
	}
	<-regained
	electionStop()
	ewg.Wait()
	if electionW != nil {
		ectx, ecancel := context.WithTimeout(hctx, 20*time.Second)
		rep.Violations = append(rep.Violations, electionW.check(ectx, final)...)
		ecancel()
		rep.Election = electionW.summary()
		if err := electionW.writeEvidence(filepath.Join(o.Dir, "election.txt"), rec.start); err != nil {
			o.Logf("%v", err)
		}
	}
	if lockW != nil {
		kctx, kcancel := context.WithTimeout(hctx, 10*time.Second)
		rep.Violations = append(rep.Violations, lockW.check(kctx, final)...)
		kcancel()
		rep.Lock = lockW.summary()
	}
	if bankW != nil {
		bctx, bcancel := context.WithTimeout(hctx, 30*time.Second)
		rep.Violations = append(rep.Violations, bankW.check(bctx, final)...)
		bcancel()
		rep.Bank = bankW.summary()
		if err := bankW.writeEvidence(filepath.Join(o.Dir, "bank.txt")); err != nil {
			o.Logf("%v", err)
		}
	}
	var finalState map[string]string
	var finalRev int64
	for attempt := 0; ; attempt++ {
		fctx, fcancel := context.WithTimeout(hctx, 5*time.Second)
		acked, lost, err := set.check(fctx, final)
		var r *clientv3.GetResponse
		if err == nil {
			r, err = final.Get(fctx, ks.watch, clientv3.WithPrefix())
		}
		fcancel()
		if err != nil {
			if attempt < 5 && hctx.Err() == nil {
				continue
			}
			rep.Violations = append(rep.Violations, "final reads failed: "+err.Error())
			dumpGoroutines(c)
			break
		}
		rep.SetAcked = acked
		if len(lost) > 0 {
			rep.Violations = append(rep.Violations, fmt.Sprintf("%d acknowledged set adds lost, first %s", len(lost), lost[0]))
		}
		finalState = map[string]string{}
		for _, kv := range r.Kvs {
			finalState[string(kv.Key)] = string(kv.Value)
		}
		finalRev = r.Header.Revision
		if o.Shards > 0 {
			// The watched prefix is part of a shard whose revision other
			// keys advance too; it holds puts only (see keyspace), so its
			// newest key is the last event a watcher must reach.
			finalRev = 0
			for _, kv := range r.Kvs {
				finalRev = max(finalRev, kv.ModRevision)
			}
		}
		break
	}
	// Let the watchers reach the final revision, then stop them.
	caughtUp := func() bool {
		for _, w := range watchers {
			w.mu.Lock()
			behind := len(w.events) == 0 || w.events[len(w.events)-1].Kv.ModRevision < finalRev
			w.mu.Unlock()
			if behind {
				return false
			}
		}
		return true
	}
	if finalState != nil && len(watchers) > 0 {
		deadline := time.NewTimer(20 * time.Second)
		poll := time.NewTicker(50 * time.Millisecond)
	wait:
		for !caughtUp() {
			select {
			case <-deadline.C:
				break wait
			case <-poll.C:
			}
		}
		deadline.Stop()
		poll.Stop()
	}
	wcancel()
	wwg.Wait()
	for _, w := range watchers {
		rep.WatchEvents += len(w.events)
		rep.Violations = append(rep.Violations, w.errs...)
	}
	if finalState != nil && len(watchers) > 0 {
		rep.Violations = append(rep.Violations, checkWatches(watchers, finalState, finalRev)...)
	}
	{
		// Every group's members hold one state at one applied index.
		rctx, rcancel := context.WithTimeout(ctx, 30*time.Second)
		groups, err := replicaGroups(rctx, o.Shards > 0, memberClients)
		if err != nil {
			rep.Violations = append(rep.Violations, err.Error())
		} else {
			v, line := checkReplicas(rctx, groups, 20*time.Second, o.Logf)
			rep.Violations, rep.Replicas = append(rep.Violations, v...), line
		}
		rcancel()
	}
	rep.Violations = append(rep.Violations, nm.violationsFound()...)
	if o.Shards > 0 {
		end := 0
		lctx, lcancel := context.WithTimeout(hctx, 5*time.Second)
		if l, err := listShards(lctx, final); err == nil {
			end = len(l.Shards)
		}
		lcancel()
		rep.Shards = shardSummary(o.Shards, sn, end)
		if sn != nil {
			rep.Splits, rep.Moves = sn.splits, sn.moves
			rep.Violations = append(rep.Violations, sn.verdict()...)
		}
	}
	rep.Violations = append(rep.Violations, c.crashReports()...)

	rec.mu.Lock()
	ops := rec.ops
	rec.mu.Unlock()
	rep.Ops = int64(len(ops)) + rec.failed.Load()
	rep.OK, rep.Failed, rep.Unknown = rec.ok.Load(), rec.failed.Load(), rec.unknown.Load()
	rep.NoSpace = rec.noSpace.Load()
	rep.LinearizabilityCheckedOver = len(ops)
	ok, detail, vis := checkRegister(ops, o.CheckTimeout, o.Dir)
	if !ok {
		rep.Violations = append(rep.Violations, "linearizability: "+detail)
		rep.Visualization = vis
	}
	rep.Faults, rep.Schedule = nm.summary()
	rep.Elapsed = time.Since(started)
	if rep.HasViolations() {
		// The members still run: save where each stands (goroutines,
		// metrics) beside the logs.
		dumpGoroutines(c)
		os.WriteFile(filepath.Join(o.Dir, "schedule.txt"), []byte(strings.Join(rep.Schedule, "\n")+"\n"), 0o600)
		os.WriteFile(filepath.Join(o.Dir, "summary.txt"), []byte(rep.Summary()), 0o600)
	} else {
		c.close() // unmounts the disks
		if !keepDir {
			os.RemoveAll(o.Dir)
			rep.Dir = ""
		} else if imgs, _ := filepath.Glob(filepath.Join(o.Dir, "*.img")); len(imgs) > 0 {
			// A passing run's file system images are only big files.
			for _, img := range imgs {
				os.Remove(img)
			}
		}
	}
	return rep, nil
}

// clockBinary returns a ballot binary built with the chaosclock tag: the
// one given, if it is; else one built from the module's source.
func clockBinary(o Options) (string, error) {
	if hasChaosClock(o.Binary) {
		return o.Binary, nil
	}
	root := o.Source
	if root == "" {
		out, err := exec.Command("go", "env", "GOMOD").Output()
		if err != nil {
			return "", fmt.Errorf("%s is not a chaosclock build, and no Go toolchain to build one: %w", o.Binary, err)
		}
		root = filepath.Dir(strings.TrimSpace(string(out)))
	}
	mod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil || !strings.HasPrefix(string(mod), "module github.com/ballotdb/ballot\n") {
		return "", fmt.Errorf("%s is not a chaosclock build, and %q is not ballot's module to build one from (run from the source tree, or build with -tags chaosclock)", o.Binary, root)
	}
	dir := filepath.Join(o.Dir, "bin")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	o.Logf("building a chaosclock binary from %s", root)
	return BuildBinary(root, dir, "chaosclock")
}

// hasChaosClock reports whether the binary was built with -tags chaosclock.
func hasChaosClock(bin string) bool {
	bi, err := buildinfo.ReadFile(bin)
	if err != nil {
		return false
	}
	for _, s := range bi.Settings {
		if s.Key == "-tags" && slices.Contains(strings.Split(s.Value, ","), "chaosclock") {
			return true
		}
	}
	return false
}

// regWindow is how long the register workload uses one set of keys.
const regWindow = 5 * time.Second

// ErrViolation is returned by callers that turn a failed report into an
// error.
var ErrViolation = errors.New("chaos: violations found")

// engineArgs are the serve flags that pick the consensus engine.
func engineArgs(engine string) []string {
	if engine == "" {
		return nil
	}
	return []string{"--engine", engine}
}

// dumpGoroutines saves the members' goroutines where the cluster can (on
// processes; a container's pprof port is not published).
func dumpGoroutines(c any) {
	if d, ok := c.(interface{ dumpGoroutines() }); ok {
		d.dumpGoroutines()
	}
}
