package compat

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"

	"github.com/ballotdb/ballot/server/servertest"
)

func newClient(t *testing.T, eps []string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

func testCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// TestElection: three candidates, each with its own client on its own
// member, campaign with etcd's concurrency.Election unchanged. Exactly one
// leads at a time; an observer sees each leader in turn; resigning hands
// leadership to the next, and a leader whose session dies (no resign) is
// replaced once its lease expires.
func TestElection(t *testing.T) {
	c := servertest.New(t, 3, nil)
	ctx := testCtx(t, 60*time.Second)
	names := c.Names()
	observer := newClient(t, c.Endpoints(names[0]))
	obs := concurrency.NewElection(mustSession(t, observer, 5), "/election/")
	observed := obs.Observe(ctx)

	type cand struct {
		name string
		sess *concurrency.Session
		el   *concurrency.Election
	}
	var cands []*cand
	for i, m := range names {
		cli := newClient(t, c.Endpoints(m))
		s := mustSession(t, cli, 2)
		cands = append(cands, &cand{name: fmt.Sprint("candidate-", i), sess: s, el: concurrency.NewElection(s, "/election/")})
	}
	var leading atomic.Int32
	won := make(chan *cand, len(cands))
	for _, cd := range cands {
		go func() {
			if err := cd.el.Campaign(ctx, cd.name); err != nil {
				return
			}
			if n := leading.Add(1); n != 1 {
				t.Errorf("%d candidates lead at once", n)
			}
			won <- cd
		}()
	}
	seen := map[string]bool{}
	waitObserved := func(want string) {
		t.Helper()
		for {
			select {
			case r := <-observed:
				if len(r.Kvs) > 0 {
					seen[string(r.Kvs[0].Value)] = true
					if string(r.Kvs[0].Value) == want {
						return
					}
				}
			case <-ctx.Done():
				t.Fatalf("observer never saw %s lead (saw %v)", want, seen)
			}
		}
	}
	// First leader resigns.
	first := <-won
	waitObserved(first.name)
	leading.Add(-1)
	if err := first.el.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	// Second leader dies: its session's lease is no longer kept alive.
	second := <-won
	waitObserved(second.name)
	leading.Add(-1)
	died := time.Now()
	second.sess.Orphan() // stop keep-alives without revoking, as a crash would
	third := <-won
	waitObserved(third.name)
	if took := time.Since(died); took < time.Second {
		t.Fatalf("the dead leader was replaced after %v, before its 2 s lease could expire", took)
	}
	l, err := obs.Leader(ctx)
	if err != nil || string(l.Kvs[0].Value) != third.name {
		t.Fatalf("Leader(): %v %v, want %s", l, err, third.name)
	}
	t.Logf("leaders in turn: %s (resigned), %s (died), %s", first.name, second.name, third.name)
}

func mustSession(t *testing.T, cli *clientv3.Client, ttl int) *concurrency.Session {
	t.Helper()
	s, err := concurrency.NewSession(cli, concurrency.WithTTL(ttl))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestMutex: holders on different members increment a counter stored in
// ballot under concurrency.Mutex with a read-modify-write; with mutual
// exclusion no increment is lost.
func TestMutex(t *testing.T) {
	c := servertest.New(t, 3, nil)
	ctx := testCtx(t, 60*time.Second)
	const workers, each = 4, 10
	names := c.Names()
	var wg sync.WaitGroup
	var inside atomic.Int32
	for w := range workers {
		cli := newClient(t, c.Endpoints(names[w%len(names)]))
		s := mustSession(t, cli, 5)
		mu := concurrency.NewMutex(s, "/lock/counter")
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				if err := mu.Lock(ctx); err != nil {
					t.Error(err)
					return
				}
				if n := inside.Add(1); n != 1 {
					t.Errorf("%d holders inside the mutex", n)
				}
				r, err := cli.Get(ctx, "counter")
				if err != nil {
					t.Error(err)
					return
				}
				v := 0
				if len(r.Kvs) > 0 {
					fmt.Sscan(string(r.Kvs[0].Value), &v)
				}
				// Write only if we still hold the lock (its fencing).
				tr, err := cli.Txn(ctx).If(mu.IsOwner()).Then(clientv3.OpPut("counter", fmt.Sprint(v+1))).Commit()
				if err != nil || !tr.Succeeded {
					t.Errorf("fenced write: %v (succeeded %v)", err, tr != nil && tr.Succeeded)
				}
				inside.Add(-1)
				if err := mu.Unlock(ctx); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	r, err := newClient(t, c.Endpoints()).Get(ctx, "counter")
	if err != nil {
		t.Fatal(err)
	}
	if got := string(r.Kvs[0].Value); got != fmt.Sprint(workers*each) {
		t.Fatalf("counter %s after %d locked increments", got, workers*each)
	}
}

// TestLockReleasedWhenHolderDies: a holder whose client stops keeping its
// session alive loses the lock after the TTL; a waiter then gets it.
func TestLockReleasedWhenHolderDies(t *testing.T) {
	c := servertest.New(t, 3, nil)
	ctx := testCtx(t, 60*time.Second)
	holder := newClient(t, c.Endpoints(c.Names()[0]))
	hs := mustSession(t, holder, 2)
	hm := concurrency.NewMutex(hs, "/lock/x")
	if err := hm.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	waiter := newClient(t, c.Endpoints(c.Names()[2]))
	wm := concurrency.NewMutex(mustSession(t, waiter, 5), "/lock/x")
	if err := wm.TryLock(ctx); !errors.Is(err, concurrency.ErrLocked) {
		t.Fatalf("TryLock while held: %v, want ErrLocked", err)
	}
	dead := time.Now()
	hs.Orphan()
	if err := wm.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(dead); took < time.Second {
		t.Fatalf("lock passed on after %v, before the holder's 2 s lease expired", took)
	}
}

// TestSTM: concurrent transfers between accounts with etcd's software
// transactional memory (serializable isolation) conserve the total.
func TestSTM(t *testing.T) {
	c := servertest.New(t, 3, nil)
	ctx := testCtx(t, 60*time.Second)
	const accounts, start = 5, 100
	setup := newClient(t, c.Endpoints())
	for i := range accounts {
		if _, err := setup.Put(ctx, fmt.Sprint("acct/", i), fmt.Sprint(start)); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	for w := range 4 {
		cli := newClient(t, c.Endpoints(c.Names()[w%3]))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 10 {
				from, to := fmt.Sprint("acct/", (w+i)%accounts), fmt.Sprint("acct/", (w+2*i+1)%accounts)
				if from == to {
					continue
				}
				_, err := concurrency.NewSTM(cli, func(s concurrency.STM) error {
					var a, b int
					fmt.Sscan(s.Get(from), &a)
					fmt.Sscan(s.Get(to), &b)
					n := min(a, 7)
					s.Put(from, fmt.Sprint(a-n))
					s.Put(to, fmt.Sprint(b+n))
					return nil
				}, concurrency.WithIsolation(concurrency.Serializable), concurrency.WithAbortContext(ctx))
				if err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	r, err := setup.Get(ctx, "acct/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, kv := range r.Kvs {
		var v int
		fmt.Sscan(string(kv.Value), &v)
		total += v
	}
	if total != accounts*start {
		t.Fatalf("total %d after transfers, want %d", total, accounts*start)
	}
}
