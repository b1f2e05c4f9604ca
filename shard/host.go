package shard

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/test/bufconn"

	"github.com/ballotdb/ballot/consensus"
	"github.com/ballotdb/ballot/node"
	"github.com/ballotdb/ballot/server"
	"github.com/ballotdb/ballot/transport"
	"github.com/ballotdb/ballot/vfs"
)

// MetaGroup is the group number of the meta group, which keeps the shard
// map; shards are numbered from 1.
const MetaGroup = 0

// mapKey is where the meta group keeps the shard map.
const mapKey = "ballot/shardmap"

// Config configures a Host.
type Config struct {
	// Name is this host's name; with ClusterToken and its peer address
	// in InitialCluster it gives the host's member ID, which the host
	// uses in every group.
	Name         string
	ClusterToken string
	// InitialCluster maps host names to peer addresses (host:port).
	InitialCluster map[string]string
	// Shards is how many shards a new cluster starts with (see Initial).
	Shards int
	// Replicas is how many hosts keep each shard; default 3 (all hosts if
	// fewer). Every host keeps the meta group.
	Replicas int
	// Engine is the consensus engine of every group.
	Engine node.EngineKind

	DataDir string
	// ClientListener serves the etcd v3 API (the router); PeerListener
	// the consensus traffic of every group (one transport.Mux).
	ClientListener, PeerListener net.Listener
	// AdvertiseClientURLs are published as every group's client URLs;
	// default the client listener's address.
	AdvertiseClientURLs []string

	TickInterval    time.Duration
	ElectionTicks   int
	SnapshotEntries uint64
	Seed            uint64
	Logger          *slog.Logger
	// MapRefresh is how often the host re-reads the shard map and
	// finishes half-done splits (see reconcile); default 1 s. Routers also
	// re-read it whenever a shard refuses a key it no longer keeps.
	MapRefresh time.Duration
	// SplitBytes splits a shard, at its middle key, once the data it
	// keeps grows past this many bytes (its leader's host decides, one
	// split per MapRefresh). 0 means DefaultSplitBytes; negative, never.
	SplitBytes int64
	// SplitLoad splits a shard, at its middle key, once its log has grown
	// by more than this many entries a second (writes, through its
	// leader) for splitLoadRounds rounds of MapRefresh in a row. 0 means
	// never: a split by load trades one group's ordering for two, which
	// an operator should choose.
	SplitLoad float64
	// SyncPerGroup gives every group's WAL its own fsync. By default the
	// groups of a host share a group commit (vfs.SharedSync: one file-
	// system flush covers the writes of every group waiting for one),
	// which measured better with several shards (docs/sharding.md).
	SyncPerGroup bool
	// NoQuiesce keeps idle groups ticking (see quiesce.go); for
	// measuring what quiescence saves.
	NoQuiesce bool
	// TxnFailpoint, for tests, stops the coordinator of a cross-shard
	// transaction at a step ("after-begin", "after-prepare",
	// "after-decide", "after-resolve") when it returns true, as if it
	// crashed there.
	TxnFailpoint func(step string) bool
	// Unsafe breaks every shard on purpose (tests only; see
	// server.UnsafeKnobs).
	Unsafe server.UnsafeKnobs
	// MetaObserve hooks metrics and the dashboard into the host's member
	// of the meta group.
	MetaObserve server.Observe
}

// Host is one process keeping many groups: the meta group and a member of
// each shard. It serves the etcd v3 API through its router.
type Host struct {
	cfg     Config
	log     *slog.Logger
	mux     *transport.Mux
	grpc    *grpc.Server
	live    *liveness
	initial Map    // the map the cluster started with
	fs      vfs.FS // nil: the default

	mu sync.Mutex
	m  Map
	gs map[uint64]*group

	startMu sync.Mutex                  // serializes starting groups
	remotes map[string]*grpc.ClientConn // other hosts' routers, by name (under mu)
	hints   map[uint64]string           // leader hints by shard (under mu)
	// removed holds the shards whose group removed this host's member
	// (under mu): never started again, even if the map still lists it.
	removed map[uint64]bool
	// balancedAt is when balance last handed a leadership away (only the
	// map keeper's goroutine touches it).
	balancedAt time.Time

	failOnce sync.Once
	failc    chan struct{} // closed when a group stopped on its own
	failErr  error

	stopOnce sync.Once
	stopc    chan struct{}
	// copyRevokes queues the lease copies to revoke (leaseRevoked);
	// tests set noCopyRevokes to leave every copy to the sweep.
	copyRevokes   chan copyRevoke
	noCopyRevokes atomic.Bool
	wg            sync.WaitGroup
}

