package shard

import (
	"context"
	"encoding/json"
	"fmt"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"

	"github.com/ballotdb/ballot/server"
)

// The shard service is ballot's own operator API beside the etcd API on a
// sharded host's client port: gRPC with JSON bodies (codec "ballotjson"),
// so no generated code is needed on either side. `ballot shard list`
// calls it.

const (
	shardService = "ballot.shard.Shards"
	listMethod   = "/" + shardService + "/List"
)

// jsonCodec carries the shard service's messages as JSON.
type jsonCodec struct{}

func (jsonCodec) Marshal(v any) ([]byte, error)   { return json.Marshal(v) }
func (jsonCodec) Unmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }
func (jsonCodec) Name() string                    { return "ballotjson" }

func init() { encoding.RegisterCodec(jsonCodec{}) }

// ListResponse is the shard map with what this host's member of each
// group knows of it.
type ListResponse struct {
	Host    string        `json:"host"`
	Version uint64        `json:"version"`
	Shards  []ShardStatus `json:"shards"`
}

// ShardStatus is one shard as a host sees it.
type ShardStatus struct {
	Shard
	Leader   string `json:"leader"`
	Term     uint64 `json:"term"`
	Revision int64  `json:"revision"`
	DBSize   int64  `json:"db_size"`
	Err      string `json:"error,omitempty"`
}

// List reports the map and each shard's leader, term, revision and size
// from this host's member of it.
func (h *Host) List(ctx context.Context) (*ListResponse, error) {
	m := h.Map()
	names := map[uint64]string{}
	for name, addr := range h.cfg.InitialCluster {
		names[server.MemberIDFor(h.cfg.ClusterToken, addr)] = name
	}
	out := &ListResponse{Host: h.cfg.Name, Version: m.Version}
	for _, s := range m.Shards {
		st := ShardStatus{Shard: s}
		if g := h.group(s.ID); g == nil {
			st.Err = "not kept by this host"
		} else if resp, err := pb.NewMaintenanceClient(g.conn).Status(ctx, &pb.StatusRequest{}); err != nil {
			st.Err = err.Error()
		} else {
			st.Leader = names[resp.Leader]
			if st.Leader == "" && resp.Leader != 0 {
				st.Leader = fmt.Sprintf("%x", resp.Leader)
			}
			st.Term, st.Revision, st.DBSize = resp.RaftTerm, resp.Header.GetRevision(), resp.DbSize
		}
		out.Shards = append(out.Shards, st)
	}
	return out, nil
}

func registerShardService(s *grpc.Server, h *Host) {
	s.RegisterService(&grpc.ServiceDesc{
		ServiceName: shardService,
		HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{{
			MethodName: "List",
			Handler: func(_ any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
				var in struct{}
				if err := dec(&in); err != nil {
					return nil, err
				}
				return h.List(ctx)
			},
		}},
	}, h)
}

// List asks the sharded host at the other end of conn for its shard list.
// Against a single-shard cluster it fails with codes.Unimplemented.
func List(ctx context.Context, conn grpc.ClientConnInterface) (*ListResponse, error) {
	out := new(ListResponse)
	if err := conn.Invoke(ctx, listMethod, &struct{}{}, out, grpc.CallContentSubtype("ballotjson")); err != nil {
		return nil, fmt.Errorf("shard list: %w", err)
	}
	return out, nil
}
