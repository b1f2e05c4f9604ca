package shard

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/ballotdb/ballot/server"
)

// The shard service is ballot's own operator API beside the etcd API on a
// sharded host's client port: gRPC with JSON bodies (codec "ballotjson"),
// so no generated code is needed on either side. `ballot shard list`
// calls it.

const (
	shardService  = "ballot.shard.Shards"
	listMethod    = "/" + shardService + "/List"
	splitMethod   = "/" + shardService + "/Split"
	moveMethod    = "/" + shardService + "/Move"
	drainMethod   = "/" + shardService + "/Drain"
	txnCallMethod = "/" + shardService + "/TxnCall"
)

// SplitRequest asks for shard Shard to be split at Key (see SplitKey).
type SplitRequest struct {
	Shard uint64 `json:"shard"`
	Key   []byte `json:"key"`
}

// MoveRequest asks for shard Shard's member on host From to move to host
// To (see Host.Move).
type MoveRequest struct {
	Shard    uint64 `json:"shard"`
	FromHost string `json:"from"`
	ToHost   string `json:"to"`
}

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
	Leader string `json:"leader"`
	// Hint is the leader the meta group was last told of.
	Hint     string `json:"leader_hint,omitempty"`
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
		st := ShardStatus{Shard: s, Hint: h.LeaderHint(s.ID)}
		if resp, err := h.shardStatus(ctx, s); err != nil {
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

// shardStatus asks this host's member of s for its status, or, if it
// keeps none, another member's host (naming the group, see groupcall.go).
func (h *Host) shardStatus(ctx context.Context, s Shard) (*pb.StatusResponse, error) {
	if g := h.group(s.ID); g != nil {
		return pb.NewMaintenanceClient(g.conn).Status(ctx, &pb.StatusRequest{})
	}
	var last error = errNotHere
	for _, name := range s.Members {
		c, err := h.hostConn(ctx, name)
		if err != nil {
			last = err
			continue
		}
		gctx := metadata.AppendToOutgoingContext(ctx, server.GroupHeader, strconv.FormatUint(s.ID, 10))
		resp, err := pb.NewMaintenanceClient(c).Status(gctx, &pb.StatusRequest{})
		if err == nil {
			return resp, nil
		}
		last = err
	}
	return nil, last
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
		}, {
			MethodName: "Split",
			Handler: func(_ any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
				var in SplitRequest
				if err := dec(&in); err != nil {
					return nil, err
				}
				if _, err := h.Split(ctx, in.Shard, in.Key); err != nil {
					return nil, toStatus(err)
				}
				return h.List(ctx)
			},
		}, {
			MethodName: "TxnCall",
			Handler: func(_ any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
				var in txnCallRequest
				if err := dec(&in); err != nil {
					return nil, err
				}
				out, err := h.txnCall(ctx, in.Shard, in.Op, in.Call)
				if err != nil {
					return nil, err
				}
				return &txnCallResponse{Result: out}, nil
			},
		}, {
			MethodName: "Drain",
			Handler: func(_ any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
				var in SplitRequest // only Shard is used
				if err := dec(&in); err != nil {
					return nil, err
				}
				if err := h.drain(ctx, in.Shard); err != nil {
					return nil, toStatus(err)
				}
				return &struct{}{}, nil
			},
		}, {
			MethodName: "Move",
			Handler: func(_ any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
				var in MoveRequest
				if err := dec(&in); err != nil {
					return nil, err
				}
				if err := h.Move(ctx, in.Shard, in.FromHost, in.ToHost); err != nil {
					return nil, toStatus(err)
				}
				return h.List(ctx)
			},
		}},
	}, h)
}

// toStatus gives a bad request its gRPC code.
func toStatus(err error) error {
	if errors.Is(err, ErrBadSplit) || errors.Is(err, ErrBadMove) {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	return status.Error(codes.Unknown, err.Error())
}

// SplitShard asks the sharded host at the other end of conn to split a shard;
// it answers with the shard list after the split.
func SplitShard(ctx context.Context, conn grpc.ClientConnInterface, id uint64, key []byte) (*ListResponse, error) {
	out := new(ListResponse)
	if err := conn.Invoke(ctx, splitMethod, &SplitRequest{Shard: id, Key: key}, out, grpc.CallContentSubtype("ballotjson")); err != nil {
		return nil, fmt.Errorf("shard split: %w", err)
	}
	return out, nil
}

// MoveShard asks the sharded host at the other end of conn to move shard
// id's member from one host to another; it answers with the shard list.
func MoveShard(ctx context.Context, conn grpc.ClientConnInterface, id uint64, from, to string) (*ListResponse, error) {
	out := new(ListResponse)
	if err := conn.Invoke(ctx, moveMethod, &MoveRequest{Shard: id, FromHost: from, ToHost: to}, out, grpc.CallContentSubtype("ballotjson")); err != nil {
		return nil, fmt.Errorf("shard move: %w", err)
	}
	return out, nil
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
