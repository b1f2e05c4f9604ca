package shard

import (
	"context"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/ballotdb/ballot/server"
)

// SetStaleMapForTest puts m back as h's map, as if h had not heard of any
// change since m: the router's view of a host that is behind.
func (h *Host) SetStaleMapForTest(m Map) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.m = m
}

// AddLearnerForTest does only the first step of moving a member of shard
// id to host to, as a move cut short after it would have: it adds the
// host to the group as a learner.
func (h *Host) AddLearnerForTest(ctx context.Context, id uint64, to string) error {
	conn, err := (&router{h: h}).conn(ctx, id)
	if err != nil {
		return err
	}
	_, err = pb.NewClusterClient(conn).MemberAdd(ctx, &pb.MemberAddRequest{PeerURLs: []string{"http://" + h.cfg.InitialCluster[to]}, IsLearner: true})
	return err
}

// RemoveMemberForTest removes host name's member from shard id's group
// and does nothing else, as a move cut short after its removal step.
func (h *Host) RemoveMemberForTest(ctx context.Context, id uint64, name string) error {
	conn, err := (&router{h: h}).conn(ctx, id)
	if err != nil {
		return err
	}
	_, err = pb.NewClusterClient(conn).MemberRemove(ctx, &pb.MemberRemoveRequest{ID: server.MemberIDFor(h.cfg.ClusterToken, h.cfg.InitialCluster[name])})
	return err
}

// LeaveCopiesToSweepForTest makes h leave the copies of an expired or
// revoked lease to the sweep, as a full queue would.
func (h *Host) LeaveCopiesToSweepForTest() { h.noCopyRevokes.Store(true) }
