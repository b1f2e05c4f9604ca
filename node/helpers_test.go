package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ballotdb/ballot/consensus"
	"github.com/ballotdb/ballot/internal/freeport"
	"github.com/ballotdb/ballot/internal/testutil"
	"github.com/ballotdb/ballot/transport"
	"github.com/ballotdb/ballot/vfs"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// recSM is a state machine that records every command it applies, in
// order, so tests can check exactly-once application.
type recSM struct {
	mu  sync.Mutex
	cmd []string
}

func (s *recSM) Apply(index uint64, cmd []byte) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cmd = append(s.cmd, string(cmd))
	return fmt.Appendf(nil, "applied %s at %d", cmd, index)
}

func (s *recSM) Snapshot(w io.Writer) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return json.NewEncoder(w).Encode(s.cmd)
}

func (s *recSM) Restore(r io.Reader) error {
	var cmd []string
	if err := json.NewDecoder(r).Decode(&cmd); err != nil {
		return err
	}
	s.mu.Lock()
	s.cmd = cmd
	s.mu.Unlock()
	return nil
}

func (s *recSM) commands() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.cmd...)
}

func (s *recSM) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.cmd)
}

// testCluster runs nodes over TCP on loopback or over a MemNetwork.
type testCluster struct {
	t     *testing.T
	tcp   bool
	net   *transport.MemNetwork
	mu    sync.Mutex
	nodes map[consensus.NodeID]*Node
	sms   map[consensus.NodeID]*recSM
	fss   map[consensus.NodeID]vfs.FS
	peers map[consensus.NodeID]string
	// tweak adjusts a node's config before it starts (it may wrap
	// Config.FS, the node's vfs.Mem).
	tweak func(*Config)
}

const testCluster1 = 0xba11

func newCluster(t *testing.T, size int, tcp bool, tweak func(*Config)) *testCluster {
	t.Helper()
	c := &testCluster{t: t, tcp: tcp, nodes: map[consensus.NodeID]*Node{}, sms: map[consensus.NodeID]*recSM{},
		fss: map[consensus.NodeID]vfs.FS{}, peers: map[consensus.NodeID]string{}, tweak: tweak}
	if !tcp {
		c.net = transport.NewMemNetwork()
	}
	t.Cleanup(c.stopAll)
	for i := 1; i <= size; i++ {
		c.addPeer(consensus.NodeID(i))
	}
	for i := 1; i <= size; i++ {
		c.start(consensus.NodeID(i), false)
	}
	return c
}

// addPeer reserves an address for a new member id.
func (c *testCluster) addPeer(id consensus.NodeID) string {
	addr := c.reserve()
	c.mu.Lock()
	c.peers[id] = addr
	c.mu.Unlock()
	return addr
}

// reserve returns a fresh loopback address (TCP) or a placeholder (mem).
func (c *testCluster) reserve() string {
	if !c.tcp {
		return "mem"
	}
	// Below the ephemeral range: a port from it, closed until the node
	// binds it, can meanwhile become some outgoing connection's local
	// port (a CI run failed "listen on" that way).
	addr, err := freeport.Pick("127.0.0.1")
	if err != nil {
		c.t.Fatal(err)
	}
	return addr
}

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("NODE_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func (c *testCluster) config(id consensus.NodeID, join bool, fs vfs.FS) Config {
	c.mu.Lock()
	peers := maps.Clone(c.peers)
	c.mu.Unlock()
	cfg := Config{
		ID: id, ClusterID: testCluster1, Peers: peers, Join: join, FS: fs,
		DataDir: filepath.Join("/data", fmt.Sprint(id)), WALSegmentBytes: 256 << 10,
		TickInterval: 10 * time.Millisecond, ElectionTicks: 10, HeartbeatTicks: 1,
		Seed: uint64(id) * 7919, Logger: testLogger(c.t),
	}
	if !c.tcp {
		cfg.NewTransport = func(h transport.Handler) (transport.Transport, error) { return c.net.Join(id, h, 0), nil }
	}
	if c.tweak != nil {
		c.tweak(&cfg)
	}
	return cfg
}

