package shard_test

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ballotdb/ballot/shard"
	"github.com/ballotdb/ballot/shard/shardtest"
)

// TestCrossShardTxn: a Txn over keys of several shards commits all or
// nothing, takes the branch all its compares choose, and answers reads
// across shards from one consistent state.
func TestCrossShardTxn(t *testing.T) {
	c := shardtest.New(t, 3, 4)
	c.WaitLeaders(20 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cli := c.Client()
	a, b, d := keyIn(1, 4, "a"), keyIn(3, 4, "b"), keyIn(4, 4, "d")
	tr, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(a), "=", 0), clientv3.Compare(clientv3.CreateRevision(b), "=", 0)).
		Then(clientv3.OpPut(a, "1"), clientv3.OpPut(b, "2"), clientv3.OpGet(d)).Else(clientv3.OpGet(a)).Commit()
	if err != nil || !tr.Succeeded || len(tr.Responses) != 3 {
		t.Fatalf("first txn: %+v %v", tr, err)
	}
	// The compares now fail in one shard: the else branch, nothing written.
	tr, err = cli.Txn(ctx).If(clientv3.Compare(clientv3.Value(a), "=", "1"), clientv3.Compare(clientv3.Value(b), "=", "nope")).
		Then(clientv3.OpPut(a, "X"), clientv3.OpPut(b, "X")).Else(clientv3.OpGet(a), clientv3.OpGet(b)).Commit()
	if err != nil || tr.Succeeded {
		t.Fatalf("second txn: %+v %v", tr, err)
	}
	if got := string(tr.Responses[0].GetResponseRange().Kvs[0].Value) + string(tr.Responses[1].GetResponseRange().Kvs[0].Value); got != "12" {
		t.Fatalf("else branch read %q, want 12", got)
	}
	// A read-only txn across every shard.
	tr, err = cli.Txn(ctx).Then(clientv3.OpGet("", clientv3.WithFromKey())).Commit()
	if err != nil || len(tr.Responses[0].GetResponseRange().Kvs) != 2 {
		t.Fatalf("read-only txn across shards: %+v %v", tr, err)
	}
	// What cross-shard transactions do not do is refused, clearly.
	l, _ := cli.Grant(ctx, 10)
	if _, err := cli.Txn(ctx).Then(clientv3.OpPut(a, "1", clientv3.WithLease(l.ID)), clientv3.OpPut(b, "2")).Commit(); err == nil {
		t.Fatal("a cross-shard txn with a lease was accepted")
	}
}

// TestBank moves money between accounts spread over four shards while
// readers sum every account in one cross-shard read, leaders move and hosts
// crash and come back: every
// read sees the same total, and at the end each account holds exactly its
// opening balance plus the transfers that happened — every acknowledged
// transfer among them, once (each transfer writes a marker in the same
// transaction), none half-applied.
func TestBank(t *testing.T) { bank(t, false) }

// TestBankCheckBites: without read locks, a full read's parts are read at
// different moments, and the bank's total check catches a torn read.
func TestBankCheckBites(t *testing.T) {
	if torn := bank(t, true); torn == 0 {
		t.Fatal("full reads without read locks never saw a wrong total")
	}
}

