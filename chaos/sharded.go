package chaos

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/metadata"

	"github.com/ballotdb/ballot/shard"
)

// A sharded run (Options.Shards) starts every member with `serve --shards
// N` and keeps every workload within what sharded mode promises
// (docs/sharding.md): each workload's keys under one prefix, each watch on
// a prefix that no split ever cuts, leases homed where their keys are. The
// split and move nemeses then change the shard map under the clients.

// Kinds of the shard nemeses (sharded runs only).
const (
	NemesisSplit = "split" // split the shard holding a workload's keys, through the shard service
	NemesisMove  = "move"  // move a shard's member to a host that keeps none (more hosts than replicas)
)

// shardReplicas is how many hosts keep each shard (serve's default).
const shardReplicas = 3

// keyspace is where the workloads keep their keys.
type keyspace struct {
	reg, set, lease string // prefixes
	watch           string // the watch workload's prefix ("": everything)
	lockCounter     string
	electionReg     string
	bank            []string // the bank's accounts (see bankKeys)
}

// singleKeyspace is the one-group layout: the watchers see every key.
var singleKeyspace = keyspace{reg: "reg/", set: "set/", lease: leaseKeyPrefix, watch: "",
	lockCounter: lockCounterKey, electionReg: electionRegisterKey, bank: bankKeys(false)}

// shardedKeyspace is the sharded layout. Initial shards are cut at first
// bytes, so each prefix below starts in one shard; "0reg/" (0x30) and the
// letters' prefixes are in different shards with --shards 3 or more.
//
//   - register keys are reg/<window>/<k>: splits at reg/<window>/ cut
//     through them while clients use them (porcupine checks every key).
//   - the watchers watch set/, whose keys (set/<client>-<n>) hold no
//     further '/', so no split can cut the prefix (shard.SplitKey moves a
//     split key back to its last '/'); a split at set/ moves it whole,
//     which the router must carry the watches through. Set adds are puts
//     only, so the final state's newest revision is the last event's.
//   - lease/ likewise, and the lease watchers watch it.
//   - the lock counter and the election register sit beside the recipes'
//     keys (ballot/lock/…, ballot/election/…) under ballot/, which no split
//     of the rig cuts, so each fenced write stays in one shard.
//   - the bank's accounts start with first bytes spread over the whole
//     range, so the initial shards divide them and transfers are
//     cross-shard transactions; each is one key, which no split can cut,
//     and splits at their prefixes (<byte>bank/) move them between shards
//     while transactions hold them.
var shardedKeyspace = keyspace{reg: "0reg/", set: "set/", lease: leaseKeyPrefix, watch: "set/",
	lockCounter: "ballot/chaos-lock-counter", electionReg: "ballot/chaos-election-register", bank: bankKeys(true)}

// leaseHomedAt asks, through gRPC metadata, that leases granted with ctx
// live in the shard holding key (shard.LeaseKeyHeader): the recipes grant
// without naming a shard, which would home their leases in the first shard
// while their keys are elsewhere.
func leaseHomedAt(ctx context.Context, key string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, shard.LeaseKeyHeader, key)
}

// listShards asks one host for the shard map.
func listShards(ctx context.Context, cli *clientv3.Client) (*shard.ListResponse, error) {
	return shard.List(ctx, cli.ActiveConnection())
}

// waitShardsLed waits until every host (by client address) reports a
// leader for every shard of its map.
func waitShardsLed(ctx context.Context, clientAddrs []string) error {
	var clis []*clientv3.Client
	defer func() {
		for _, c := range clis {
			c.Close()
		}
	}()
	for _, a := range clientAddrs {
		c, err := newClient([]string{a})
		if err != nil {
			return err
		}
		clis = append(clis, c)
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	last := "no answer yet"
	for {
		ok := 0
		for i, c := range clis {
			lctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			l, err := listShards(lctx, c)
			cancel()
			if err != nil {
				last = fmt.Sprintf("%s: %v", name(i), err)
				continue
			}
			led := true
			for _, s := range l.Shards {
				if s.Leader == "" || s.Err != "" {
					last = fmt.Sprintf("%s sees shard %d without a leader (%s)", name(i), s.ID, s.Err)
					led = false
					break
				}
			}
			if led {
				ok++
			}
		}
		if ok == len(clis) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("shards not all led (%d of %d hosts see a leader in every shard; %s): %w", ok, len(clis), last, ctx.Err())
		case <-tick.C:
		}
	}
}

// leadershipView reports who leads what, as one comparable string per
// group (leader and term), or an error when it cannot tell now.
type leadershipView func(ctx context.Context) (map[uint64]string, error)

