package raft

import (
	"errors"
	"fmt"
	"testing"

	"github.com/ballotdb/ballot/consensus"
)

// benchCluster is three engines driven in one goroutine: Readies handled in
// contract order with an in-memory "disk" (the entries are appended to a
// slice that is cut at every compaction), messages delivered in-process.
type benchCluster struct {
	nodes   []*Raft
	disk    [][]consensus.Entry
	applied []uint64
	queue   []consensus.Message
	// leaderApplied counts normal entries the leader applied.
	leaderApplied int
}

func newBenchCluster(b *testing.B) *benchCluster {
	ids := []consensus.NodeID{1, 2, 3}
	c := &benchCluster{disk: make([][]consensus.Entry, 3), applied: make([]uint64, 3)}
	for _, id := range ids {
		r, err := New(Config{ID: id, ElectionTick: 10, HeartbeatTick: 1, Seed: uint64(id), PreVote: true, CheckQuorum: true,
			MaxUncommittedEntriesSize: 256 << 20, MaxInflightMsgs: 512, MaxInflightBytes: 256 << 20},
			consensus.InitialState{Snapshot: consensus.SnapshotMeta{ConfState: consensus.ConfState{Voters: ids}}})
		if err != nil {
			b.Fatal(err)
		}
		c.nodes = append(c.nodes, r)
	}
	c.round() // persist the bootstrap entries
	c.nodes[0].Campaign()
	for range 1000 {
		c.round()
		if c.nodes[0].role == consensus.Leader && c.nodes[0].committedEntryInCurrentTerm() {
			return c
		}
	}
	b.Logf("node 1: %+v", c.nodes[0].Status())
	b.Fatal("no leader")
	return nil
}

// round handles every node's Ready once and delivers what they sent.
func (c *benchCluster) round() {
	for i, r := range c.nodes {
		if !r.HasReady() {
			continue
		}
		rd := r.Ready()
		c.disk[i] = append(c.disk[i], rd.Entries...)
		c.queue = append(c.queue, rd.Messages...)
		for _, e := range rd.Committed {
			if i == 0 && e.Type == consensus.EntryNormal {
				c.leaderApplied++
			}
			c.applied[i] = e.Index
		}
		r.Advance(c.applied[i])
		// Compact now and then, as a runtime would, so the log (and
		// the benchmark's memory) stays bounded.
		if a := c.applied[i]; a-r.log.snapIndex > 8192 {
			if err := r.Compact(a); err != nil {
				panic(err)
			}
			c.disk[i] = c.disk[i][:0]
		}
	}
	q := c.queue
	c.queue = nil
	for _, m := range q {
		_ = c.nodes[m.To-1].Step(m)
	}
	c.queue = q[:0]
}

// BenchmarkProposeCommit measures leader-applied proposals per second on a
// three-node in-memory cluster driven in one goroutine, for several payload
// sizes and numbers of proposals in flight. b.N is the number of proposals;
// allocations are per proposal.
func BenchmarkProposeCommit(b *testing.B) {
	for _, size := range []int{16, 256, 4096} {
		for _, window := range []int{1, 64, 1024} {
			b.Run(fmt.Sprintf("payload=%dB/window=%d", size, window), func(b *testing.B) {
				benchProposeCommit(b, size, window)
			})
		}
	}
}

func benchProposeCommit(b *testing.B, size, window int) {
	c := newBenchCluster(b)
	leader := c.nodes[0]
	payload := make([]byte, size)
	base := c.leaderApplied
	proposed, backpressure := 0, 0
	b.ReportAllocs()
	b.SetBytes(int64(size))
	b.ResetTimer()
	for c.leaderApplied-base < b.N {
		for proposed < b.N && proposed-(c.leaderApplied-base) < window {
			if err := leader.Propose(payload); err != nil {
				if errors.Is(err, consensus.ErrProposalDropped) {
					backpressure++
					break
				}
				b.Fatalf("propose: %v", err)
			}
			proposed++
		}
		c.round()
	}
	b.StopTimer()
	if got := c.leaderApplied - base; got != b.N || proposed != b.N {
		b.Fatalf("applied %d and proposed %d, want %d", got, proposed, b.N)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "proposals/s")
	if backpressure > 0 {
		b.ReportMetric(float64(backpressure), "backpressure")
	}
}
