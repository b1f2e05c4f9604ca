package chaos

import (
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// dockerCluster runs each member in its own container on a private Docker
// network, from a FROM-scratch image holding only the static binary. A
// partition is a packet filter rule in the receiving member's network
// namespace (entered from the host with nsenter; a scratch image has no
// tools of its own): dropping packets from one address loses exactly that
// member's messages to this one.
type dockerCluster struct {
	tag     string // names the image, network and containers of this run
	image   string
	network string
	dir     string
	n       int
	ips     []string
	logf    func(string, ...any)

	mu         sync.Mutex
	expectExit []bool
	paused     []bool
	cuts       map[[2]int]bool
	crashes    []string
}

func dockerCmd(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "docker", args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("docker %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return strings.TrimSpace(string(out)), nil
}

// DockerAvailable reports whether a Docker engine answers.
func DockerAvailable() bool {
	_, err := dockerCmd("info")
	return err == nil
}

// isStatic reports whether the ELF binary at path needs no dynamic loader.
func isStatic(path string) (bool, error) {
	f, err := elf.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return false, nil
		}
	}
	return true, nil
}

func newDockerCluster(bin, dir string, n int, tick time.Duration, unsafe, extra []string, logf func(string, ...any)) (*dockerCluster, error) {
	static, err := isStatic(bin)
	if err != nil {
		return nil, fmt.Errorf("chaos: containers: %w", err)
	}
	if !static {
		return nil, fmt.Errorf("chaos: containers need a static binary (CGO_ENABLED=0 go build -o ballot ./cmd/ballot); %s is dynamically linked", bin)
	}
	r := rand.IntN(200) + 20
	c := &dockerCluster{tag: fmt.Sprintf("ballot-chaos-%d-%d", os.Getpid(), r), dir: dir, n: n, logf: logf,
		expectExit: make([]bool, n), paused: make([]bool, n), cuts: map[[2]int]bool{}}
	c.image = c.tag + ":latest"
	c.network = c.tag
	// The image: the binary and nothing else.
	ctxDir := filepath.Join(dir, "image")
	if err := os.MkdirAll(ctxDir, 0o755); err != nil {
		return nil, err
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(ctxDir, "ballot"), data, 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(ctxDir, "Dockerfile"), []byte("FROM scratch\nCOPY ballot /ballot\nENTRYPOINT [\"/ballot\"]\n"), 0o644); err != nil {
		return nil, err
	}
	if _, err := dockerCmd("build", "-q", "-t", c.image, ctxDir); err != nil {
		return nil, err
	}
	subnet := fmt.Sprintf("172.30.%d.0/24", r)
	if _, err := dockerCmd("network", "create", "--subnet", subnet, c.network); err != nil {
		c.close()
		return nil, err
	}
	var initial []string
	for i := range n {
		c.ips = append(c.ips, fmt.Sprintf("172.30.%d.%d", r, 11+i))
		initial = append(initial, fmt.Sprintf("%s=%s:2380", name(i), c.ips[i]))
	}
	for i := range n {
		data := filepath.Join(dir, name(i))
		if err := os.MkdirAll(data, 0o755); err != nil {
			c.close()
			return nil, err
		}
		args := []string{"create", "--name", c.container(i), "--network", c.network, "--ip", c.ips[i],
			"-v", data + ":/data", c.image, "serve", "--name", name(i), "--data-dir", "/data",
			"--listen-client", "0.0.0.0:2379", "--listen-peer", "0.0.0.0:2380", "--listen-http", "0.0.0.0:2381",
			"--initial-cluster", strings.Join(initial, ","), "--initial-cluster-token", "chaos",
			"--tick", tick.String(), "--snapshot-count", "2000"}
		args = append(args, extra...)
		args = append(args, unsafeArgs(unsafe, i)...)
		if _, err := dockerCmd(args...); err != nil {
			c.close()
			return nil, err
		}
		if err := c.start(i); err != nil {
			c.close()
			return nil, err
		}
	}
	return c, nil
}

func (c *dockerCluster) container(i int) string { return fmt.Sprintf("%s-%s", c.tag, name(i)) }
func (c *dockerCluster) size() int              { return c.n }
func (c *dockerCluster) client(i int) string    { return net.JoinHostPort(c.ips[i], "2379") }

func (c *dockerCluster) start(i int) error {
	c.mu.Lock()
	c.expectExit[i] = false
	c.paused[i] = false
	c.mu.Unlock()
	_, err := dockerCmd("start", c.container(i))
	return err
}

