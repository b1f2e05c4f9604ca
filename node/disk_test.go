package node

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ballotdb/ballot/consensus"
	"github.com/ballotdb/ballot/internal/testutil"
	"github.com/ballotdb/ballot/transport"
	"github.com/ballotdb/ballot/vfs"
	"github.com/ballotdb/ballot/wal"
)

// faultCluster is a mem cluster whose nodes each run on a vfs.Fault over
// their vfs.Mem.
func faultCluster(t *testing.T, size int, tweak func(*Config)) (*testCluster, func(consensus.NodeID) *vfs.Fault) {
	var mu sync.Mutex
	faults := map[consensus.NodeID]*vfs.Fault{}
	c := newCluster(t, size, false, func(cfg *Config) {
		f := vfs.NewFault(cfg.FS, nil)
		mu.Lock()
		faults[cfg.ID] = f
		mu.Unlock()
		cfg.FS = f
		if tweak != nil {
			tweak(cfg)
		}
	})
	return c, func(id consensus.NodeID) *vfs.Fault {
		mu.Lock()
		defer mu.Unlock()
		return faults[id]
	}
}

// TestDiskFullRefusesThenResumes: the leader's disk fills up. It refuses
// proposals with ErrNoSpace (and loses its leadership, since it cannot
// write); the rest of the group goes on; once space returns, the node
// catches up and takes proposals again.
func TestDiskFullRefusesThenResumes(t *testing.T) {
	c, fault := faultCluster(t, 3, nil)
	var acked []string
	for i := range 10 {
		cmd := fmt.Sprintf("pre-%d", i)
		if err := proposeRetry(t, c.leader(), cmd, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		acked = append(acked, cmd)
	}
	full := c.leader()
	f := fault(full.id)
	inj, heal := vfs.FailFrom(vfs.OpWrite, f.Count(vfs.OpWrite)+1, vfs.ErrNoSpace)
	f.SetInjector(inj)

	var noSpace error
	i := 0
	testutil.Eventually(t, 10*time.Second, func() bool {
		i++
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		_, err := full.Propose(ctx, fmt.Appendf(nil, "full-%d", i))
		if errors.Is(err, ErrNoSpace) {
			noSpace = err
			return true
		}
		return false
	}, "node with a full disk never refused with ErrNoSpace")
	if !errors.Is(noSpace, syscall.ENOSPC) {
		t.Fatalf("ErrNoSpace does not match syscall.ENOSPC: %v", noSpace)
	}
	t.Logf("refused: %v", noSpace)

	// The others elect a leader among themselves and keep writing.
	var other *Node
	testutil.Eventually(t, 10*time.Second, func() bool {
		for _, n := range c.running() {
			if n.id != full.id && n.Leader() != consensus.None && n.Leader() != full.id {
				other = n
				return true
			}
		}
		return false
	}, "no new leader without the full disk")
	for i := range 10 {
		cmd := fmt.Sprintf("during-%d", i)
		if err := proposeRetry(t, other, cmd, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		acked = append(acked, cmd)
	}
	select {
	case <-full.Done():
		t.Fatalf("a full disk stopped the node: %v", full.Err())
	default:
	}

	heal()
	testutil.Eventually(t, 10*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := full.Propose(ctx, []byte("after"))
		return err == nil
	}, "proposals did not resume after space returned")
	acked = append(acked, "after")
	want := 0
	for _, n := range c.running() {
		want = max(want, c.sm(n.id).len())
	}
	c.waitConverged(want)
	c.checkExactlyOnce(acked)
}

// TestFsyncErrorStopsNode: an fsync error stops the node (never retried:
// the kernel may have dropped the pages); callers get ErrStopped wrapping
// the cause; a restart recovers from what the disk holds and catches up.
func TestFsyncErrorStopsNode(t *testing.T) {
	c, fault := faultCluster(t, 3, nil)
	lead := c.leader()
	var victim *Node
	for _, n := range c.running() {
		if n.id != lead.id {
			victim = n
		}
	}
	f := fault(victim.id)
	inj, _ := vfs.FailFrom(vfs.OpSync, f.Count(vfs.OpSync)+1, vfs.ErrIO)
	f.SetInjector(inj)
	var acked []string
	for i := range 10 {
		cmd := fmt.Sprintf("c-%d", i)
		if err := proposeRetry(t, lead, cmd, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		acked = append(acked, cmd)
	}
	select {
	case <-victim.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("node with a failing fsync did not stop")
	}
	if err := victim.Err(); !errors.Is(err, syscall.EIO) || !errors.Is(err, wal.ErrBroken) {
		t.Fatalf("Err() = %v, want the fsync's EIO", err)
	}
	_, err := victim.Propose(context.Background(), []byte("x"))
	if !errors.Is(err, ErrStopped) || !errors.Is(err, syscall.EIO) {
		t.Fatalf("Propose on the stopped node: %v, want ErrStopped wrapping EIO", err)
	}
	t.Logf("stopped: %v", err)
	c.crash(victim.id, false)
	c.start(victim.id, false)
	c.waitConverged(len(acked))
	c.checkExactlyOnce(acked)
}

// TestDataDirOfAnotherClusterRefused: a data directory written by another
// cluster, or by another node ID, is refused with an error naming it.
func TestDataDirOfAnotherClusterRefused(t *testing.T) {
	mem := vfs.NewMem()
	net := transport.NewMemNetwork()
	start := func(id consensus.NodeID, cluster uint64) (*Node, error) {
		return Start(context.Background(), Config{
			ID: id, ClusterID: cluster, Peers: map[consensus.NodeID]string{id: "x"},
			DataDir: "/data/n", FS: mem, WALSegmentBytes: 1 << 20, TickInterval: 10 * time.Millisecond,
			NewTransport: func(h transport.Handler) (transport.Transport, error) { return net.Join(id, h, 0), nil },
		}, &recSM{})
	}
	n, err := start(1, 100)
	if err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, func() bool { return n.Leader() == 1 }, "single node did not lead")
	if _, err := n.Propose(context.Background(), []byte("x")); err != nil {
		t.Fatal(err)
	}
	n.Stop()
	for _, tc := range []struct {
		id      consensus.NodeID
		cluster uint64
	}{{1, 200}, {2, 100}} {
		n, err := start(tc.id, tc.cluster)
		if err == nil {
			n.Stop()
			t.Fatalf("node %d of cluster %d started on the data dir of node 1 of cluster 100", tc.id, tc.cluster)
		}
		if !errors.Is(err, wal.ErrMismatch) || !strings.Contains(err.Error(), "/data/n") {
			t.Fatalf("node %d cluster %d: %v, want wal.ErrMismatch naming the dir", tc.id, tc.cluster, err)
		}
		t.Logf("refused: %v", err)
	}
	// The rightful owner still starts.
	n, err = start(1, 100)
	if err != nil {
		t.Fatal(err)
	}
	n.Stop()
}

// gateFS makes every fsync wait while the gate is closed.
type gateFS struct {
	vfs.FS
	mu      sync.Mutex
	blocked chan struct{}
	waiting atomic.Int32
}

func (g *gateFS) close() {
	g.mu.Lock()
	if g.blocked == nil {
		g.blocked = make(chan struct{})
	}
	g.mu.Unlock()
}

func (g *gateFS) open() {
	g.mu.Lock()
	if g.blocked != nil {
		close(g.blocked)
		g.blocked = nil
	}
	g.mu.Unlock()
}

func (g *gateFS) wait() {
	g.mu.Lock()
	ch := g.blocked
	g.mu.Unlock()
	if ch != nil {
		g.waiting.Add(1)
		<-ch
		g.waiting.Add(-1)
	}
}

func (g *gateFS) wrap(f vfs.File, err error) (vfs.File, error) {
	if err != nil {
		return nil, err
	}
	return gateFile{f, g}, nil
}

func (g *gateFS) Create(name string) (vfs.File, error) { return g.wrap(g.FS.Create(name)) }
func (g *gateFS) OpenRW(name string) (vfs.File, error) { return g.wrap(g.FS.OpenRW(name)) }
func (g *gateFS) SyncDir(dir string) error             { g.wait(); return g.FS.SyncDir(dir) }

type gateFile struct {
	vfs.File
	g *gateFS
}

func (f gateFile) Sync() error { f.g.wait(); return f.File.Sync() }

// TestFsyncStallHandsOffLeadership: a leader whose fsync stalls longer than
// FsyncStallTimeout hands leadership to a follower well before the
// followers' election timeout would have; once the disk answers again it
// rejoins as a follower and the group has lost nothing.
func TestFsyncStallHandsOffLeadership(t *testing.T) {
	var mu sync.Mutex
	gates := map[consensus.NodeID]*gateFS{}
	c := newCluster(t, 3, false, func(cfg *Config) {
		g := &gateFS{FS: cfg.FS}
		mu.Lock()
		gates[cfg.ID] = g
		mu.Unlock()
		cfg.FS = g
		cfg.ElectionTicks = 100 // 1 s to 2 s: slower than the hand-off must be
		cfg.FsyncStallTimeout = 50 * time.Millisecond
	})
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, g := range gates {
			g.open()
		}
	})
	lead := c.leader()
	if err := proposeRetry(t, lead, "before", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	g := gates[lead.id]
	mu.Unlock()
	g.close()
	stalledAt := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	errc := make(chan error, 1)
	go func() { _, err := lead.Propose(ctx, []byte("stalled")); errc <- err }()
	testutil.Eventually(t, 5*time.Second, func() bool {
		for _, n := range c.running() {
			if n.id != lead.id && n.Leader() == n.id {
				return true
			}
		}
		return false
	}, "no follower took over from the stalled leader")
	if took := time.Since(stalledAt); took > 900*time.Millisecond {
		t.Errorf("hand-off took %v; the election timeout alone takes 1 s", took)
	}
	g.open()
	if err := <-errc; err != nil && !errors.Is(err, ErrOutcomeUnknown) {
		t.Logf("stalled proposal: %v", err)
	}
	acked := []string{"before"}
	if err := proposeRetry(t, lead, "after", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	acked = append(acked, "after")
	testutil.Eventually(t, 5*time.Second, func() bool { return lead.Leader() != lead.id && lead.Leader() != consensus.None },
		"the stalled leader did not step down")
	c.waitConverged(len(c.sm(c.leader().id).commands()))
	c.checkExactlyOnce(acked)
}

// TestBusyAndOutcomeUnknown: with the disk stalled, proposals pile up to
// MaxPendingProposals and the next is refused with ErrBusy; one whose
// context ends meanwhile reports ErrOutcomeUnknown, and still applies
// exactly once when the disk answers.
func TestBusyAndOutcomeUnknown(t *testing.T) {
	var g *gateFS
	c := newCluster(t, 1, false, func(cfg *Config) {
		g = &gateFS{FS: cfg.FS}
		cfg.FS = g
		cfg.MaxPendingProposals = 2
		cfg.FsyncStallTimeout = time.Hour
	})
	t.Cleanup(g.open)
	n := c.leader()
	if _, err := n.Propose(context.Background(), []byte("first")); err != nil {
		t.Fatal(err)
	}
	g.close()
	short, cancel := context.WithCancel(context.Background())
	defer cancel()
	unknown := make(chan error, 1)
	go func() { _, err := n.Propose(short, []byte("unknown")); unknown <- err }()
	long := make(chan error, 1)
	go func() { _, err := n.Propose(context.Background(), []byte("long")); long <- err }()
	testutil.Eventually(t, 5*time.Second, func() bool { return n.props.len() == 2 }, "the two proposals never became pending")
	ctx, cancelBusy := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancelBusy()
	if _, err := n.Propose(ctx, []byte("busy")); !errors.Is(err, ErrBusy) {
		t.Fatalf("proposal beyond MaxPendingProposals: %v, want ErrBusy", err)
	}
	// Both pending proposals were handed to the engine (its write is
	// stalled on the disk); the first caller gives up.
	testutil.Eventually(t, 5*time.Second, func() bool { return n.props.proposed() == 2 }, "the engine never took the proposals")
	cancel()
	if err := <-unknown; !errors.Is(err, ErrOutcomeUnknown) {
		t.Fatalf("proposal whose context ended after hand-off: %v, want ErrOutcomeUnknown", err)
	}
	g.open()
	if err := <-long; err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, func() bool { return c.sm(1).len() == 3 }, "want first, unknown, long applied")
	c.checkExactlyOnce([]string{"first", "unknown", "long"})
}
