package shard_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sort"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/ballotdb/ballot/shard"
	"github.com/ballotdb/ballot/shard/shardtest"
)

// keyIn returns a key in shard i (1-based) of an initial map of n shards.
func keyIn(i, n int, name string) string {
	return string([]byte{byte((i - 1) * 256 / n)}) + name
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestShardedKV runs the etcd KV API over a 3-host, 4-shard cluster: keys
// land in their shards, ranges across shards come back merged in key order
// with limits, counts and sort orders over the whole, and what sharded
// mode refuses is refused with the documented errors.
func TestShardedKV(t *testing.T) {
	c := shardtest.New(t, 3, 4)
	c.WaitLeaders(20 * time.Second)
	cli := c.Client()
	ctx := ctxT(t)

	var want []string
	for s := 1; s <= 4; s++ {
		for j := 0; j < 3; j++ {
			k := keyIn(s, 4, fmt.Sprintf("k%d", j))
			if _, err := cli.Put(ctx, k, fmt.Sprintf("v%d.%d", s, j)); err != nil {
				t.Fatalf("put %q: %v", k, err)
			}
			want = append(want, k)
		}
	}
	sort.Strings(want)
	// The whole keyspace, merged in key order.
	resp, err := cli.Get(ctx, "", clientv3.WithFromKey())
	if err != nil {
		t.Fatal(err)
	}
	if got := keysOf(resp); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("range over all shards: %q, want %q", got, want)
	}
	if resp.Count != 12 || resp.More {
		t.Fatalf("count %d more %v, want 12 false", resp.Count, resp.More)
	}
	// A limit over the whole.
	resp, err = cli.Get(ctx, "", clientv3.WithFromKey(), clientv3.WithLimit(5))
	if err != nil {
		t.Fatal(err)
	}
	if got := keysOf(resp); strings.Join(got, ",") != strings.Join(want[:5], ",") || resp.Count != 12 || !resp.More {
		t.Fatalf("limit 5: %q count %d more %v", got, resp.Count, resp.More)
	}
	// Descending by key, across shards.
	resp, err = cli.Get(ctx, "", clientv3.WithFromKey(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend), clientv3.WithLimit(4))
	if err != nil {
		t.Fatal(err)
	}
	rev := append([]string(nil), want...)
	sort.Sort(sort.Reverse(sort.StringSlice(rev)))
	if got := keysOf(resp); strings.Join(got, ",") != strings.Join(rev[:4], ",") {
		t.Fatalf("descending: %q, want %q", got, rev[:4])
	}
	// Count only.
	resp, err = cli.Get(ctx, "", clientv3.WithFromKey(), clientv3.WithCountOnly())
	if err != nil || resp.Count != 12 || len(resp.Kvs) != 0 {
		t.Fatalf("count only: %v %v", resp, err)
	}
	// Reading at a revision across shards is refused.
	if _, err := cli.Get(ctx, "", clientv3.WithFromKey(), clientv3.WithRev(2)); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("range at a revision across shards: %v, want InvalidArgument", err)
	}
	// A Txn within one shard works, and one across shards (two-phase
	// commit: see txn_test.go for its proofs).
	k1, k2 := keyIn(2, 4, "a"), keyIn(2, 4, "b")
	tr, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(k1), "=", 0)).
		Then(clientv3.OpPut(k1, "1"), clientv3.OpPut(k2, "2")).Commit()
	if err != nil || !tr.Succeeded {
		t.Fatalf("single-shard txn: %v %v", tr, err)
	}
	tr, err = cli.Txn(ctx).Then(clientv3.OpPut(keyIn(1, 4, "x"), "1"), clientv3.OpPut(keyIn(3, 4, "x"), "2")).Commit()
	if err != nil || !tr.Succeeded {
		t.Fatalf("cross-shard txn: %v %v", tr, err)
	}
	// A delete across shards deletes every part.
	dr, err := cli.Delete(ctx, "", clientv3.WithFromKey(), clientv3.WithPrevKV())
	if err != nil || dr.Deleted != 16 || len(dr.PrevKvs) != 16 {
		t.Fatalf("delete across shards: %v %v", dr, err)
	}
	if r, _ := cli.Get(ctx, "", clientv3.WithFromKey(), clientv3.WithCountOnly()); r.Count != 0 {
		t.Fatalf("%d keys left after deleting everything", r.Count)
	}
}

