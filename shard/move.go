package shard

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"slices"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/ballotdb/ballot/node"
	"github.com/ballotdb/ballot/server"
)

// ErrBadMove refuses a move request that cannot be carried out.
var ErrBadMove = errors.New("shard: bad move")

// Moving a shard's member from one host to another while clients keep
// writing (docs/sharding.md, "Moving"):
//
//  1. The new host is added to the shard's group as a learner (a
//     membership change through the group's log) and to the map's
//     members; its host, seeing itself in the map, starts an empty member
//     that the group's leader brings up to date (log or snapshot).
//  2. Once it has caught up it is promoted to voter (the group refuses
//     until then, as etcd does); the old member is removed (leadership
//     handed away first if it leads), and the map loses it. The removed
//     member stops itself; its host drops the group and its data.
//
// Each step is idempotent, so a move interrupted by a crash is finished by
// running it again. A host ID is the same in every group, so a member
// removed from a group can never rejoin that group on the same host (the
// group refuses removed IDs); move it to another host instead.

// Move moves shard id's member from host from to host to.
func (h *Host) Move(ctx context.Context, id uint64, from, to string) error {
	if err := h.refreshMap(ctx); err != nil {
		return err
	}
	s, ok := h.Map().ByID(id)
	switch {
	case !ok:
		return fmt.Errorf("%w: no shard %d", ErrBadMove, id)
	case h.cfg.InitialCluster[to] == "":
		return fmt.Errorf("%w: no host %q", ErrBadMove, to)
	case !slices.Contains(s.Members, from) && !slices.Contains(s.Members, to):
		return fmt.Errorf("%w: %q keeps no member of shard %d (members %v)", ErrBadMove, from, id, s.Members)
	case from == to:
		return fmt.Errorf("%w: from and to are the same host", ErrBadMove)
	}
	r := &router{h: h}
	conn, err := r.conn(ctx, id)
	if err != nil {
		return err
	}
	cl := pb.NewClusterClient(conn)
	toAddr := h.cfg.InitialCluster[to]
	toID := server.MemberIDFor(h.cfg.ClusterToken, toAddr)
	fromID := server.MemberIDFor(h.cfg.ClusterToken, h.cfg.InitialCluster[from])

	// 1. The new member: a learner of the group, then in the map.
	// A member ID derives from the cluster token and the peer address, so
	// "member ID already exists" means this very host was added before: a
	// retried move goes on from where the last try stopped.
	if _, err := cl.MemberAdd(ctx, &pb.MemberAddRequest{PeerURLs: []string{"http://" + toAddr}, IsLearner: true}); err != nil &&
		!isStatus(err, rpctypes.ErrGRPCPeerURLExist) && !isStatus(err, rpctypes.ErrGRPCMemberExist) {
		return fmt.Errorf("shard move: adding %s to shard %d: %w", to, id, err)
	}
	if err := h.updateMap(ctx, func(m Map) (Map, bool) {
		i := slices.IndexFunc(m.Shards, func(x Shard) bool { return x.ID == id })
		if i < 0 || slices.Contains(m.Shards[i].Members, to) {
			return m, false
		}
		m.Shards[i].Members = sortedWith(m.Shards[i].Members, to)
		return m, true
	}); err != nil {
		return err
	}
	// 2. Promote once caught up.
	for {
		_, err := cl.MemberPromote(ctx, &pb.MemberPromoteRequest{ID: toID})
		if err == nil || isStatus(err, rpctypes.ErrGRPCMemberNotLearner) {
			break
		}
		if !isStatus(err, rpctypes.ErrGRPCLearnerNotReady) {
			return fmt.Errorf("shard move: promoting %s in shard %d: %w", to, id, err)
		}
		t := time.NewTimer(50 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("shard move: %s did not catch up with shard %d: %w", to, id, ctx.Err())
		case <-t.C:
		}
	}
	// 3. Stop routing requests to the old member and let those under way
	// finish, so that no client meets it stopping; remove it; drop it
	// from the map.
	if err := h.drainOn(ctx, from, id); err != nil {
		return fmt.Errorf("shard move: draining %s's member of shard %d: %w", from, id, err)
	}
	if _, err := cl.MemberRemove(ctx, &pb.MemberRemoveRequest{ID: fromID}); err != nil &&
		!isStatus(err, rpctypes.ErrGRPCMemberNotFound) {
		// The answer may have been lost with the removed member (it
		// stops itself): the group's member list says.
		if ml, lerr := cl.MemberList(ctx, &pb.MemberListRequest{Linearizable: true}); lerr != nil ||
			slices.ContainsFunc(ml.Members, func(m *pb.Member) bool { return m.ID == fromID }) {
			return fmt.Errorf("shard move: removing %s from shard %d: %w", from, id, err)
		}
	}
	return h.updateMap(ctx, func(m Map) (Map, bool) {
		i := slices.IndexFunc(m.Shards, func(x Shard) bool { return x.ID == id })
		if i < 0 || !slices.Contains(m.Shards[i].Members, from) {
			return m, false
		}
		m.Shards[i].Members = slices.DeleteFunc(slices.Clone(m.Shards[i].Members), func(n string) bool { return n == from })
		return m, true
	})
}

