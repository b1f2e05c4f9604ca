package shard

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"

	"github.com/ballotdb/ballot/consensus"
	"github.com/ballotdb/ballot/server"
)

// Splitting a shard online (docs/sharding.md, "Splitting"):
//
//  1. The host that is asked picks the split key (moved back to the start
//     of the key's last "/"-delimited prefix, so a prefix that ends in "/"
//     is never cut) and a new shard ID from a counter in the meta group.
//  2. It proposes the split to the parent shard. Every member of the
//     parent applies it at the same index (server/split.go): the keys from
//     the split key on leave its store, with their history and leases,
//     and become the child's initial state; the parent refuses those keys
//     from then on (wrong shard), so no write can land on the old side.
//  3. Each host, on applying it, starts its member of the child from that
//     state (startChild), so the child's members start identical.
//  4. The map in the meta group is updated by compare-and-swap. Any host
//     finishes this from the parent's replicated split records if the
//     host that started the split died (reconcile), and routers that meet
//     wrong shard re-read the map and retry, so clients see at most a
//     short wait.

// nextShardKey holds the next unused shard ID in the meta group.
const nextShardKey = "ballot/next-shard-id"

// ErrBadSplit refuses a split request that cannot be carried out.
var ErrBadSplit = errors.New("shard: bad split")

// SplitKey moves a requested split key back to the start of its last
// "/"-delimited prefix ("app/users/42" → "app/users/"), so that keys under
// one prefix stay in one shard; a key without "/" is kept.
func SplitKey(key []byte) []byte {
	if i := bytes.LastIndexByte(key, '/'); i >= 0 {
		return key[:i+1]
	}
	return key
}

// Split splits shard id at key (see SplitKey) and returns the new map.
func (h *Host) Split(ctx context.Context, id uint64, key []byte) (Map, error) {
	if err := h.refreshMap(ctx); err != nil {
		return Map{}, err
	}
	m := h.Map()
	p, ok := m.ByID(id)
	if !ok {
		return Map{}, fmt.Errorf("%w: no shard %d", ErrBadSplit, id)
	}
	key = SplitKey(key)
	if len(p.End) > 0 && bytes.Compare(key, p.End) >= 0 {
		if s := m.Lookup(key); bytes.Equal(s.Start, key) && m.Lineage(id, s.ID) {
			// Split at key already (by this request, whose answer was
			// lost, or another): done, as a retry expects.
			return m, nil
		}
	}
	if bytes.Compare(key, p.Start) <= 0 || (len(p.End) > 0 && bytes.Compare(key, p.End) >= 0) {
		return Map{}, fmt.Errorf("%w: key %q (after moving it to its prefix) is not strictly inside shard %d [%q, %q)",
			ErrBadSplit, key, id, p.Start, p.End)
	}
	srv := h.Server(id)
	if srv == nil && contains(p.Members, h.cfg.Name) { // a split's child, starting
		waitUntil(ctx, 5*time.Second, func() bool { return h.Server(id) != nil })
		srv = h.Server(id)
	}
	if srv == nil { // ask a host that keeps it
		for _, name := range p.Members {
			c, err := h.hostConn(ctx, name)
			if err != nil {
				continue
			}
			var out ListResponse
			if err := c.Invoke(ctx, splitMethod, &SplitRequest{Shard: id, Key: key}, &out, grpc.CallContentSubtype("ballotjson")); err != nil {
				return Map{}, err
			}
			if err := h.refreshMap(ctx); err != nil {
				return Map{}, err
			}
			return h.Map(), nil
		}
		return Map{}, fmt.Errorf("%w: no host keeping shard %d (%v) answers", ErrBadSplit, id, p.Members)
	}
	child, err := h.allocShardID(ctx, m)
	if err != nil {
		return Map{}, err
	}
	members := map[string]string{}
	for _, n := range p.Members {
		members[n] = h.cfg.InitialCluster[n]
	}
	// A shard refuses to split while it holds cross-shard transaction
	// state (locks, votes, records). Under steady cross-shard load it
	// always holds some, so the split drains it first (server.Drain): new
	// transactions are refused there and start again after the split,
	// those under way finish, and the split gets through — under the one
	// child ID allocated above.
	drained := false
	defer func() {
		if drained && srv.Draining() {
			// Given up (or failed): let transactions in again.
			dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := srv.Drain(dctx, false); err != nil {
				h.log.Warn("ending a split's drain", "shard", id, "err", err)
			}
		}
	}()
	for backoff := 5 * time.Millisecond; ; backoff = min(2*backoff, 20*time.Millisecond) {
		err := srv.Split(ctx, server.SplitRequest{Child: child, Key: key, Members: members})
		if err == nil {
			break
		}
		if !isStatus(err, server.ErrGRPCSplitBusy) {
			return Map{}, fmt.Errorf("shard: split of shard %d: %w", id, err)
		}
		if !srv.Draining() {
			if err := srv.Drain(ctx, true); err != nil {
				return Map{}, fmt.Errorf("shard: split of shard %d: draining its transactions: %w", id, err)
			}
			drained = true
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return Map{}, fmt.Errorf("shard: split of shard %d: %w (still busy with transactions when %w)", id, err, ctx.Err())
		case <-t.C:
		}
	}
	for _, rec := range srv.SplitRecords() {
		if rec.Child == child {
			if err := h.recordSplit(ctx, id, rec); err != nil {
				return Map{}, err
			}
		}
	}
	return h.Map(), nil
}

