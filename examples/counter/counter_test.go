package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"go/build"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ballotdb/ballot/internal/freeport"
	"github.com/ballotdb/ballot/internal/testutil"
)

// binPath is the counter binary, built once for the package's tests.
var (
	buildOnce sync.Once
	buildDir  string
	binPath   string
	buildErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// goTool finds the go command: on PATH, else in the GOROOT this test was
// built with.
func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(build.Default.GOROOT, "bin", "go")
}

// counterBinary builds the counter with `go build` (once).
func counterBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "counter-bin-")
		if buildErr != nil {
			return
		}
		binPath = filepath.Join(buildDir, "counter")
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, goTool(), "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// freePorts returns n loopback addresses below the ephemeral range (see
// internal/freeport), so the processes can bind them, and bind them again
// after a restart, without an outgoing connection holding one meanwhile.
func freePorts(t *testing.T, n int) []string {
	t.Helper()
	var addrs []string
	for range n {
		addr, err := freeport.Pick("127.0.0.1")
		if err != nil {
			t.Fatal(err)
		}
		addrs = append(addrs, addr)
	}
	return addrs
}

// proc is one counter process, started and restarted on the same data
// directory and ports.
type proc struct {
	id       int
	peerAddr string
	httpAddr string
	dataDir  string
	logPath  string

	mu      sync.Mutex
	cmd     *exec.Cmd
	exited  chan struct{} // closed when cmd has exited
	killed  bool          // by the test, not on its own
	exitErr error
}

// cluster is a group of counter processes on loopback.
type cluster struct {
	t     *testing.T
	bin   string
	peers string
	extra []string
	procs []*proc
	// unexpected counts exits the test did not cause.
	unexpected atomic.Int64
}

func newCluster(t *testing.T, size int, extra ...string) *cluster {
	t.Helper()
	c := &cluster{t: t, bin: counterBinary(t), extra: extra}
	addrs := freePorts(t, 2*size)
	dir := t.TempDir()
	var peers []string
	for i := range size {
		p := &proc{id: i + 1, peerAddr: addrs[2*i], httpAddr: addrs[2*i+1],
			dataDir: filepath.Join(dir, fmt.Sprintf("data%d", i+1)), logPath: filepath.Join(dir, fmt.Sprintf("node%d.log", i+1))}
		c.procs = append(c.procs, p)
		peers = append(peers, fmt.Sprintf("%d=%s", p.id, p.peerAddr))
	}
	c.peers = strings.Join(peers, ",")
	// Registered after TempDir, so it runs before the directory is removed.
	t.Cleanup(func() {
		for _, p := range c.procs {
			c.kill(p)
		}
		if t.Failed() {
			for _, p := range c.procs {
				t.Logf("--- tail of %s:\n%s", p.logPath, tail(p.logPath, 40))
			}
		}
	})
	for _, p := range c.procs {
		c.start(p)
	}
	return c
}

// start starts p unless it is running.
func (c *cluster) start(p *proc) {
	c.t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil && !isClosed(p.exited) {
		return
	}
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		c.t.Fatal(err)
	}
	args := append([]string{"--id", strconv.Itoa(p.id), "--peers", c.peers, "--data", p.dataDir,
		"--http", p.httpAddr}, c.extra...)
	cmd := exec.Command(c.bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		c.t.Fatalf("start node %d: %v", p.id, err)
	}
	p.cmd, p.exited, p.killed, p.exitErr = cmd, make(chan struct{}), false, nil
	exited := p.exited
	go func() {
		err := cmd.Wait()
		logf.Close()
		p.mu.Lock()
		p.exitErr = err
		killed := p.killed
		p.mu.Unlock()
		if !killed {
			c.unexpected.Add(1)
		}
		close(exited)
	}()
}

// kill sends SIGKILL to p and waits for it to exit.
func (c *cluster) kill(p *proc) {
	p.mu.Lock()
	cmd, exited := p.cmd, p.exited
	if cmd == nil || isClosed(exited) {
		p.mu.Unlock()
		return
	}
	p.killed = true
	p.mu.Unlock()
	cmd.Process.Kill()
	<-exited
}