// drainOn drains host name's member of shard id (see drain).
func (h *Host) drainOn(ctx context.Context, name string, id uint64) error {
	if name == h.cfg.Name {
		return h.drain(ctx, id)
	}
	c, err := h.hostConn(ctx, name)
	if err != nil {
		return err
	}
	var out struct{}
	return c.Invoke(ctx, drainMethod, &SplitRequest{Shard: id}, &out, grpc.CallContentSubtype("ballotjson"))
}

// drain makes the router send this host's member of shard id no new
// requests, and waits (up to drainTimeout) for those under way to end.
func (h *Host) drain(ctx context.Context, id uint64) error {
	g := h.group(id)
	if g == nil {
		return nil
	}
	g.drained.Store(true)
	ctx, cancel := context.WithTimeout(ctx, drainTimeout)
	defer cancel()
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for g.inflight.Load() > 0 {
		select {
		case <-ctx.Done():
			return nil // the stragglers will see the member stop
		case <-t.C:
		}
	}
	return nil
}

// drainTimeout bounds how long a drain waits for requests under way.
const drainTimeout = 10 * time.Second

func sortedWith(xs []string, x string) []string {
	out := append(slices.Clone(xs), x)
	slices.Sort(out)
	return out
}

// updateMap applies change to the map in the meta group by compare-and-
// swap, retrying on conflict; change reports whether it changed anything.
func (h *Host) updateMap(ctx context.Context, change func(Map) (Map, bool)) error {
	kvc, err := h.meta()
	if err != nil {
		return err
	}
	for range 16 {
		resp, err := kvc.Range(ctx, &pb.RangeRequest{Key: []byte(mapKey)})
		if err != nil {
			return err
		}
		if len(resp.Kvs) == 0 {
			// Just started: no host has stored the initial map yet. Any
			// host may (compare-and-swap on the key's absence).
			if err := h.storeInitialMap(ctx); err != nil {
				return fmt.Errorf("shard: the meta group holds no map yet: %w", err)
			}
			continue
		}
		m, err := DecodeMap(resp.Kvs[0].Value)
		if err != nil {
			return err
		}
		cp := Map{Version: m.Version, Shards: slices.Clone(m.Shards)}
		next, changed := change(cp)
		if !changed {
			h.adopt(m)
			return nil
		}
		next.Version = m.Version + 1
		if err := next.Validate(); err != nil {
			return err
		}
		tr, err := kvc.Txn(ctx, &pb.TxnRequest{
			Compare: []*pb.Compare{{Key: []byte(mapKey), Target: pb.Compare_MOD, Result: pb.Compare_EQUAL,
				TargetUnion: &pb.Compare_ModRevision{ModRevision: resp.Kvs[0].ModRevision}}},
			Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte(mapKey), Value: next.Encode()}}}},
		})
		if err != nil {
			return err
		}
		if tr.Succeeded {
			h.adopt(next)
			h.log.Info("shard map updated", "version", next.Version)
			return nil
		}
	}
	return errors.New("shard: updating the map: too much contention")
}

