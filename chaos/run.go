package chaos

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Options configure one chaos run.
type Options struct {
	Nodes    int           // members; default 3
	Duration time.Duration // how long clients and the nemesis run; default 30 s
	Nemeses  []string      // kinds to inject (see AllNemeses); none: a fault-free run
	Seed     uint64        // 0: drawn from the clock
	Clients  int           // register clients; default 2 per member
	Keys     int           // keys per window; default 5
	// Binary is the ballot binary to run; empty builds ./cmd/ballot from
	// the module containing the working directory.
	Binary string
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
	// CheckTimeout bounds the linearizability check; default 2 min.
	CheckTimeout time.Duration
	Logf         func(format string, args ...any)
}

// Report is the outcome of a run.
type Report struct {
	Seed                       uint64
	Ops, OK, Failed, Unknown   int64
	SetAcked                   int
	WatchEvents                int
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
	fmt.Fprintf(&b, "seed %d, %v\n", r.Seed, r.Elapsed.Round(time.Millisecond))
	fmt.Fprintf(&b, "register: %d operations: %d ok, %d failed reads (left out), %d unknown writes\n", r.Ops, r.OK, r.Failed, r.Unknown)
	fmt.Fprintf(&b, "set: %d acknowledged adds; watch: %d events\n", r.SetAcked, r.WatchEvents)
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
		fmt.Fprintf(&b, "check: linearizable, no acknowledged write lost, watches complete, no unexpected exit: 0 violations\n")
	} else {
		fmt.Fprintf(&b, "check: %d violations\n", len(r.Violations))
		for _, v := range r.Violations {
			fmt.Fprintf(&b, "  - %s\n", v)
		}
		fmt.Fprintf(&b, "evidence in %s\n", r.Dir)
	}
	return b.String()
}

// BuildBinary builds the ballot binary into dir from the module at root.
func BuildBinary(root, dir string) (string, error) {
	bin := filepath.Join(dir, "ballot")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/ballot")
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
		if k != NemesisKill && k != NemesisPause && k != NemesisPartition {
			return nil, fmt.Errorf("chaos: unknown nemesis %q (know %s)", k, strings.Join(AllNemeses, ", "))
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
	rep := &Report{Seed: o.Seed, Dir: o.Dir}
	started := time.Now()
	var c cluster
	var err error
	if o.Containers {
		c, err = newDockerCluster(o.Binary, o.Dir, o.Nodes, o.Tick, o.Unsafe, o.Logf)
	} else {
		c, err = newProcCluster(o.Binary, o.Dir, o.Nodes, o.Tick, o.Unsafe, o.Logf)
	}
	if err != nil {
		return nil, err
	}
	defer c.close()
	hctx, hcancel := context.WithTimeout(ctx, 30*time.Second)
	err = c.waitHealthy(hctx)
	hcancel()
	if err != nil {
		return nil, err
	}
	election := 10 * o.Tick

	rec := &recorder{start: time.Now()}
	set := &setWorkload{}
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
		cli, err := newClient([]string{c.client(i % o.Nodes)}) // pinned: stale reads show
		if err != nil {
			return nil, err
		}
		clients = append(clients, cli)
		crng := rand.New(rand.NewPCG(o.Seed, uint64(i)))
		wg.Add(1)
		go func() {
			defer wg.Done()
			registerClient(runCtx, i, cli, crng, o.Keys, 5*time.Second, opTimeout, rec)
		}()
	}
	var watchers []*watchRecorder
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	var wwg sync.WaitGroup
	for i := range o.Nodes {
		cli, err := newClient([]string{c.client(i)})
		if err != nil {
			return nil, err
		}
		clients = append(clients, cli)
		sc, err := newClient([]string{c.client(i)})
		if err != nil {
			return nil, err
		}
		clients = append(clients, sc)
		w := &watchRecorder{member: i}
		watchers = append(watchers, w)
		wwg.Add(1)
		go func() { defer wwg.Done(); w.run(wctx, cli) }()
		wg.Add(1)
		go func() { defer wg.Done(); set.run(runCtx, 1000+i, sc, opTimeout) }()
	}
	nm := &nemesis{c: c, kinds: o.Nemeses, rng: rand.New(rand.NewPCG(o.Seed, 0x9e5)), logf: o.Logf, counts: map[string]int{}}
	if len(o.Nemeses) > 0 {
		wg.Add(1)
		go func() { defer wg.Done(); nm.run(runCtx, rec.start, election) }()
	}
	wg.Wait()

	// Heal everything and let the cluster settle before the final checks.
	if err := c.healAll(); err != nil {
		return nil, err
	}
	hctx, hcancel = context.WithTimeout(ctx, 60*time.Second)
	defer hcancel()
	if err := c.waitHealthy(hctx); err != nil {
		rep.Violations = append(rep.Violations, "after healing: "+err.Error())
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
	var finalState map[string]string
	var finalRev int64
	for attempt := 0; ; attempt++ {
		fctx, fcancel := context.WithTimeout(hctx, 5*time.Second)
		acked, lost, err := set.check(fctx, final)
		var r *clientv3.GetResponse
		if err == nil {
			r, err = final.Get(fctx, "", clientv3.WithPrefix())
		}
		fcancel()
		if err != nil {
			if attempt < 5 && hctx.Err() == nil {
				continue
			}
			rep.Violations = append(rep.Violations, "final reads failed: "+err.Error())
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
	if finalState != nil {
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
	if finalState != nil {
		rep.Violations = append(rep.Violations, checkWatches(watchers, finalState, finalRev)...)
	}
	rep.Violations = append(rep.Violations, c.crashReports()...)

	rec.mu.Lock()
	ops := rec.ops
	rec.mu.Unlock()
	rep.Ops = int64(len(ops)) + rec.failed.Load()
	rep.OK, rep.Failed, rep.Unknown = rec.ok.Load(), rec.failed.Load(), rec.unknown.Load()
	rep.LinearizabilityCheckedOver = len(ops)
	ok, detail, vis := checkRegister(ops, o.CheckTimeout, o.Dir)
	if !ok {
		rep.Violations = append(rep.Violations, "linearizability: "+detail)
		rep.Visualization = vis
	}
	rep.Faults, rep.Schedule = nm.summary()
	rep.Elapsed = time.Since(started)
	if rep.HasViolations() {
		os.WriteFile(filepath.Join(o.Dir, "schedule.txt"), []byte(strings.Join(rep.Schedule, "\n")+"\n"), 0o600)
		os.WriteFile(filepath.Join(o.Dir, "summary.txt"), []byte(rep.Summary()), 0o600)
	} else if !keepDir {
		c.close()
		os.RemoveAll(o.Dir)
		rep.Dir = ""
	}
	return rep, nil
}

// ErrViolation is returned by callers that turn a failed report into an
// error.
var ErrViolation = errors.New("chaos: violations found")
