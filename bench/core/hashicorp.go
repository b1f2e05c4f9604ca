package core

import (
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	hraft "github.com/hashicorp/raft"
)

// hashicorpCluster is three hashicorp/raft nodes on its InmemStore,
// InmemSnapshotStore and InmemTransport. The library runs its own
// goroutines; the benchmark only calls Apply on the leader.
type hashicorpCluster struct {
	nodes   []*hraft.Raft
	leader  *hraft.Raft
	retried int
}

// countFSM counts applied commands.
type countFSM struct{ n atomic.Uint64 }

func (f *countFSM) Apply(*hraft.Log) any { f.n.Add(1); return nil }

func (f *countFSM) Snapshot() (hraft.FSMSnapshot, error) { return countSnap(f.n.Load()), nil }

func (f *countFSM) Restore(r io.ReadCloser) error { return r.Close() }

type countSnap uint64

func (s countSnap) Persist(sink hraft.SnapshotSink) error {
	_, err := fmt.Fprint(sink, uint64(s))
	if err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}

func (countSnap) Release() {}

// HashicorpConfig is hashicorp/raft's DefaultConfig for node id, silenced.
// Its flow control (MaxAppendEntries 64, one pipeline per follower) and
// snapshot policy (SnapshotThreshold 8192, TrailingLogs 10240) are left as
// a user gets them.
func HashicorpConfig(id string) *hraft.Config {
	conf := hraft.DefaultConfig()
	conf.LocalID = hraft.ServerID(id)
	conf.Logger = hclog.NewNullLogger()
	return conf
}

func newHashicorpRaft() (Cluster, error) {
	c := &hashicorpCluster{}
	var (
		trans   []*hraft.InmemTransport
		servers []hraft.Server
	)
	for _, id := range ids {
		addr, t := hraft.NewInmemTransport(hraft.ServerAddress(id.String()))
		trans = append(trans, t)
		servers = append(servers, hraft.Server{ID: hraft.ServerID(id.String()), Address: addr})
	}
	for i, t := range trans {
		for j, u := range trans {
			if i != j {
				t.Connect(u.LocalAddr(), u)
			}
		}
	}
	for i, id := range ids {
		conf := HashicorpConfig(id.String())
		logs, snaps := hraft.NewInmemStore(), hraft.NewInmemSnapshotStore()
		if err := hraft.BootstrapCluster(conf, logs, logs, snaps, trans[i], hraft.Configuration{Servers: servers}); err != nil {
			c.Close()
			return nil, fmt.Errorf("hashicorp-raft: bootstrap %d: %w", id, err)
		}
		r, err := hraft.NewRaft(conf, &countFSM{}, logs, logs, snaps, trans[i])
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("hashicorp-raft: node %d: %w", id, err)
		}
		c.nodes = append(c.nodes, r)
	}
	if err := c.awaitLeader(); err != nil {
		c.Close()
		return nil, err
	}
	if err := c.Run(1, 1, []byte("warm-up")); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Run keeps window Apply futures outstanding and waits for them in order;
// a future resolves once the leader's FSM has applied the command. The
// library elects by wall-clock timeouts, so on a starved machine
// leadership can move during a run: a proposal refused for that is
// proposed again on the new leader (and counted in Retried).
func (c *hashicorpCluster) Run(n, window int, payload []byte) error {
	ring := make([]hraft.ApplyFuture, window)
	for i := 0; i < n+window; i++ { // n grows by one for every retry
		slot := i % window
		if f := ring[slot]; f != nil {
			ring[slot] = nil
			if err := f.Error(); err != nil {
				if !leadershipLost(err) || c.retried >= maxRetries {
					return fmt.Errorf("hashicorp-raft: apply: %w", err)
				}
				c.retried++
				if err := c.awaitLeader(); err != nil {
					return err
				}
				n++
			}
		}
		if i < n {
			ring[slot] = c.leader.Apply(payload, hashicorpTimeout)
		}
	}
	return nil
}

// maxRetries bounds the proposals a cluster re-proposes after leader
// changes over its lifetime.
const maxRetries = 1 << 20

// Retried reports how many proposals were proposed again after a leader
// change.
func (c *hashicorpCluster) Retried() int { return c.retried }

func leadershipLost(err error) bool {
	return errors.Is(err, hraft.ErrNotLeader) || errors.Is(err, hraft.ErrLeadershipLost) ||
		errors.Is(err, hraft.ErrLeadershipTransferInProgress) || errors.Is(err, hraft.ErrEnqueueTimeout)
}

// awaitLeader waits for a node to lead and makes it c.leader.
func (c *hashicorpCluster) awaitLeader() error {
	deadline := time.Now().Add(hashicorpTimeout)
	for {
		for _, r := range c.nodes {
			if r.State() == hraft.Leader {
				c.leader = r
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("hashicorp-raft: no leader within %v", hashicorpTimeout)
		}
		time.Sleep(10 * time.Millisecond) // polling the library's own election
	}
}

func (c *hashicorpCluster) Close() {
	for _, r := range c.nodes {
		_ = r.Shutdown().Error()
	}
}
