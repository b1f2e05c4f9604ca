package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/ballotdb/ballot/internal/freeport"
	"github.com/ballotdb/ballot/web"
)

type devFlags struct {
	dataDir       string
	host          string
	clientPorts   []int
	peerPorts     []int
	httpPorts     []int
	dashboardPort int
	tick          time.Duration
	engine        string
	shards        int
}

func devCommand() *cobra.Command {
	var f devFlags
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run a local three-member cluster (three processes on loopback) with its dashboard",
		Long: `Run a local three-member ballot cluster: three child processes of this
binary on loopback, data in a temporary directory unless --data-dir is given
(then a restart on the same directory comes back with its data), and a
dashboard (printed URL) with buttons to stop and restart members, partition
them, transfer leadership and run a short write load. Ctrl-C stops all three
cleanly. A port of 0 is chosen by the operating system.`,
		RunE: func(cmd *cobra.Command, _ []string) error { return runDev(cmd.Context(), f) },
	}
	fl := cmd.Flags()
	fl.StringVar(&f.dataDir, "data-dir", "", "keep the members' data here (default: a temporary directory, removed on exit)")
	fl.StringVar(&f.host, "host", "127.0.0.1", "address to listen on")
	fl.IntSliceVar(&f.clientPorts, "client-ports", []int{2379, 22379, 32379}, "client ports of the three members")
	fl.IntSliceVar(&f.peerPorts, "peer-ports", []int{2380, 22380, 32380}, "peer ports of the three members")
	fl.IntSliceVar(&f.httpPorts, "http-ports", []int{2381, 22381, 32381}, "HTTP ports (health, metrics, status, each member's dashboard) of the three members")
	fl.IntVar(&f.dashboardPort, "dashboard-port", 2390, "port of the cluster dashboard, with dev's controls (always on 127.0.0.1)")
	fl.DurationVar(&f.tick, "tick", 100*time.Millisecond, "engine tick")
	fl.StringVar(&f.engine, "engine", "raft", "consensus engine: raft or paxos")
	fl.IntVar(&f.shards, "shards", 0, "sharded mode: this many shards, each its own consensus group (0: one group; see docs/sharding.md)")
	return cmd
}

// devCluster is ballot dev's three children and the controls the
// dashboard's buttons drive.
type devCluster struct {
	ctx     context.Context // ends when dev stops
	self    string
	dir     string
	tick    time.Duration
	engine  string
	shards  int
	names   []string
	client  []string // client addresses
	peer    []string // public peer addresses: the proxies
	inner   []string // the members' own peer listeners
	http    []string
	net     *devNet
	loading atomic.Bool

	mu   sync.Mutex
	kids []*devChild // nil while stopped
}

type devChild struct {
	cmd      *exec.Cmd
	done     chan struct{} // closed when it exited
	err      error         // its exit, once done
	expected atomic.Bool   // stopped by a button or Ctrl-C
	log      string
}

