package chaos

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ballotdb/ballot/internal/freeport"
	"github.com/ballotdb/ballot/server"
)

// chaosToken is the rig's --initial-cluster-token.
const chaosToken = "chaos"

// cluster is what the rig needs of a cluster under test.
type cluster interface {
	size() int
	client(i int) string // member i's client address
	start(i int) error   // start member i again on its data
	kill(i int)          // SIGKILL member i and wait for it to exit
	running(i int) bool
	pause(i int, on bool)      // freeze (SIGSTOP) or thaw member i
	cut(from, to int, on bool) // drop (or let through) from's messages to to
	healAll() error
	waitHealthy(ctx context.Context) error
	leader() int
	statusAddrs() []string // members' HTTP addresses (health, status)
	// fillDisk fills (or empties again) member i's file system; processes
	// with Options' disk nemesis only.
	fillDisk(i int, on bool) (int64, error)
	// setClockRate sets member i's clock rate (a chaosclock build only).
	setClockRate(i int, rate float64) error
	crashReports() []string
	close()
}

// clockRateFile is the file in a member's data directory from which a
// chaosclock build reads its clock rate (node.ChaosClockRateFile).
const clockRateFile = "chaos-clock-rate"

// writeClockRate writes a clock rate file atomically.
func writeClockRate(dataDir string, rate float64) error {
	p := filepath.Join(dataDir, clockRateFile)
	if err := os.WriteFile(p+".tmp", []byte(fmt.Sprintf("%g\n", rate)), 0o644); err != nil {
		return fmt.Errorf("chaos: clock rate: %w", err)
	}
	if err := os.Rename(p+".tmp", p); err != nil {
		return fmt.Errorf("chaos: clock rate: %w", err)
	}
	return nil
}

// procCluster is a cluster of real ballot processes on loopback. Peer
// traffic between every ordered pair of members passes through a proxy, so
// the nemesis can cut any direction of any link.
type procCluster struct {
	bin    string
	dir    string
	n      int
	tick   time.Duration
	unsafe []string
	extra  []string // more serve flags (the engine)
	logf   func(string, ...any)

	dataDir []string
	disks   []*loopDisk // with the disk nemesis: each member's file system
	// routes: the binary takes --unsafe-peer-routes, so members learn each
	// other's real peer addresses (from which member IDs derive) and only
	// dial through the proxies. Older binaries are given the proxies'
	// addresses in --initial-cluster itself.
	routes     bool
	clientAddr []string
	peerAddr   []string
	httpAddr   []string
	proxies    [][]*proxy // proxies[from][to]; nil on the diagonal
	// shards > 0: a sharded cluster (serve --shards). Its members are
	// listed in --initial-cluster at their hostProxies' addresses, which
	// tell senders apart by the transport's handshake (hostproxy.go); the
	// per-link proxies are not used.
	shards      int
	hostProxies []*hostProxy

	mu     sync.Mutex
	procs  []*exec.Cmd
	exited []chan struct{} // closed once the current process has exited
	paused []bool
	// killed counts the nemesis's kills of each member; an exit that is not
	// one of them is a crash the rig reports.
	expectExit []bool
	crashes    []string
	// joining: member i was replaced (the member nemesis) and starts empty
	// to join; peerAddr[i] then changed, under mu.
	joining []bool
}

// freePort picks a port for a member to listen on for the whole run (see
// internal/freeport: it must stay free while the member is down).
func freePort() (string, error) { return freeport.Pick("127.0.0.1") }

