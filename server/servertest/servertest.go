// Package servertest starts real ballot clusters for tests, as
// net/http/httptest starts servers: every member is a server.Server with its
// own data directory and client and peer listeners on ports the OS chose.
// It is used by ballot's own tests and by the compat module.
package servertest

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/ballotdb/ballot/consensus"
	"github.com/ballotdb/ballot/internal/freeport"
	"github.com/ballotdb/ballot/internal/testutil"
	"github.com/ballotdb/ballot/node"
	"github.com/ballotdb/ballot/server"
)

// cluster is a set of real ballot members on loopback, each with its own
// client and peer listeners on ports the OS chose.
// Cluster is a set of running members.
type Cluster struct {
	t       testing.TB
	dir     string
	initial map[string]string
	mu      sync.Mutex
	members map[string]*server.Server
	client  map[string]string // name → client address
	joined  map[string]bool   // added at runtime: started with Join
	tweak   func(*server.Config)
}

// New starts size members and stops them in t.Cleanup; tweak, if set,
// adjusts each member's config before it starts.
func New(t testing.TB, size int, tweak func(*server.Config)) *Cluster {
	t.Helper()
	c := &Cluster{t: t, dir: t.TempDir(), initial: map[string]string{}, members: map[string]*server.Server{},
		client: map[string]string{}, joined: map[string]bool{}, tweak: tweak}
	peers := map[string]net.Listener{}
	for i := 1; i <= size; i++ {
		name := fmt.Sprintf("m%d", i)
		pl, err := freeport.Listen("127.0.0.1")
		if err != nil {
			t.Fatal(err)
		}
		peers[name] = pl
		c.initial[name] = pl.Addr().String()
	}
	t.Cleanup(c.StopAll)
	for name, pl := range peers {
		c.startWith(name, pl)
	}
	return c
}

// Engine is the consensus engine test clusters run: BALLOT_TEST_ENGINE
// (raft or paxos), default raft. CI runs the service's test suites once
// per engine.
func Engine() node.EngineKind {
	if e := os.Getenv("BALLOT_TEST_ENGINE"); e != "" {
		return node.EngineKind(e)
	}
	return node.EngineRaft
}

func testLogger() *slog.Logger {
	if os.Getenv("SERVER_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func (c *Cluster) startWith(name string, pl net.Listener) {
	c.t.Helper()
	c.mu.Lock()
	addr := c.client[name]
	initial := maps.Clone(c.initial)
	join := c.joined[name]
	c.mu.Unlock()
	cl := testutil.Listen(c.t, addr)
	if pl == nil {
		pl = testutil.Listen(c.t, initial[name])
	}
	cfg := server.Config{
		Name: name, ClusterToken: "test", InitialCluster: initial, Join: join,
		DataDir: filepath.Join(c.dir, name), ClientListener: cl, PeerListener: pl,
		TickInterval: 10 * time.Millisecond, ElectionTicks: 10, Logger: testLogger(),
	}
	cfg.Engine = Engine()
	if c.tweak != nil {
		c.tweak(&cfg)
	}
	s, err := server.Start(context.Background(), cfg)
	if err != nil {
		c.t.Fatalf("start %s: %v", name, err)
	}
	c.mu.Lock()
	c.members[name] = s
	c.client[name] = cl.Addr().String()
	c.mu.Unlock()
}

// AddMember grows the cluster by a member called name: it asks the
// cluster (through any running member) to add it, as a learner if learner,
// then starts it empty to join. It returns the new member's ID.
func (c *Cluster) AddMember(name string, learner bool) uint64 {
	c.t.Helper()
	pl, err := freeport.Listen("127.0.0.1")
	if err != nil {
		c.t.Fatal(err)
	}
	cli := c.Client()
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	urls := []string{"http://" + pl.Addr().String()}
	var resp *clientv3.MemberAddResponse
	if learner {
		resp, err = cli.MemberAddAsLearner(ctx, urls)
	} else {
		resp, err = cli.MemberAdd(ctx, urls)
	}
	if err != nil {
		pl.Close()
		c.t.Fatalf("add member %s: %v", name, err)
	}
	c.mu.Lock()
	c.initial[name] = pl.Addr().String()
	c.joined[name] = true
	c.mu.Unlock()
	c.startWith(name, pl)
	return resp.Member.ID
}

// Forget drops a stopped member from the cluster's bookkeeping (after it
// was removed from the membership).
func (c *Cluster) Forget(name string) {
	c.Stop(name)
	c.mu.Lock()
	delete(c.initial, name)
	delete(c.client, name)
	c.mu.Unlock()
}

// Restart starts a stopped member again on its data directory and ports.
func (c *Cluster) Restart(name string) { c.startWith(name, nil) }

// Stop stops a member (a leader hands leadership away first).
func (c *Cluster) Stop(name string) {
	c.mu.Lock()
	s := c.members[name]
	delete(c.members, name)
	c.mu.Unlock()
	if s != nil {
		s.Stop()
	}
}

// StopAll stops every running member.
func (c *Cluster) StopAll() {
	c.mu.Lock()
	names := make([]string, 0, len(c.members))
	for n := range c.members {
		names = append(names, n)
	}
	c.mu.Unlock()
	for _, n := range names {
		c.Stop(n)
	}
}

// Leader waits for a leader every running member agrees on.
func (c *Cluster) Leader() string {
	c.t.Helper()
	var lead string
	testutil.Eventually(c.t, 10*time.Second, func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		var id consensus.NodeID
		for _, s := range c.members {
			l := s.Node().Leader()
			if l == consensus.None || (id != consensus.None && l != id) {
				return false
			}
			id = l
		}
		for name, s := range c.members {
			if consensus.NodeID(s.MemberID()) == id {
				lead = name
				return true
			}
		}
		return false
	}, "no agreed leader")
	return lead
}

// Follower returns a running member that is not the leader.
func (c *Cluster) Follower() string {
	lead := c.Leader()
	c.mu.Lock()
	defer c.mu.Unlock()
	for name := range c.members {
		if name != lead {
			return name
		}
	}
	c.t.Fatal("no follower")
	return ""
}

// Client returns a clientv3 client talking to the named members only, or
// to every member when none is named.
func (c *Cluster) Client(names ...string) *clientv3.Client {
	c.t.Helper()
	eps := c.Endpoints(names...)
	cli, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { cli.Close() })
	return cli
}

// Member returns the named running member, or nil.
func (c *Cluster) Member(name string) *server.Server {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.members[name]
}

// Endpoints returns the client addresses of the named members, or of all
// when none is named.
func (c *Cluster) Endpoints(names ...string) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(names) == 0 {
		for n := range c.client {
			names = append(names, n)
		}
		sort.Strings(names)
	}
	var out []string
	for _, n := range names {
		out = append(out, c.client[n])
	}
	return out
}

// Names returns the names of every member ever started, sorted.
func (c *Cluster) Names() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for n := range c.initial {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}