// autoSplit splits, at its middle key, one shard this host leads whose
// data has grown past Config.SplitBytes, or whose log has grown faster
// than Config.SplitLoad entries a second for splitLoadRounds rounds.
func (h *Host) autoSplit(ctx context.Context) {
	limit := cmp.Or(h.cfg.SplitBytes, DefaultSplitBytes)
	self := consensus.NodeID(h.MemberID())
	now := time.Now()
	for _, g := range h.groups() {
		if g.id == MetaGroup || g.srv.Node().Leader() != self {
			g.load = loadMeter{}
			continue
		}
		why := ""
		if hot, rate := g.load.observe(now, g.srv.Node().Status().Commit, h.cfg.SplitLoad); hot {
			why = fmt.Sprintf("%.0f writes/s for %d rounds (limit %.0f)", rate, splitLoadRounds, h.cfg.SplitLoad)
		}
		if why == "" && limit >= 0 {
			st, err := pb.NewMaintenanceClient(g.conn).Status(ctx, &pb.StatusRequest{})
			if err == nil && st.DbSize > limit {
				why = fmt.Sprintf("%d bytes (limit %d)", st.DbSize, limit)
			}
		}
		if why == "" {
			continue
		}
		key, err := h.middleKey(ctx, g)
		if err != nil || key == nil {
			h.log.Debug("shard to split but no key to split at", "shard", g.id, "why", why, "err", err)
			continue
		}
		h.log.Info("splitting a shard", "shard", g.id, "why", why, "at", fmt.Sprintf("%q", key))
		if _, err := h.Split(ctx, g.id, key); err != nil {
			h.log.Warn("automatic split failed", "shard", g.id, "err", err)
		}
		g.load = loadMeter{}
		return // one split per round
	}
}

// DrainMax is how long a split's drain (server.Drain) may stay on before
// the host of the shard's leader ends it: its splitter died, or gave up
// without ending it (a CI run's splitter timed out under a partition that
// also kept it from ending the drain, and transactions through that shard
// waited 30 s, the bound then). A splitter still at work turns it on again;
// a transaction under way is past its deadline (TxnTimeout) by then.
var DrainMax = 2 * TxnTimeout

// sweepDrains ends the drains that outlived their splitters in the shards
// this host leads.
func (h *Host) sweepDrains(ctx context.Context) {
	self := consensus.NodeID(h.MemberID())
	now := time.Now()
	for _, g := range h.groups() {
		if g.id == MetaGroup || g.srv.Node().Leader() != self || !g.srv.Draining() {
			g.drainSeen = time.Time{}
			continue
		}
		if g.drainSeen.IsZero() {
			g.drainSeen = now
			continue
		}
		if now.Sub(g.drainSeen) < DrainMax {
			continue
		}
		h.log.Warn("ending a split's drain that outlived its splitter", "shard", g.id, "since", g.drainSeen)
		if err := g.srv.Drain(ctx, false); err != nil {
			h.log.Warn("ending a split's drain", "shard", g.id, "err", err)
			continue
		}
		g.drainSeen = time.Time{}
	}
}