// group is this host's member of one consensus group: a whole
// server.Server, reached by the router over an in-memory connection.
type group struct {
	id   uint64
	srv  *server.Server
	lis  *bufconn.Listener
	conn *grpc.ClientConn
	// quiet: the group is idle and skips its ticks (quiesce.go).
	quiet atomic.Bool
	ticks atomic.Int64
	// drained: the router sends this member no new requests (it is about
	// to be removed by a move); inflight counts unary calls under way.
	drained  atomic.Bool
	inflight atomic.Int64
	// load is the split-by-load meter (split.go); autoSplit alone uses it.
	load loadMeter
	// drainSeen is when this host, leading the group, first saw its split
	// drain on (split.go); sweepDrains alone uses it.
	drainSeen time.Time
}

// memBuffer is the in-memory connection's buffer per direction: small, as
// a host may keep thousands of groups (a larger message just waits for the
// reader). groupRecvQueue bounds each member's queue of received messages,
// for the same reason (a single group uses node's default).
const (
	memBuffer      = 64 << 10
	groupRecvQueue = 512
)

// DefaultSplitBytes is Config.SplitBytes's default.
const DefaultSplitBytes = 256 << 20

// startTimeout bounds starting one group in the background.
const startTimeout = 30 * time.Second

// Start starts the host: its transport, the meta group, a member of each
// shard of the map, and the router. It does not wait for the groups to
// elect leaders. ctx bounds only the start.
func Start(ctx context.Context, cfg Config) (*Host, error) {
	if cfg.Name == "" || cfg.DataDir == "" {
		return nil, errors.New("shard: Config.Name and Config.DataDir are required")
	}
	if cfg.ClusterToken == "" {
		cfg.ClusterToken = "ballot-cluster"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	self, ok := cfg.InitialCluster[cfg.Name]
	if !ok {
		return nil, fmt.Errorf("shard: the initial cluster must name this host (%q)", cfg.Name)
	}
	if len(cfg.AdvertiseClientURLs) == 0 {
		cfg.AdvertiseClientURLs = []string{"http://" + cfg.ClientListener.Addr().String()}
	}
	hosts := make([]string, 0, len(cfg.InitialCluster))
	for name := range cfg.InitialCluster {
		hosts = append(hosts, name)
	}
	initial, err := Initial(cfg.Shards, hosts, cmp.Or(cfg.Replicas, 3))
	if err != nil {
		return nil, err
	}
	mux, err := transport.NewMux(transport.Config{
		ID:        consensus.NodeID(server.MemberIDFor(cfg.ClusterToken, self)),
		ClusterID: server.ClusterIDFor(cfg.ClusterToken),
		Listener:  cfg.PeerListener, Logger: cfg.Logger.With("host", cfg.Name),
	})
	if err != nil {
		return nil, err
	}
	tick := cmp.Or(cfg.TickInterval, 100*time.Millisecond)
	lv := &liveness{self: consensus.NodeID(server.MemberIDFor(cfg.ClusterToken, self)),
		window: time.Duration(cmp.Or(cfg.ElectionTicks, 10)) * tick, heard: map[consensus.NodeID]time.Time{}}
	if lv.tr, err = mux.Group(livenessGroup, lv); err != nil {
		mux.Close()
		return nil, err
	}
	for name, addr := range cfg.InitialCluster {
		if name != cfg.Name {
			id := consensus.NodeID(server.MemberIDFor(cfg.ClusterToken, addr))
			lv.peers = append(lv.peers, id)
			lv.tr.AddPeer(id, addr)
		}
	}
	h := &Host{cfg: cfg, log: cfg.Logger.With("host", cfg.Name), mux: mux, m: initial, initial: initial, live: lv, removed: map[uint64]bool{},
		gs: map[uint64]*group{}, remotes: map[string]*grpc.ClientConn{}, stopc: make(chan struct{}), failc: make(chan struct{}),
		copyRevokes: make(chan copyRevoke, copyRevokeQueue)}
	if !cfg.SyncPerGroup {
		h.fs = vfs.NewSharedSync()
	}
	if err := h.startGroup(ctx, MetaGroup, nil, false); err != nil {
		h.Stop()
		return nil, err
	}
	if err := h.startLocalShards(ctx, initial); err != nil {
		h.Stop()
		return nil, err
	}
	h.grpc = grpc.NewServer(
		grpc.MaxRecvMsgSize(server.DefaultMaxRequestBytes+512*1024),
		grpc.MaxSendMsgSize(1<<31-1),
		grpc.MaxConcurrentStreams(1<<16),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		grpc.ChainUnaryInterceptor(modeUnary, h.groupUnary), grpc.ChainStreamInterceptor(modeStream, h.groupStream),
	)
	r := &router{h: h}
	pb.RegisterKVServer(h.grpc, &kvRouter{r: r})
	pb.RegisterWatchServer(h.grpc, &watchRouter{r: r})
	pb.RegisterLeaseServer(h.grpc, &leaseRouter{r: r})
	pb.RegisterClusterServer(h.grpc, &clusterRouter{r: r})
	pb.RegisterMaintenanceServer(h.grpc, &maintenanceRouter{r: r})
	registerShardService(h.grpc, h)
	h.wg.Add(4 + copyRevokers)
	go func() { defer h.wg.Done(); h.live.run(tick, h.stopc) }()
	go func() { defer h.wg.Done(); _ = h.grpc.Serve(cfg.ClientListener) }()
	go func() { defer h.wg.Done(); h.keepMap() }()
	go func() { defer h.wg.Done(); h.sweepCopies() }()
	for range copyRevokers {
		go func() { defer h.wg.Done(); h.copyRevoker() }()
	}
	h.log.Info("host serving", "client", cfg.ClientListener.Addr().String(), "peer", cfg.PeerListener.Addr().String(),
		"shards", len(initial.Shards))
	return h, nil
}

// groupDir is where group id keeps its WAL and snapshots.
func (h *Host) groupDir(id uint64) string {
	if id == MetaGroup {
		return filepath.Join(h.cfg.DataDir, "meta")
	}
	return filepath.Join(h.cfg.DataDir, "shards", strconv.FormatUint(id, 10))
}

// groupClusterID names group id on the wire and on disk.
func (h *Host) groupClusterID(id uint64) uint64 {
	if id == MetaGroup {
		return server.ClusterIDFor(h.cfg.ClusterToken + "/meta")
	}
	return server.ClusterIDFor(h.cfg.ClusterToken + "/shard/" + strconv.FormatUint(id, 10))
}

// startLocalShards starts this host's member of every initial shard and of
// every shard whose data directory it holds (children of splits).
func (h *Host) startLocalShards(ctx context.Context, initial Map) error {
	want := map[uint64]*Shard{}
	for _, s := range initial.Shards {
		if contains(s.Members, h.cfg.Name) {
			want[s.ID] = &s
		}
	}
	dirs, err := os.ReadDir(filepath.Join(h.cfg.DataDir, "shards"))
	if err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("shard: %w", err)
	}
	for _, d := range dirs {
		id, err := strconv.ParseUint(d.Name(), 10, 64)
		if err != nil || id == MetaGroup {
			continue
		}
		if want[id] == nil {
			// Its range and members are in its own replicated state.
			want[id] = &Shard{ID: id, Members: slices.Collect(maps.Keys(h.cfg.InitialCluster))}
		}
	}
	for _, id := range slices.Sorted(maps.Keys(want)) {
		if err := h.startGroup(ctx, id, want[id], false); err != nil {
			return err
		}
	}
	return nil
}

