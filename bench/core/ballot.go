package core

import (
	"errors"
	"fmt"

	"github.com/ballotdb/ballot/consensus"
	"github.com/ballotdb/ballot/paxos"
	"github.com/ballotdb/ballot/raft"
)

// engineCluster is three consensus.Engines driven in one goroutine: each
// Ready is handled in contract order with an in-memory "disk" (the entries
// are appended to a slice that is cut at every compaction, as etcd's
// MemoryStorage is), and messages are delivered in-process.
type engineCluster struct {
	name      string
	nodes     []consensus.Engine
	disk      [][]consensus.Entry
	applied   []uint64
	compacted []uint64
	queue     []consensus.Message
	// leaderApplied counts normal entries the leader applied.
	leaderApplied int
}

var ids = []consensus.NodeID{1, 2, 3}

func newBallotRaft() (Cluster, error) {
	return newEngineCluster("ballot-raft", func(id consensus.NodeID, st consensus.InitialState) (consensus.Engine, error) {
		return raft.New(raft.Config{
			ID: id, ElectionTick: 10, HeartbeatTick: 1, Seed: uint64(id),
			PreVote: true, CheckQuorum: true,
			MaxSizePerMsg: maxSizePerMsg, MaxInflightMsgs: maxInflightMsgs,
			MaxInflightBytes: maxInflightBytes, MaxUncommittedEntriesSize: maxUncommittedBytes,
		}, st)
	})
}

func newBallotPaxos() (Cluster, error) {
	return newEngineCluster("ballot-paxos", func(id consensus.NodeID, st consensus.InitialState) (consensus.Engine, error) {
		return paxos.New(paxos.Config{
			ID: id, ElectionTick: 10, HeartbeatTick: 1, Seed: uint64(id),
			MaxSizePerMsg: maxSizePerMsg,
		}, st)
	})
}

func newEngineCluster(name string, newEngine func(consensus.NodeID, consensus.InitialState) (consensus.Engine, error)) (Cluster, error) {
	c := &engineCluster{name: name, disk: make([][]consensus.Entry, len(ids)),
		applied: make([]uint64, len(ids)), compacted: make([]uint64, len(ids))}
	for _, id := range ids {
		e, err := newEngine(id, consensus.InitialState{Snapshot: consensus.SnapshotMeta{
			ConfState: consensus.ConfState{Voters: ids}}})
		if err != nil {
			return nil, fmt.Errorf("%s: node %d: %w", name, id, err)
		}
		c.nodes = append(c.nodes, e)
	}
	c.round() // persist whatever the engines start with
	// Campaign is not part of consensus.Engine; both of ballot's engines
	// have it, and it saves waiting out an election timeout.
	cand, ok := c.nodes[0].(interface{ Campaign() })
	if !ok {
		return nil, fmt.Errorf("%s: engine has no Campaign method", name)
	}
	cand.Campaign()
	for range electionRounds {
		c.round()
		if c.nodes[0].Status().Role == consensus.Leader {
			// One proposal through, so the leader's term is settled.
			if err := c.Run(1, 1, []byte("warm-up")); err != nil {
				return nil, err
			}
			return c, nil
		}
	}
	return nil, fmt.Errorf("%s: node 1 not leader after %d rounds: %+v", name, electionRounds, c.nodes[0].Status())
}

// round handles every node's Ready once and delivers what they sent.
func (c *engineCluster) round() error {
	for i, e := range c.nodes {
		if !e.HasReady() {
			continue
		}
		rd := e.Ready()
		if rd.Truncate {
			d := c.disk[i]
			for len(d) > 0 && d[len(d)-1].Index > rd.TruncateAfter {
				d = d[:len(d)-1]
			}
			c.disk[i] = d
		}
		c.disk[i] = append(c.disk[i], rd.Entries...)
		c.queue = append(c.queue, rd.Messages...)
		for _, ent := range rd.Committed {
			if i == 0 && ent.Type == consensus.EntryNormal {
				c.leaderApplied++
			}
			c.applied[i] = ent.Index
		}
		e.Advance(c.applied[i])
		// Compact now and then, as a runtime would after a snapshot, so
		// the log (and the benchmark's memory) stays bounded.
		if a := c.applied[i]; a-c.compacted[i] > compactEvery {
			if err := e.Compact(a); err != nil {
				return fmt.Errorf("%s: node %d: compact %d: %w", c.name, i+1, a, err)
			}
			c.compacted[i] = a
			c.disk[i] = c.disk[i][:0]
		}
	}
	q := c.queue
	c.queue = nil
	for _, m := range q {
		_ = c.nodes[m.To-1].Step(m) // a stale or refused message is the engine's business
	}
	c.queue = q[:0]
	return nil
}

func (c *engineCluster) Run(n, window int, payload []byte) error {
	leader := c.nodes[0]
	base := c.leaderApplied
	proposed, idle := 0, 0
	for c.leaderApplied-base < n {
		for proposed < n && proposed-(c.leaderApplied-base) < window {
			if err := leader.Propose(payload); err != nil {
				if errors.Is(err, consensus.ErrProposalDropped) {
					break // flow control: retry after the next round
				}
				return fmt.Errorf("%s: propose: %w", c.name, err)
			}
			proposed++
		}
		before := c.leaderApplied
		if err := c.round(); err != nil {
			return err
		}
		if c.leaderApplied == before {
			if idle++; idle > stallRounds {
				return errStall(c.name, c.leaderApplied-base, n)
			}
		} else {
			idle = 0
		}
	}
	return nil
}

func (c *engineCluster) Close() {}