// splitLoadRounds is how many rounds in a row a shard must be over
// Config.SplitLoad before it splits: a burst is not a load.
const splitLoadRounds = 5

// loadMeter measures a led shard's log growth between rounds.
type loadMeter struct {
	at     time.Time
	commit uint64
	hot    int // rounds in a row over the limit
}

// observe takes the shard's commit index now and reports whether it has
// been over limit entries a second for splitLoadRounds rounds, and the
// last round's rate.
func (m *loadMeter) observe(now time.Time, commit uint64, limit float64) (bool, float64) {
	prev, prevCommit := m.at, m.commit
	m.at, m.commit = now, commit
	if limit <= 0 || prev.IsZero() || commit < prevCommit || !now.After(prev) {
		m.hot = 0
		return false, 0
	}
	rate := float64(commit-prevCommit) / now.Sub(prev).Seconds()
	if rate <= limit {
		m.hot = 0
		return false, rate
	}
	m.hot++
	return m.hot >= splitLoadRounds, rate
}

// middleKey returns the key half way through shard g's keys, moved back
// to its prefix (SplitKey), or nil if that leaves nothing on one side: a
// shard that is one big prefix is not split automatically (a split there
// would cut watches and recipes on that prefix; split it by command).
func (h *Host) middleKey(ctx context.Context, g *group) ([]byte, error) {
	start, end := g.srv.Range()
	from, rend := start, end
	if len(from) == 0 {
		from = []byte{0} // etcd's "every key": the empty key is not one
	}
	if len(rend) == 0 {
		rend = []byte{0}
	}
	kvc := pb.NewKVClient(g.conn)
	cnt, err := kvc.Range(ctx, &pb.RangeRequest{Key: from, RangeEnd: rend, CountOnly: true, Serializable: true})
	if err != nil || cnt.Count < 2 {
		return nil, err
	}
	half, err := kvc.Range(ctx, &pb.RangeRequest{Key: from, RangeEnd: rend, KeysOnly: true, Serializable: true, Limit: cnt.Count/2 + 1})
	if err != nil || len(half.Kvs) == 0 {
		return nil, err
	}
	k := SplitKey(half.Kvs[len(half.Kvs)-1].Key)
	if bytes.Compare(k, start) > 0 && (len(end) == 0 || bytes.Compare(k, end) < 0) {
		return k, nil
	}
	return nil, nil
}

// waitUntil polls cond every few milliseconds until it holds, ctx ends or
// timeout passes.
func waitUntil(ctx context.Context, timeout time.Duration, cond func() bool) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// allocShardID takes the next shard ID from the meta group's counter.
func (h *Host) allocShardID(ctx context.Context, m Map) (uint64, error) {
	kvc, err := h.meta()
	if err != nil {
		return 0, err
	}
	for range 16 {
		resp, err := kvc.Range(ctx, &pb.RangeRequest{Key: []byte(nextShardKey)})
		if err != nil {
			return 0, err
		}
		next := uint64(1)
		for _, s := range m.Shards {
			next = max(next, s.ID+1)
		}
		cmp := &pb.Compare{Key: []byte(nextShardKey), Target: pb.Compare_CREATE, Result: pb.Compare_EQUAL,
			TargetUnion: &pb.Compare_CreateRevision{CreateRevision: 0}}
		if len(resp.Kvs) == 1 {
			n, err := strconv.ParseUint(string(resp.Kvs[0].Value), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("shard: corrupt shard ID counter %q: %w", resp.Kvs[0].Value, err)
			}
			next = max(next, n)
			cmp = &pb.Compare{Key: []byte(nextShardKey), Target: pb.Compare_MOD, Result: pb.Compare_EQUAL,
				TargetUnion: &pb.Compare_ModRevision{ModRevision: resp.Kvs[0].ModRevision}}
		}
		if next >= 1<<15 {
			return 0, fmt.Errorf("%w: shard IDs exhausted", ErrBadSplit)
		}
		tr, err := kvc.Txn(ctx, &pb.TxnRequest{Compare: []*pb.Compare{cmp},
			Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{
				Key: []byte(nextShardKey), Value: []byte(strconv.FormatUint(next+1, 10))}}}}})
		if err != nil {
			return 0, err
		}
		if tr.Succeeded {
			return next, nil
		}
	}
	return 0, errors.New("shard: allocating a shard ID: too much contention")
}