// startGroup starts this host's member of group id (s nil: the meta
// group). With join it starts empty and waits for the group's leader to
// send it the state (a member whose seed was lost).
func (h *Host) startGroup(ctx context.Context, id uint64, s *Shard, join bool) error {
	h.startMu.Lock()
	defer h.startMu.Unlock()
	return h.startGroupLocked(ctx, id, s, join)
}

// ensureGroup starts this host's member of s unless it runs: from its data
// if it has some, else empty, to be sent the state by the leader.
func (h *Host) ensureGroup(ctx context.Context, s *Shard) error {
	h.startMu.Lock()
	defer h.startMu.Unlock()
	names, _ := os.ReadDir(h.groupDir(s.ID))
	join := len(names) == 0
	if err := h.startGroupLocked(ctx, s.ID, s, join); err != nil {
		return err
	}
	if join {
		h.wg.Add(1)
		go func() { defer h.wg.Done(); h.wakeLeader(*s) }()
	}
	return nil
}

// wakeLeader gets a joining member's group to notice it. A member that
// starts empty knows no other member, so it cannot wake a group whose
// leader sleeps (quiesce.go); a read through another host's member does,
// and the awake leader then brings the newcomer up to date.
func (h *Host) wakeLeader(s Shard) {
	deadline := time.Now().Add(startTimeout)
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for time.Now().Before(deadline) {
		if g := h.group(s.ID); g == nil || g.srv.Node().Applied() > 0 {
			return
		}
		for _, name := range s.Members {
			if name == h.cfg.Name {
				continue
			}
			c, err := h.hostConn(context.Background(), name)
			if err != nil {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			key := s.Start
			if len(key) == 0 {
				key = []byte{0}
			}
			_, _ = pb.NewKVClient(groupConn{c, strconv.FormatUint(s.ID, 10)}).Range(ctx, &pb.RangeRequest{Key: key, CountOnly: true})
			cancel()
		}
		select {
		case <-h.stopc:
			return
		case <-t.C:
		}
	}
}

// REQUIRES: h.startMu held.
func (h *Host) startGroupLocked(ctx context.Context, id uint64, s *Shard, join bool) error {
	select {
	case <-h.stopc:
		return errors.New("shard: host stopping")
	default:
	}
	if h.group(id) != nil {
		return nil
	}
	// Only the meta group and the initial shards may start a new group
	// from their initial members; any other shard's member starts from a
	// split's seed or from what its group's leader sends, never afresh:
	// Join is ignored when the directory holds a seed, and keeps a member
	// whose seed was cut short by a crash from bootstrapping a new, empty
	// group of its own.
	first, isInitial := h.initial.ByID(id)
	if id != MetaGroup && !isInitial {
		join = true
	}
	dir := h.groupDir(id)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("shard: group %d: %w", id, err)
	}
	initial := map[string]string{}
	for name, addr := range h.cfg.InitialCluster {
		if s == nil || contains(s.Members, name) {
			initial[name] = addr
		}
	}
	var sc *server.ShardConfig
	if s != nil {
		// The range the shard's log starts with, not the map's current
		// one (see server.ShardConfig): an initial shard's first range;
		// any other shard's log starts from a seed that holds its range.
		sid := s.ID
		sc = &server.ShardConfig{ID: s.ID, Start: first.Start, End: first.End, FromSnapshot: !isInitial,
			OnSplit: h.onSplit, OnLeaseRevoked: func(lease int64) { h.leaseRevoked(sid, lease) }}
	}
	cid := h.groupClusterID(id)
	lis := bufconn.Listen(memBuffer)
	log := h.cfg.Logger.With("group", id)
	g := &group{id: id, lis: lis}
	var wrap func(consensus.Engine) consensus.Engine
	if !h.cfg.NoQuiesce {
		wrap = func(e consensus.Engine) consensus.Engine {
			return &quiescer{Engine: e, live: h.live.live, quiet: &g.quiet, ticks: &g.ticks}
		}
	}
	scfg := server.Config{
		Name: h.cfg.Name, ClusterToken: h.cfg.ClusterToken, ClusterID: cid,
		InitialCluster: initial, Join: join, Engine: h.cfg.Engine,
		AdvertiseClientURLs: h.cfg.AdvertiseClientURLs,
		DataDir:             dir, FS: h.fs, ClientListener: lis,
		NewTransport: func(th transport.Handler) (transport.Transport, error) { return h.mux.Group(cid, th) },
		Shard:        sc, GroupTag: strconv.FormatUint(id, 10), WrapEngine: wrap, RecvQueue: groupRecvQueue,
		TickInterval: h.cfg.TickInterval, ElectionTicks: h.cfg.ElectionTicks, SnapshotEntries: h.cfg.SnapshotEntries,
		Seed: seedFor(h.cfg.Seed, id), Logger: log, Unsafe: h.cfg.Unsafe,
	}
	if id == MetaGroup {
		scfg.Observe = h.cfg.MetaObserve
		scfg.Unsafe.CorruptPuts = false // the map stays readable: the shards diverge
	}
	srv, err := server.Start(ctx, scfg)
	if err != nil {
		return fmt.Errorf("shard: group %d: %w", id, err)
	}
	g.srv = srv
	conn, err := grpc.NewClient("passthrough:///group-"+strconv.FormatUint(id, 10),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(1<<31-1), grpc.MaxCallSendMsgSize(1<<31-1)),
		grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, inv grpc.UnaryInvoker, o ...grpc.CallOption) error {
			g.inflight.Add(1)
			defer g.inflight.Add(-1)
			return inv(ctx, method, req, reply, cc, o...)
		}),
	)
	if err != nil {
		srv.Stop()
		return fmt.Errorf("shard: group %d: %w", id, err)
	}
	g.conn = conn
	h.mu.Lock()
	h.gs[id] = g
	h.mu.Unlock()
	h.wg.Add(1)
	go h.watchGroup(g)
	return nil
}

