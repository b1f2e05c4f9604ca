package chaos

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

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
	crashReports() []string
	close()
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
	logf   func(string, ...any)

	clientAddr []string
	peerAddr   []string
	httpAddr   []string
	proxies    [][]*proxy // proxies[from][to]; nil on the diagonal

	mu     sync.Mutex
	procs  []*exec.Cmd
	exited []chan struct{} // closed once the current process has exited
	paused []bool
	// killed counts the nemesis's kills of each member; an exit that is not
	// one of them is a crash the rig reports.
	expectExit []bool
	crashes    []string
}

func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

func newProcCluster(bin, dir string, n int, tick time.Duration, unsafe []string, logf func(string, ...any)) (*procCluster, error) {
	c := &procCluster{bin: bin, dir: dir, n: n, tick: tick, unsafe: unsafe, logf: logf,
		procs: make([]*exec.Cmd, n), exited: make([]chan struct{}, n), paused: make([]bool, n), expectExit: make([]bool, n)}
	for range n {
		for _, list := range []*[]string{&c.clientAddr, &c.peerAddr, &c.httpAddr} {
			a, err := freePort()
			if err != nil {
				return nil, err
			}
			*list = append(*list, a)
		}
	}
	c.proxies = make([][]*proxy, n)
	for from := range n {
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

func (c *procCluster) size() int           { return c.n }
func (c *procCluster) client(i int) string { return c.clientAddr[i] }

func name(i int) string { return fmt.Sprintf("n%d", i+1) }

// start starts member i (again) on its data directory.
func (c *procCluster) start(i int) error {
	var initial []string
	for j := range c.n {
		addr := c.peerAddr[j]
		if j != i {
			addr = c.proxies[i][j].addr()
		}
		initial = append(initial, name(j)+"="+addr)
	}
	args := []string{"serve", "--name", name(i), "--data-dir", filepath.Join(c.dir, name(i)),
		"--listen-client", c.clientAddr[i], "--listen-peer", c.peerAddr[i], "--listen-http", c.httpAddr[i],
		"--initial-cluster", strings.Join(initial, ","), "--initial-cluster-token", "chaos",
		"--tick", c.tick.String(), "--snapshot-count", "2000"}
	for _, u := range c.unsafe {
		args = append(args, "--unsafe-"+u)
	}
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
func (c *procCluster) cut(from, to int, on bool) { c.proxies[from][to].setCut(on) }

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
	return waitHealthy(ctx, c.httpAddr)
}

func (c *procCluster) leader() int { return leaderOf(c.httpAddr) }

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
	defer c.mu.Unlock()
	return append([]string(nil), c.crashes...)
}

// close stops every member (SIGTERM, then SIGKILL) and the proxies.
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
	for _, row := range c.proxies {
		for _, p := range row {
			if p != nil {
				p.close()
			}
		}
	}
}

var errNoBinary = errors.New("chaos: no ballot binary")