// signal sends sig to p and waits, at most d, for it to exit.
func (c *cluster) signal(p *proc, sig os.Signal, d time.Duration) error {
	p.mu.Lock()
	cmd, exited := p.cmd, p.exited
	p.killed = true
	p.mu.Unlock()
	if err := cmd.Process.Signal(sig); err != nil {
		return err
	}
	select {
	case <-exited:
	case <-time.After(d):
		return fmt.Errorf("node %d still running %v after %v", p.id, sig, d)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.exitErr
}

// leader returns the member that the running members agree leads, asking
// for at most a second, or nil.
func (c *cluster) leader(ctx context.Context) *proc {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	for ctx.Err() == nil {
		var lead uint64
		agree := true
		for _, p := range c.procs {
			if !p.running() {
				continue
			}
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.httpAddr+"/leader", nil)
			if err != nil {
				return nil
			}
			l, err := do(req)
			if err != nil || l == 0 || (lead != 0 && l != lead) {
				agree = false
				break
			}
			lead = l
		}
		if agree && lead >= 1 && int(lead) <= len(c.procs) && c.procs[lead-1].running() {
			return c.procs[lead-1]
		}
		select {
		case <-time.After(20 * time.Millisecond): // poll again
		case <-ctx.Done():
		}
	}
	return nil
}

// logCounts counts, in every member's log, the times it became leader and
// the snapshots it installed from a leader.
func (c *cluster) logCounts() (elections, installs int) {
	for _, p := range c.procs {
		b, _ := os.ReadFile(p.logPath)
		for l := range strings.Lines(string(b)) {
			if strings.Contains(l, `msg="leader changed"`) && strings.Contains(l, "role=leader") {
				elections++
			}
			if strings.Contains(l, `msg="installing snapshot from the leader"`) {
				installs++
			}
		}
	}
	return elections, installs
}

// lazyErr prints the error *p holds when it is formatted.
type lazyErr struct{ p *error }

func (e lazyErr) String() string { return fmt.Sprint(*e.p) }

func isClosed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func (p *proc) running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd != nil && !isClosed(p.exited)
}

func tail(path string, lines int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	ls := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(ls[max(0, len(ls)-lines):], "\n")
}

var httpClient = &http.Client{Timeout: 3 * time.Second}

// inc sends one increment for (client, seq) to p and returns the value.
func inc(ctx context.Context, p *proc, client string, seq uint64) (uint64, error) {
	u := fmt.Sprintf("http://%s/inc?client=%s&seq=%d", p.httpAddr, client, seq)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, nil)
	if err != nil {
		return 0, err
	}
	return do(req)
}

// value reads p's value with GET /value.
func value(ctx context.Context, p *proc) (uint64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.httpAddr+"/value", nil)
	if err != nil {
		return 0, err
	}
	return do(req)
}

func do(req *http.Request) (uint64, error) {
	resp, err := httpClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if err != nil {
		return 0, err
	}
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(body))
	}
	return strconv.ParseUint(string(bytes.TrimSpace(body)), 10, 64)
}

// checkFinal is the test's verdict: every member must report exactly the
// number of acknowledged increments (more means an increment applied twice,
// fewer that an acknowledged one was lost).
func checkFinal(values map[int]uint64, members int, acked uint64) error {
	var errs []error
	for id := 1; id <= members; id++ {
		v, ok := values[id]
		switch {
		case !ok:
			errs = append(errs, fmt.Errorf("node %d: no value read", id))
		case v > acked:
			errs = append(errs, fmt.Errorf("node %d: value %d > %d acknowledged increments (applied twice?)", id, v, acked))
		case v < acked:
			errs = append(errs, fmt.Errorf("node %d: value %d < %d acknowledged increments (lost?)", id, v, acked))
		}
	}
	return errors.Join(errs...)
}

func TestCheckFinalBites(t *testing.T) {
	if err := checkFinal(map[int]uint64{1: 50, 2: 50, 3: 50}, 3, 50); err != nil {
		t.Fatalf("a correct outcome was refused: %v", err)
	}
	for name, values := range map[string]map[int]uint64{
		"one increment too many": {1: 50, 2: 51, 3: 50},
		"one increment lost":     {1: 49, 2: 49, 3: 49},
		"a member not read":      {1: 50, 3: 50},
	} {
		if err := checkFinal(values, 3, 50); err == nil {
			t.Errorf("%s: %v passed the check for 50 acknowledged", name, values)
		} else {
			t.Logf("%s: refused as it should be: %v", name, err)
		}
	}
}

func TestParsePeers(t *testing.T) {
	p, err := parsePeers("1=127.0.0.1:7001, 2=127.0.0.1:7002,3=[::1]:7003")
	if err != nil || len(p) != 3 || p[3] != "[::1]:7003" {
		t.Fatalf("parsePeers = %v, %v", p, err)
	}
	for _, bad := range []string{"", "1", "0=a:1", "x=a:1", "1=a:1,1=b:2", "1=nohost"} {
		if _, err := parsePeers(bad); err == nil {
			t.Errorf("parsePeers(%q) accepted", bad)
		}
	}
}