func keysOf(r *clientv3.GetResponse) []string {
	var ks []string
	for _, kv := range r.Kvs {
		ks = append(ks, string(kv.Key))
	}
	return ks
}

// TestShardedWatch: a watch within one shard sees its events with that
// shard's revisions; one across shards is refused when created.
func TestShardedWatch(t *testing.T) {
	c := shardtest.New(t, 3, 4)
	c.WaitLeaders(20 * time.Second)
	cli := c.Client("h2")
	ctx := ctxT(t)

	prefix := keyIn(3, 4, "w/")
	wc := cli.Watch(ctx, prefix, clientv3.WithPrefix())
	other := cli.Watch(ctx, keyIn(1, 4, "w/"), clientv3.WithPrefix())
	for i := 0; i < 5; i++ {
		if _, err := cli.Put(ctx, fmt.Sprintf("%s%d", prefix, i), "v"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cli.Put(ctx, keyIn(1, 4, "w/x"), "v"); err != nil {
		t.Fatal(err)
	}
	var seen []string
	var lastRev int64
	for len(seen) < 5 {
		select {
		case wr := <-wc:
			if err := wr.Err(); err != nil {
				t.Fatal(err)
			}
			for _, ev := range wr.Events {
				if ev.Kv.ModRevision <= lastRev {
					t.Fatalf("revisions not increasing: %d after %d", ev.Kv.ModRevision, lastRev)
				}
				lastRev = ev.Kv.ModRevision
				seen = append(seen, string(ev.Kv.Key))
			}
		case <-ctx.Done():
			t.Fatalf("saw %d of 5 events", len(seen))
		}
	}
	select {
	case wr := <-other:
		if len(wr.Events) != 1 || string(wr.Events[0].Kv.Key) != keyIn(1, 4, "w/x") {
			t.Fatalf("second watch on the same stream: %+v", wr)
		}
	case <-ctx.Done():
		t.Fatal("the watch on shard 1 saw nothing")
	}
	// Across shards: refused at create.
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	all := cli.Watch(wctx, "", clientv3.WithFromKey())
	select {
	case wr, ok := <-all:
		if ok && !wr.Canceled {
			t.Fatalf("a watch across shards was not refused: %+v", wr)
		}
		if ok && !strings.Contains(wr.Err().Error(), "spans shards") {
			t.Fatalf("refused with %v, want the spans-shards reason", wr.Err())
		}
	case <-ctx.Done():
		t.Fatal("no answer to a watch across shards")
	}
}

// TestShardedLeases: a lease lives in one shard; keys of that shard attach
// to it and go when it is revoked; a key of another shard is refused.
func TestShardedLeases(t *testing.T) {
	c := shardtest.New(t, 3, 4)
	c.WaitLeaders(20 * time.Second)
	cli := c.Client()
	ctx := ctxT(t)

	home := keyIn(4, 4, "lock/")
	lctx := metadata.AppendToOutgoingContext(ctx, shard.LeaseKeyHeader, home)
	g, err := cli.Grant(lctx, 30)
	if err != nil {
		t.Fatal(err)
	}
	if uint64(g.ID)>>48 != 4 {
		t.Fatalf("lease %x is not homed in shard 4", g.ID)
	}
	if _, err := cli.Put(ctx, home+"a", "1", clientv3.WithLease(g.ID)); err != nil {
		t.Fatal(err)
	}
	_, err = cli.Put(ctx, keyIn(2, 4, "x"), "1", clientv3.WithLease(g.ID))
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "different shards") {
		t.Fatalf("put with a lease of another shard: %v", err)
	}
	ka, err := cli.KeepAliveOnce(ctx, g.ID)
	if err != nil || ka.TTL <= 0 {
		t.Fatalf("keep-alive: %v %v", ka, err)
	}
	ttl, err := cli.TimeToLive(ctx, g.ID, clientv3.WithAttachedKeys())
	if err != nil || len(ttl.Keys) != 1 {
		t.Fatalf("time to live: %v %v", ttl, err)
	}
	ls, err := cli.Leases(ctx)
	if err != nil || len(ls.Leases) != 1 {
		t.Fatalf("leases: %v %v", ls, err)
	}
	if _, err := cli.Revoke(ctx, g.ID); err != nil {
		t.Fatal(err)
	}
	if r, _ := cli.Get(ctx, home+"a"); r.Count != 0 {
		t.Fatal("revoking the lease left its key")
	}
	if _, err := cli.Revoke(ctx, g.ID); !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		t.Fatalf("second revoke: %v, want lease not found", err)
	}
	// A default grant lives in shard 1 and works there.
	g1, err := cli.Grant(ctx, 30)
	if err != nil || uint64(g1.ID)>>48 != 1 {
		t.Fatalf("default grant: %x %v", g1.ID, err)
	}
	if _, err := cli.Put(ctx, keyIn(1, 4, "y"), "1", clientv3.WithLease(g1.ID)); err != nil {
		t.Fatal(err)
	}
}

