package server

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net"
	"sort"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/proto"

	"github.com/ballotdb/ballot/consensus"
	"github.com/ballotdb/ballot/kv"
	"github.com/ballotdb/ballot/node"
	"github.com/ballotdb/ballot/vfs"
)

// Limits, as etcd's defaults.
const (
	// DefaultMaxRequestBytes is the largest request a client may send
	// (etcd's --max-request-bytes default).
	DefaultMaxRequestBytes = 1536 * 1024
	// grpcOverheadBytes is what etcd allows on top of MaxRequestBytes for
	// gRPC framing before the request is even decoded.
	grpcOverheadBytes = 512 * 1024
	// MaxTxnOps is the most operations one Txn may hold (etcd's
	// --max-txn-ops default).
	MaxTxnOps = 128
	// MaxLeaseTTL is the largest lease TTL in seconds, as etcd's.
	MaxLeaseTTL = 9_000_000_000
)

// Config configures a Server.
type Config struct {
	// Name is this member's name; MemberID is derived from it and the
	// cluster token unless set.
	Name     string
	MemberID uint64
	// ClusterToken names the cluster; ClusterID is derived from it and
	// the initial members unless set.
	ClusterToken string
	ClusterID    uint64

	// InitialCluster maps member names to peer addresses (host:port).
	InitialCluster map[string]string
	// Join starts this member empty, to be added by an existing cluster.
	Join bool

	DataDir string
	FS      vfs.FS // default: the OS

	// ClientListener serves the etcd v3 gRPC API; PeerListener the
	// consensus traffic. The server owns and closes both.
	ClientListener net.Listener
	PeerListener   net.Listener

	// TickInterval and ElectionTicks set the engine's timing; defaults
	// 100 ms and 10 (an election timeout of 1 s to 2 s).
	TickInterval  time.Duration
	ElectionTicks int

	// MaxRequestBytes bounds one request; default DefaultMaxRequestBytes.
	MaxRequestBytes int
	// SnapshotEntries triggers an automatic snapshot; default the node's.
	SnapshotEntries uint64

	// Seed seeds the engine's randomness; 0 draws one.
	Seed uint64

	Logger *slog.Logger

	// testing knobs: deliberately broken behaviours for the chaos rig's
	// proof that its checker bites. Never set in production.
	Unsafe UnsafeKnobs
}

// UnsafeKnobs break guarantees on purpose, so tests can show that the
// checkers catch the broken build. Each is off by default.
type UnsafeKnobs struct {
	// StaleReads serves linearizable reads from local state without a
	// read barrier.
	StaleReads bool
	// EarlyAck acknowledges a Put as soon as it is handed to the engine,
	// before it commits.
	EarlyAck bool
}

// MemberIDFor derives a member ID from its name and the cluster token, as
// etcd derives one from its peer URLs and token: stable across restarts,
// never 0.
func MemberIDFor(name, token string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(token))
	h.Write([]byte{0})
	h.Write([]byte(name))
	id := h.Sum64()
	if id == 0 {
		id = 1
	}
	return id
}

// ClusterIDFor derives the cluster ID from the token and initial members.
func ClusterIDFor(token string, initial map[string]string) uint64 {
	names := make([]string, 0, len(initial))
	for n := range initial {
		names = append(names, n)
	}
	sort.Strings(names)
	h := fnv.New64a()
	h.Write([]byte(token))
	for _, n := range names {
		h.Write([]byte{0})
		h.Write([]byte(n))
	}
	id := h.Sum64()
	if id == 0 {
		id = 1
	}
	return id
}

// Server is one ballot member serving the etcd v3 API.
type Server struct {
	cfg   Config
	log   *slog.Logger
	id    uint64
	clus  uint64
	store *kv.Store
	node  *node.Node
	grpc  *grpc.Server
	hub   *hub
	less  *lessor

	stopOnce sync.Once
	stopc    chan struct{}
	wg       sync.WaitGroup
	serveErr chan error
}