func runDev(ctx context.Context, f devFlags) error {
	if len(f.clientPorts) != 3 || len(f.peerPorts) != 3 || len(f.httpPorts) != 3 {
		return errors.New("dev: --client-ports, --peer-ports and --http-ports take three ports each")
	}
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("dev: find own binary: %w", err)
	}
	dir := f.dataDir
	if dir == "" {
		dir, err = os.MkdirTemp("", "ballot-dev-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
	} else if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	c := &devCluster{ctx: ctx, self: self, dir: dir, tick: f.tick, engine: f.engine, shards: f.shards, names: []string{"n1", "n2", "n3"}, net: newDevNet(),
		kids: make([]*devChild, 3)}
	defer c.net.close()

	// Listen where we must (the peer proxies, the dashboard) and check
	// that the members' ports are free; a port of 0 is chosen here.
	addr := func(p int) string { return net.JoinHostPort(f.host, strconv.Itoa(p)) }
	reserve := func(p int) (net.Listener, error) {
		ln, err := net.Listen("tcp", addr(p))
		if err != nil {
			return nil, fmt.Errorf("dev: port %d is in use (move it with --client-ports/--peer-ports/--http-ports/--dashboard-port, or 0 for any): %w", p, err)
		}
		return ln, nil
	}
	free := func(p int) (string, error) {
		if p == 0 {
			// Not the kernel's pick: members keep their ports across
			// restarts, and the ephemeral range is where a connection
			// may take a port while its member is down.
			return freeport.Pick(f.host)
		}
		ln, err := reserve(p)
		if err != nil {
			return "", err
		}
		defer ln.Close()
		return ln.Addr().String(), nil
	}
	for i := range c.names {
		ca, err := free(f.clientPorts[i])
		if err != nil {
			return err
		}
		ha, err := free(f.httpPorts[i])
		if err != nil {
			return err
		}
		ia, err := free(0)
		if err != nil {
			return err
		}
		pl, err := reserve(f.peerPorts[i])
		if err != nil {
			return err
		}
		c.client, c.http, c.inner = append(c.client, ca), append(c.http, ha), append(c.inner, ia)
		c.peer = append(c.peer, pl.Addr().String())
		c.net.add(c.names[i], pl, ia)
	}
	// The dashboard, with its controls, is for this machine only,
	// whatever --host says.
	dl, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(f.dashboardPort)))
	if err != nil {
		return fmt.Errorf("dev: dashboard port %d is in use (move it with --dashboard-port, or 0 for any): %w", f.dashboardPort, err)
	}
	defer dl.Close()

	for i := range c.names {
		if err := c.start(i); err != nil {
			c.stopAll()
			return err
		}
	}
	defer c.stopAll()

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sig)

	ready := make(chan error, 1)
	go func() { ready <- c.waitReady(ctx) }()
	select {
	case err := <-ready:
		if err != nil {
			return err
		}
	case s := <-sig:
		fmt.Fprintf(os.Stderr, "ballot dev: %s before the cluster was ready; stopping\n", s)
		return nil
	case <-time.After(30 * time.Second):
		return fmt.Errorf("dev: the cluster did not elect a leader within 30s; see the logs in %s", dir)
	}
	c.learnIDs(ctx)

	var peers []web.Peer
	for i, n := range c.names {
		peers = append(peers, web.Peer{Name: n, URL: "http://" + c.http[i]})
	}
	dash := &http.Server{Handler: web.Handler(web.Config{Title: "dev cluster", Peers: peers, Dev: c}), ReadHeaderTimeout: 5 * time.Second}
	go dash.Serve(dl)
	defer dash.Close()

	if c.shards > 0 {
		fmt.Printf("ballot dev: a three-host %s cluster with %d shards is up (data in %s)\n\n", c.engine, c.shards, dir)
	} else {
		fmt.Printf("ballot dev: a three-member %s cluster is up (data in %s)\n\n", c.engine, dir)
	}
	for i, n := range c.names {
		fmt.Printf("  %s  client %-16s peer %-16s http http://%s  log %s\n", n, c.client[i], c.peer[i], c.http[i], c.kids[i].log)
	}
	fmt.Printf("\ndashboard: http://%s/\n", dl.Addr())
	fmt.Printf("\nTry it:\n  etcdctl --endpoints=%s put greeting hello\n  etcdctl --endpoints=%s get greeting\n",
		strings.Join(c.client, ","), strings.Join(c.client, ","))
	fmt.Printf("  go run ./cmd/ballot get greeting --endpoints=%s\n", strings.Join(c.client, ","))
	if c.shards > 0 {
		fmt.Printf("  go run ./cmd/ballot shard list --endpoints=%s\n", strings.Join(c.client, ","))
	}
	fmt.Printf("\nCtrl-C stops the cluster.\n")

	for {
		select {
		case s := <-sig:
			fmt.Fprintf(os.Stderr, "\nballot dev: %s: stopping the three members\n", s)
			return nil
		case <-ctx.Done():
			return nil
		}
	}
}

// start starts member i (again) on its data directory.
func (c *devCluster) start(i int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if k := c.kids[i]; k != nil {
		select {
		case <-k.done:
		default:
			return &web.BadActionError{What: c.names[i] + " is running"}
		}
	}
	var initial, dashPeers []string
	for j, n := range c.names {
		initial = append(initial, n+"="+c.peer[j])
		dashPeers = append(dashPeers, n+"=http://"+c.http[j])
	}
	n := c.names[i]
	logPath := filepath.Join(c.dir, n+".log")
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	cmd := exec.Command(c.self, "serve", "--name", n, "--data-dir", filepath.Join(c.dir, n),
		"--listen-client", c.client[i], "--listen-peer", c.inner[i],
		"--listen-http", c.http[i], "--initial-cluster", strings.Join(initial, ","),
		"--initial-cluster-token", "ballot-dev", "--tick", c.tick.String(), "--engine", c.engine,
		"--dashboard-peers", strings.Join(dashPeers, ","), "--shards", strconv.Itoa(c.shards))
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // Ctrl-C reaches us, we stop them
	if err := cmd.Start(); err != nil {
		lf.Close()
		return fmt.Errorf("dev: start %s: %w", n, err)
	}
	k := &devChild{cmd: cmd, done: make(chan struct{}), log: logPath}
	c.kids[i] = k
	go func() {
		k.err = cmd.Wait()
		lf.Close()
		close(k.done)
		if !k.expected.Load() && c.ctx.Err() == nil {
			fmt.Fprintf(os.Stderr, "ballot dev: member %s exited (%v); its log is %s (the dashboard can start it again)\n", n, k.err, logPath)
		}
	}()
	return nil
}

// stop stops member i (SIGTERM: a leader hands leadership away first),
// killing it after 15 s.
func (c *devCluster) stop(i int) error {
	c.mu.Lock()
	k := c.kids[i]
	c.mu.Unlock()
	if k == nil {
		return &web.BadActionError{What: c.names[i] + " is not running"}
	}
	k.expected.Store(true)
	k.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-k.done:
	case <-time.After(15 * time.Second):
		k.cmd.Process.Kill()
		<-k.done
	}
	return nil
}