// TestShardListAndMode: the shard service lists every shard with a leader,
// and every answer says it comes from a sharded host.
func TestShardListAndMode(t *testing.T) {
	c := shardtest.New(t, 3, 4)
	c.WaitLeaders(20 * time.Second)
	ctx := ctxT(t)
	conn, err := grpc.NewClient(c.Endpoints("h3")[0], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	l, err := shard.List(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Shards) != 4 || l.Host != "h3" {
		t.Fatalf("list: %+v", l)
	}
	for _, s := range l.Shards {
		if s.Leader == "" || s.Err != "" || len(s.Members) != 3 {
			t.Fatalf("shard %d: %+v", s.ID, s)
		}
	}
	// The meta group learns each shard's leader as a hint.
	waitFor(t, 20*time.Second, "leader hints for every shard", func() bool {
		for _, s := range c.Host("h3").Map().Shards {
			if c.Host("h3").LeaderHint(s.ID) == "" {
				return false
			}
		}
		return true
	})
	var hdr metadata.MD
	if _, err := pb.NewKVClient(conn).Range(ctx, &pb.RangeRequest{Key: []byte("x")}, grpc.Header(&hdr)); err != nil {
		t.Fatal(err)
	}
	if got := hdr.Get(shard.ModeHeader); len(got) != 1 || got[0] != "sharded" {
		t.Fatalf("mode header %q, want sharded", got)
	}
}

// TestLeadersSpread: with six shards on three hosts, every host ends up
// leading two of them.
func TestLeadersSpread(t *testing.T) {
	c := shardtest.NewWith(t, 3, 6, func(cfg *shard.Config) { cfg.MapRefresh = 100 * time.Millisecond })
	c.WaitLeaders(20 * time.Second)
	waitFor(t, 30*time.Second, "every host to lead two shards", func() bool {
		leads := map[uint64]int{}
		h := c.Host("h1")
		for _, s := range h.Map().Shards {
			leads[uint64(h.Server(s.ID).Node().Leader())]++
		}
		for _, name := range c.Names() {
			if leads[c.Host(name).MemberID()] != 2 {
				return false
			}
		}
		return true
	})
}

// TestLeaseThroughHostBehindOnSplits: a lease granted in a shard just split
// off is kept alive, listed, asked about and attached to through a host
// whose map predates the split. The router reads the map again instead of
// answering "lease not found" (a chaos run caught keep-alives answered TTL
// 0 while the lease was alive).
func TestLeaseThroughHostBehindOnSplits(t *testing.T) {
	c := shardtest.New(t, 3, 2)
	c.WaitLeaders(20 * time.Second)
	ctx := ctxT(t)
	names := c.Names()
	a, b := c.Host(names[0]), c.Host(names[1])
	old := b.Map()
	// A lease of shard 1 granted before the split: the child gets a copy.
	parent := clientv3.LeaseID(1<<48 | 5)
	if _, err := pb.NewLeaseClient(c.Client(names[0]).ActiveConnection()).LeaseGrant(ctx, &pb.LeaseGrantRequest{ID: int64(parent), TTL: 30}); err != nil {
		t.Fatal(err)
	}
	m, err := a.Split(ctx, 1, []byte("lease/"))
	if err != nil {
		t.Fatal(err)
	}
	child := m.Lookup([]byte("lease/x")).ID
	if child == 1 {
		t.Fatalf("split did not move lease/ out of shard 1: %v", m)
	}
	cliA := c.Client(names[0])
	id := clientv3.LeaseID(child<<48 | 7)
	waitFor(t, 20*time.Second, "the child shard takes grants", func() bool {
		_, err := cliA.Lease.Grant(metadata.AppendToOutgoingContext(ctx, shard.LeaseKeyHeader, "lease/x"), 30)
		return err == nil
	})
	if _, err := pb.NewLeaseClient(cliA.ActiveConnection()).LeaseGrant(ctx, &pb.LeaseGrantRequest{ID: int64(id), TTL: 30}); err != nil {
		t.Fatal(err)
	}

	cliB := c.Client(names[1])
	for name, check := range map[string]func() error{
		"keep-alive": func() error {
			ka, err := cliB.KeepAliveOnce(ctx, id)
			if err != nil {
				return err
			}
			if ka.TTL <= 0 {
				return fmt.Errorf("answered TTL %d", ka.TTL)
			}
			return nil
		},
		"time to live": func() error {
			r, err := cliB.TimeToLive(ctx, id)
			if err != nil {
				return err
			}
			if r.TTL <= 0 {
				return fmt.Errorf("answered TTL %d", r.TTL)
			}
			return nil
		},
		"leases": func() error {
			r, err := cliB.Leases(ctx)
			if err != nil {
				return err
			}
			for _, l := range r.Leases {
				if l.ID == id {
					return nil
				}
			}
			return fmt.Errorf("lease %x not listed among %d", id, len(r.Leases))
		},
		"put with the lease": func() error {
			_, err := cliB.Put(ctx, "lease/y", "1", clientv3.WithLease(id))
			return err
		},
	} {
		b.SetStaleMapForTest(old)
		if _, ok := b.Map().ByID(child); ok {
			t.Fatal("the stale map knows the child")
		}
		if err := check(); err != nil {
			t.Errorf("%s through a host behind on splits: %v", name, err)
		}
	}
	// The parent's lease is listed once (its copy in the child is not a
	// lease of its own), and revoking it twice says "not found" the second
	// time as etcd does, matched by etcd's client.
	r, err := cliB.Leases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, l := range r.Leases {
		if l.ID == parent {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("lease %x listed %d times, want once", parent, n)
	}
	if _, err := cliB.Revoke(ctx, parent); err != nil {
		t.Fatal(err)
	}
	if _, err := cliB.Revoke(ctx, parent); !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		t.Fatalf("second revoke of a split lease: %v, want lease not found", err)
	}
	// A lease naming a shard that does not exist is still not found.
	ka, err := cliB.KeepAliveOnce(ctx, clientv3.LeaseID(999<<48|1))
	if err == nil && ka.TTL > 0 {
		t.Fatalf("keep-alive of a lease in no shard answered TTL %d", ka.TTL)
	}
}

// TestSplitLeaseKeysExpire: a lease granted before a split keeps a key
// that the split moved to the child; when the lease expires at its home,
// the key in the child goes too, within a second or two — through the
// home's host at once (the map keeper's sweep never runs here: its period
// is an hour), and, where that path is skipped, through the sweep alone.
func TestSplitLeaseKeysExpire(t *testing.T) {
	for _, tc := range []struct {
		name    string
		refresh time.Duration
		sweep   bool
	}{
		{"at once", time.Hour, false},
		{"by the sweep", 200 * time.Millisecond, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := shardtest.NewWith(t, 3, 2, func(cfg *shard.Config) { cfg.MapRefresh = tc.refresh })
			c.WaitLeaders(20 * time.Second)
			ctx := ctxT(t)
			names := c.Names()
			if tc.sweep {
				for _, name := range names {
					c.Host(name).LeaveCopiesToSweepForTest()
				}
			}
			cli := c.Client(names[0])
			id := clientv3.LeaseID(1<<48 | 11)
			if _, err := pb.NewLeaseClient(cli.ActiveConnection()).LeaseGrant(ctx, &pb.LeaseGrantRequest{ID: int64(id), TTL: 2}); err != nil {
				t.Fatal(err)
			}
			granted := time.Now()
			if _, err := cli.Put(ctx, "lease/a", "1", clientv3.WithLease(id)); err != nil {
				t.Fatal(err)
			}
			m, err := c.Host(names[0]).Split(ctx, 1, []byte("lease/"))
			if err != nil {
				t.Fatal(err)
			}
			if child := m.Lookup([]byte("lease/a")).ID; child == 1 {
				t.Fatalf("split did not move lease/a out of shard 1: %v", m)
			}
			waitFor(t, 15*time.Second, "the key of the expired lease in the split child to go", func() bool {
				r, err := cli.Get(ctx, "lease/a")
				return err == nil && r.Count == 0
			})
			// Due 2 s after the grant (a leader change could add a TTL):
			// a second or two later at most, not a sweep round stuck
			// behind other chores.
			if took := time.Since(granted); took < 2*time.Second-100*time.Millisecond || took > 5*time.Second {
				t.Fatalf("the key went %v after the grant of a 2 s lease", took)
			}
		})
	}
}