// shardLeaders is the view of a sharded cluster: every shard's leader and
// term as one host (cli's) lists them.
func shardLeaders(cli *clientv3.Client) leadershipView {
	return func(ctx context.Context) (map[uint64]string, error) {
		l, err := listShards(ctx, cli)
		if err != nil {
			return nil, err
		}
		cur := map[uint64]string{}
		for _, s := range l.Shards {
			cur[s.ID] = fmt.Sprintf("%s@%d", s.Leader, s.Term)
		}
		return cur, nil
	}
}

// groupLeaders is the view of one group: the leader and term the first
// member to answer reports (clis: one client per member).
func groupLeaders(clis []*clientv3.Client) leadershipView {
	return func(ctx context.Context) (map[uint64]string, error) {
		var last error
		for _, cli := range clis {
			st, err := cli.Status(ctx, cli.Endpoints()[0])
			if err != nil {
				last = err
				continue
			}
			return map[uint64]string{0: fmt.Sprintf("%x@%d", st.Leader, st.RaftTerm)}, nil
		}
		return nil, last
	}
}

// waitLeadershipSettled waits, after healing, until the view has not
// changed for settledFor: a membership change or transfer under way ends,
// or the hosts' balancer hands shard leaderships back to a host that was
// down or cut off (one a second per host), and each such change is a new
// leader, after which the group's leases get a fresh full TTL as after any
// election. A lease's liveness bound is counted from the last change, which
// this returns; it gives up (returning the last change it saw) at ctx's
// deadline.
func waitLeadershipSettled(ctx context.Context, view leadershipView, now func() int64) (lastChange int64, err error) {
	const settledFor = 3 * time.Second
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	lastChange = now()
	var leaders map[uint64]string
	for {
		vctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		cur, err := view(vctx)
		cancel()
		if err == nil && !maps.Equal(cur, leaders) {
			leaders, lastChange = cur, now()
		}
		if time.Duration(now()-lastChange) >= settledFor {
			return lastChange, nil
		}
		select {
		case <-ctx.Done():
			return lastChange, fmt.Errorf("leadership still changing: %w", ctx.Err())
		case <-tick.C:
		}
	}
}

// shardMapCache keeps the shard map as some host last told it, refreshed
// in the background; the lease holders read it to home their leases.
type shardMapCache struct {
	mu sync.Mutex
	m  shard.Map
}

func newShardMapCache(shards, nodes int) *shardMapCache {
	var hosts []string
	for i := range nodes {
		hosts = append(hosts, name(i))
	}
	m, _ := shard.Initial(shards, hosts, shardReplicas)
	return &shardMapCache{m: m}
}

func (c *shardMapCache) get() shard.Map {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m
}

// lookup returns the ID of the shard holding key.
func (c *shardMapCache) lookup(key string) uint64 { return c.get().Lookup([]byte(key)).ID }

func (c *shardMapCache) set(l *shard.ListResponse) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if l.Version < c.m.Version {
		return
	}
	m := shard.Map{Version: l.Version}
	for _, s := range l.Shards {
		m.Shards = append(m.Shards, s.Shard)
	}
	if m.Validate() == nil {
		c.m = m
	}
}

