package nodes

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	hraft "github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"

	"github.com/ballotdb/ballot/bench/core"
	"github.com/ballotdb/ballot/consensus"
	"github.com/ballotdb/ballot/node"
	"github.com/ballotdb/ballot/vfs"
)

// Cluster is a running three-member cluster that takes proposals.
type Cluster interface {
	// Propose submits cmd and returns once the leader has applied it.
	Propose(ctx context.Context, cmd []byte) error
	// Close stops every member.
	Close()
}

// System names a runtime and starts a cluster of it under dir.
type System struct {
	Name  string
	Start func(dir string) (Cluster, error)
}

// Systems is every runtime compared, ballot's first.
var Systems = []System{
	{Name: "ballot", Start: StartBallot},
	{Name: "hashicorp", Start: StartHashicorp},
}

// opTimeout bounds one proposal, including retries after a leader change.
const opTimeout = 30 * time.Second

// countSM counts applied commands; its snapshot is the count.
type countSM struct{ n atomic.Uint64 }

func (s *countSM) Apply(uint64, []byte) []byte { s.n.Add(1); return nil }

func (s *countSM) Snapshot(w io.Writer) error {
	return binary.Write(w, binary.LittleEndian, s.n.Load())
}

func (s *countSM) Restore(r io.Reader) error {
	var n uint64
	if err := binary.Read(r, binary.LittleEndian, &n); err != nil {
		return err
	}
	s.n.Store(n)
	return nil
}

type ballotCluster struct {
	nodes []*node.Node
	fs    []*countFS // each node's file system, counting fsyncs and bytes
}

// Counters reports, for the node leading now, the fsyncs and bytes its
// file system has seen so far, and the same summed over all three.
func (c *ballotCluster) Counters() (leaderSyncs, leaderBytes, allSyncs, allBytes int64) {
	lead := c.leader()
	for i, n := range c.nodes {
		s, b := c.fs[i].syncs.Load(), c.fs[i].bytes.Load()
		allSyncs += s
		allBytes += b
		if n == lead {
			leaderSyncs, leaderBytes = s, b
		}
	}
	return
}

// StartBallot starts three ballot nodes with node's defaults (100 ms
// ticks, election after 10) and returns once they agree on a leader.
func StartBallot(dir string) (Cluster, error) {
	lns := map[consensus.NodeID]net.Listener{}
	peers := map[consensus.NodeID]string{}
	for id := consensus.NodeID(1); id <= 3; id++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lns[id] = ln
		peers[id] = ln.Addr().String()
	}
	c := &ballotCluster{}
	for id := consensus.NodeID(1); id <= 3; id++ {
		fs := &countFS{FS: vfs.Default}
		c.fs = append(c.fs, fs)
		n, err := node.Start(context.Background(), node.Config{
			ID: id, ClusterID: 0xba1107, Peers: peers, Listen: lns[id], FS: fs,
			DataDir: filepath.Join(dir, "ballot", id.String()), Seed: uint64(id) * 7919,
		}, &countSM{})
		if err != nil {
			for _, ln := range lns {
				ln.Close()
			}
			c.Close()
			return nil, fmt.Errorf("ballot: start node %d: %w", id, err)
		}
		delete(lns, id)
		c.nodes = append(c.nodes, n)
	}
	deadline := time.Now().Add(opTimeout)
	for c.leader() == nil {
		if time.Now().After(deadline) {
			c.Close()
			return nil, errors.New("ballot: no agreed leader")
		}
		time.Sleep(10 * time.Millisecond) // waiting for the nodes' own election
	}
	return c, nil
}

// leader returns the node all three agree leads, or nil.
func (c *ballotCluster) leader() *node.Node {
	l := c.nodes[0].Leader()
	var lead *node.Node
	for _, n := range c.nodes {
		if n.Leader() != l {
			return nil
		}
		if n.ID() == l {
			lead = n
		}
	}
	return lead
}

func (c *ballotCluster) Propose(ctx context.Context, cmd []byte) error {
	for {
		target := c.leader()
		if target == nil {
			target = c.nodes[0] // forwards to the leader if there is one
		}
		_, err := target.Propose(ctx, cmd)
		if err == nil {
			return nil
		}
		retry := errors.Is(err, node.ErrNotLeader) || errors.Is(err, node.ErrBusy) ||
			errors.Is(err, consensus.ErrProposalDropped)
		if !retry || ctx.Err() != nil {
			return err
		}
		select {
		case <-time.After(time.Millisecond): // back off before retrying
		case <-ctx.Done():
			return err
		}
	}
}