// recordSplit makes the map in the meta group show a split that parent
// applied, if it does not yet (updateMap: compare-and-swap on the map).
func (h *Host) recordSplit(ctx context.Context, parent uint64, rec server.SplitRecord) error {
	var werr error
	err := h.updateMap(ctx, func(m Map) (Map, bool) {
		if _, ok := m.ByID(rec.Child); ok {
			return m, false
		}
		next, err := m.withSplit(parent, rec)
		if err != nil {
			werr = err
			return m, false
		}
		return next, true
	})
	if werr != nil {
		return werr
	}
	return err
}

// withSplit returns the map with parent cut at rec.Start and rec.Child
// after it.
func (m Map) withSplit(parent uint64, rec server.SplitRecord) (Map, error) {
	i := slices.IndexFunc(m.Shards, func(s Shard) bool { return s.ID == parent })
	if i < 0 {
		return Map{}, fmt.Errorf("shard: split of shard %d, which the map does not hold", parent)
	}
	p := m.Shards[i]
	if !bytes.Equal(p.End, rec.End) {
		return Map{}, fmt.Errorf("shard: split of shard %d ending at %q, but the map says it ends at %q", parent, rec.End, p.End)
	}
	var members []string
	for n := range rec.Members {
		members = append(members, n)
	}
	slices.Sort(members)
	out := Map{Version: m.Version + 1}
	out.Shards = append(out.Shards, m.Shards[:i]...)
	p.End = rec.Start
	out.Shards = append(out.Shards, p, Shard{ID: rec.Child, Start: rec.Start, End: rec.End, Members: members, Parent: parent})
	out.Shards = append(out.Shards, m.Shards[i+1:]...)
	return out, out.Validate()
}

// adopt routes by m if it is newer than the host's map.
func (h *Host) adopt(m Map) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if m.Version > h.m.Version {
		h.m = m
	}
}

// onSplit is each local shard's ShardConfig.OnSplit: start this host's
// member of the child from the state the parent split off.
func (h *Host) onSplit(st server.SplitState) {
	if _, ok := st.Members[h.cfg.Name]; !ok {
		return
	}
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		if err := h.startChild(st); err != nil {
			h.log.Error("starting a split's child shard", "child", st.Child, "err", err)
		}
	}()
}

func (h *Host) startChild(st server.SplitState) error {
	h.startMu.Lock()
	defer h.startMu.Unlock()
	dir := h.groupDir(st.Child)
	if g := h.group(st.Child); g != nil {
		if g.srv.Node().Applied() > 0 {
			return nil
		}
		// A member started empty to be sent the state (the map showed the
		// child before this host applied the split) may wait for it
		// forever if every host did the same: replace it with the seed —
		// but only once it is stopped and shown to hold nothing, so that
		// nothing it acknowledged is thrown away.
		h.mu.Lock()
		delete(h.gs, g.id)
		h.mu.Unlock()
		g.conn.Close()
		g.srv.Stop()
		if nst := g.srv.Node().Status(); nst.LastIndex > 0 || nst.Applied > 0 {
			ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
			defer cancel()
			sh := Shard{ID: st.Child, Start: st.Start, End: st.End}
			for n := range st.Members {
				sh.Members = append(sh.Members, n)
			}
			return h.startGroupLocked(ctx, st.Child, &sh, true) // it got the state meanwhile: keep it
		}
		if err := os.RemoveAll(dir); err != nil {
			return err
		}
	} else if names, err := os.ReadDir(dir); err == nil && len(names) > 0 {
		return nil // seeded before a restart: startGroups starts it
	}
	book := map[consensus.NodeID]string{}
	for _, addr := range st.Members {
		book[consensus.NodeID(server.MemberIDFor(h.cfg.ClusterToken, addr))] = addr
	}
	if err := server.SeedDataDir(context.Background(), server.SeedConfig{
		Store: st.Store, DataDir: dir, ClusterID: h.groupClusterID(st.Child), MemberID: h.MemberID(),
		Peers: book, Index: st.Index,
	}); err != nil {
		return err
	}
	s := Shard{ID: st.Child, Start: st.Start, End: st.End}
	for n := range st.Members {
		s.Members = append(s.Members, n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	return h.startGroupLocked(ctx, st.Child, &s, false)
}
