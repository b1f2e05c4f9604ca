package core

import (
	"errors"
	"fmt"
	"io"
	"log"

	etcdraft "go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// etcdCluster is three etcd-io/raft RawNodes, each with a MemoryStorage as
// its "disk", driven in one goroutine exactly as engineCluster drives
// ballot's engines.
type etcdCluster struct {
	nodes     []*etcdraft.RawNode
	storage   []*etcdraft.MemoryStorage
	applied   []uint64
	compacted []uint64
	conf      *pb.ConfState
	queue     []*pb.Message
	// leaderApplied counts normal entries the leader applied.
	leaderApplied int
}

func newEtcdRaft() (Cluster, error) {
	c := &etcdCluster{applied: make([]uint64, len(ids)), compacted: make([]uint64, len(ids)),
		conf: &pb.ConfState{Voters: []uint64{1, 2, 3}}}
	logger := &etcdraft.DefaultLogger{Logger: log.New(io.Discard, "", 0)}
	for _, id := range ids {
		st := etcdraft.NewMemoryStorage()
		// Bootstrap as etcd's own tests do: a snapshot at index 1 that
		// holds the membership.
		if err := st.ApplySnapshot(&pb.Snapshot{Metadata: &pb.SnapshotMetadata{
			Index: proto.Uint64(1), Term: proto.Uint64(1), ConfState: c.conf}}); err != nil {
			return nil, err
		}
		rn, err := etcdraft.NewRawNode(&etcdraft.Config{
			ID: uint64(id), ElectionTick: 10, HeartbeatTick: 1, Storage: st,
			PreVote: true, CheckQuorum: true,
			MaxSizePerMsg: maxSizePerMsg, MaxInflightMsgs: maxInflightMsgs,
			MaxInflightBytes: maxInflightBytes, MaxUncommittedEntriesSize: maxUncommittedBytes,
			Logger: logger,
		})
		if err != nil {
			return nil, fmt.Errorf("etcd-raft: node %d: %w", id, err)
		}
		c.nodes = append(c.nodes, rn)
		c.storage = append(c.storage, st)
		c.applied[id-1] = 1
		c.compacted[id-1] = 1
	}
	if err := c.nodes[0].Campaign(); err != nil {
		return nil, err
	}
	for range electionRounds {
		c.round()
		if c.nodes[0].BasicStatus().RaftState == etcdraft.StateLeader {
			if err := c.Run(1, 1, []byte("warm-up")); err != nil {
				return nil, err
			}
			return c, nil
		}
	}
	return nil, fmt.Errorf("etcd-raft: node 1 not leader after %d rounds", electionRounds)
}

// round handles every node's Ready once and delivers what they sent.
func (c *etcdCluster) round() error {
	for i, rn := range c.nodes {
		if !rn.HasReady() {
			continue
		}
		rd := rn.Ready()
		st := c.storage[i]
		if !etcdraft.IsEmptySnap(rd.Snapshot) {
			if err := st.ApplySnapshot(rd.Snapshot); err != nil {
				return err
			}
		}
		if err := st.Append(rd.Entries); err != nil {
			return err
		}
		if !etcdraft.IsEmptyHardState(rd.HardState) {
			if err := st.SetHardState(rd.HardState); err != nil {
				return err
			}
		}
		c.queue = append(c.queue, rd.Messages...)
		for _, e := range rd.CommittedEntries {
			if i == 0 && e.GetType() == pb.EntryNormal && len(e.GetData()) > 0 {
				c.leaderApplied++
			}
			c.applied[i] = e.GetIndex()
		}
		rn.Advance(rd)
		if a := c.applied[i]; a-c.compacted[i] > compactEvery {
			if _, err := st.CreateSnapshot(a, c.conf, nil); err != nil {
				return fmt.Errorf("etcd-raft: node %d: snapshot %d: %w", i+1, a, err)
			}
			if err := st.Compact(a); err != nil {
				return fmt.Errorf("etcd-raft: node %d: compact %d: %w", i+1, a, err)
			}
			c.compacted[i] = a
		}
	}
	q := c.queue
	c.queue = nil
	for _, m := range q {
		_ = c.nodes[m.GetTo()-1].Step(m)
	}
	clear(q)
	c.queue = q[:0]
	return nil
}

func (c *etcdCluster) Run(n, window int, payload []byte) error {
	leader := c.nodes[0]
	base := c.leaderApplied
	proposed, idle := 0, 0
	for c.leaderApplied-base < n {
		for proposed < n && proposed-(c.leaderApplied-base) < window {
			if err := leader.Propose(payload); err != nil {
				if errors.Is(err, etcdraft.ErrProposalDropped) {
					break
				}
				return fmt.Errorf("etcd-raft: propose: %w", err)
			}
			proposed++
		}
		before := c.leaderApplied
		if err := c.round(); err != nil {
			return err
		}
		if c.leaderApplied == before {
			if idle++; idle > stallRounds {
				return errStall("etcd-raft", c.leaderApplied-base, n)
			}
		} else {
			idle = 0
		}
	}
	return nil
}

func (c *etcdCluster) Close() {}