func seedFor(seed, id uint64) uint64 {
	if seed == 0 {
		return 0
	}
	return seed*1_000_003 + id
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

// group returns this host's member of group id, or nil.
func (h *Host) group(id uint64) *group {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.gs[id]
}

// groups returns this host's members of every group, meta first.
func (h *Host) groups() []*group {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]*group, 0, len(h.gs))
	for _, g := range h.gs {
		out = append(out, g)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].id < out[j].id })
	return out
}

// Quiet returns how many of this host's groups are idle and not ticking.
func (h *Host) Quiet() int {
	n := 0
	for _, g := range h.groups() {
		if g.quiet.Load() {
			n++
		}
	}
	return n
}

// Ticks returns how many engine ticks this host's groups have run (quiet
// groups skip theirs; with NoQuiesce it is not counted).
func (h *Host) Ticks() int64 {
	var n int64
	for _, g := range h.groups() {
		n += g.ticks.Load()
	}
	return n
}

// Map returns the shard map the host routes by.
func (h *Host) Map() Map {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.m
}

// Server returns this host's member of group id (MetaGroup or a shard).
func (h *Host) Server(id uint64) *server.Server {
	if g := h.group(id); g != nil {
		return g.srv
	}
	return nil
}

// ClientURL is the router's URL.
func (h *Host) ClientURL() string { return "http://" + h.cfg.ClientListener.Addr().String() }

