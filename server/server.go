package server

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/proto"

	"github.com/ballotdb/ballot/consensus"
	"github.com/ballotdb/ballot/kv"
	"github.com/ballotdb/ballot/node"
	"github.com/ballotdb/ballot/transport"
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
	// With Join it must name this member, so that it knows its own peer
	// address and hence its ID.
	InitialCluster map[string]string
	// Join starts this member empty, to be added by an existing cluster
	// (MemberAdd with this member's peer URL, before it starts).
	Join bool

	// Engine is the consensus engine: node.EngineRaft (default) or
	// node.EnginePaxos. Every member of a cluster must run the same one.
	Engine node.EngineKind

	// PeerRoutes overrides, by member name, the address this member dials
	// to reach a peer, leaving IDs (derived from InitialCluster) alone:
	// the chaos rig routes each link through its own fault proxy.
	PeerRoutes map[string]string

	// ForceNewCluster starts this member as a new one-member cluster from
	// its data (disaster recovery; see node.Config.ForceNewCluster). Use
	// it once.
	ForceNewCluster bool

	// AdvertiseClientURLs are the client URLs this member publishes to the
	// cluster (MemberList, forwarding); default the client listener's
	// address.
	AdvertiseClientURLs []string
	// PeerTLS says peers talk TLS, so peer URLs are listed as https.
	PeerTLS bool

	DataDir string
	FS      vfs.FS // default: the OS

	// ClientListener serves the etcd v3 gRPC API; PeerListener the
	// consensus traffic. The server owns and closes both.
	ClientListener net.Listener
	PeerListener   net.Listener
	// NewTransport, when set, replaces PeerListener: the node sends and
	// receives through the transport it returns (a host of many shards
	// passes its transport.Mux's per-group view; see shard/).
	NewTransport func(h transport.Handler) (transport.Transport, error)
	// WrapEngine wraps the consensus engine (node.Config.WrapEngine).
	WrapEngine func(consensus.Engine) consensus.Engine
	// RecvQueue bounds the node's queue of received messages
	// (node.Config.RecvQueue).
	RecvQueue int
	// GroupTag, when set, is sent as the gRPC metadata ballot-group on
	// every call this member makes to another member (forwarding to the
	// leader, consistency checks): members of a sharded host share one
	// client URL, the host's router, which hands such a call to its own
	// member of that group (see shard/).
	GroupTag string
	// Shard, when set, makes this server one shard of a sharded keyspace
	// (see shard.go and docs/sharding.md). Nil: the whole keyspace.
	Shard *ShardConfig
	// TLS, if set, serves the client port over TLS only (gRPC and the
	// JSON gateway alike); the peer port is unchanged.
	TLS *TLSConfig

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

	// QuotaBackendBytes bounds the data the store holds (its history, as
	// kv.ByteCounter counts it): beyond it the leader raises the NOSPACE
	// alarm and writes are refused until it is disarmed (see quota.go).
	// 0 means DefaultQuotaBackendBytes (2 GiB, as etcd); negative, none.
	QuotaBackendBytes int64
	// CorruptCheckTime is how often the leader compares HashKV across the
	// members (see corrupt.go). 0 means DefaultCorruptCheckTime; negative,
	// never.
	CorruptCheckTime time.Duration

	Logger *slog.Logger
	// Clock is the node's source of ticks; default the real monotonic
	// clock (the chaos rig's test build passes one whose rate it skews).
	Clock node.Clock
	// Observe hooks metrics and dashboards in (see metrics.go).
	Observe Observe

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
	// LeaseEarlyExpiry makes the leader expire a lease at half its TTL
	// after the last keep-alive.
	LeaseEarlyExpiry bool
	// CorruptPuts makes this member apply every Put with its value
	// changed, so that its state diverges (the consistency check's test).
	CorruptPuts bool
	// NoShardGuard makes a shard serve keys it no longer keeps (after a
	// split), so that writes land on both sides (the split test's proof
	// that its check bites).
	NoShardGuard bool
	// NoTxnReadLocks makes cross-shard transactions take no read locks,
	// so that two can each read what the other writes and both commit
	// (the write-skew test's proof that it bites).
	NoTxnReadLocks bool
}