// watchGroup waits for group g to stop. A member removed from its group
// (a move) is dropped with its data; any other stop fails the host.
func (h *Host) watchGroup(g *group) {
	defer h.wg.Done()
	select {
	case <-h.stopc:
		return
	case <-g.srv.Done():
	}
	select {
	case <-h.stopc:
		return // stopping: every group stops
	default:
	}
	h.mu.Lock()
	dropped := h.gs[g.id] != g
	h.mu.Unlock()
	if dropped {
		return // dropped on purpose (dropGroup)
	}
	if err := g.srv.Err(); errors.Is(err, node.ErrRemoved) {
		h.mu.Lock()
		h.removed[g.id] = true
		h.mu.Unlock()
		h.dropGroup(g)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		h.leaveMap(ctx, g.id)
		cancel()
		return
	}
	h.failOnce.Do(func() {
		h.failErr = fmt.Errorf("group %d stopped: %w", g.id, g.srv.Err())
		close(h.failc)
	})
}

// dropGroup forgets this host's member of a group it was removed from
// (the member saw its own removal, or the map no longer lists this host:
// a Multi-Paxos member may never learn of its removal, since the leader
// stops sending to it), with its data.
func (h *Host) dropGroup(g *group) {
	h.mu.Lock()
	if h.gs[g.id] != g {
		h.mu.Unlock()
		return
	}
	delete(h.gs, g.id)
	h.mu.Unlock()
	// Let calls under way (a forwarded removal among them) answer.
	deadline := time.Now().Add(2 * time.Second)
	for g.inflight.Load() > 0 && time.Now().Before(deadline) {
		select {
		case <-h.stopc:
		case <-time.After(5 * time.Millisecond):
		}
	}
	g.conn.Close()
	g.srv.Stop()
	if err := os.RemoveAll(h.groupDir(g.id)); err != nil {
		h.log.Warn("removing a moved shard's data", "shard", g.id, "err", err)
	}
	h.log.Info("member removed from its shard: dropped", "shard", g.id)
}

// hostConn returns a connection to another host's router, found through
// the client URLs the hosts publish in the meta group.
func (h *Host) hostConn(ctx context.Context, name string) (*grpc.ClientConn, error) {
	h.mu.Lock()
	c := h.remotes[name]
	h.mu.Unlock()
	if c != nil {
		return c, nil
	}
	g := h.group(MetaGroup)
	if g == nil {
		return nil, errNotHere
	}
	ml, err := pb.NewClusterClient(g.conn).MemberList(ctx, &pb.MemberListRequest{Linearizable: false})
	if err != nil {
		return nil, err
	}
	var target string
	for _, m := range ml.Members {
		if m.Name == name && len(m.ClientURLs) > 0 {
			if u, err := url.Parse(m.ClientURLs[0]); err == nil {
				target = u.Host
			}
		}
	}
	if target == "" {
		return nil, fmt.Errorf("shard: no client URL known for host %q", name)
	}
	hop := metadata.Pairs(hopHeader, "1")
	c, err = grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, inv grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			return inv(metadata.NewOutgoingContext(ctx, metadata.Join(outgoing(ctx), hop)), method, req, reply, cc, opts...)
		}),
		grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, str grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			return str(metadata.NewOutgoingContext(ctx, metadata.Join(outgoing(ctx), hop)), desc, cc, method, opts...)
		}))
	if err != nil {
		return nil, err
	}
	h.mu.Lock()
	if old := h.remotes[name]; old != nil {
		h.mu.Unlock()
		c.Close()
		return old, nil
	}
	h.remotes[name] = c
	h.mu.Unlock()
	return c, nil
}

func outgoing(ctx context.Context) metadata.MD {
	md, _ := metadata.FromOutgoingContext(ctx)
	return md
}
