package shard_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ballotdb/ballot/shard"
	"github.com/ballotdb/ballot/shard/shardtest"
)

// regIn and regOut are one register operation on one key: a put of a
// unique value, or a get.
type regIn struct {
	key   string
	put   bool
	value string
}

type regOut struct{ value string } // get: "" if absent

// registerModel: independent keys, each absent or holding the last value
// put. Histories are partitioned per key.
var registerModel = porcupine.Model{
	Partition: func(h []porcupine.Operation) [][]porcupine.Operation {
		by := map[string][]porcupine.Operation{}
		for _, op := range h {
			k := op.Input.(regIn).key
			by[k] = append(by[k], op)
		}
		var out [][]porcupine.Operation
		for _, ops := range by {
			out = append(out, ops)
		}
		return out
	},
	Init: func() any { return "" },
	Step: func(state, input, output any) (bool, any) {
		in := input.(regIn)
		if in.put {
			return true, in.value
		}
		return output.(regOut).value == state.(string), state
	},
	Equal: func(a, b any) bool { return a == b },
}

// TestRegisterModelCatchesAStaleRead shows the checker bites: a read that
// returns a value overwritten before the read began is refused.
func TestRegisterModelCatchesAStaleRead(t *testing.T) {
	ops := []porcupine.Operation{
		{ClientId: 0, Input: regIn{key: "k", put: true, value: "1"}, Call: 0, Output: regOut{}, Return: 1},
		{ClientId: 0, Input: regIn{key: "k", put: true, value: "2"}, Call: 2, Output: regOut{}, Return: 3},
		{ClientId: 1, Input: regIn{key: "k"}, Call: 4, Output: regOut{value: "1"}, Return: 5},
	}
	if porcupine.CheckOperations(registerModel, ops) {
		t.Fatal("a stale read passed the linearizability check")
	}
	ops[2].Output = regOut{value: "2"}
	if !porcupine.CheckOperations(registerModel, ops) {
		t.Fatal("a correct history failed the check")
	}
}

// history records operations from many goroutines.
type history struct {
	mu    sync.Mutex
	start time.Time
	ops   []porcupine.Operation
}

func (h *history) add(client int, in regIn, out regOut, call, ret time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ops = append(h.ops, porcupine.Operation{ClientId: client, Input: in, Output: out,
		Call: call.Sub(h.start).Nanoseconds(), Return: ret.Sub(h.start).Nanoseconds()})
}

// TestSplitUnderLoad splits a shard twice while clients keep writing and
// reading through every host, and checks that nothing was lost and no read
// was stale (porcupine, per key: any failed or timed-out operation fails
// the test, since its outcome is unknown), that a watch on a moved range
// goes on without a gap or a repeat, that a lease attached to moved keys
// still holds them and is revoked everywhere, and that a host with a stale
// map is corrected without its client seeing an error.
func TestSplitUnderLoad(t *testing.T) { splitUnderLoad(t, false) }

// TestSplitCheckBites runs the same test on a build whose shards go on
// serving keys a split moved away: the history must fail the check.
func TestSplitCheckBites(t *testing.T) {
	for attempt := 0; attempt < 5; attempt++ {
		if !splitUnderLoad(t, true) {
			return // caught
		}
	}
	t.Fatal("five runs of a build without the shard guard passed the linearizability check")
}