// TestBalanceSettles: with more hosts than replicas, each host keeps only
// some shards, yet the hosts agree on who leads how many (through the
// meta group's leader hints) and the balancer stops handing leaderships
// around: no shard changes leader for several rounds once it has settled.
// (Counting from each host's own groups, two hosts handed one shard back
// and forth for ever in a chaos run.)
func TestBalanceSettles(t *testing.T) {
	c := shardtest.NewWith(t, 5, 10, func(cfg *shard.Config) { cfg.MapRefresh = 100 * time.Millisecond })
	c.WaitLeaders(30 * time.Second)
	leaders := func() map[uint64]uint64 {
		out := map[uint64]uint64{}
		for _, name := range c.Names() {
			h := c.Host(name)
			for _, s := range h.Map().Shards {
				if srv := h.Server(s.ID); srv != nil {
					if l := uint64(srv.Node().Leader()); l != 0 {
						out[s.ID] = l
					}
				}
			}
		}
		return out
	}
	last, since := leaders(), time.Now()
	waitFor(t, 40*time.Second, "shard leadership to stay put for 2 s (40 rounds of the balancer)", func() bool {
		cur := leaders()
		if !maps.Equal(cur, last) {
			last, since = cur, time.Now()
		}
		return time.Since(since) > 2*time.Second
	})
	leads := map[uint64]int{}
	for _, l := range last {
		leads[l]++
	}
	for _, name := range c.Names() {
		if n := leads[c.Host(name).MemberID()]; n > 4 {
			t.Errorf("%s leads %d of 10 shards after balancing: %v", name, n, leads)
		}
	}
}