// MemberID is the host's member ID, the same in every group.
func (h *Host) MemberID() uint64 {
	return server.MemberIDFor(h.cfg.ClusterToken, h.cfg.InitialCluster[h.cfg.Name])
}

// keepMap stores the initial map in the meta group if it holds none yet
// (compare-and-swap on the key's absence, so every host may try), then
// keeps the host's map current.
func (h *Host) keepMap() {
	t := time.NewTicker(cmp.Or(h.cfg.MapRefresh, time.Second))
	defer t.Stop()
	stored := false
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if !stored {
			stored = h.storeInitialMap(ctx) == nil
		}
		refreshed := stored && h.refreshMap(ctx) == nil
		cancel()
		if refreshed {
			// Each chore has its own deadline: one stuck behind a fault
			// must not starve the others.
			for _, chore := range []func(context.Context){h.reconcile, h.balance, h.autoSplit, h.sweepDrains, h.hintLeaders, h.sweepTxns} {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				chore(ctx)
				cancel()
			}
		}
		select {
		case <-h.stopc:
			return
		case <-t.C:
		}
	}
}

func (h *Host) meta() (pb.KVClient, error) {
	g := h.group(MetaGroup)
	if g == nil {
		return nil, errors.New("shard: no meta group")
	}
	return pb.NewKVClient(g.conn), nil
}

func (h *Host) storeInitialMap(ctx context.Context) error {
	kvc, err := h.meta()
	if err != nil {
		return err
	}
	m := h.Map()
	_, err = kvc.Txn(ctx, &pb.TxnRequest{
		Compare: []*pb.Compare{{Key: []byte(mapKey), Target: pb.Compare_CREATE, Result: pb.Compare_EQUAL,
			TargetUnion: &pb.Compare_CreateRevision{CreateRevision: 0}}},
		Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte(mapKey), Value: m.Encode()}}}},
	})
	return err
}