// MemberIDFor derives a member's ID from the cluster token and its peer
// address (host:port), as etcd derives one from its peer URLs and token:
// stable across restarts, the same whether the member was an initial one
// or added later, never 0. See members.go.
func MemberIDFor(token, peerAddr string) uint64 {
	return nonZeroHash("member", token, peerAddr)
}

// ClusterIDFor derives the cluster ID from the cluster token alone, so a
// member joining later computes it without asking: give every cluster its
// own token, as etcd advises.
func ClusterIDFor(token string) uint64 { return nonZeroHash("cluster", token) }

func nonZeroHash(parts ...string) uint64 {
	h := fnv.New64a()
	for _, p := range parts {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	if id := h.Sum64(); id != 0 {
		return id
	}
	return 1
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
	front *front
	hub   *hub
	certs *certStore // client TLS; nil: plain text
	less  *lessor

	mconns memberConns // to other members: forwarding, consistency checks

	shardRange atomic.Pointer[keyRange] // the shard's [start, end): see split.go
	txn        txnIndex                 // cross-shard transactions' state: see txn.go
	maint      maintState               // data size, quota and consistency check: see quota.go, corrupt.go

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
	self, ok := cfg.InitialCluster[cfg.Name]
	if !ok && cfg.MemberID == 0 {
		return nil, fmt.Errorf("server: --initial-cluster must include this member (%q) and its peer address", cfg.Name)
	}
	if cfg.MemberID == 0 {
		cfg.MemberID = MemberIDFor(cfg.ClusterToken, self)
	}
	if cfg.ClusterID == 0 {
		cfg.ClusterID = ClusterIDFor(cfg.ClusterToken)
	}
	if cfg.MaxRequestBytes == 0 {
		cfg.MaxRequestBytes = DefaultMaxRequestBytes
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.ClientListener == nil || (cfg.PeerListener == nil) == (cfg.NewTransport == nil) {
		return nil, errors.New("server: Config.ClientListener and exactly one of Config.PeerListener and Config.NewTransport are required")
	}
	var certs *certStore
	if cfg.TLS != nil {
		var err error
		if certs, err = newCertStore(*cfg.TLS, cfg.Logger.With("member", cfg.Name)); err != nil {
			cfg.ClientListener.Close()
			if cfg.PeerListener != nil {
				cfg.PeerListener.Close()
			}
			return nil, err
		}
	}
	s := &Server{
		cfg: cfg, id: cfg.MemberID, clus: cfg.ClusterID, certs: certs,
		log:      cfg.Logger.With("member", cfg.Name),
		store:    kv.New(),
		stopc:    make(chan struct{}),
		serveErr: make(chan error, 1),
	}
	s.hub = newHub(s)
	s.less = newLessor(s)
	sm := &stateMachine{s: s}
	s.store.SetObserver(s.hub.observe)
	s.store.SetApplyHook(s.applyHook)
	s.loadRange()
	s.loadTxn()

	peers := map[consensus.NodeID]string{}
	for name, addr := range cfg.InitialCluster {
		dial := addr
		if r := cfg.PeerRoutes[name]; r != "" {
			dial = r
		}
		peers[consensus.NodeID(MemberIDFor(cfg.ClusterToken, addr))] = dial
	}
	n, err := node.Start(ctx, node.Config{
		ID: consensus.NodeID(cfg.MemberID), ClusterID: cfg.ClusterID,
		Peers: peers, Join: cfg.Join, ForceNewCluster: cfg.ForceNewCluster, EngineKind: cfg.Engine, DataDir: cfg.DataDir, FS: cfg.FS,
		Listen: cfg.PeerListener, NewTransport: cfg.NewTransport, WrapEngine: cfg.WrapEngine, RecvQueue: cfg.RecvQueue, TickInterval: cfg.TickInterval, ElectionTicks: cfg.ElectionTicks,
		SnapshotEntries: cfg.SnapshotEntries, Seed: cfg.Seed,
		Logger: cfg.Logger.With("member", cfg.Name), Clock: cfg.Clock, Observer: cfg.Observe.Node,
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
		grpc.ChainUnaryInterceptor(cfg.Observe.Unary...), grpc.ChainStreamInterceptor(cfg.Observe.Stream...),
	)
	pb.RegisterKVServer(s.grpc, &kvServer{s: s})
	pb.RegisterWatchServer(s.grpc, &watchServer{s: s})
	pb.RegisterLeaseServer(s.grpc, &leaseServer{s: s})
	pb.RegisterMaintenanceServer(s.grpc, &maintenanceServer{s: s})
	pb.RegisterClusterServer(s.grpc, &clusterServer{s: s})
	s.registerHealth()
	if s.front, err = newFront(s); err != nil {
		n.Stop()
		cfg.ClientListener.Close()
		return nil, err
	}

	s.wg.Add(5)
	go func() { defer s.wg.Done(); s.hub.run() }()
	go func() { defer s.wg.Done(); s.less.run() }()
	go func() { defer s.wg.Done(); s.publish() }()
	go func() { defer s.wg.Done(); s.maintain() }()
	go func() {
		defer s.wg.Done()
		if err := s.front.serve(); err != nil {
			select {
			case s.serveErr <- err:
			default:
			}
		}
	}()
	peer := "shared"
	if cfg.PeerListener != nil {
		peer = cfg.PeerListener.Addr().String()
	}
	s.log.Info("serving", "member_id", fmt.Sprintf("%x", s.id), "cluster_id", fmt.Sprintf("%x", s.clus),
		"client", s.ClientURL(), "peer", peer)
	return s, nil
}

// Stop stops serving clients, then the node (a leader hands leadership
// away first). Idempotent.
func (s *Server) Stop() {
	s.stopOnce.Do(func() {
		close(s.stopc)
		s.front.close()
		stopped := make(chan struct{})
		go func() { s.grpc.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(2 * time.Second):
			s.grpc.Stop() // watch streams do not end on their own
		}
		// The node hands leadership away as it stops; no keep-alive can
		// reach this member any more, so the leases' remaining time is
		// recorded for the next leader first (see lessor).
		ctx, cancel := context.WithTimeout(context.Background(), s.less.handOverMax())
		if release, err := s.less.handOver(ctx); err == nil {
			release()
		}
		cancel()
		s.node.Stop()
		s.wg.Wait()
		s.mconns.close()
	})
}

// Done is closed when the node stopped, by Stop or on its own.
func (s *Server) Done() <-chan struct{} { return s.node.Done() }

// Err is why the node stopped on its own, or nil.
func (s *Server) Err() error { return s.node.Err() }

// Node returns the consensus node under this server.
func (s *Server) Node() *node.Node { return s.node }

// ClientURL returns the URL of this member's client listener: https when
// the client port serves TLS.
func (s *Server) ClientURL() string { return s.front.url() }

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
	return s.proposeWith(ctx, r, s.proposeRetry)
}

// proposeWith is propose through the given proposer (proposeRetry, or a
// leader-only node.ProposeAsLeader).
func (s *Server) proposeWith(ctx context.Context, r *pb.InternalRaftRequest, proposer func(context.Context, []byte) ([]byte, error)) (proto.Message, error) {
	cmd, err := kv.EncodeRequest(r)
	if err != nil {
		return nil, rpctypes.ErrGRPCRequestTooLarge
	}
	if len(cmd) > s.cfg.MaxRequestBytes {
		return nil, rpctypes.ErrGRPCRequestTooLarge
	}
	ctx, cancel := s.requestContext(ctx)
	defer cancel()
	out, err := proposer(ctx, cmd)
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
	tick, et := s.ticks()
	return 5*time.Second + 2*time.Duration(et)*tick
}

// ticks returns the tick interval and the election timeout in ticks, with
// their defaults.
func (s *Server) ticks() (time.Duration, int) {
	return cmp.Or(s.cfg.TickInterval, 100*time.Millisecond), cmp.Or(s.cfg.ElectionTicks, 10)
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
	backoff := 5 * time.Millisecond
	for {
		out, err := s.node.Propose(ctx, cmd)
		switch {
		case err == nil:
			return out, nil
		case errors.Is(err, node.ErrNotLeader):
			if werr := s.waitLeader(ctx); werr != nil {
				return nil, err
			}
		case errors.Is(err, consensus.ErrProposalDropped):
			// The engine refused it before it reached the log (a
			// leadership transfer under way, too much uncommitted):
			// trying again cannot apply it twice.
			t := time.NewTimer(backoff)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil, err
			case <-t.C:
			}
			backoff = min(2*backoff, 200*time.Millisecond)
		default:
			return out, err
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