// start starts (or restarts) node id on its file system, a new vfs.Mem the
// first time.
func (c *testCluster) start(id consensus.NodeID, join bool) *Node {
	c.t.Helper()
	c.mu.Lock()
	if c.fss[id] == nil {
		c.fss[id] = vfs.NewMem()
	}
	fs := c.fss[id]
	sm := &recSM{}
	c.mu.Unlock()
	cfg := c.config(id, join, fs)
	if c.tcp {
		cfg.Listen = testutil.Listen(c.t, cfg.Peers[id])
	}
	n, err := Start(context.Background(), cfg, sm)
	if err != nil {
		if cfg.Listen != nil {
			cfg.Listen.Close()
		}
		c.t.Fatalf("start node %d: %v", id, err)
	}
	c.mu.Lock()
	c.nodes[id], c.sms[id] = n, sm
	c.mu.Unlock()
	return n
}

func (c *testCluster) node(id consensus.NodeID) *Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodes[id]
}

func (c *testCluster) sm(id consensus.NodeID) *recSM {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sms[id]
}

func (c *testCluster) running() []*Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*Node
	for _, n := range c.nodes {
		select {
		case <-n.Done():
		default:
			out = append(out, n)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].id < out[j].id })
	return out
}

// crash kills node id and replaces its file system by what a power loss
// would leave (unsynced bytes lost, a torn tail when torn is set).
func (c *testCluster) crash(id consensus.NodeID, torn bool) {
	c.t.Helper()
	n := c.node(id)
	n.kill()
	c.mu.Lock()
	defer c.mu.Unlock()
	mem, ok := c.fss[id].(*vfs.Mem)
	if !ok {
		c.t.Fatalf("node %d does not run on a vfs.Mem", id)
	}
	var keep func(string, int) int
	if torn {
		keep = func(_ string, unsynced int) int { return unsynced / 3 }
	}
	c.fss[id] = mem.Crash(keep)
}

func (c *testCluster) stopAll() {
	for _, n := range c.running() {
		n.kill()
	}
}

// leader waits until the running nodes that know a leader agree on it, and
// it is running (a member waiting to join knows none).
func (c *testCluster) leader() *Node {
	c.t.Helper()
	var lead *Node
	testutil.Eventually(c.t, 10*time.Second, func() bool {
		l := consensus.None
		for _, n := range c.running() {
			switch nl := n.Leader(); {
			case nl == consensus.None:
			case l == consensus.None:
				l = nl
			case nl != l:
				return false
			}
		}
		for _, n := range c.running() {
			if n.id == l && n.Leader() == l {
				lead = n
				return true
			}
		}
		return false
	}, "no agreed leader")
	return lead
}

// waitKnowsLeader waits until n has heard from leader lead: a follower
// with no leader known refuses proposals (ErrNotLeader) by design.
func waitKnowsLeader(t *testing.T, n *Node, lead consensus.NodeID) {
	t.Helper()
	testutil.Eventually(t, 10*time.Second, func() bool { return n.Leader() == lead },
		"node %d never learned that %d leads", n.id, lead)
}

// propose proposes cmd through n, retrying errors that say "not now", and
// reports whether it was acknowledged within the deadline.
func proposeRetry(t testing.TB, n *Node, cmd string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := n.Propose(ctx, []byte(cmd))
		cancel()
		if err == nil || errors.Is(err, ErrStopped) || errors.Is(err, ErrOutcomeUnknown) || time.Now().After(deadline) {
			return err
		}
		select {
		case <-n.Done():
			return err
		case <-time.After(10 * time.Millisecond): // back off before retrying
		}
	}
}

// waitApplied waits until every running node has applied want commands.
func (c *testCluster) waitConverged(want int) {
	c.t.Helper()
	testutil.Eventually(c.t, 20*time.Second, func() bool {
		for _, n := range c.running() {
			if c.sm(n.id).len() < want {
				return false
			}
		}
		return true
	}, "nodes did not all apply %d commands", want)
}

// checkExactlyOnce checks that every node applied every acknowledged
// command exactly once and no command twice, in the same order.
func (c *testCluster) checkExactlyOnce(acked []string) {
	c.t.Helper()
	var ref []string
	for _, n := range c.running() {
		got := c.sm(n.id).commands()
		count := map[string]int{}
		for _, cmd := range got {
			count[cmd]++
			if count[cmd] > 1 {
				c.t.Errorf("node %d applied %q twice", n.id, cmd)
			}
		}
		for _, cmd := range acked {
			if count[cmd] != 1 {
				c.t.Errorf("node %d applied acknowledged %q %d times", n.id, cmd, count[cmd])
			}
		}
		if ref == nil {
			ref = got
			continue
		}
		m := min(len(ref), len(got))
		for i := range m {
			if ref[i] != got[i] {
				c.t.Fatalf("node %d diverges at command %d: %q vs %q", n.id, i, got[i], ref[i])
			}
		}
	}
}
