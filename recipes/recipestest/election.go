package recipestest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ballotdb/ballot/recipes/election"
	"github.com/ballotdb/ballot/recipes/fence"
)

// How a check ends a leader's term.
const (
	endResign = iota // the leader resigns
	endCrash         // the leader stops renewing its lease (crash or pause)
	endStop          // the member the leader talks to is stopped (3+ members), else its lease is revoked
	endModes
)

// CheckElection runs contenders candidates, each on its own client (spread
// over the members), until every one of them has led once. Terms end in
// turn by resignation, by a crash (the leader's lease is no longer renewed)
// and by stopping the member the leader talks to, restarted once the
// leader's lease has run out (or, with one member, by
// revoking its lease). It checks that
//   - the store never shows two leaders: a candidate wins only once the
//     previous leader's key is gone (a leader whose lease expired under it
//     may still believe it leads; that is logged, and its fenced writes
//     must fail), and a crashed leader is replaced only once its lease
//     could have expired;
//   - each term's token is larger than the one before, and a fenced
//     register accepts every leader's write;
//   - a replaced leader that wakes up is refused, both by the register (its
//     token is lower) and by the store (its Fence no longer holds);
//   - an observer sees every leader, in order, with its token.
func CheckElection(t *testing.T, b Backend, contenders int) {
	ctx := testCtx(t, 120*time.Second)
	name := unique("election")
	board := "ballot-check/" + name + "/board"

	// The observer sees each leader; waitObserved waits for a given one.
	var obsMu sync.Mutex
	var observed []election.Leader
	obsCh := make(chan struct{}, 1)
	go func() {
		for l := range election.New(client(t, b.Endpoints())).Observe(ctx, name) {
			obsMu.Lock()
			observed = append(observed, l)
			obsMu.Unlock()
			select {
			case obsCh <- struct{}{}:
			default:
			}
		}
	}()
	waitObserved := func(term *election.Term) {
		t.Helper()
		for {
			obsMu.Lock()
			for _, l := range observed {
				if l.Token == term.Token && l.Value == term.Value {
					obsMu.Unlock()
					return
				}
			}
			obsMu.Unlock()
			select {
			case <-obsCh:
			case <-ctx.Done():
				t.Fatalf("observer never saw %s lead with token %d", term.Value, term.Token)
			}
		}
	}

	type win struct {
		term *election.Term
		cli  *clientv3.Client
		idx  int
	}
	var current atomic.Pointer[election.Term] // the last winner, until the check ends its term
	won := make(chan win, contenders)
	for i := range contenders {
		cli := client(t, member(b, i))
		el := election.New(cli, election.WithTTL(TTLSeconds))
		go func() {
			for ctx.Err() == nil {
				term, err := el.Campaign(ctx, name, fmt.Sprintf("candidate-%d", i))
				if err != nil {
					t.Logf("candidate-%d: campaign: %v", i, err)
					// Its lease was lost while it waited (its member
					// was stopped): campaign again, as a real
					// candidate would.
					if !sleepCtx(ctx, 50*time.Millisecond) {
						return
					}
					continue
				}
				// The store must never show two leaders. A previous
				// leader that has not ended its term yet is still a
				// leader only if its key still exists — which would put
				// it ahead of this one in line. Its lease may have
				// expired under it (a keepalive that did not get through
				// within the TTL): then it merely believes it leads, and
				// its fenced writes fail.
				if prev := current.Swap(term); prev != nil {
					if keyHeld(ctx, cli, prev) {
						t.Errorf("two leaders at once: %s (token %d) won while %s (token %d) still holds its key",
							term.Value, term.Token, prev.Value, prev.Token)
					} else {
						t.Logf("%s (token %d) won while %s (token %d) still believed it led: its lease had expired under it",
							term.Value, term.Token, prev.Value, prev.Token)
					}
				}
				won <- win{term, cli, i}
				return
			}
		}()
	}

	var reg fence.Register
	var stale []win // replaced leaders, checked once their successor wrote
	var lastToken int64
	var ended time.Time
	endedMode := -1
	expired := false // the last term ended by its lease running out
	admin := client(t, b.Endpoints())
	for round := range contenders {
		var w win
		select {
		case w = <-won:
		case <-ctx.Done():
			t.Fatalf("round %d: no new leader", round)
		}
		term := w.term
		if expired { // the dead leader's lease had to run out
			if took := time.Since(ended); took < TTLSeconds*time.Second/3 {
				t.Errorf("round %d: a dead leader was replaced after %v, before its %d s lease could expire", round, took, TTLSeconds)
			}
		}
		if term.Token <= lastToken {
			t.Errorf("round %d: token %d after %d: tokens must grow", round, term.Token, lastToken)
		}
		lastToken = term.Token
		if err := reg.Write(term.Token, term.Value); err != nil {
			t.Errorf("round %d: register refused the current leader %s: %v", round, term.Value, err)
		}
		r, err := w.cli.Txn(ctx).If(term.Fence()).Then(clientv3.OpPut(board, term.Value)).Commit()
		expiredUnder := false
		switch {
		case err != nil:
			t.Errorf("round %d: fenced write of the current leader: %v", round, err)
		case !r.Succeeded && keyHeld(ctx, admin, term):
			t.Errorf("round %d: fenced write of the current leader %s refused though its key is held", round, term.Value)
		case !r.Succeeded:
			expiredUnder = true
			t.Logf("round %d: %s's lease expired under it before it wrote; its fenced write was refused", round, term.Value)
		}
		if !expiredUnder {
			waitObserved(term)
			l, err := election.New(admin).Leader(ctx, name)
			if (err != nil || l.Token != term.Token || l.Value != term.Value) && keyHeld(ctx, admin, term) {
				t.Errorf("round %d: Leader() = %+v, %v; want %s with token %d", round, l, err, term.Value, term.Token)
			}
		}
		// Leaders replaced in earlier rounds wake up now and try to act.
		for _, s := range stale {
			if err := reg.Write(s.term.Token, s.term.Value+" (stale)"); !errors.Is(err, fence.ErrStale) {
				t.Errorf("round %d: register accepted stale leader %s with token %d after %d: %v", round, s.term.Value, s.term.Token, term.Token, err)
			}
			r, err := s.cli.Txn(ctx).If(s.term.Fence()).Then(clientv3.OpPut(board, s.term.Value+" (stale)")).Commit()
			if err != nil || r.Succeeded {
				t.Errorf("round %d: fenced write of stale leader %s: %v (succeeded %v), want refused", round, s.term.Value, err, r != nil && r.Succeeded)
			}
		}
		stale = nil

		endedMode = round % endModes
		if round == contenders-1 {
			endedMode = endResign
		}
		current.CompareAndSwap(term, nil)
		ended, expired = time.Now(), false
		switch endedMode {
		case endResign:
			if err := term.Resign(ctx); err != nil {
				t.Fatalf("round %d: resign: %v", round, err)
			}
		case endCrash:
			term.Session().Orphan()
			stale, expired = append(stale, w), true
		case endStop:
			if b.Members() >= 3 {
				stopped := w.idx % b.Members()
				b.Stop(stopped)
				expired = true
				// Once the stopped leader's lease has run out, bring
				// its member back: the next leader may be a candidate
				// that talks only to it.
				deadline := time.Now().Add(30 * time.Second)
				for keyHeld(ctx, admin, term) {
					if time.Now().After(deadline) || !sleepCtx(ctx, 10*time.Millisecond) {
						t.Fatalf("round %d: the stopped leader's key outlived its lease", round)
					}
				}
				b.Restart(stopped)
			} else {
				if _, err := admin.Revoke(ctx, term.Session().Lease()); err != nil {
					t.Fatalf("round %d: revoke: %v", round, err)
				}
			}
			stale = append(stale, w)
		}
		t.Logf("round %d: %s led with token %d; its term ends by %s", round, term.Value, term.Token,
			[]string{"resignation", "crash", "member stop or lease revoke"}[endedMode])
	}

	// Every accepted write came from a term in order, one per term.
	hist := reg.History()
	if len(hist) != contenders {
		t.Errorf("register accepted %d writes, want one per term (%d)", len(hist), contenders)
	}
	for i := 1; i < len(hist); i++ {
		if hist[i].Token <= hist[i-1].Token {
			t.Errorf("register history: token %d after %d", hist[i].Token, hist[i-1].Token)
		}
	}
	obsMu.Lock()
	defer obsMu.Unlock()
	var prev int64
	for _, l := range observed {
		if l.Key == "" {
			continue
		}
		if l.Token < prev {
			t.Errorf("observer saw token %d after %d", l.Token, prev)
		}
		prev = l.Token
	}
}

// keyHeld reports whether term's key still exists as the key it created.
func keyHeld(ctx context.Context, cli *clientv3.Client, term *election.Term) bool {
	r, err := cli.Get(ctx, term.Key)
	return err != nil || (len(r.Kvs) > 0 && r.Kvs[0].CreateRevision == term.Token)
}