// newProcCluster starts n members. With disks, each member's data
// directory is on its own loop-mounted file system (for the disk nemesis).
func newProcCluster(bin, dir string, n, shards int, tick time.Duration, unsafe, extra []string, disks bool, logf func(string, ...any)) (*procCluster, error) {
	c := &procCluster{bin: bin, dir: dir, n: n, shards: shards, tick: tick, unsafe: unsafe, extra: extra, logf: logf, joining: make([]bool, n),
		routes: shards == 0 && takesPeerRoutes(bin),
		procs:  make([]*exec.Cmd, n), exited: make([]chan struct{}, n), paused: make([]bool, n), expectExit: make([]bool, n)}
	for i := range n {
		c.dataDir = append(c.dataDir, filepath.Join(dir, name(i)))
		if disks {
			d, err := mountLoopDisk(filepath.Join(dir, name(i)+".img"), filepath.Join(dir, name(i)+"-disk"), diskImageBytes)
			if err != nil {
				c.close()
				return nil, err
			}
			c.disks = append(c.disks, d)
			c.dataDir[i] = filepath.Join(d.mnt, "data")
		}
	}
	for range n {
		for _, list := range []*[]string{&c.clientAddr, &c.peerAddr, &c.httpAddr} {
			a, err := freePort()
			if err != nil {
				return nil, err
			}
			*list = append(*list, a)
		}
	}
	if shards > 0 {
		senders := map[uint64]int{}
		for to := range n {
			p, err := newHostProxy(c.peerAddr[to], to)
			if err != nil {
				c.close()
				return nil, err
			}
			c.hostProxies = append(c.hostProxies, p)
			senders[server.MemberIDFor(chaosToken, p.addr())] = to
		}
		for _, p := range c.hostProxies {
			p.serve(senders)
		}
	}
	c.proxies = make([][]*proxy, n)
	for from := range n {
		if shards > 0 {
			break
		}
		c.proxies[from] = make([]*proxy, n)
		for to := range n {
			if from == to {
				continue
			}
			p, err := newProxy(c.peerAddr[to])
			if err != nil {
				c.close()
				return nil, err
			}
			c.proxies[from][to] = p
		}
	}
	for i := range n {
		if err := c.start(i); err != nil {
			c.close()
			return nil, err
		}
	}
	return c, nil
}

// dumpGoroutines saves every running member's goroutines (from its
// /debug/pprof/goroutine) as nX-goroutines.txt in the run's directory: the
// evidence of a member that stopped making progress.
func (c *procCluster) dumpGoroutines() {
	for i := range c.n {
		if !c.running(i) {
			continue
		}
		// The goroutines, and the metrics: the engine's term, leader,
		// commit and applied index say where a stuck group stands.
		for _, f := range []struct{ path, file string }{
			{"/debug/pprof/goroutine?debug=2", name(i) + "-goroutines.txt"},
			{"/metrics", name(i) + "-metrics.txt"},
		} {
			if err := c.saveHTTP(c.httpAddr[i], f.path, filepath.Join(c.dir, f.file)); err != nil {
				c.logf("chaos: saving %s's %s: %v", name(i), f.path, err)
			}
		}
	}
}

// saveHTTP saves what a member's HTTP port answers at path to file.
func (c *procCluster) saveHTTP(addr, path, file string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+path, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	return os.WriteFile(file, b, 0o644)
}

// takesPeerRoutes reports whether the binary's serve command knows the
// hidden --unsafe-peer-routes flag (cobra refuses an unknown flag before it
// prints help).
func takesPeerRoutes(bin string) bool {
	return exec.Command(bin, "serve", "--unsafe-peer-routes=", "--help").Run() == nil
}

func (c *procCluster) size() int           { return c.n }
func (c *procCluster) client(i int) string { return c.clientAddr[i] }

func name(i int) string { return fmt.Sprintf("n%d", i+1) }

// UnsafeCorruptPuts is the broken build whose first member alone applies
// every put with its value changed (the replica check's proof that it
// bites); every other unsafe build is every member's.
const UnsafeCorruptPuts = "corrupt-puts"

// unsafeArgs returns member i's --unsafe-* flags.
func unsafeArgs(unsafe []string, i int) []string {
	var args []string
	for _, u := range unsafe {
		if u == UnsafeCorruptPuts && i != 0 {
			continue
		}
		args = append(args, "--unsafe-"+u)
	}
	return args
}