// bank runs the bank test; with broken it returns how many full reads saw
// a wrong total instead of failing on them.
func bank(t *testing.T, broken bool) (torn int64) {
	c := shardtest.NewWith(t, 3, 4, func(cfg *shard.Config) { cfg.Unsafe.NoTxnReadLocks = broken })
	c.WaitLeaders(20 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	const accounts, opening = 8, 100
	acct := func(i int) string { return keyIn(i%4+1, 4, fmt.Sprintf("acct%d", i)) }
	cli := c.Client()
	for i := 0; i < accounts; i++ {
		if _, err := cli.Put(ctx, acct(i), strconv.Itoa(opening)); err != nil {
			t.Fatal(err)
		}
	}
	var (
		wg        sync.WaitGroup
		stop      = make(chan struct{})
		acked     sync.Map // transfer id → "from,to,amount"
		transfers atomic.Int64
		reads     atomic.Int64
		wrong     atomic.Int64
		crashes   atomic.Int64
	)
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cl := c.Client(c.Names()[w%3])
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				from, to := rng.IntN(accounts), rng.IntN(accounts-1)
				if to >= from {
					to++
				}
				amount := 1 + rng.IntN(5)
				ra, err1 := cl.Get(ctx, acct(from))
				rb, err2 := cl.Get(ctx, acct(to))
				if err1 != nil || err2 != nil {
					t.Errorf("reading balances: %v %v", err1, err2)
					return
				}
				va, _ := strconv.Atoi(string(ra.Kvs[0].Value))
				vb, _ := strconv.Atoi(string(rb.Kvs[0].Value))
				id := fmt.Sprintf("%d.%d", w, n)
				marker := keyIn((w+n)%4+1, 4, "xfer/"+id)
				desc := fmt.Sprintf("%d,%d,%d", from, to, amount)
				tr, err := cl.Txn(ctx).If(
					clientv3.Compare(clientv3.ModRevision(acct(from)), "=", ra.Kvs[0].ModRevision),
					clientv3.Compare(clientv3.ModRevision(acct(to)), "=", rb.Kvs[0].ModRevision),
				).Then(
					clientv3.OpPut(acct(from), strconv.Itoa(va-amount)),
					clientv3.OpPut(acct(to), strconv.Itoa(vb+amount)),
					clientv3.OpPut(marker, desc),
				).Commit()
				if err != nil {
					t.Logf("transfer %s: %v (outcome checked through its marker)", id, err)
					continue
				}
				if tr.Succeeded {
					acked.Store(id, desc)
					transfers.Add(1)
				}
			}
		}()
	}
	for r := 0; r < 2; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cl := c.Client(c.Names()[(r+1)%3])
			for {
				select {
				case <-stop:
					return
				default:
				}
				ops := make([]clientv3.Op, accounts)
				for i := range ops {
					ops[i] = clientv3.OpGet(acct(i))
				}
				tr, err := cl.Txn(ctx).Then(ops...).Commit()
				if err != nil {
					t.Logf("full read: %v", err)
					continue
				}
				sum := 0
				for _, resp := range tr.Responses {
					v, _ := strconv.Atoi(string(resp.GetResponseRange().Kvs[0].Value))
					sum += v
				}
				if sum != accounts*opening {
					wrong.Add(1)
					if !broken {
						t.Errorf("a full read saw a total of %d, want %d", sum, accounts*opening)
						return
					}
				}
				reads.Add(1)
			}
		}()
	}
	// Move leadership of every shard around while the money moves, and
	// now and then crash a host and bring it back.
	deadline := time.Now().Add(60 * time.Second)
	round := 0
	target := int64(150)
	if broken {
		// Until a torn read or the deadline: a torn read usually comes
		// within a second, but on Paxos 60 transfers sometimes went by
		// without one.
		target = math.MaxInt64
	}
	for transfers.Load() < target && time.Now().Before(deadline) && !t.Failed() && !(broken && wrong.Load() > 0) {
		h := c.Host(c.Names()[rand.IntN(3)])
		s := uint64(1 + rand.IntN(4))
		if srv := h.Server(s); srv != nil && srv.Node().Leader() == srv.Node().ID() {
			for _, v := range srv.Node().Status().ConfState.Voters {
				if v != srv.Node().ID() {
					tctx, tcancel := context.WithTimeout(ctx, 2*time.Second)
					_ = srv.Node().TransferLeadership(tctx, v)
					tcancel()
					break
				}
			}
		}
		if err := sleepFor(ctx, 100*time.Millisecond); err != nil {
			break
		}
		if round++; round%20 == 0 && !broken {
			victim := c.Names()[rand.IntN(3)]
			c.Stop(victim)
			if err := sleepFor(ctx, 300*time.Millisecond); err != nil {
				break
			}
			c.Restart(victim)
			crashes.Add(1)
		}
	}
	close(stop)
	wg.Wait()
	if broken || t.Failed() {
		return wrong.Load()
	}
	if transfers.Load() < 20 || reads.Load() < 5 {
		t.Fatalf("too little happened: %d transfers, %d full reads", transfers.Load(), reads.Load())
	}
	// Exactly the transfers whose markers exist happened, each once.
	want := make([]int, accounts)
	for i := range want {
		want[i] = opening
	}
	markers := map[string]string{}
	for s := 1; s <= 4; s++ {
		r, err := cli.Get(ctx, keyIn(s, 4, "xfer/"), clientv3.WithPrefix())
		if err != nil {
			t.Fatal(err)
		}
		for _, kv := range r.Kvs {
			markers[strings.TrimPrefix(string(kv.Key)[1:], "xfer/")] = string(kv.Value)
		}
	}
	acked.Range(func(k, v any) bool {
		if markers[k.(string)] != v.(string) {
			t.Errorf("acknowledged transfer %s has no marker", k)
		}
		return true
	})
	for _, desc := range markers {
		var from, to, amount int
		fmt.Sscanf(desc, "%d,%d,%d", &from, &to, &amount)
		want[from] -= amount
		want[to] += amount
	}
	for i := 0; i < accounts; i++ {
		r, err := cli.Get(ctx, acct(i))
		if err != nil {
			t.Fatal(err)
		}
		if got, _ := strconv.Atoi(string(r.Kvs[0].Value)); got != want[i] {
			t.Errorf("account %d holds %d, want %d from the %d transfers that happened", i, got, want[i], len(markers))
		}
	}
	t.Logf("%d transfers acknowledged, %d happened, %d consistent full reads, %d host crashes", transfers.Load(), len(markers), reads.Load(), crashes.Load())
	return 0
}

