package server

import (
	"context"
	"fmt"
	"io/fs"
	"path/filepath"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/ballotdb/ballot/consensus"
)

// Version is the etcd API version ballot answers to in Status: clients
// and etcdctl check it to decide which features they may use.
const Version = "3.6.0"

// maintenanceServer is etcd's Maintenance service; part 1 answers Status,
// the rest of it arrives with the operator's features.
type maintenanceServer struct {
	pb.UnimplementedMaintenanceServer
	s *Server
}

func (m *maintenanceServer) Status(ctx context.Context, _ *pb.StatusRequest) (*pb.StatusResponse, error) {
	st := m.s.node.Status()
	isLearner := false
	for _, id := range st.ConfState.Learners {
		if uint64(id) == m.s.id {
			isLearner = true
		}
	}
	size := m.s.dataSize()
	return &pb.StatusResponse{
		Header: m.s.header(0), Version: Version, StorageVersion: Version, DbSize: size, DbSizeInUse: size, DbSizeQuota: 0,
		Leader: uint64(st.Leader), RaftIndex: st.Commit, RaftTerm: st.Epoch,
		RaftAppliedIndex: st.Applied, IsLearner: isLearner,
	}, nil
}

// Alarm lists no alarms: ballot raises none yet (the NOSPACE and CORRUPT
// alarms arrive with the operator's features). Activating or disarming
// one is not supported yet.
func (m *maintenanceServer) Alarm(ctx context.Context, r *pb.AlarmRequest) (*pb.AlarmResponse, error) {
	if r.Action != pb.AlarmRequest_GET {
		return nil, status.Error(codes.Unimplemented, "ballot: alarms cannot be set or disarmed yet")
	}
	return &pb.AlarmResponse{Header: m.s.header(0)}, nil
}

// dataSize is the bytes this member keeps on disk (log and snapshots),
// what etcd reports as its database size.
func (s *Server) dataSize() int64 {
	var total int64
	filepath.WalkDir(s.cfg.DataDir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if info, err := d.Info(); err == nil {
				total += info.Size()
			}
		}
		return nil
	})
	return max(total, 1)
}

// clusterServer is etcd's Cluster service; part 1 answers MemberList from
// the membership the engine holds.
type clusterServer struct {
	pb.UnimplementedClusterServer
	s *Server
}

func (c *clusterServer) MemberList(ctx context.Context, _ *pb.MemberListRequest) (*pb.MemberListResponse, error) {
	st := c.s.node.Status()
	names := map[uint64]string{}
	peers := map[uint64]string{}
	for name, addr := range c.s.cfg.InitialCluster {
		id := MemberIDFor(name, c.s.cfg.ClusterToken)
		names[id], peers[id] = name, addr
	}
	out := &pb.MemberListResponse{Header: c.s.header(0)}
	add := func(id consensus.NodeID, learner bool) {
		m := &pb.Member{ID: uint64(id), Name: names[uint64(id)], IsLearner: learner}
		if p := peers[uint64(id)]; p != "" {
			m.PeerURLs = []string{"http://" + p}
		}
		if uint64(id) == c.s.id {
			m.Name = c.s.cfg.Name
			m.ClientURLs = []string{fmt.Sprintf("http://%s", c.s.cfg.ClientListener.Addr())}
		}
		out.Members = append(out.Members, m)
	}
	for _, id := range st.ConfState.Voters {
		add(id, false)
	}
	for _, id := range st.ConfState.Learners {
		add(id, true)
	}
	return out, nil
}