func (c *ballotCluster) Close() {
	for _, n := range c.nodes {
		n.Stop()
	}
}

type hashicorpCluster struct {
	nodes  []*hraft.Raft
	stores []*raftboltdb.BoltStore
	trans  []*hraft.NetworkTransport
}

// fsm counts applied commands.
type fsm struct{ n atomic.Uint64 }

func (f *fsm) Apply(*hraft.Log) any { f.n.Add(1); return nil }

func (f *fsm) Snapshot() (hraft.FSMSnapshot, error) { return snap(f.n.Load()), nil }

func (f *fsm) Restore(r io.ReadCloser) error { return r.Close() }

type snap uint64

func (s snap) Persist(sink hraft.SnapshotSink) error {
	if err := binary.Write(sink, binary.LittleEndian, uint64(s)); err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}

func (snap) Release() {}

// StartHashicorp starts three hashicorp/raft nodes, each with a
// raft-boltdb store (fsync on), a file snapshot store and a TCP transport,
// with DefaultConfig's timing (1 s heartbeat and election timeouts), and
// returns once one leads.
func StartHashicorp(dir string) (Cluster, error) {
	c := &hashicorpCluster{}
	var servers []hraft.Server
	for i := 1; i <= 3; i++ {
		t, err := hraft.NewTCPTransport("127.0.0.1:0", nil, 8, 10*time.Second, io.Discard)
		if err != nil {
			c.Close()
			return nil, err
		}
		c.trans = append(c.trans, t)
		servers = append(servers, hraft.Server{ID: hraft.ServerID(fmt.Sprint(i)), Address: t.LocalAddr()})
	}
	for i := range 3 {
		d := filepath.Join(dir, "hashicorp", fmt.Sprint(i+1))
		if err := os.MkdirAll(d, 0o755); err != nil {
			c.Close()
			return nil, err
		}
		store, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(d, "raft.db")})
		if err != nil {
			c.Close()
			return nil, err
		}
		c.stores = append(c.stores, store)
		snaps, err := hraft.NewFileSnapshotStore(d, 2, io.Discard)
		if err != nil {
			c.Close()
			return nil, err
		}
		conf := core.HashicorpConfig(fmt.Sprint(i + 1))
		if err := hraft.BootstrapCluster(conf, store, store, snaps, c.trans[i], hraft.Configuration{Servers: servers}); err != nil {
			c.Close()
			return nil, err
		}
		r, err := hraft.NewRaft(conf, &fsm{}, store, store, snaps, c.trans[i])
		if err != nil {
			c.Close()
			return nil, err
		}
		c.nodes = append(c.nodes, r)
	}
	deadline := time.Now().Add(opTimeout)
	for c.leader() == nil {
		if time.Now().After(deadline) {
			c.Close()
			return nil, errors.New("hashicorp: no leader")
		}
		time.Sleep(10 * time.Millisecond) // waiting for the library's own election
	}
	return c, nil
}

func (c *hashicorpCluster) leader() *hraft.Raft {
	for _, r := range c.nodes {
		if r.State() == hraft.Leader {
			return r
		}
	}
	return nil
}

func (c *hashicorpCluster) Propose(ctx context.Context, cmd []byte) error {
	for {
		l := c.leader()
		var err error
		if l == nil {
			err = hraft.ErrNotLeader
		} else if err = l.Apply(cmd, opTimeout).Error(); err == nil {
			return nil
		}
		retry := errors.Is(err, hraft.ErrNotLeader) || errors.Is(err, hraft.ErrLeadershipLost) ||
			errors.Is(err, hraft.ErrEnqueueTimeout)
		if !retry || ctx.Err() != nil {
			return err
		}
		select {
		case <-time.After(time.Millisecond):
		case <-ctx.Done():
			return err
		}
	}
}

func (c *hashicorpCluster) Close() {
	for _, r := range c.nodes {
		_ = r.Shutdown().Error()
	}
	for _, t := range c.trans {
		_ = t.Close()
	}
	for _, s := range c.stores {
		_ = s.Close()
	}
}