// start starts member i (again) on its data directory.
func (c *procCluster) start(i int) error {
	c.mu.Lock()
	peerAddr := slices.Clone(c.peerAddr)
	c.mu.Unlock()
	var initial, routes []string
	for j := range c.n {
		addr := peerAddr[j]
		if c.shards > 0 {
			// Everyone, this host too, names each host by its proxy: IDs
			// derive from these addresses and must agree everywhere.
			initial = append(initial, name(j)+"="+c.hostProxies[j].addr())
			continue
		}
		if j != i {
			if c.routes {
				routes = append(routes, name(j)+"="+c.proxies[i][j].addr())
			} else {
				addr = c.proxies[i][j].addr()
			}
		}
		initial = append(initial, name(j)+"="+addr)
	}
	args := []string{"serve", "--name", name(i), "--data-dir", c.dataDir[i],
		"--listen-client", c.clientAddr[i], "--listen-peer", peerAddr[i], "--listen-http", c.httpAddr[i],
		"--initial-cluster", strings.Join(initial, ","), "--initial-cluster-token", chaosToken,
		"--tick", c.tick.String(), "--snapshot-count", "2000", "--enable-pprof"}
	if len(routes) > 0 {
		args = append(args, "--unsafe-peer-routes", strings.Join(routes, ","))
	}
	if c.shards > 0 {
		args = append(args, "--shards", strconv.Itoa(c.shards))
	}
	args = append(args, c.extra...)
	c.mu.Lock()
	if c.joining[i] {
		args = append(args, "--initial-cluster-state", "existing")
	}
	c.mu.Unlock()
	args = append(args, unsafeArgs(c.unsafe, i)...)
	lf, err := os.OpenFile(filepath.Join(c.dir, name(i)+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	cmd := exec.Command(c.bin, args...)
	cmd.Stdout, cmd.Stderr = lf, lf
	if err := cmd.Start(); err != nil {
		lf.Close()
		return fmt.Errorf("start %s: %w", name(i), err)
	}
	done := make(chan struct{})
	c.mu.Lock()
	c.procs[i], c.exited[i], c.paused[i], c.expectExit[i] = cmd, done, false, false
	c.mu.Unlock()
	go func() {
		err := cmd.Wait()
		lf.Close()
		c.mu.Lock()
		if !c.expectExit[i] {
			c.crashes = append(c.crashes, fmt.Sprintf("%s exited on its own: %v (log %s)", name(i), err,
				filepath.Join(c.dir, name(i)+".log")))
		}
		c.mu.Unlock()
		close(done)
	}()
	return nil
}

// replace removes member i from the cluster for good (it stops itself),
// wipes its data, and adds it back as a new member — a learner on a new
// peer address, since IDs are never reused — then promotes it once it has
// caught up. Other members reach the new member at its real address (the
// address travels through the log), not through the link proxies, until
// they restart.
func (c *procCluster) replace(ctx context.Context, i int) error {
	cli, err := clientFor(c.clientAddr)
	if err != nil {
		return err
	}
	defer cli.Close()
	id, err := memberIDByName(ctx, cli, name(i))
	if err != nil {
		return fmt.Errorf("%w: %w", errNotRemoved, err)
	}
	c.mu.Lock()
	c.expectExit[i] = true
	done := c.exited[i]
	c.mu.Unlock()
	if _, err := cli.MemberRemove(ctx, id); err != nil && !removedAfterAll(ctx, cli, name(i), done) {
		c.mu.Lock()
		c.expectExit[i] = false
		c.mu.Unlock()
		return fmt.Errorf("%w: remove %s: %w", errNotRemoved, name(i), err)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		c.logf("chaos: %s did not stop after its removal; killing it", name(i))
		c.kill(i)
	}
	if err := wipeDir(c.dataDir[i]); err != nil {
		return err
	}
	addr, err := freePort()
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.peerAddr[i] = addr
	c.joining[i] = true
	c.mu.Unlock()
	for from := range c.n {
		if p := c.proxies[from][i]; p != nil {
			p.setTarget(addr)
		}
	}
	var resp *clientv3.MemberAddResponse
	var seen errTally
	for {
		// Retried: under a fault the add may fail, or time out having
		// gone through (then the member is listed: find it).
		actx, cancel := context.WithTimeout(ctx, memberCallTimeout)
		resp, err = cli.MemberAddAsLearner(actx, []string{"http://" + addr})
		cancel()
		if err == nil {
			break
		}
		seen.add(err)
		if id, ferr := memberIDByName(ctx, cli, ""); ferr == nil && id != 0 {
			resp = &clientv3.MemberAddResponse{Member: &etcdserverpb.Member{ID: id}}
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("add %s back at %s: %w (errors: %v)", name(i), addr, err, &seen)
		case <-time.After(200 * time.Millisecond):
		}
	}
	if err := c.start(i); err != nil {
		return err
	}
	return promoteWhenReady(ctx, cli, resp.Member.ID)
}

// kill sends SIGKILL to member i and waits for it to exit.
func (c *procCluster) kill(i int) {
	c.mu.Lock()
	cmd, done := c.procs[i], c.exited[i]
	c.expectExit[i] = true
	c.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(syscall.SIGCONT) // a paused process dies too, but be tidy
	cmd.Process.Kill()
	<-done
	c.mu.Lock()
	c.procs[i] = nil
	c.mu.Unlock()
}

func (c *procCluster) running(i int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.procs[i] != nil
}

func (c *procCluster) pause(i int, on bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.procs[i] == nil || c.paused[i] == on {
		return
	}
	sig := syscall.SIGCONT
	if on {
		sig = syscall.SIGSTOP
	}
	c.procs[i].Process.Signal(sig)
	c.paused[i] = on
}

// cut cuts (or heals) the direction from → to.
func (c *procCluster) cut(from, to int, on bool) {
	if c.shards > 0 {
		c.hostProxies[to].setCut(from, on)
		return
	}
	c.proxies[from][to].setCut(on)
}

// healAll restarts dead members, resumes paused ones and heals every link.
func (c *procCluster) healAll() error {
	for from := range c.n {
		for to := range c.n {
			if from != to {
				c.cut(from, to, false)
			}
		}
	}
	for i := range c.n {
		c.pause(i, false)
		if !c.running(i) {
			if err := c.start(i); err != nil {
				return err
			}
		}
	}
	return nil
}

func (c *procCluster) waitHealthy(ctx context.Context) error {
	if err := waitHealthy(ctx, c.httpAddr); err != nil {
		return err
	}
	if c.shards > 0 {
		return waitShardsLed(ctx, c.clientAddr)
	}
	return nil
}

func (c *procCluster) leader() int { return leaderOf(c.httpAddr) }

func (c *procCluster) statusAddrs() []string { return c.httpAddr }

func (c *procCluster) fillDisk(i int, on bool) (int64, error) {
	if i >= len(c.disks) {
		return 0, errors.New("chaos: no loop-mounted disks in this cluster")
	}
	if on {
		return c.disks[i].fill()
	}
	return 0, c.disks[i].drain()
}

func (c *procCluster) setClockRate(i int, rate float64) error {
	if err := os.MkdirAll(c.dataDir[i], 0o700); err != nil {
		return fmt.Errorf("chaos: clock rate: %w", err)
	}
	return writeClockRate(c.dataDir[i], rate)
}

// waitHealthy waits until every member (by HTTP address) reports a leader.
func waitHealthy(ctx context.Context, httpAddrs []string) error {
	client := &http.Client{Timeout: time.Second}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		ok := 0
		for _, a := range httpAddrs {
			resp, err := client.Get("http://" + a + "/health")
			if err == nil {
				if resp.StatusCode == http.StatusOK {
					ok++
				}
				resp.Body.Close()
			}
		}
		if ok == len(httpAddrs) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster not healthy (%d of %d members report a leader): %w", ok, len(httpAddrs), ctx.Err())
		case <-tick.C:
		}
	}
}