// Start opens the data directory, starts the consensus node and serves
// clients. ctx bounds only the start.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.Name == "" {
		return nil, errors.New("server: Config.Name is required")
	}
	if cfg.ClusterToken == "" {
		cfg.ClusterToken = "ballot-cluster"
	}
	if cfg.MemberID == 0 {
		cfg.MemberID = MemberIDFor(cfg.Name, cfg.ClusterToken)
	}
	if cfg.ClusterID == 0 {
		cfg.ClusterID = ClusterIDFor(cfg.ClusterToken, cfg.InitialCluster)
	}
	if cfg.MaxRequestBytes == 0 {
		cfg.MaxRequestBytes = DefaultMaxRequestBytes
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.ClientListener == nil || cfg.PeerListener == nil {
		return nil, errors.New("server: Config.ClientListener and Config.PeerListener are required")
	}
	if !cfg.Join {
		if _, ok := cfg.InitialCluster[cfg.Name]; !ok {
			return nil, fmt.Errorf("server: --initial-cluster must include this member (%q)", cfg.Name)
		}
	}
	s := &Server{
		cfg: cfg, id: cfg.MemberID, clus: cfg.ClusterID,
		log:      cfg.Logger.With("member", cfg.Name),
		store:    kv.New(),
		stopc:    make(chan struct{}),
		serveErr: make(chan error, 1),
	}
	s.hub = newHub(s)
	s.less = newLessor(s)
	sm := &stateMachine{s: s}
	s.store.SetObserver(s.hub.observe)

	peers := map[consensus.NodeID]string{}
	for name, addr := range cfg.InitialCluster {
		peers[consensus.NodeID(MemberIDFor(name, cfg.ClusterToken))] = addr
	}
	n, err := node.Start(ctx, node.Config{
		ID: consensus.NodeID(cfg.MemberID), ClusterID: cfg.ClusterID,
		Peers: peers, Join: cfg.Join, DataDir: cfg.DataDir, FS: cfg.FS,
		Listen: cfg.PeerListener, TickInterval: cfg.TickInterval, ElectionTicks: cfg.ElectionTicks,
		SnapshotEntries: cfg.SnapshotEntries, Seed: cfg.Seed,
		Logger: cfg.Logger.With("member", cfg.Name),
	}, sm)
	if err != nil {
		cfg.ClientListener.Close()
		return nil, err
	}
	s.node = n

	s.grpc = grpc.NewServer(
		grpc.MaxRecvMsgSize(cfg.MaxRequestBytes+grpcOverheadBytes),
		grpc.MaxSendMsgSize(1<<31-1),
		grpc.MaxConcurrentStreams(1<<16),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 2 * time.Hour, Timeout: 20 * time.Second}),
	)
	pb.RegisterKVServer(s.grpc, &kvServer{s: s})
	pb.RegisterWatchServer(s.grpc, &watchServer{s: s})
	pb.RegisterLeaseServer(s.grpc, &leaseServer{s: s})
	pb.RegisterMaintenanceServer(s.grpc, &maintenanceServer{s: s})
	pb.RegisterClusterServer(s.grpc, &clusterServer{s: s})

	s.wg.Add(3)
	go func() { defer s.wg.Done(); s.hub.run() }()
	go func() { defer s.wg.Done(); s.less.run() }()
	go func() {
		defer s.wg.Done()
		if err := s.grpc.Serve(cfg.ClientListener); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			s.serveErr <- err
		}
	}()
	s.log.Info("serving", "member_id", fmt.Sprintf("%x", s.id), "cluster_id", fmt.Sprintf("%x", s.clus),
		"client", cfg.ClientListener.Addr().String(), "peer", cfg.PeerListener.Addr().String())
	return s, nil
}

// Stop stops serving clients, then the node (a leader hands leadership
// away first). Idempotent.
func (s *Server) Stop() {
	s.stopOnce.Do(func() {
		close(s.stopc)
		stopped := make(chan struct{})
		go func() { s.grpc.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(2 * time.Second):
			s.grpc.Stop() // watch streams do not end on their own
		}
		s.node.Stop()
		s.wg.Wait()
	})
}

// Done is closed when the node stopped, by Stop or on its own.
func (s *Server) Done() <-chan struct{} { return s.node.Done() }

// Err is why the node stopped on its own, or nil.
func (s *Server) Err() error { return s.node.Err() }

// Node returns the consensus node under this server.
func (s *Server) Node() *node.Node { return s.node }

// MemberID returns this member's ID.
func (s *Server) MemberID() uint64 { return s.id }

// ClusterID returns the cluster's ID.
func (s *Server) ClusterID() uint64 { return s.clus }

// header is a response header as etcd fills it.
func (s *Server) header(rev int64) *pb.ResponseHeader {
	if rev == 0 {
		rev = s.store.Rev()
	}
	return &pb.ResponseHeader{ClusterId: s.clus, MemberId: s.id, Revision: rev, RaftTerm: s.node.Term()}
}