// splitUnderLoad runs the test; with broken, it reports whether the
// history passed the check instead of failing on it.
func splitUnderLoad(t *testing.T, broken bool) (linearizable bool) {
	c := shardtest.NewWith(t, 3, 2, func(cfg *shard.Config) {
		cfg.MapRefresh = time.Hour
		cfg.Unsafe.NoShardGuard = broken
	})
	c.WaitLeaders(20 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cli := c.Client("h1")

	// Keys a/0 … a/9 and b/0 … b/9 in shard 1 ("" – "\x80").
	var keys []string
	for _, p := range []string{"a/", "b/", "c/"} {
		for i := 0; i < 6; i++ {
			keys = append(keys, fmt.Sprintf("%s%d", p, i))
		}
	}
	// A lease whose keys will end up on both sides.
	lease, err := cli.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"a/leased", "c/leased"} {
		if _, err := cli.Put(ctx, k, "l", clientv3.WithLease(lease.ID)); err != nil {
			t.Fatal(err)
		}
	}
	// A watch on a range that the second split moves.
	wcli := c.Client("h2")
	watch := wcli.Watch(ctx, "c/1")

	var puts sync.Map // values put to c/1, for the watch check
	ld := startLoad(t, ctx, c, keys, 6, func(k, v string) {
		if k == "c/1" {
			puts.Store(v, true)
		}
	})
	waitOps := ld.waitOps
	waitOps(200)
	before := c.Host("h3").Map().Version
	m, err := c.Host("h1").Split(ctx, 1, []byte("b/3")) // moved back to "b/"
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Shards) != 3 || string(m.Shards[1].Start) != "b/" {
		t.Fatalf("after the first split: %+v", m.Shards)
	}
	child := m.Shards[1].ID
	waitOps(400)
	m, err = c.Host("h2").Split(ctx, child, []byte("c/"))
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Shards) != 4 {
		t.Fatalf("after the second split: %+v", m.Shards)
	}
	waitOps(600)
	h := ld.stop()
	if t.Failed() {
		return false
	}

	// The history is linearizable, key by key.
	res, info := porcupine.CheckOperationsVerbose(registerModel, h.ops, 30*time.Second)
	if broken {
		t.Logf("broken build: %d operations, %v", len(h.ops), res)
		return res == porcupine.Ok
	}
	if res != porcupine.Ok {
		logFailingKeys(t, h.ops)
		t.Fatalf("history of %d operations is not linearizable (%v); see %s", len(h.ops), res, visualize(t, info))
	}
	t.Logf("%d operations, linearizable, across two splits", len(h.ops))

	// Host h3 never re-read the map on its own (MapRefresh is an hour): its
	// client's reads of moved keys corrected it.
	r, err := c.Client("h3").Get(ctx, "c/", clientv3.WithPrefix())
	if err != nil {
		t.Fatalf("read through a host with a stale map: %v", err)
	}
	if got := c.Host("h3").Map().Version; got <= before || len(r.Kvs) == 0 {
		t.Fatalf("h3's map version %d (was %d), %d keys", got, before, len(r.Kvs))
	}

	// The watch on c/1 saw every acknowledged put exactly once, in order.
	var seen []string
	var last int64
	want := 0
	puts.Range(func(_, _ any) bool { want++; return true })
	for len(seen) < want {
		select {
		case wr := <-watch:
			if err := wr.Err(); err != nil {
				t.Fatalf("the watch on a moved key ended: %v", err)
			}
			for _, ev := range wr.Events {
				if ev.Kv.ModRevision <= last {
					t.Fatalf("watch repeated or reordered: revision %d after %d", ev.Kv.ModRevision, last)
				}
				last = ev.Kv.ModRevision
				seen = append(seen, string(ev.Kv.Value))
			}
		case <-ctx.Done():
			t.Fatalf("the watch saw %d of %d puts", len(seen), want)
		}
	}
	for _, v := range seen {
		if _, ok := puts.Load(v); !ok {
			t.Fatalf("the watch saw a value nobody put: %q", v)
		}
	}

	// The lease holds its keys in both shards, and goes everywhere.
	ttl, err := cli.TimeToLive(ctx, lease.ID, clientv3.WithAttachedKeys())
	if err != nil {
		t.Fatal(err)
	}
	var attached []string
	for _, k := range ttl.Keys {
		attached = append(attached, string(k))
	}
	sort.Strings(attached)
	if strings.Join(attached, ",") != "a/leased,c/leased" {
		t.Fatalf("lease keys after the splits: %v", attached)
	}
	if _, err := cli.KeepAliveOnce(ctx, lease.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Revoke(ctx, lease.ID); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"a/leased", "c/leased"} {
		if r, err := cli.Get(ctx, k); err != nil || r.Count != 0 {
			t.Fatalf("%s after revoking its lease: %v %v", k, r, err)
		}
	}
	// Every key is in the shard the map says.
	all, err := cli.Get(ctx, "", clientv3.WithFromKey(), clientv3.WithKeysOnly())
	if err != nil {
		t.Fatal(err)
	}
	if all.Count == 0 {
		t.Fatal("no keys after the splits")
	}
	return true
}