// refreshMap reads the map from the meta group (linearizably) and routes
// by it from now on if it is newer than the one the host has.
func (h *Host) refreshMap(ctx context.Context) error {
	kvc, err := h.meta()
	if err != nil {
		return err
	}
	resp, err := kvc.Range(ctx, &pb.RangeRequest{Key: []byte(mapKey)})
	if err != nil {
		return fmt.Errorf("shard: reading the map: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return nil
	}
	m, err := DecodeMap(resp.Kvs[0].Value)
	if err != nil {
		return err
	}
	h.mu.Lock()
	if m.Version > h.m.Version {
		h.m = m
	}
	h.mu.Unlock()
	return nil
}

// leaseRevoked: shard sid revoked a lease homed in it; this host, if it
// leads sid, queues the revocation of the copies in the shards split from
// sid, which copyRevoker does at once (the sweep catches what this misses:
// a full queue, a host that stops first). It runs on the apply goroutine.
func (h *Host) leaseRevoked(sid uint64, lease int64) {
	if uint64(lease)>>48 != sid || h.noCopyRevokes.Load() {
		return
	}
	g := h.group(sid)
	if g == nil || uint64(g.srv.Node().Leader()) != h.MemberID() {
		return
	}
	select {
	case h.copyRevokes <- copyRevoke{lease: lease, home: sid}:
	default:
		h.log.Warn("too many lease copies to revoke at once; the sweep will", "shard", sid, "lease", fmt.Sprintf("%x", lease))
	}
}

// copyRevoke is a lease, revoked in its home shard, whose copies in the
// shards split from the home are to be revoked.
type copyRevoke struct {
	lease int64
	home  uint64
}

// copyRevokeQueue bounds the revocations of copies waiting for a worker;
// copyRevokers is how many run side by side.
const (
	copyRevokeQueue = 4096
	copyRevokers    = 4
)

// copyRevoker revokes queued lease copies in every shard split from the
// lease's home, retrying each (a split child may be electing its leader)
// for up to copyRevokeFor.
func (h *Host) copyRevoker() {
	r := &router{h: h}
	for {
		var c copyRevoke
		select {
		case <-h.stopc:
			return
		case c = <-h.copyRevokes:
		}
		ctx, cancel := context.WithTimeout(context.Background(), copyRevokeFor)
		for _, sid := range h.splitFrom(ctx, c.home) {
			for wait := 20 * time.Millisecond; ; wait = min(2*wait, time.Second) {
				if cc, err := r.conn(ctx, sid); err == nil {
					_, err = pb.NewLeaseClient(cc).LeaseRevoke(ctx, &pb.LeaseRevokeRequest{ID: c.lease})
					if err == nil || isStatus(err, rpctypes.ErrGRPCLeaseNotFound) {
						break
					}
				}
				t := time.NewTimer(wait)
				select {
				case <-ctx.Done():
				case <-h.stopc:
				case <-t.C:
				}
				t.Stop()
				if ctx.Err() != nil || h.stopping() {
					break
				}
			}
		}
		cancel()
	}
}

// splitFrom returns the shards split from home since it started, directly
// or not, by the map; if home's member here has applied a split the map
// does not show yet (the splitter has not recorded it, or this host has
// not read it), the map is brought up to date first.
func (h *Host) splitFrom(ctx context.Context, home uint64) []uint64 {
	if g := h.group(home); g != nil {
		for _, rec := range g.srv.SplitRecords() {
			if _, ok := h.Map().ByID(rec.Child); !ok {
				_ = h.mapStale(ctx)
				break
			}
		}
	}
	return h.Map().Descendants(home)
}

// copyRevokeFor bounds the tries at revoking one lease's copies.
const copyRevokeFor = 10 * time.Second

// stopping reports whether the host is stopping.
func (h *Host) stopping() bool {
	select {
	case <-h.stopc:
		return true
	default:
		return false
	}
}

// sweepCopies runs sweepLeaseCopies every MapRefresh on its own, so that
// a chore stuck behind a fault in the map keeper's round cannot hold up
// the keys of an expired lease in a split child.
func (h *Host) sweepCopies() {
	t := time.NewTicker(cmp.Or(h.cfg.MapRefresh, time.Second))
	defer t.Stop()
	for {
		select {
		case <-h.stopc:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		h.sweepLeaseCopies(ctx)
		cancel()
	}
}

// sweepLeaseCopies revokes, in the shards this host leads, the copies of
// leases whose home (the shard named by the lease ID) no longer has them:
// expired or revoked there (a revoke through the router reaches the copies
// at once; this catches expiries and revokes that did not).
func (h *Host) sweepLeaseCopies(ctx context.Context) {
	self := consensus.NodeID(h.MemberID())
	r := &router{h: h}
	m := h.Map()
	for _, g := range h.groups() {
		if g.id == MetaGroup || g.srv.Node().Leader() != self {
			continue
		}
		ls, err := pb.NewLeaseClient(g.conn).LeaseLeases(ctx, &pb.LeaseLeasesRequest{})
		if err != nil {
			continue
		}
		copies := map[uint64][]int64{} // home shard → copies of its leases here
		for _, l := range ls.Leases {
			if home := uint64(l.ID) >> 48; home != g.id {
				copies[home] = append(copies[home], l.ID)
			}
		}
		for home, ids := range copies {
			if _, ok := m.ByID(home); !ok {
				continue // a map this host has not caught up with yet
			}
			c, err := r.conn(ctx, home)
			if err != nil {
				continue
			}
			// One linearizable list of the home's leases (the member
			// answering has applied everything committed, so it knows
			// every lease) answers for every copy.
			at, err := pb.NewLeaseClient(c).LeaseLeases(ctx, &pb.LeaseLeasesRequest{})
			if err != nil {
				continue
			}
			alive := make(map[int64]bool, len(at.Leases))
			for _, l := range at.Leases {
				alive[l.ID] = true
			}
			for _, id := range ids {
				if alive[id] {
					continue
				}
				if _, err := pb.NewLeaseClient(g.conn).LeaseRevoke(ctx, &pb.LeaseRevokeRequest{ID: id}); err == nil {
					h.log.Info("revoked a lease copy its home no longer has", "shard", g.id, "lease", fmt.Sprintf("%x", id))
				}
			}
		}
	}
}

// leaderHintPrefix + shard ID holds the name of the host whose member led
// the shard when it last said so: a hint (for the list, and for routing
// to a leader without asking), kept apart from the versioned map so that a
// leadership change does not rewrite the map.
const leaderHintPrefix = "ballot/leader/"

// hintLeaders reads the leader hints and corrects those of the shards this
// host leads.
func (h *Host) hintLeaders(ctx context.Context) {
	kvc, err := h.meta()
	if err != nil {
		return
	}
	resp, err := kvc.Range(ctx, &pb.RangeRequest{Key: []byte(leaderHintPrefix), RangeEnd: prefixEnd([]byte(leaderHintPrefix)), Serializable: true})
	if err != nil {
		return
	}
	hints := map[uint64]string{}
	for _, kv := range resp.Kvs {
		if id, err := strconv.ParseUint(string(kv.Key[len(leaderHintPrefix):]), 10, 64); err == nil {
			hints[id] = string(kv.Value)
		}
	}
	h.mu.Lock()
	h.hints = hints
	h.mu.Unlock()
	self := consensus.NodeID(h.MemberID())
	for _, g := range h.groups() {
		if g.id == MetaGroup || g.srv.Node().Leader() != self || hints[g.id] == h.cfg.Name {
			continue
		}
		if _, err := kvc.Put(ctx, &pb.PutRequest{Key: []byte(leaderHintPrefix + strconv.FormatUint(g.id, 10)), Value: []byte(h.cfg.Name)}); err != nil {
			return
		}
	}
}

// LeaderHint returns the host the meta group last heard lead shard id.
func (h *Host) LeaderHint(id uint64) string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.hints[id]
}

func prefixEnd(p []byte) []byte {
	end := append([]byte(nil), p...)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return []byte{0}
}

// mapStale is called when a route turned out stale: it records in the map
// any split a local shard has applied that the map does not show yet (the
// host that asked for it may not have got that far), then re-reads it.
func (h *Host) mapStale(ctx context.Context) error {
	m := h.Map()
	for _, g := range h.groups() {
		if g.id == MetaGroup {
			continue
		}
		for _, rec := range g.srv.SplitRecords() {
			if _, ok := m.ByID(rec.Child); !ok {
				if err := h.recordSplit(ctx, g.id, rec); err != nil {
					return err
				}
			}
		}
	}
	return h.refreshMap(ctx)
}

// reconcile finishes what a crash may have left half done: splits that
// local shards applied but the map does not show yet, and shards the map
// says this host keeps but that it has no member of (it starts one, empty
// if it has no data for it, to be sent the state by the group's leader).
func (h *Host) reconcile(ctx context.Context) {
	for _, g := range h.groups() {
		if g.id == MetaGroup {
			continue
		}
		for _, rec := range g.srv.SplitRecords() {
			if _, ok := h.Map().ByID(rec.Child); !ok {
				if err := h.recordSplit(ctx, g.id, rec); err != nil {
					h.log.Warn("recording a split in the map", "shard", g.id, "child", rec.Child, "err", err)
				}
			}
		}
	}
	m := h.Map()
	for _, g := range h.groups() {
		// The map drops a member only after the group removed it.
		if s, ok := m.ByID(g.id); ok && g.id != MetaGroup && !contains(s.Members, h.cfg.Name) {
			h.wg.Add(1)
			go func() { defer h.wg.Done(); h.dropGroup(g) }()
		}
	}
	for _, s := range m.Shards {
		if !contains(s.Members, h.cfg.Name) || h.group(s.ID) != nil {
			continue
		}
		if h.wasRemoved(s.ID) {
			// The group removed this host (a move cut short before it
			// fixed the map): a removed member ID can never rejoin, so
			// an empty member started now would wait for a leader for
			// ever while the router sent it requests. Fix the map.
			h.leaveMap(ctx, s.ID)
			continue
		}
		if err := h.ensureGroup(ctx, &s); err != nil {
			h.log.Warn("starting a shard's member", "shard", s.ID, "err", err)
		}
	}
}

// balance spreads shard leadership over the hosts: a host that leads more
// shards than its share (the number of shards over the number of hosts,
// rounded up) hands one, per round, to a voter of that shard on a host that
// leads at least two fewer shards than it does.
//
// Every host must count with the same view, or two hosts that each see
// only the shards they keep hand a shard back and forth for ever (a chaos
// run saw one shard change leader 150 times in two minutes): the counts
// come from the meta group's leader hints, which cover every shard,
// corrected by what this host's own members know. The gap of two makes a
// handover strictly even the load out, so rounds end; after a handover the
// host waits a few rounds for the hints to catch up before it counts
// again.
func (h *Host) balance(ctx context.Context) {
	if time.Since(h.balancedAt) < balanceCooldownRounds*cmp.Or(h.cfg.MapRefresh, time.Second) {
		return
	}
	m := h.Map()
	share := (len(m.Shards) + len(h.cfg.InitialCluster) - 1) / len(h.cfg.InitialCluster)
	hostOf := map[consensus.NodeID]string{}
	for name, addr := range h.cfg.InitialCluster {
		hostOf[consensus.NodeID(server.MemberIDFor(h.cfg.ClusterToken, addr))] = name
	}
	h.mu.Lock()
	leader := maps.Clone(h.hints)
	h.mu.Unlock()
	if leader == nil {
		leader = map[uint64]string{}
	}
	var mine []*group
	for _, g := range h.groups() {
		if g.id == MetaGroup {
			continue
		}
		lead := g.srv.Node().Leader()
		if lead == consensus.None {
			delete(leader, g.id)
			continue
		}
		leader[g.id] = hostOf[lead]
		if hostOf[lead] == h.cfg.Name {
			mine = append(mine, g)
		}
	}
	leads := map[string]int{}
	for _, s := range m.Shards {
		if name := leader[s.ID]; name != "" {
			leads[name]++
		}
	}
	leads[h.cfg.Name] = len(mine)
	if len(mine) <= share {
		return
	}
	for _, g := range mine {
		st := g.srv.Node().Status()
		best, bestN := consensus.None, len(mine)-1 // a host leading at most len(mine)-2
		for _, v := range st.ConfState.Voters {
			if name := hostOf[v]; name != "" && name != h.cfg.Name && leads[name] < bestN {
				best, bestN = v, leads[name]
			}
		}
		if best == consensus.None {
			continue
		}
		tctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := g.srv.TransferLeadership(tctx, best)
		cancel()
		h.balancedAt = time.Now()
		h.log.Info("balancing shard leaders", "shard", g.id, "to", hostOf[best], "led", len(mine), "they_led", bestN, "share", share, "err", err)
		return
	}
}

// balanceCooldownRounds is how many rounds of the map keeper a host waits
// after handing a shard's leadership away before it balances again: long
// enough for the leader hints to show the handover.
const balanceCooldownRounds = 3

// Stop stops the router, every group and the transport. Idempotent.
func (h *Host) Stop() {
	h.stopOnce.Do(func() {
		close(h.stopc)
		if h.grpc != nil {
			stopped := make(chan struct{})
			go func() { h.grpc.GracefulStop(); close(stopped) }()
			select {
			case <-stopped:
			case <-time.After(2 * time.Second):
				h.grpc.Stop()
			}
		}
		var wg sync.WaitGroup
		for _, g := range h.groups() {
			wg.Add(1)
			go func() {
				defer wg.Done()
				g.conn.Close()
				g.srv.Stop()
			}()
		}
		wg.Wait()
		h.wg.Wait()
		h.mu.Lock()
		for _, c := range h.remotes {
			c.Close()
		}
		h.mu.Unlock()
		h.mux.Close()
	})
}

// Done is closed when the host stops, or when one of its groups stopped on
// its own (a host missing a group is not whole: it should stop and be
// restarted); a member removed from its shard by a move is dropped instead.
func (h *Host) Done() <-chan struct{} {
	done := make(chan struct{})
	go func() {
		select {
		case <-h.stopc:
		case <-h.failc:
		}
		close(done)
	}()
	return done
}

// Err is why a group stopped on its own, or nil.
func (h *Host) Err() error {
	select {
	case <-h.failc:
		return h.failErr
	default:
		return nil
	}
}

// wasRemoved reports whether shard id's group removed this host's member.
func (h *Host) wasRemoved(id uint64) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.removed[id]
}

// leaveMap takes this host out of shard id's members in the map, after
// the group removed it; the reconciler tries again if the meta group does
// not answer now.
func (h *Host) leaveMap(ctx context.Context, id uint64) {
	err := h.updateMap(ctx, func(m Map) (Map, bool) {
		i := slices.IndexFunc(m.Shards, func(x Shard) bool { return x.ID == id })
		if i < 0 || !slices.Contains(m.Shards[i].Members, h.cfg.Name) {
			return m, false
		}
		m.Shards[i].Members = slices.DeleteFunc(slices.Clone(m.Shards[i].Members), func(n string) bool { return n == h.cfg.Name })
		return m, true
	})
	if err != nil {
		h.log.Warn("taking this host out of a shard's members in the map", "shard", id, "err", err)
	}
}