// status is what a member's /status says of its log.
type status struct {
	Role    string `json:"role"`
	Commit  uint64 `json:"commit"`
	Applied uint64 `json:"applied"`
}

// memberStatus asks one member (by HTTP address) for its status.
func memberStatus(addr string) (status, error) {
	client := &http.Client{Timeout: 500 * time.Millisecond}
	var st status
	resp, err := client.Get("http://" + addr + "/status")
	if err != nil {
		return st, err
	}
	return st, decodeJSON(resp, &st)
}

// leaderOf asks the members (by HTTP address) which is the leader: its
// index, or -1.
func leaderOf(httpAddrs []string) int {
	client := &http.Client{Timeout: 500 * time.Millisecond}
	for i, a := range httpAddrs {
		resp, err := client.Get("http://" + a + "/status")
		if err != nil {
			continue
		}
		var st struct {
			Role string `json:"role"`
		}
		if decodeJSON(resp, &st) == nil && st.Role == "leader" {
			return i
		}
	}
	return -1
}

func (c *procCluster) crashReports() []string {
	c.mu.Lock()
	out := append([]string(nil), c.crashes...)
	c.mu.Unlock()
	for _, p := range c.hostProxies {
		out = append(out, p.problems()...)
	}
	return out
}

// close stops every member (SIGTERM, then SIGKILL) and the proxies, and
// unmounts the members' file systems. Idempotent.
func (c *procCluster) close() {
	for i := range c.n {
		c.mu.Lock()
		cmd, done := c.procs[i], c.exited[i]
		c.expectExit[i] = true
		c.mu.Unlock()
		if cmd == nil {
			continue
		}
		cmd.Process.Signal(syscall.SIGCONT)
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		c.mu.Lock()
		c.procs[i] = nil
		c.mu.Unlock()
	}
	for _, p := range c.hostProxies {
		p.close()
	}
	for _, row := range c.proxies {
		for _, p := range row {
			if p != nil {
				p.close()
			}
		}
	}
	for _, d := range c.disks {
		if err := d.unmount(); err != nil {
			// Loud: a mount left behind outlives the run.
			fmt.Fprintf(os.Stderr, "chaos: !!! could not unmount %s: %v\n", d.mnt, err)
		}
	}
}

var errNoBinary = errors.New("chaos: no ballot binary")