func (c *dockerCluster) kill(i int) {
	c.mu.Lock()
	c.expectExit[i] = true
	c.mu.Unlock()
	if _, err := dockerCmd("kill", "-s", "KILL", c.container(i)); err != nil {
		c.logf("chaos: %v", err)
	}
	// docker kill returns once the signal is sent; wait for the exit.
	dockerCmd("wait", c.container(i))
}

func (c *dockerCluster) running(i int) bool {
	out, err := dockerCmd("inspect", "-f", "{{.State.Running}}", c.container(i))
	return err == nil && out == "true"
}

func (c *dockerCluster) pause(i int, on bool) {
	c.mu.Lock()
	if c.paused[i] == on {
		c.mu.Unlock()
		return
	}
	c.paused[i] = on
	c.mu.Unlock()
	verb := "unpause"
	if on {
		verb = "pause" // the cgroup freezer: the process stops as under SIGSTOP
	}
	if _, err := dockerCmd(verb, c.container(i)); err != nil {
		c.logf("chaos: %v", err)
	}
}

// cut drops (or stops dropping) packets from member from at member to.
func (c *dockerCluster) cut(from, to int, on bool) {
	c.mu.Lock()
	if c.cuts[[2]int{from, to}] == on {
		c.mu.Unlock()
		return
	}
	c.cuts[[2]int{from, to}] = on
	c.mu.Unlock()
	pid, err := dockerCmd("inspect", "-f", "{{.State.Pid}}", c.container(to))
	if err != nil || pid == "0" {
		c.logf("chaos: cut %s→%s: %s is not running", name(from), name(to), name(to))
		return
	}
	op := "-D"
	if on {
		op = "-I"
	}
	out, err := exec.Command("nsenter", "-t", pid, "-n", "iptables", op, "INPUT", "-s", c.ips[from], "-j", "DROP").CombinedOutput()
	if err != nil {
		c.logf("chaos: cut %s→%s: %v: %s", name(from), name(to), err, out)
	}
}

func (c *dockerCluster) healAll() error {
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
			c.mu.Lock()
			if !c.expectExit[i] {
				c.crashes = append(c.crashes, fmt.Sprintf("%s exited on its own (docker logs %s)", name(i), c.container(i)))
			}
			c.mu.Unlock()
			if err := c.start(i); err != nil {
				return err
			}
		}
	}
	return nil
}

func (c *dockerCluster) waitHealthy(ctx context.Context) error {
	return waitHealthy(ctx, c.httpAddrs())
}

func (c *dockerCluster) leader() int { return leaderOf(c.httpAddrs()) }

func (c *dockerCluster) statusAddrs() []string { return c.httpAddrs() }

func (c *dockerCluster) fillDisk(int, bool) (int64, error) {
	return 0, errors.New("chaos: the disk nemesis runs on processes only")
}

// setClockRate writes the rate file into the member's data directory,
// which the container sees as /data.
func (c *dockerCluster) setClockRate(i int, rate float64) error {
	return writeClockRate(filepath.Join(c.dir, name(i)), rate)
}

func (c *dockerCluster) httpAddrs() []string {
	out := make([]string, c.n)
	for i, ip := range c.ips {
		out[i] = net.JoinHostPort(ip, "2381")
	}
	return out
}

func (c *dockerCluster) crashReports() []string {
	var out []string
	for i := range c.n {
		c.mu.Lock()
		expect := c.expectExit[i]
		c.mu.Unlock()
		if !expect && !c.running(i) {
			out = append(out, fmt.Sprintf("%s is not running at the end (docker logs %s)", name(i), c.container(i)))
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return append(out, c.crashes...)
}

// close saves the members' logs next to their data, then removes the
// containers, the network and the image.
func (c *dockerCluster) close() {
	var errs []error
	for i := range c.n {
		c.mu.Lock()
		c.expectExit[i] = true
		c.mu.Unlock()
		if logs, err := dockerCmd("logs", c.container(i)); err == nil {
			os.WriteFile(filepath.Join(c.dir, name(i)+".log"), []byte(logs+"\n"), 0o644)
		}
		if _, err := dockerCmd("rm", "-f", c.container(i)); err != nil && !strings.Contains(err.Error(), "No such container") {
			errs = append(errs, err)
		}
	}
	if c.network != "" {
		if _, err := dockerCmd("network", "rm", c.network); err != nil && !strings.Contains(err.Error(), "not found") {
			errs = append(errs, err)
		}
	}
	dockerCmd("rmi", "-f", c.image)
	if err := errors.Join(errs...); err != nil {
		c.logf("chaos: cleaning up containers: %v", err)
	}
}