// load is clients putting unique values to and getting random keys of a
// set through every host, recording a history for porcupine.
type load struct {
	h       *history
	stopc   chan struct{}
	wg      sync.WaitGroup
	t       *testing.T
	ctx     context.Context
	waitOps func(n int)
}

// startLoad starts clients goroutines; onPut sees every acknowledged put.
func startLoad(t *testing.T, ctx context.Context, c *shardtest.Cluster, keys []string, clients int, onPut func(k, v string)) *load {
	ld := &load{h: &history{start: time.Now()}, stopc: make(chan struct{}), t: t, ctx: ctx}
	names := c.Names()
	for client := 0; client < clients; client++ {
		ld.wg.Add(1)
		go func() {
			defer ld.wg.Done()
			cl := c.Client(names[client%len(names)])
			rng := rand.New(rand.NewPCG(uint64(client), 7))
			for n := 0; ; n++ {
				select {
				case <-ld.stopc:
					return
				default:
				}
				k := keys[rng.IntN(len(keys))]
				call := time.Now()
				if rng.IntN(2) == 0 {
					v := fmt.Sprintf("%d.%d", client, n)
					if _, err := cl.Put(ctx, k, v); err != nil {
						t.Errorf("put %s: %v (an unknown outcome fails the check)", k, err)
						return
					}
					if onPut != nil {
						onPut(k, v)
					}
					ld.h.add(client, regIn{key: k, put: true, value: v}, regOut{}, call, time.Now())
				} else {
					r, err := cl.Get(ctx, k)
					if err != nil {
						t.Errorf("get %s: %v", k, err)
						return
					}
					out := regOut{}
					if len(r.Kvs) == 1 {
						out.value = string(r.Kvs[0].Value)
					}
					ld.h.add(client, regIn{key: k}, out, call, time.Now())
				}
			}
		}()
	}
	ld.waitOps = func(n int) {
		deadline := time.Now().Add(20 * time.Second)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			ld.h.mu.Lock()
			got := len(ld.h.ops)
			ld.h.mu.Unlock()
			if got >= n || time.Now().After(deadline) || t.Failed() {
				return
			}
			select {
			case <-tick.C:
			case <-ctx.Done():
				return
			}
		}
	}
	return ld
}

// stop stops the clients and returns the history.
func (ld *load) stop() *history {
	close(ld.stopc)
	ld.wg.Wait()
	return ld.h
}

// logFailingKeys logs, for each key whose own history is not
// linearizable, its operations in call order.
func logFailingKeys(t *testing.T, ops []porcupine.Operation) {
	for _, part := range registerModel.Partition(ops) {
		if porcupine.CheckOperations(registerModel, part) {
			continue
		}
		sort.Slice(part, func(i, j int) bool { return part[i].Call < part[j].Call })
		var b strings.Builder
		for _, op := range part {
			in := op.Input.(regIn)
			if in.put {
				fmt.Fprintf(&b, "\n  c%d put %s [%.3f, %.3f] ms", op.ClientId, in.value, float64(op.Call)/1e6, float64(op.Return)/1e6)
			} else {
				fmt.Fprintf(&b, "\n  c%d get -> %q [%.3f, %.3f] ms", op.ClientId, op.Output.(regOut).value, float64(op.Call)/1e6, float64(op.Return)/1e6)
			}
		}
		t.Logf("key %s is not linearizable:%s", part[0].Input.(regIn).key, b.String())
	}
}