// refresh re-reads the map every period from any of clis until ctx ends.
func (c *shardMapCache) refresh(ctx context.Context, clis []*clientv3.Client, period time.Duration) {
	t := time.NewTicker(period)
	defer t.Stop()
	for i := 0; ; i++ {
		lctx, cancel := context.WithTimeout(ctx, period)
		if l, err := listShards(lctx, clis[i%len(clis)]); err == nil {
			c.set(l)
		}
		cancel()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// shardNemesis splits and moves shards on a schedule of its own, beside
// the faults, so that splits meet kills, pauses and partitions. Refusals
// while faults are under way are noted, never violations; but a run with
// the nemesis on in which no split (or, where possible, no move) ever
// succeeded is one: it would have proved nothing about splits.
type shardNemesis struct {
	*nemesis
	clis  []*clientv3.Client // one per member
	cache *shardMapCache
	keys  keyspace
	// window is the register workload's key window (its keys are fresh
	// every window).
	window time.Duration

	splits, moves               int
	splitRefused, movesRefused  int
	pendingMove                 *shard.MoveRequest  // a move that failed: finished first next time
	left                        map[uint64][]string // hosts each shard left (a group never re-admits one)
	lastSplitErr, lastMoveError string
}

// splitKeys are the keys the split nemesis picks from: the register's
// windows around the current one (cutting through keys in use and keys
// about to be used), the starts of the set and lease prefixes (moving
// watched prefixes whole), and the prefixes of two of the bank's accounts,
// a different two every window (a shard that holds transactions' state
// refuses to split until they finish: split asks again).
func (sn *shardNemesis) splitKeys(elapsed time.Duration) []string {
	gen := int(elapsed / sn.window)
	var ks []string
	for g := max(gen-1, 0); g <= gen+2; g++ {
		ks = append(ks, fmt.Sprintf("%s%d/", sn.keys.reg, g))
	}
	ks = append(ks, sn.keys.reg, sn.keys.set, sn.keys.lease)
	for i, k := range sn.keys.bank {
		if i%4 == gen%4 {
			ks = append(ks, string(shard.SplitKey([]byte(k))))
		}
	}
	return ks
}

func (sn *shardNemesis) run(ctx context.Context, start time.Time, election time.Duration) {
	for ctx.Err() == nil {
		select {
		case <-ctx.Done():
			return
		case <-time.After(election*2 + time.Duration(sn.rng.IntN(2000))*time.Millisecond):
		}
		// A kind that has not succeeded yet goes first, so that a run is
		// not failed for lack of a split because the dice chose moves.
		kind := sn.kinds[sn.rng.IntN(len(sn.kinds))]
		for _, k := range sn.kinds {
			if (k == NemesisSplit && sn.splits == 0) || (k == NemesisMove && sn.moves == 0) {
				kind = k
				break
			}
		}
		opCtx, cancel := context.WithTimeout(ctx, 20*election+5*time.Second)
		switch kind {
		case NemesisSplit:
			sn.split(opCtx, start)
		case NemesisMove:
			sn.move(opCtx, start)
		}
		cancel()
	}
}

// client picks a member to ask, one not known to be down.
func (sn *shardNemesis) client() (int, *clientv3.Client) {
	for range 2 * len(sn.clis) {
		i := sn.rng.IntN(len(sn.clis))
		if sn.c.running(i) {
			return i, sn.clis[i]
		}
	}
	i := sn.rng.IntN(len(sn.clis))
	return i, sn.clis[i]
}

func (sn *shardNemesis) split(ctx context.Context, start time.Time) {
	at := time.Since(start)
	i, cli := sn.client()
	l, err := listShards(ctx, cli)
	if err != nil {
		sn.splitRefused, sn.lastSplitErr = sn.splitRefused+1, err.Error()
		sn.note(at, "split refused", fmt.Sprintf("listing shards through %s: %v", name(i), err))
		return
	}
	sn.cache.set(l)
	m := sn.cache.get()
	// A key strictly inside its shard, so the split can go through.
	var cands []string
	for _, k := range sn.splitKeys(at) {
		s := m.Lookup([]byte(k))
		if bytes.Compare([]byte(k), s.Start) > 0 {
			cands = append(cands, k)
		}
	}
	if len(cands) == 0 {
		return // every candidate is a shard's start already
	}
	key := cands[sn.rng.IntN(len(cands))]
	s := m.Lookup([]byte(key))
	after, err := shard.SplitShard(ctx, cli.ActiveConnection(), s.ID, []byte(key))
	// A shard holding cross-shard transactions' state refuses to split
	// and says to split again later (the bank workload keeps its shards
	// busy): asked again, paced, until the call's deadline.
	busy := 0
	for ; err != nil && strings.Contains(err.Error(), splitBusy) && pause(ctx, 50*time.Millisecond); busy++ {
		after, err = shard.SplitShard(ctx, cli.ActiveConnection(), s.ID, []byte(key))
	}
	asked := ""
	if busy > 0 {
		asked = fmt.Sprintf(" (asked %d more times: shard busy with transactions)", busy)
	}
	if err != nil {
		sn.splitRefused++
		sn.lastSplitErr = err.Error()
		sn.note(at, "split refused", fmt.Sprintf("shard %d at %q through %s%s: %v", s.ID, key, name(i), asked, err))
		return
	}
	sn.splits++
	sn.cache.set(after)
	sn.note(at, NemesisSplit, fmt.Sprintf("shard %d [%q, %q) at %q through %s%s: %d shards now", s.ID, s.Start, s.End, key, name(i), asked, len(after.Shards)))
}

// splitBusy is in the error of a split refused because the shard holds
// cross-shard transactions' state (server.ErrGRPCSplitBusy).
const splitBusy = "shard busy with cross-shard transactions"

func (sn *shardNemesis) move(ctx context.Context, start time.Time) {
	at := time.Since(start)
	i, cli := sn.client()
	l, err := listShards(ctx, cli)
	if err != nil {
		sn.movesRefused, sn.lastMoveError = sn.movesRefused+1, err.Error()
		sn.note(at, "move refused", fmt.Sprintf("listing shards through %s: %v", name(i), err))
		return
	}
	sn.cache.set(l)
	req := sn.pendingMove
	if req == nil {
		req = sn.pickMove(sn.cache.get())
		if req == nil {
			return
		}
	}
	// Asked through a host that keeps a member of the shard: a host that
	// keeps none forwards the group's membership calls to another host's
	// router, which refuses them (Unimplemented in sharded mode).
	if s, ok := sn.cache.get().ByID(req.Shard); ok {
		for _, k := range sn.rng.Perm(len(s.Members)) {
			var j int
			if _, err := fmt.Sscanf(s.Members[k], "n%d", &j); err == nil && j >= 1 && j <= len(sn.clis) && sn.c.running(j-1) {
				i, cli = j-1, sn.clis[j-1]
				break
			}
		}
	}
	after, err := shard.MoveShard(ctx, cli.ActiveConnection(), req.Shard, req.FromHost, req.ToHost)
	what := fmt.Sprintf("shard %d from %s to %s through %s", req.Shard, req.FromHost, req.ToHost, name(i))
	if err != nil {
		// Every step of a move is idempotent: the same move is run again
		// next time, so none is left half done.
		sn.movesRefused++
		sn.lastMoveError = err.Error()
		sn.pendingMove = req
		sn.note(at, "move refused", what+" (retried next): "+err.Error())
		return
	}
	sn.pendingMove = nil
	sn.moves++
	sn.cache.set(after)
	sn.note(at, NemesisMove, what)
}

// pickMove picks a shard, one of its members, and a host that keeps none
// of it and never did (a group never re-admits a member it removed; a
// shard split off inherits what its parent left).
func (sn *shardNemesis) pickMove(m shard.Map) *shard.MoveRequest {
	if sn.left == nil {
		sn.left = map[uint64][]string{}
	}
	for _, s := range m.Shards {
		if _, ok := sn.left[s.ID]; !ok && s.Parent != 0 {
			sn.left[s.ID] = slices.Clone(sn.left[s.Parent])
		}
	}
	for _, k := range sn.rng.Perm(len(m.Shards)) {
		s := m.Shards[k]
		var to []string
		for j := range sn.c.size() {
			h := name(j)
			if !slices.Contains(s.Members, h) && !slices.Contains(sn.left[s.ID], h) {
				to = append(to, h)
			}
		}
		if len(to) == 0 || len(s.Members) == 0 {
			continue
		}
		from := s.Members[sn.rng.IntN(len(s.Members))]
		sn.left[s.ID] = append(sn.left[s.ID], from)
		return &shard.MoveRequest{Shard: s.ID, FromHost: from, ToHost: to[sn.rng.IntN(len(to))]}
	}
	return nil
}

// verdict is the shard nemesis's part of the report: a nemesis that was
// on but never once succeeded proved nothing, and fails the run.
func (sn *shardNemesis) verdict() []string {
	var out []string
	if slices.Contains(sn.kinds, NemesisSplit) && sn.splits == 0 {
		out = append(out, fmt.Sprintf("split nemesis: no split succeeded over the whole run (%d refused; last: %s)", sn.splitRefused, sn.lastSplitErr))
	}
	if slices.Contains(sn.kinds, NemesisMove) && sn.moves == 0 {
		out = append(out, fmt.Sprintf("move nemesis: no move succeeded over the whole run (%d refused; last: %s)", sn.movesRefused, sn.lastMoveError))
	}
	return out
}

// newShardNemesis makes the shard nemesis with a client per member.
func newShardNemesis(nm *nemesis, c cluster, cache *shardMapCache, keys keyspace, window time.Duration) (*shardNemesis, error) {
	sn := &shardNemesis{nemesis: nm, cache: cache, keys: keys, window: window}
	for i := range c.size() {
		cli, err := newClient([]string{c.client(i)})
		if err != nil {
			sn.close()
			return nil, err
		}
		sn.clis = append(sn.clis, cli)
	}
	return sn, nil
}

func (sn *shardNemesis) close() {
	for _, c := range sn.clis {
		c.Close()
	}
}

// shardSummary is the report's line on the shard nemeses.
func shardSummary(shards int, sn *shardNemesis, final int) string {
	if sn == nil {
		return fmt.Sprintf("shards: %d at start, %d at the end (no split or move nemesis)", shards, final)
	}
	return fmt.Sprintf("shards: %d at start, %d at the end; %d splits done (%d refused under faults), %d moves done (%d refused under faults)",
		shards, final, sn.splits, sn.splitRefused, sn.moves, sn.movesRefused)
}