func sleepFor(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// failOnce returns the step a coordinator is to stop at (none at first;
// the test stores one) and the failpoint that stops it there once.
func failOnce() (*atomic.Value, func(step string) bool) {
	var at atomic.Value
	at.Store("")
	return &at, func(step string) bool {
		if at.Load().(string) == step {
			at.Store("")
			return true
		}
		return false
	}
}

// TestTxnCrashAtEveryStep stops a transaction's coordinator after each
// step of the protocol, as if it crashed there, and checks that readers
// on other hosts never block for good and always see all of it or none of
// it: before the decision, nothing (the record is aborted once past its
// deadline); after it, everything. Then every lock and record is gone.
func TestTxnCrashAtEveryStep(t *testing.T) {
	old := shard.TxnTimeout
	shard.TxnTimeout = 300 * time.Millisecond
	t.Cleanup(func() { shard.TxnTimeout = old })
	failAt, failpoint := failOnce()
	c := shardtest.NewWith(t, 3, 4, func(cfg *shard.Config) {
		cfg.MapRefresh = 100 * time.Millisecond
		cfg.TxnFailpoint = failpoint
	})
	c.WaitLeaders(20 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for i, step := range []string{"after-begin", "after-prepare", "after-decide", "after-resolve"} {
		a, b := keyIn(1, 4, fmt.Sprintf("crash%d", i)), keyIn(3, 4, fmt.Sprintf("crash%d", i))
		if _, err := c.Client("h2").Txn(ctx).Then(clientv3.OpPut(a, "old"), clientv3.OpPut(b, "old")).Commit(); err != nil {
			t.Fatal(err)
		}
		failAt.Store(step)
		_, err := c.Client("h1").Txn(ctx).Then(clientv3.OpPut(a, "new"), clientv3.OpPut(b, "new")).Commit()
		if err == nil {
			t.Fatalf("%s: the failpoint did not stop the coordinator", step)
		}
		// Readers on another host: both old or both new, never stuck.
		rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
		ra, err1 := c.Client("h2").Get(rctx, a)
		rb, err2 := c.Client("h3").Get(rctx, b)
		rcancel()
		if err1 != nil || err2 != nil {
			t.Fatalf("%s: readers blocked or failed: %v %v", step, err1, err2)
		}
		va, vb := string(ra.Kvs[0].Value), string(rb.Kvs[0].Value)
		want := "old"
		if step == "after-decide" || step == "after-resolve" {
			want = "new"
		}
		if va != want || vb != want {
			t.Fatalf("%s: read %s and %s, want both %s", step, va, vb, want)
		}
	}
	// A participant's leader dies holding the transaction's locks: its
	// group's new leader has them (they are replicated), and readers
	// still finish the transaction.
	a, b := keyIn(1, 4, "crashp"), keyIn(3, 4, "crashp")
	failAt.Store("after-prepare")
	if _, err := c.Client("h1").Txn(ctx).Then(clientv3.OpPut(a, "new"), clientv3.OpPut(b, "new")).Commit(); err == nil {
		t.Fatal("the failpoint did not stop the coordinator")
	}
	var victim string
	lead := uint64(c.Host("h1").Server(3).Node().Leader())
	for _, n := range c.Names() {
		if c.Host(n).MemberID() == lead {
			victim = n
		}
	}
	c.Stop(victim)
	var reader string
	for _, n := range c.Names() {
		if n != victim {
			reader = n
		}
	}
	rctx, rcancel := context.WithTimeout(ctx, 15*time.Second)
	rb, err := c.Client(reader).Get(rctx, b)
	ra, err2 := c.Client(reader).Get(rctx, a)
	rcancel()
	if err != nil || err2 != nil || len(rb.Kvs) != 0 || len(ra.Kvs) != 0 {
		t.Fatalf("after a participant's leader died: %v %v %v %v (want neither key written)", rb, err, ra, err2)
	}
	c.Restart(victim)
	c.WaitLeaders(20 * time.Second)
	waitFor(t, 20*time.Second, "every lock and record to be gone", func() bool {
		for _, n := range c.Names() {
			for s := uint64(1); s <= 4; s++ {
				if srv := c.Host(n).Server(s); srv != nil && srv.HasTxnState() {
					return false
				}
			}
		}
		return true
	})
}

// TestWriteSkew: two transactions that each read what the other writes
// cannot both commit (serializable, not snapshot isolation).
func TestWriteSkew(t *testing.T) {
	if n := writeSkews(t, false, 20); n != 0 {
		t.Fatalf("write skew in %d of 20 rounds", n)
	}
}

// TestWriteSkewCheckBites: without read locks the same rounds do show
// write skew.
func TestWriteSkewCheckBites(t *testing.T) {
	if n := writeSkews(t, true, 40); n == 0 {
		t.Fatal("40 rounds without read locks showed no write skew")
	}
}

// writeSkews runs rounds of the two transactions and counts the rounds in
// which both committed.
func writeSkews(t *testing.T, broken bool, rounds int) int {
	c := shardtest.NewWith(t, 3, 4, func(cfg *shard.Config) { cfg.Unsafe.NoTxnReadLocks = broken })
	c.WaitLeaders(20 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	x, y := keyIn(1, 4, "x"), keyIn(4, 4, "y")
	both := 0
	for round := 0; round < rounds; round++ {
		if _, err := c.Client().Txn(ctx).Then(clientv3.OpPut(x, "0"), clientv3.OpPut(y, "0")).Commit(); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		var ok [2]bool
		for i, kv := range [][2]string{{x, y}, {y, x}} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				tr, err := c.Client(c.Names()[i]).Txn(ctx).If(clientv3.Compare(clientv3.Value(kv[0]), "=", "0")).
					Then(clientv3.OpPut(kv[1], "1")).Commit()
				if err != nil {
					t.Errorf("txn: %v", err)
					return
				}
				ok[i] = tr.Succeeded
			}()
		}
		wg.Wait()
		rx, _ := c.Client().Get(ctx, x)
		ry, _ := c.Client().Get(ctx, y)
		skew := string(rx.Kvs[0].Value) == "1" && string(ry.Kvs[0].Value) == "1"
		if skew != (ok[0] && ok[1]) {
			t.Fatalf("round %d: the answers (%v) disagree with the state (x=%s y=%s)", round, ok, rx.Kvs[0].Value, ry.Kvs[0].Value)
		}
		if skew {
			both++
		}
	}
	return both
}

// TestSplitWaitsForTransactions: a shard holding a transaction's locks
// (its coordinator stopped after prepare) refuses to split; Split waits
// until the sweep has finished the transaction and then splits, under one
// new shard ID.
func TestSplitWaitsForTransactions(t *testing.T) {
	old := shard.TxnTimeout
	shard.TxnTimeout = 500 * time.Millisecond
	t.Cleanup(func() { shard.TxnTimeout = old })
	var stop atomic.Bool
	c := shardtest.NewWith(t, 3, 4, func(cfg *shard.Config) {
		cfg.MapRefresh = 100 * time.Millisecond
		cfg.TxnFailpoint = func(step string) bool { return step == "after-prepare" && stop.CompareAndSwap(true, false) }
	})
	c.WaitLeaders(20 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	a, b := keyIn(1, 4, "held/a"), keyIn(3, 4, "held/b")
	stop.Store(true)
	if _, err := c.Client("h1").Txn(ctx).Then(clientv3.OpPut(a, "1"), clientv3.OpPut(b, "1")).Commit(); err == nil {
		t.Fatal("the failpoint did not stop the coordinator")
	}
	before := len(c.Host("h1").Map().Shards)
	m, err := c.Host("h1").Split(ctx, 1, []byte(keyIn(1, 4, "m/")))
	if err != nil {
		t.Fatalf("split of a shard holding a transaction's locks: %v", err)
	}
	if len(m.Shards) != before+1 {
		t.Fatalf("%d shards after one split of %d", len(m.Shards), before)
	}
	for _, s := range m.Shards {
		if s.ID > uint64(before+1) {
			t.Fatalf("shard ID %d: the split used up IDs while it waited (%v)", s.ID, m.Shards)
		}
	}
}

// TestSplitUnderTransactionLoad: a shard that sixteen clients keep busy
// with cross-shard transactions splits all the same — the split drains
// it: new transactions are refused there and start again, those under
// way finish (before the drain, a split waited two minutes and gave up)
// — and no client sees an error or a half-applied transfer.
func TestSplitUnderTransactionLoad(t *testing.T) {
	c := shardtest.New(t, 3, 2)
	c.WaitLeaders(20 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	lctx, lstop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var done, failed atomic.Int64
	var firstErr atomic.Value
	const clients = 16
	for i := range clients {
		cli := c.Client(c.Names()[i%3])
		wg.Go(func() {
			a, b := keyIn(1, 2, fmt.Sprintf("acct-%02d/x", i)), keyIn(2, 2, fmt.Sprintf("acct-%02d/x", i))
			for j := 0; lctx.Err() == nil; j++ {
				_, err := cli.Txn(lctx).Then(clientv3.OpPut(a, fmt.Sprint(j)), clientv3.OpPut(b, fmt.Sprint(j))).Commit()
				switch {
				case err == nil:
					done.Add(1)
				case lctx.Err() == nil:
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
				}
			}
		})
	}
	waitFor(t, 20*time.Second, "transactions under way", func() bool { return done.Load() > 100 })
	for r := range 2 {
		start, before := time.Now(), done.Load()
		sctx, scancel := context.WithTimeout(ctx, 20*time.Second)
		// Two different prefixes of shard 1, the later one first.
		_, err := c.Host("h1").Split(sctx, 1, []byte(keyIn(1, 2, fmt.Sprintf("acct-%02d/", 12-8*r))))
		scancel()
		if err != nil {
			t.Fatalf("split %d under transaction load: %v", r, err)
		}
		t.Logf("split %d after %v, %d transactions meanwhile", r, time.Since(start).Round(time.Millisecond), done.Load()-before)
	}
	if n := len(c.Host("h1").Map().Shards); n != 4 {
		t.Fatalf("%d shards after two splits of one of two", n)
	}
	waitFor(t, 20*time.Second, "transactions after the splits", func() bool { return done.Load() > 200 })
	lstop()
	wg.Wait()
	if n := failed.Load(); n > 0 {
		t.Fatalf("%d transactions failed, first: %v", n, firstErr.Load())
	}
	for i := range clients {
		a, b := keyIn(1, 2, fmt.Sprintf("acct-%02d/x", i)), keyIn(2, 2, fmt.Sprintf("acct-%02d/x", i))
		r, err := c.Client("h1").Txn(ctx).Then(clientv3.OpGet(a), clientv3.OpGet(b)).Commit()
		if err != nil {
			t.Fatal(err)
		}
		va, vb := r.Responses[0].GetResponseRange().Kvs, r.Responses[1].GetResponseRange().Kvs
		if len(va) != 1 || len(vb) != 1 || string(va[0].Value) != string(vb[0].Value) {
			t.Fatalf("client %d's accounts disagree: %v / %v", i, va, vb)
		}
	}
}

// TestDrainRefusesNewTransactions: while a shard's split drain is on, a
// transaction touching it does not begin (its coordinator keeps starting
// it again); once the drain ends it goes through. A drain whose splitter
// is gone is ended by the leader's host after DrainMax.
func TestDrainRefusesNewTransactions(t *testing.T) {
	old := shard.DrainMax
	shard.DrainMax = time.Hour
	t.Cleanup(func() { shard.DrainMax = old })
	c := shardtest.NewWith(t, 3, 2, func(cfg *shard.Config) { cfg.MapRefresh = 100 * time.Millisecond })
	c.WaitLeaders(20 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	a, b := keyIn(1, 2, "x"), keyIn(2, 2, "x")
	transfer := func(d time.Duration) error {
		tctx, tcancel := context.WithTimeout(ctx, d)
		defer tcancel()
		_, err := c.Client("h2").Txn(tctx).Then(clientv3.OpPut(a, "1"), clientv3.OpPut(b, "1")).Commit()
		return err
	}
	if err := transfer(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	srv := c.Host("h1").Server(1)
	if err := srv.Drain(ctx, true); err != nil {
		t.Fatal(err)
	}
	if err := transfer(time.Second); err == nil {
		t.Fatal("a transaction began in a draining shard")
	}
	if err := srv.Drain(ctx, false); err != nil {
		t.Fatal(err)
	}
	if err := transfer(10 * time.Second); err != nil {
		t.Fatalf("after the drain: %v", err)
	}
	// A drain nobody ends: the leader's host ends it.
	shard.DrainMax = 300 * time.Millisecond
	if err := srv.Drain(ctx, true); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the orphaned drain to end", func() bool { return !srv.Draining() })
	if err := transfer(10 * time.Second); err != nil {
		t.Fatalf("after the orphaned drain: %v", err)
	}
}

// TestPushThroughStaleMap: a host whose map predates a split pushes a
// committed transaction whose coordinator died. The record lives in the
// split's child; the shard the stale map names does not know it and must
// not answer "aborted" (a chaos run's bank reader saw a transfer half
// applied: the pusher released the committed transfer's lock in one
// shard as aborted). The pusher is told "wrong shard", reads the map
// again, finds the record committed and finishes the transaction.
func TestPushThroughStaleMap(t *testing.T) {
	failAt, failpoint := failOnce()
	c := shardtest.NewWith(t, 3, 2, func(cfg *shard.Config) {
		cfg.MapRefresh = time.Hour // h2's map stays as the test leaves it
		cfg.TxnFailpoint = failpoint
	})
	c.WaitLeaders(20 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	old := c.Host("h2").Map()
	m, err := c.Host("h1").Split(ctx, 1, []byte("b"))
	if err != nil {
		t.Fatal(err)
	}
	a, b := "c/anchor", keyIn(2, 2, "other")
	if m.Lookup([]byte(a)).ID == 1 || m.Lookup([]byte(b)).ID != 2 {
		t.Fatalf("keys not where the test wants them: %v", m)
	}
	if _, err := c.Client("h1").Txn(ctx).Then(clientv3.OpPut(a, "old"), clientv3.OpPut(b, "old")).Commit(); err != nil {
		t.Fatal(err)
	}
	// Committed, then the coordinator dies before resolving: both parts
	// hold their write locks, and the record (in the child) says committed.
	failAt.Store("after-decide")
	if _, err := c.Client("h1").Txn(ctx).Then(clientv3.OpPut(a, "new"), clientv3.OpPut(b, "new")).Commit(); err == nil {
		t.Fatal("the failpoint did not stop the coordinator")
	}
	c.Host("h2").SetStaleMapForTest(old)
	if _, ok := c.Host("h2").Map().ByID(m.Lookup([]byte(a)).ID); ok {
		t.Fatal("the stale map knows the child")
	}
	r, err := c.Client("h2").Get(ctx, b)
	if err != nil || len(r.Kvs) != 1 {
		t.Fatalf("read through the host with a stale map: %v %v", r, err)
	}
	if got := string(r.Kvs[0].Value); got != "new" {
		t.Fatalf("read %q of a committed transaction's key, want new (its lock was released as aborted)", got)
	}
	ra, err := c.Client("h3").Get(ctx, a)
	if err != nil || len(ra.Kvs) != 1 || string(ra.Kvs[0].Value) != "new" {
		t.Fatalf("the anchor's key: %v %v, want new", ra, err)
	}
}