func visualize(t *testing.T, info porcupine.LinearizationInfo) string {
	path := t.TempDir() + "/history.html"
	if err := porcupine.VisualizePath(registerModel, info, path); err != nil {
		return err.Error()
	}
	return path
}

// TestAutoSplit: a shard that grows past SplitBytes is split at its middle
// key by its leader's host, and every key is still there.
func TestAutoSplit(t *testing.T) {
	c := shardtest.NewWith(t, 3, 1, func(cfg *shard.Config) {
		cfg.SplitBytes = 20 << 10
		cfg.MapRefresh = 50 * time.Millisecond
	})
	c.WaitLeaders(20 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cli := c.Client()
	value := strings.Repeat("v", 1000)
	for i := 0; i < 40; i++ {
		if _, err := cli.Put(ctx, fmt.Sprintf("users/%03d", i), value); err != nil {
			t.Fatal(err)
		}
		if _, err := cli.Put(ctx, fmt.Sprintf("orders/%03d", i), value); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 30*time.Second, "an automatic split", func() bool { return len(c.Host("h1").Map().Shards) > 1 })
	m := c.Host("h1").Map()
	t.Logf("after growing: %d shards, second starts at %q", len(m.Shards), m.Shards[1].Start)
	for _, s := range m.Shards[1:] {
		if !bytes.HasSuffix(s.Start, []byte("/")) {
			t.Fatalf("split at %q, not at a prefix", s.Start)
		}
	}
	r, err := cli.Get(ctx, "", clientv3.WithFromKey(), clientv3.WithCountOnly())
	if err != nil || r.Count != 80 {
		t.Fatalf("%d keys after the split (%v), want 80", r.Count, err)
	}
}

// TestSplitAgainIsDone: asking for a split that is already done (a retry
// whose first answer was lost) answers with the map, not an error; a key
// outside the shard that no split of it made is still refused.
func TestSplitAgainIsDone(t *testing.T) {
	c := shardtest.New(t, 3, 2)
	c.WaitLeaders(20 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	h := c.Host(c.Names()[0])
	var m1 shard.Map
	var err error
	// The meta group writes the first map just after it elects a leader.
	waitFor(t, 20*time.Second, "the first split", func() bool {
		m1, err = h.Split(ctx, 1, []byte("m/"))
		return err == nil
	})
	m2, err := h.Split(ctx, 1, []byte("m/"))
	if err != nil {
		t.Fatalf("the same split again: %v", err)
	}
	if len(m2.Shards) != len(m1.Shards) {
		t.Fatalf("the same split again made %d shards of %d", len(m2.Shards), len(m1.Shards))
	}
	if _, err := h.Split(ctx, 1, []byte("p/")); !errors.Is(err, shard.ErrBadSplit) {
		t.Fatalf("a split of shard 1 at a key it no longer keeps: %v, want ErrBadSplit", err)
	}
}

// TestAutoSplitByLoad: a shard whose log grows faster than SplitLoad for
// several rounds in a row splits at its middle key, while its data is far
// below SplitBytes.
func TestAutoSplitByLoad(t *testing.T) {
	c := shardtest.NewWith(t, 3, 1, func(cfg *shard.Config) {
		cfg.SplitLoad = 20
		cfg.MapRefresh = 100 * time.Millisecond
	})
	c.WaitLeaders(20 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cli := c.Client()
	for i := 0; len(c.Host("h1").Map().Shards) == 1; i++ {
		if ctx.Err() != nil {
			t.Fatal("no split by load within a minute of steady writes")
		}
		if _, err := cli.Put(ctx, fmt.Sprintf("%s/%d", []string{"orders", "users"}[i%2], i%10), "v"); err != nil {
			t.Fatal(err)
		}
	}
	m := c.Host("h1").Map()
	if len(m.Shards) != 2 || string(m.Shards[1].Start) != "users/" {
		t.Fatalf("split by load: %+v; want two shards, the second from \"users/\"", m.Shards)
	}
}