// TestApplyDedup: the state machine applies each (client, seq) once, and a
// snapshot carries the dedup table.
func TestApplyDedup(t *testing.T) {
	c := newCounter()
	get := func(b []byte) uint64 {
		t.Helper()
		if len(b) != 8 {
			t.Fatalf("result %x", b)
		}
		return uint64(b[0]) | uint64(b[1])<<8 // small values
	}
	if v := get(c.Apply(1, encodeInc("a", 1))); v != 1 {
		t.Fatalf("a/1 = %d", v)
	}
	if v := get(c.Apply(2, encodeInc("b", 1))); v != 2 {
		t.Fatalf("b/1 = %d", v)
	}
	if v := get(c.Apply(3, encodeInc("a", 1))); v != 1 || c.get() != 2 {
		t.Fatalf("retried a/1 = %d, counter %d", v, c.get())
	}
	var buf bytes.Buffer
	if err := c.Snapshot(&buf); err != nil {
		t.Fatal(err)
	}
	r := newCounter()
	if err := r.Restore(&buf); err != nil {
		t.Fatal(err)
	}
	if v := get(r.Apply(4, encodeInc("b", 1))); v != 2 || r.get() != 2 {
		t.Fatalf("after restore, retried b/1 = %d, counter %d", v, r.get())
	}
	if v := get(r.Apply(5, encodeInc("b", 2))); v != 3 {
		t.Fatalf("b/2 = %d", v)
	}
	if res := r.Apply(6, []byte("garbage")); res != nil || r.get() != 3 {
		t.Fatalf("garbage applied: %x, counter %d", res, r.get())
	}
}

// soakDuration is how long the kill -9 test runs: 20 s, or
// BALLOT_COUNTER_SOAK.
func soakDuration(t *testing.T) time.Duration {
	d := 20 * time.Second
	if s := os.Getenv("BALLOT_COUNTER_SOAK"); s != "" {
		var err error
		if d, err = time.ParseDuration(s); err != nil || d <= 0 {
			t.Fatalf("BALLOT_COUNTER_SOAK=%q: want a positive duration", s)
		}
	}
	return d
}

// fastNode are the flags the process tests run with: a 500 ms election
// timeout, and frequent snapshots so that restarts restore from them.
var fastNode = []string{"--tick", "50ms", "--election-ticks", "10", "--timeout", "2s", "--snapshot-entries", "100"}

// TestKill9: three counter processes; clients increment, retrying the same
// (client, seq) until acknowledged, while a nemesis kills a random member
// with SIGKILL every 2–4 s and restarts it on its data directory. In the end
// every member's linearizable read equals the number of acknowledged
// increments: none lost, none applied twice.
func TestKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs processes for 20 s")
	}
	soak := soakDuration(t)
	c := newCluster(t, 3, fastNode...)
	start := time.Now()
	soakEnd := start.Add(soak)
	// The clients' last increments must be acknowledged by then.
	hardEnd := soakEnd.Add(15 * time.Second)
	ctx, cancel := context.WithDeadline(context.Background(), hardEnd)
	defer cancel()

	// Nemesis.
	var kills, leaderKills atomic.Int64
	nemesisDone := make(chan struct{})
	go func() {
		defer close(nemesisDone)
		rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
		// pace spaces the faults out; it ends early when the test does.
		pace := func(d time.Duration) bool {
			select {
			case <-ctx.Done():
				return false
			case <-time.After(d):
				return true
			}
		}
		for {
			pause := 2*time.Second + time.Duration(rng.Int64N(int64(2*time.Second)))
			if time.Now().Add(pause).After(soakEnd) {
				return
			}
			if !pace(pause) {
				return
			}
			// Bring back anything that died on its own.
			for _, p := range c.procs {
				if !p.running() {
					c.start(p)
				}
			}
			// Every second kill targets the leader, so that failover is
			// exercised whatever the dice say; the others pick at random.
			p, what := c.procs[rng.IntN(len(c.procs))], "random"
			if kills.Load()%2 == 1 {
				if l := c.leader(ctx); l != nil {
					p, what = l, "leader"
					leaderKills.Add(1)
				}
			}
			c.kill(p)
			kills.Add(1)
			t.Logf("%6.2fs nemesis: kill -9 node %d (%s)", time.Since(start).Seconds(), p.id, what)
			pace(time.Duration(200+rng.IntN(800)) * time.Millisecond) // down for a moment; restarted either way
			c.start(p)
			t.Logf("%6.2fs nemesis: restarted node %d", time.Since(start).Seconds(), p.id)
		}
	}()

	// Clients.
	const clients = 2
	var acked atomic.Uint64
	var retries atomic.Int64
	errc := make(chan error, clients)
	for ci := range clients {
		go func() {
			errc <- runClient(ctx, c, fmt.Sprintf("client%d", ci), ci, soakEnd, &acked, &retries)
		}()
	}

	<-nemesisDone
	for _, p := range c.procs {
		c.start(p) // any that are down
	}
	for range clients {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	want := acked.Load()

	// Every member must answer a linearizable read; then the values must be
	// exactly the acknowledged count.
	values := map[int]uint64{}
	var lastErr error
	testutil.Eventually(t, 15*time.Second, func() bool {
		for _, p := range c.procs {
			if _, ok := values[p.id]; ok {
				continue
			}
			rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			v, err := value(rctx, p)
			cancel()
			if err != nil {
				lastErr = fmt.Errorf("node %d: %w", p.id, err)
				return false
			}
			values[p.id] = v
		}
		return true
	}, "not every member answered GET /value: %v", lazyErr{&lastErr})

	elections, installs := c.logCounts()
	t.Logf("summary: %d kills (%d of the leader), %d increments acknowledged (%d retried requests), final values %v, "+
		"%d leaders elected, %d snapshots installed from a leader, in %v",
		kills.Load(), leaderKills.Load(), want, retries.Load(), values, elections, installs, time.Since(start).Round(time.Millisecond))
	if err := checkFinal(values, len(c.procs), want); err != nil {
		t.Fatal(err)
	}
	if k := kills.Load(); k < 3 {
		t.Errorf("only %d kills happened, want at least 3", k)
	}
	if leaderKills.Load() < 1 {
		t.Errorf("the leader was never killed")
	}
	if want < 50 {
		t.Errorf("only %d increments acknowledged, want at least 50", want)
	}
	if u := c.unexpected.Load(); u > 0 {
		t.Errorf("%d processes exited without being killed", u)
	}
}