func (c *devCluster) stopAll() {
	var wg sync.WaitGroup
	for i := range c.names {
		c.mu.Lock()
		k := c.kids[i]
		c.mu.Unlock()
		if k == nil {
			continue
		}
		wg.Add(1)
		go func() { defer wg.Done(); c.stop(i) }()
	}
	wg.Wait()
}

// waitReady waits until every member reports a leader.
func (c *devCluster) waitReady(ctx context.Context) error {
	client := &http.Client{Timeout: time.Second}
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		ok := 0
		for i := range c.names {
			resp, err := client.Get("http://" + c.http[i] + "/health")
			if err == nil {
				if resp.StatusCode == http.StatusOK {
					ok++
				}
				resp.Body.Close()
			}
		}
		if ok == len(c.names) {
			return nil
		}
		for i, k := range c.kids {
			select {
			case <-k.done:
				return fmt.Errorf("dev: member %s exited (%v); its log is %s", c.names[i], k.err, k.log)
			default:
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// learnIDs tells the peer proxies each member's ID (they learn them from
// handshakes too, but a partition must hold from the first click).
func (c *devCluster) learnIDs(ctx context.Context) {
	client := &http.Client{Timeout: time.Second}
	for i, n := range c.names {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+c.http[i]+"/status", nil)
		resp, err := client.Do(req)
		if err != nil {
			continue
		}
		var st struct {
			MemberID string `json:"member_id"`
		}
		json.NewDecoder(resp.Body).Decode(&st)
		resp.Body.Close()
		if id, err := strconv.ParseUint(st.MemberID, 16, 64); err == nil {
			c.net.mu.Lock()
			c.net.idName[id] = n
			c.net.mu.Unlock()
		}
	}
}

func (c *devCluster) index(member string) (int, error) {
	i := slices.Index(c.names, member)
	if i < 0 {
		return 0, &web.BadActionError{What: fmt.Sprintf("no member %q", member)}
	}
	return i, nil
}

// Partitioned names the members cut off.
func (c *devCluster) Partitioned() []string {
	p := c.net.partitioned()
	slices.Sort(p)
	return p
}

// Act carries out a dashboard button.
func (c *devCluster) Act(ctx context.Context, action, member string) error {
	if action == "load" {
		return c.load()
	}
	i, err := c.index(member)
	if err != nil {
		return err
	}
	switch action {
	case "stop":
		return c.stop(i)
	case "start":
		return c.start(i)
	case "partition":
		c.net.setPartitioned(member, true)
		return nil
	case "heal":
		c.net.setPartitioned(member, false)
		return nil
	case "leader":
		return c.moveLeader(ctx, i)
	}
	return &web.BadActionError{What: fmt.Sprintf("no action %q", action)}
}

func (c *devCluster) newClient(endpoints ...string) (*clientv3.Client, error) {
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return nil, fmt.Errorf("dev: client: %w", err)
	}
	return cli, nil
}

// moveLeader asks the current leader to hand leadership to member i
// (Maintenance.MoveLeader, as etcdctl move-leader does).
func (c *devCluster) moveLeader(ctx context.Context, i int) error {
	cli, err := c.newClient(c.client[i])
	if err != nil {
		return err
	}
	defer cli.Close()
	st, err := cli.Status(ctx, c.client[i])
	if err != nil {
		return fmt.Errorf("dev: status of %s: %w", c.names[i], err)
	}
	target := st.Header.MemberId
	if st.Leader == target {
		return nil
	}
	for j := range c.names {
		if j == i {
			continue
		}
		lst, err := cli.Status(ctx, c.client[j])
		if err != nil || lst.Header.MemberId != st.Leader {
			continue
		}
		lc, err := c.newClient(c.client[j])
		if err != nil {
			return err
		}
		defer lc.Close()
		if _, err := lc.MoveLeader(ctx, target); err != nil {
			return fmt.Errorf("dev: move leader to %s: %w", c.names[i], err)
		}
		return nil
	}
	return fmt.Errorf("dev: no reachable leader to move leadership to %s", c.names[i])
}

// load runs five seconds of writes (8 writers, small values over 1000
// keys) in the background; one load at a time.
func (c *devCluster) load() error {
	if !c.loading.CompareAndSwap(false, true) {
		return &web.BadActionError{What: "a write load is running already"}
	}
	cli, err := c.newClient(c.client...)
	if err != nil {
		c.loading.Store(false)
		return err
	}
	go func() {
		defer c.loading.Store(false)
		defer cli.Close()
		ctx, cancel := context.WithTimeout(c.ctx, 5*time.Second)
		defer cancel()
		var wg sync.WaitGroup
		var n atomic.Int64
		val := strings.Repeat("v", 64)
		for w := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for k := w; ctx.Err() == nil; k += 8 {
					if _, err := cli.Put(ctx, fmt.Sprintf("dev-load/%03d", k%1000), val); err == nil {
						n.Add(1)
					}
				}
			}()
		}
		wg.Wait()
		fmt.Fprintf(os.Stderr, "ballot dev: write load done: %d writes in 5s\n", n.Load())
	}()
	return nil
}