// fillHeader sets the cluster-level header fields of a response from the
// store, keeping the revision the store set.
func (s *Server) fillHeader(h *pb.ResponseHeader) *pb.ResponseHeader {
	if h == nil {
		return s.header(0)
	}
	h.ClusterId, h.MemberId, h.RaftTerm = s.clus, s.id, s.node.Term()
	if h.Revision == 0 {
		h.Revision = s.store.Rev()
	}
	return h
}

// propose replicates one write request and returns the store's response.
func (s *Server) propose(ctx context.Context, r *pb.InternalRaftRequest) (proto.Message, error) {
	cmd, err := kv.EncodeRequest(r)
	if err != nil {
		return nil, rpctypes.ErrGRPCRequestTooLarge
	}
	if len(cmd) > s.cfg.MaxRequestBytes {
		return nil, rpctypes.ErrGRPCRequestTooLarge
	}
	ctx, cancel := s.requestContext(ctx)
	defer cancel()
	out, err := s.proposeRetry(ctx, cmd)
	if err != nil {
		return nil, s.toGRPC(ctx, err)
	}
	res, err := kv.DecodeResult(out)
	if err != nil {
		return nil, fmt.Errorf("server: bad result from the state machine: %w", err)
	}
	if res.Err != nil {
		return nil, res.Err
	}
	return res.Resp, nil
}

// requestTimeout bounds a request that has no deadline of its own, as
// etcd's request timeout does.
func (s *Server) requestTimeout() time.Duration {
	tick := s.cfg.TickInterval
	if tick == 0 {
		tick = 100 * time.Millisecond
	}
	et := s.cfg.ElectionTicks
	if et == 0 {
		et = 10
	}
	return 5*time.Second + 2*time.Duration(et)*tick
}

func (s *Server) requestContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, s.requestTimeout())
}

// proposeRetry proposes cmd, waiting out a missing leader (an election)
// within ctx: nothing was submitted when the node says it has no leader.
func (s *Server) proposeRetry(ctx context.Context, cmd []byte) ([]byte, error) {
	for {
		out, err := s.node.Propose(ctx, cmd)
		if err == nil || !errors.Is(err, node.ErrNotLeader) {
			return out, err
		}
		if werr := s.waitLeader(ctx); werr != nil {
			return nil, err
		}
	}
}

// readBarrier makes a following local read linearizable, waiting out a
// missing leader within ctx.
func (s *Server) readBarrier(ctx context.Context) error {
	if s.cfg.Unsafe.StaleReads {
		return nil
	}
	ctx, cancel := s.requestContext(ctx)
	defer cancel()
	for {
		err := s.node.ReadBarrier(ctx)
		if err == nil {
			return nil
		}
		if !errors.Is(err, node.ErrNotLeader) {
			return s.toGRPC(ctx, err)
		}
		if werr := s.waitLeader(ctx); werr != nil {
			return s.toGRPC(ctx, err)
		}
	}
}

// waitLeader waits, polling briefly, until a leader is known.
func (s *Server) waitLeader(ctx context.Context) error {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for s.node.Leader() == consensus.None {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-s.stopc:
			return node.ErrStopped
		case <-s.node.Done():
			return node.ErrStopped
		case <-t.C:
		}
	}
	// A leader that was just elected may not be known to the engine as
	// forwardable yet; a short pause avoids spinning.
	select {
	case <-time.After(5 * time.Millisecond):
	case <-ctx.Done():
		return ctx.Err()
	}
	return nil
}

// toGRPC maps the runtime's errors to the gRPC errors etcd clients know.
func (s *Server) toGRPC(ctx context.Context, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, node.ErrNotLeader):
		return rpctypes.ErrGRPCNoLeader
	case errors.Is(err, node.ErrStopped):
		return rpctypes.ErrGRPCStopped
	case errors.Is(err, node.ErrBusy):
		return rpctypes.ErrGRPCRequestTooManyRequests
	case errors.Is(err, node.ErrNoSpace):
		return rpctypes.ErrGRPCNoSpace
	case errors.Is(err, consensus.ErrTooLarge):
		return rpctypes.ErrGRPCRequestTooLarge
	case errors.Is(err, consensus.ErrProposalDropped):
		return rpctypes.ErrGRPCLeaderChanged
	case errors.Is(err, context.Canceled):
		return rpctypes.ErrGRPCCanceled
	case errors.Is(err, node.ErrOutcomeUnknown), errors.Is(err, context.DeadlineExceeded):
		if ctx.Err() != nil && errors.Is(ctx.Err(), context.Canceled) {
			return rpctypes.ErrGRPCCanceled
		}
		return rpctypes.ErrGRPCTimeout
	}
	s.log.Warn("request failed", "err", err)
	return rpctypes.ErrGRPCUnhealthy
}
