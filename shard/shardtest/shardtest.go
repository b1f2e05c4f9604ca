// Package shardtest starts real sharded ballot clusters for tests: every
// host is a shard.Host with its own data directory and client and peer
// listeners on ports the OS chose, as server/servertest does for
// single-group clusters.
package shardtest

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/ballotdb/ballot/internal/freeport"
	"github.com/ballotdb/ballot/internal/testutil"
	"github.com/ballotdb/ballot/node"
	"github.com/ballotdb/ballot/shard"
)

// Cluster is a set of running hosts.
type Cluster struct {
	t       testing.TB
	dir     string
	shards  int
	initial map[string]string // host name → peer address
	mu      sync.Mutex
	hosts   map[string]*shard.Host
	client  map[string]string // host name → client address
	tweak   func(*shard.Config)
}

// New starts size hosts keeping shards shards and stops them in t.Cleanup.
func New(t testing.TB, size, shards int) *Cluster { return NewWith(t, size, shards, nil) }

// NewWith is New with each host's config adjusted by tweak.
func NewWith(t testing.TB, size, shards int, tweak func(*shard.Config)) *Cluster {
	t.Helper()
	c := &Cluster{t: t, dir: t.TempDir(), shards: shards, tweak: tweak, initial: map[string]string{},
		hosts: map[string]*shard.Host{}, client: map[string]string{}}
	peers := map[string]net.Listener{}
	for i := 1; i <= size; i++ {
		name := fmt.Sprintf("h%d", i)
		pl, err := freeport.Listen("127.0.0.1")
		if err != nil {
			t.Fatal(err)
		}
		peers[name] = pl
		c.initial[name] = pl.Addr().String()
	}
	t.Cleanup(c.StopAll)
	for name, pl := range peers {
		c.start(name, pl)
	}
	return c
}

func engine() node.EngineKind {
	if e := os.Getenv("BALLOT_TEST_ENGINE"); e != "" {
		return node.EngineKind(e)
	}
	return node.EngineRaft
}

func logger() *slog.Logger {
	if os.Getenv("SHARD_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func (c *Cluster) start(name string, pl net.Listener) {
	c.t.Helper()
	c.mu.Lock()
	addr := c.client[name]
	initial := maps.Clone(c.initial)
	c.mu.Unlock()
	cl := testutil.Listen(c.t, addr)
	if pl == nil {
		pl = testutil.Listen(c.t, initial[name])
	}
	cfg := shard.Config{
		Name: name, ClusterToken: "test", InitialCluster: initial, Shards: c.shards, Engine: engine(),
		DataDir: filepath.Join(c.dir, name), ClientListener: cl, PeerListener: pl,
		TickInterval: 10 * time.Millisecond, ElectionTicks: 10, Logger: logger(),
	}
	if c.tweak != nil {
		c.tweak(&cfg)
	}
	h, err := shard.Start(context.Background(), cfg)
	if err != nil {
		c.t.Fatalf("start %s: %v", name, err)
	}
	c.mu.Lock()
	c.hosts[name] = h
	c.client[name] = cl.Addr().String()
	c.mu.Unlock()
}

// Dir is the directory holding every host's data directory (by name).
func (c *Cluster) Dir() string { return c.dir }

// Host returns a running host by name, or nil.
func (c *Cluster) Host(name string) *shard.Host {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.hosts[name]
}

// Names returns the hosts' names, sorted.
func (c *Cluster) Names() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	names := make([]string, 0, len(c.initial))
	for n := range c.initial {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Stop stops one host (kept on disk: Restart brings it back).
func (c *Cluster) Stop(name string) {
	c.mu.Lock()
	h := c.hosts[name]
	delete(c.hosts, name)
	c.mu.Unlock()
	if h != nil {
		h.Stop()
	}
}

// Restart starts a stopped host again on its old addresses and data.
func (c *Cluster) Restart(name string) { c.start(name, nil) }

// StopAll stops every host.
func (c *Cluster) StopAll() {
	c.mu.Lock()
	hs := maps.Clone(c.hosts)
	c.hosts = map[string]*shard.Host{}
	c.mu.Unlock()
	var wg sync.WaitGroup
	for _, h := range hs {
		wg.Add(1)
		go func() { defer wg.Done(); h.Stop() }()
	}
	wg.Wait()
}

// Endpoints are the client addresses of the named hosts (all if none).
func (c *Cluster) Endpoints(names ...string) []string {
	if len(names) == 0 {
		names = c.Names()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var eps []string
	for _, n := range names {
		eps = append(eps, c.client[n])
	}
	return eps
}

// Client returns a clientv3 client of the named hosts (all if none),
// closed in t.Cleanup.
func (c *Cluster) Client(names ...string) *clientv3.Client {
	c.t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(names...), DialTimeout: 5 * time.Second,
		Logger: zap.NewNop()})
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { cli.Close() })
	return cli
}

// WaitLeaders waits until every group (the meta group and each shard) has
// a leader that every running host knows.
func (c *Cluster) WaitLeaders(timeout time.Duration) {
	c.t.Helper()
	testutil.Eventually(c.t, timeout, func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		for name, h := range c.hosts {
			for _, s := range h.Map().Shards {
				if !slices.Contains(s.Members, name) {
					continue
				}
				if srv := h.Server(s.ID); srv == nil || srv.Node().Leader() == 0 {
					return false
				}
			}
			if h.Server(shard.MetaGroup).Node().Leader() == 0 {
				return false
			}
		}
		return true
	}, "every group has a leader")
}