// runClient increments as client until soakEnd, starting at member index
// first; each (client, seq) is retried on any error, on the next member,
// until acknowledged. It checks that the values it is answered increase.
func runClient(ctx context.Context, c *cluster, client string, first int, soakEnd time.Time, acked *atomic.Uint64, retries *atomic.Int64) error {
	var last uint64
	target := first
	for seq := uint64(1); time.Now().Before(soakEnd); seq++ {
		for attempt := 0; ; attempt++ {
			p := c.procs[target%len(c.procs)]
			v, err := inc(ctx, p, client, seq)
			if err == nil {
				if v <= last {
					return fmt.Errorf("%s seq %d: value %d after %d: not increasing", client, seq, v, last)
				}
				last = v
				acked.Add(1)
				break
			}
			if ctx.Err() != nil {
				return fmt.Errorf("%s seq %d: not acknowledged after %d attempts: %v", client, seq, attempt+1, err)
			}
			retries.Add(1)
			target++ // try another member
			select {
			case <-time.After(20 * time.Millisecond): // pacing retries
			case <-ctx.Done():
			}
		}
	}
	return nil
}

// TestSIGTERM: a one-member counter stops cleanly (exit status 0) on
// SIGTERM and keeps its value across the restart.
func TestSIGTERM(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs a process")
	}
	c := newCluster(t, 1, fastNode...)
	p := c.procs[0]
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var got uint64
	testutil.Eventually(t, 15*time.Second, func() bool {
		v, err := inc(ctx, p, "solo", 1)
		got = v
		return err == nil
	}, "increment never acknowledged")
	if got != 1 {
		t.Fatalf("first increment returned %d", got)
	}
	if err := c.signal(p, syscall.SIGTERM, 15*time.Second); err != nil {
		t.Fatalf("SIGTERM: %v\n%s", err, tail(p.logPath, 20))
	}
	if !slices.ContainsFunc(strings.Split(tail(p.logPath, 5), "\n"), func(l string) bool {
		return strings.Contains(l, "counter stopped")
	}) {
		t.Errorf("no clean-stop line in the log:\n%s", tail(p.logPath, 5))
	}
	c.start(p)
	testutil.Eventually(t, 15*time.Second, func() bool {
		v, err := value(ctx, p)
		got = v
		return err == nil
	}, "restarted member never answered GET /value")
	if got != 1 {
		t.Fatalf("value after restart %d, want 1", got)
	}
	if v, err := inc(ctx, p, "solo", 1); err != nil || v != 1 {
		t.Fatalf("retried increment after restart = %d, %v; want 1 (deduplicated)", v, err)
	}
}
