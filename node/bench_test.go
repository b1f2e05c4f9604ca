package node

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ballotdb/ballot/consensus"
	"github.com/ballotdb/ballot/internal/testutil"
	"github.com/ballotdb/ballot/vfs"
)

// countSM counts applied commands; its snapshot is the count.
type countSM struct{ n atomic.Uint64 }

func (s *countSM) Apply(_ uint64, _ []byte) []byte { s.n.Add(1); return nil }

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

// benchCluster starts size nodes over TCP on loopback, each on the OS file
// system under b.TempDir() (fsync on), and returns them once they agree on
// a leader, which comes first. stop kills them all.
func benchCluster(b *testing.B, size int) (nodes []*Node, stop func()) {
	b.Helper()
	dir := b.TempDir()
	lns := map[consensus.NodeID]net.Listener{}
	peers := map[consensus.NodeID]string{}
	for i := 1; i <= size; i++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		lns[consensus.NodeID(i)] = ln
		peers[consensus.NodeID(i)] = ln.Addr().String()
	}
	stop = func() {
		for _, n := range nodes {
			n.kill()
		}
		for _, ln := range lns {
			ln.Close() // those of nodes that did not start
		}
	}
	for i := 1; i <= size; i++ {
		id := consensus.NodeID(i)
		n, err := Start(context.Background(), Config{
			ID: id, ClusterID: testCluster1, Peers: peers, FS: vfs.Default, Listen: lns[id],
			DataDir:      filepath.Join(dir, fmt.Sprint(id)),
			TickInterval: 50 * time.Millisecond, ElectionTicks: 10, HeartbeatTicks: 1,
			Seed: uint64(id) * 7919, Logger: testLogger(b),
		}, &countSM{})
		if err != nil {
			stop()
			b.Fatalf("start node %d: %v", id, err)
		}
		delete(lns, id) // the node owns it now
		nodes = append(nodes, n)
	}
	var lead *Node
	testutil.Eventually(b, 20*time.Second, func() bool {
		l := nodes[0].Leader()
		for _, n := range nodes {
			if n.Leader() != l {
				return false
			}
			if n.id == l {
				lead = n
			}
		}
		return lead != nil
	}, "no agreed leader")
	slices.SortFunc(nodes, func(x, y *Node) int {
		switch {
		case x == lead:
			return -1
		case y == lead:
			return 1
		}
		return int(x.id) - int(y.id)
	})
	return nodes, stop
}

// BenchmarkNodePropose measures a 3-node cluster of real nodes over
// loopback TCP, each on the OS disk with fsync on: proposers goroutines
// propose 128-byte commands to the leader, splitting b.N between them. Each
// op is one Propose from the call until the leader has committed and
// applied it; p50 and p99 are of that latency. leader-fsyncs/op is the
// leader's WAL fsyncs per proposal (below 1: batching and group commit).
func BenchmarkNodePropose(b *testing.B) {
	nodes, stop := benchCluster(b, 3)
	defer stop()
	for _, proposers := range []int{1, 64} {
		b.Run(fmt.Sprintf("proposers=%d", proposers), func(b *testing.B) {
			benchPropose(b, nodes, proposers)
		})
	}
}

func benchPropose(b *testing.B, nodes []*Node, proposers int) {
	cmd := make([]byte, 128)
	for i := range cmd {
		cmd[i] = byte(i)
	}
	lats := make([][]time.Duration, proposers)
	var retried atomic.Int64
	var failed atomic.Pointer[error]
	var wg sync.WaitGroup
	fsyncs := nodes[0].wal.Stats().Fsyncs
	b.ResetTimer()
	start := time.Now()
	for g := range proposers {
		n := b.N / proposers
		if g < b.N%proposers {
			n++
		}
		lats[g] = make([]time.Duration, 0, n)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range n {
				t0 := time.Now()
				if err := proposeLeader(nodes, cmd, &retried); err != nil {
					failed.CompareAndSwap(nil, &err)
					return
				}
				lats[g] = append(lats[g], time.Since(t0))
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	if e := failed.Load(); e != nil {
		b.Fatal(*e)
	}
	all := slices.Concat(lats...)
	slices.Sort(all)
	pct := func(p float64) float64 {
		return float64(all[min(len(all)-1, int(p*float64(len(all))))]) / float64(time.Millisecond)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "proposals/s")
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
	b.ReportMetric(float64(nodes[0].wal.Stats().Fsyncs-fsyncs)/float64(b.N), "leader-fsyncs/op")
	if r := retried.Load(); r > 0 {
		b.Logf("b.N=%d: %d proposals retried (leadership moved, or a full queue)", b.N, r)
	}
}

// proposeLeader proposes cmd to the node that leads now (nodes[0] while
// leadership stays put), retrying what says "not now" for at most 10 s.
func proposeLeader(nodes []*Node, cmd []byte, retried *atomic.Int64) error {
	deadline := time.Now().Add(10 * time.Second)
	target := nodes[0]
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := target.Propose(ctx, cmd)
		cancel()
		if err == nil {
			return nil
		}
		transient := errors.Is(err, ErrNotLeader) || errors.Is(err, ErrBusy) ||
			errors.Is(err, consensus.ErrProposalDropped) || errors.Is(err, ErrOutcomeUnknown)
		if !transient || time.Now().After(deadline) {
			return err
		}
		retried.Add(1)
		if l := target.Leader(); l != consensus.None {
			for _, n := range nodes {
				if n.id == l {
					target = n
				}
			}
		}
		select {
		case <-time.After(5 * time.Millisecond): // back off before retrying
		case <-target.Done():
			return err
		}
	}
}
