package recipestest

import (
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ballotdb/ballot/recipes/fence"
	"github.com/ballotdb/ballot/recipes/lock"
)

// CheckLock checks recipes/lock:
//   - contention: workers on different members increment a counter in the
//     store under the lock, each increment a fenced read-modify-write; no
//     two hold the lock at once, every holder's token is larger than the
//     last, and no increment is lost;
//   - a holder paused past its TTL (its lease no longer renewed): a waiter
//     gets the lock only after the lease could have expired, with a larger
//     token, and when the old holder wakes up its fenced write is refused
//     by the store and by a fenced register;
//   - a holder whose lease is revoked is refused the same way;
//   - TryLock gives up with ErrLocked while the lock is held, and takes a
//     free lock at once.
func CheckLock(t *testing.T, b Backend, workers, each int) {
	ctx := testCtx(t, 120*time.Second)
	name := unique("lock")
	counter := "ballot-check/" + name + "/counter"

	// Contention.
	var reg fence.Register
	var inside atomic.Int32
	var wg sync.WaitGroup
	for w := range workers {
		cli := client(t, member(b, w))
		l := lock.New(cli, lock.WithTTL(TTLSeconds))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				h, err := l.Lock(ctx, name)
				if err != nil {
					t.Errorf("worker %d: lock: %v", w, err)
					return
				}
				if n := inside.Add(1); n != 1 {
					t.Errorf("%d holders at once", n)
				}
				if err := reg.Write(h.Token, fmt.Sprint("worker-", w)); err != nil {
					t.Errorf("worker %d: register refused the holder: %v", w, err)
				}
				r, err := cli.Get(ctx, counter)
				if err != nil {
					t.Errorf("worker %d: read: %v", w, err)
					return
				}
				v := 0
				if len(r.Kvs) > 0 {
					v, _ = strconv.Atoi(string(r.Kvs[0].Value))
				}
				if err := h.Put(ctx, counter, strconv.Itoa(v+1)); err != nil {
					t.Errorf("worker %d: fenced write while holding: %v", w, err)
				}
				inside.Add(-1)
				if err := h.Unlock(ctx); err != nil {
					t.Errorf("worker %d: unlock: %v", w, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	admin := client(t, b.Endpoints())
	r, err := admin.Get(ctx, counter)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Kvs) == 0 || string(r.Kvs[0].Value) != strconv.Itoa(workers*each) {
		t.Fatalf("counter %v after %d locked increments", r.Kvs, workers*each)
	}
	hist := reg.History()
	for i := 1; i < len(hist); i++ {
		if hist[i].Token <= hist[i-1].Token {
			t.Fatalf("holder tokens not increasing: %d after %d", hist[i].Token, hist[i-1].Token)
		}
	}

	// A holder paused past its TTL, and one whose lease is revoked.
	for _, how := range []string{"paused", "revoked"} {
		la := lock.New(client(t, member(b, 0)), lock.WithTTL(TTLSeconds))
		lb := lock.New(client(t, member(b, 1)), lock.WithTTL(TTLSeconds))
		lc := lock.New(client(t, member(b, 2)), lock.WithTTL(TTLSeconds))
		old, err := la.Lock(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if err := reg.Write(old.Token, "old"); err != nil {
			t.Fatalf("%s: register refused the holder: %v", how, err)
		}
		if h, err := lc.TryLock(ctx, name, 100*time.Millisecond); !errors.Is(err, lock.ErrLocked) {
			t.Fatalf("%s: TryLock while held: %v (got %v), want ErrLocked", how, err, h)
		}
		got := make(chan *lock.Held, 1)
		go func() {
			h, err := lb.Lock(ctx, name)
			if err != nil {
				t.Errorf("%s: waiter: %v", how, err)
			}
			got <- h
		}()
		start := time.Now()
		if how == "paused" {
			old.Session().Orphan() // the holder stops; its lease runs out
		} else if _, err := admin.Revoke(ctx, old.Session().Lease()); err != nil {
			t.Fatal(err)
		}
		var next *lock.Held
		select {
		case next = <-got:
		case <-ctx.Done():
			t.Fatalf("%s: the waiter never got the lock", how)
		}
		if next == nil {
			t.FailNow()
		}
		if took := time.Since(start); how == "paused" && took < TTLSeconds*time.Second/3 {
			t.Errorf("paused: lock passed on after %v, before the holder's %d s lease could expire", took, TTLSeconds)
		}
		if next.Token <= old.Token {
			t.Errorf("%s: new holder's token %d not above the old one's %d", how, next.Token, old.Token)
		}
		if err := reg.Write(next.Token, "new"); err != nil {
			t.Errorf("%s: register refused the new holder: %v", how, err)
		}
		if err := next.Put(ctx, counter, "new"); err != nil {
			t.Errorf("%s: new holder's fenced write: %v", how, err)
		}
		// The old holder wakes up and writes as if it still held the lock.
		if err := old.Put(ctx, counter, "old"); !errors.Is(err, lock.ErrFenced) {
			t.Errorf("%s: old holder's fenced write: %v, want ErrFenced", how, err)
		}
		if err := reg.Write(old.Token, "old"); !errors.Is(err, fence.ErrStale) {
			t.Errorf("%s: register accepted token %d after %d: %v", how, old.Token, next.Token, err)
		}
		if r, err := admin.Get(ctx, counter); err != nil || string(r.Kvs[0].Value) != "new" {
			t.Errorf("%s: counter after the stale write: %v %v, want new", how, r.Kvs, err)
		}
		if err := old.Unlock(ctx); err != nil {
			t.Errorf("%s: unlock of an expired lock: %v", how, err)
		}
		if err := next.Unlock(ctx); err != nil {
			t.Fatal(err)
		}
		h, err := lc.TryLock(ctx, name, 0)
		if err != nil {
			t.Fatalf("%s: TryLock of a free lock: %v", how, err)
		}
		if err := h.Unlock(ctx); err != nil {
			t.Fatal(err)
		}
	}
}
