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

	"github.com/ballotdb/ballot/recipes/twopc"
)

// station is a participant's Work in the checks: it remembers what it did
// to each transaction and refuses to prepare when told to.
type station struct {
	mu     sync.Mutex
	refuse bool
	did    map[string]twopc.State
}

func (s *station) set(tx string, st twopc.State) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.did[tx] = st
}

func (s *station) Prepare(_ context.Context, tx string) (bool, error) {
	if s.refuse {
		return false, nil
	}
	s.set(tx, twopc.Prepared)
	return true, nil
}
func (s *station) Commit(_ context.Context, tx string) error { s.set(tx, twopc.Committed); return nil }
func (s *station) Abort(_ context.Context, tx string) error  { s.set(tx, twopc.Aborted); return nil }

// rig is one participant: its Work and its Journal outlive any one Agent.
type rig struct {
	name    string
	work    *station
	journal *twopc.MemJournal
	agent   *twopc.Agent
}

// crashAt returns a step hook that crashes at its k-th call (from 0), and
// the steps it saw.
func crashAt(k int) (func(twopc.Step) error, func() []twopc.Step) {
	var mu sync.Mutex
	var steps []twopc.Step
	return func(s twopc.Step) error {
			mu.Lock()
			defer mu.Unlock()
			steps = append(steps, s)
			if len(steps)-1 == k {
				return twopc.ErrCrashed
			}
			return nil
		}, func() []twopc.Step {
			mu.Lock()
			defer mu.Unlock()
			return append([]twopc.Step(nil), steps...)
		}
}

const checkPatience = 300 * time.Millisecond

// CheckTwoPC checks recipes/twopc with three participants, each behind its
// own client:
//   - all vote yes: everyone commits; one refuses: everyone aborts;
//   - the coordinator crashes at every step of the protocol; then either
//     the participants resolve on their own first (those in doubt record
//     ABORT if nothing was decided) and a new coordinator recovers, or the
//     other way round;
//   - one participant crashes at every step of its side, on a committing
//     and on an aborting transaction, and recovers from its journal and the
//     decision key;
//   - a slow coordinator loses the race to record the decision to a
//     participant in doubt, and follows its ABORT.
//
// In every case every participant ends in the state the decision key says,
// the decision is the one the crash point implies, and none is left in
// doubt.
func CheckTwoPC(t *testing.T, b Backend) {
	ctx := testCtx(t, 120*time.Second)
	admin := client(t, b.Endpoints())
	names := []string{"a", "b", "c"}
	var clis []*clientv3.Client
	for i := range names {
		clis = append(clis, client(t, member(b, i)))
	}
	newRigs := func(refuse string) []*rig {
		var rs []*rig
		for i, n := range names {
			r := &rig{name: n, work: &station{refuse: n == refuse, did: map[string]twopc.State{}}, journal: twopc.NewMemJournal()}
			r.agent = twopc.NewAgent(clis[i], n, r.work, r.journal, twopc.WithPatience(checkPatience))
			rs = append(rs, r)
		}
		return rs
	}
	parts := func(rs []*rig) []twopc.Participant {
		var ps []twopc.Participant
		for _, r := range rs {
			ps = append(ps, r.agent)
		}
		return ps
	}
	// restart gives participant i a new Agent on the same journal and work.
	restart := func(rs []*rig, i int) {
		rs[i].agent = twopc.NewAgent(clis[i], rs[i].name, rs[i].work, rs[i].journal, twopc.WithPatience(checkPatience))
	}
	// settled checks that every participant did what the key says.
	settled := func(t *testing.T, tx string, rs []*rig, want twopc.Decision) {
		t.Helper()
		d, err := twopc.ReadDecision(ctx, admin, tx)
		if err != nil || d != want {
			t.Fatalf("decision key of %s: %q %v, want %s", tx, d, err, want)
		}
		final := twopc.Aborted
		if want == twopc.Commit {
			final = twopc.Committed
		}
		for _, r := range rs {
			if st, _ := r.journal.State(tx); st != final {
				t.Errorf("%s: participant %s journals %q, want %s", tx, r.name, st, final)
			}
			r.work.mu.Lock()
			did := r.work.did[tx]
			r.work.mu.Unlock()
			if did != final {
				t.Errorf("%s: participant %s did %q, want %s", tx, r.name, did, final)
			}
			if doubt, _ := r.journal.InDoubt(); len(doubt) > 0 {
				t.Errorf("participant %s still in doubt about %v", r.name, doubt)
			}
		}
	}

	t.Run("all-yes", func(t *testing.T) {
		tx, rs := unique("tx"), newRigs("")
		d, err := twopc.NewCoordinator(admin).Run(ctx, tx, parts(rs))
		if err != nil || d != twopc.Commit {
			t.Fatalf("Run: %s %v, want COMMIT", d, err)
		}
		settled(t, tx, rs, twopc.Commit)
	})

	t.Run("one-refuses", func(t *testing.T) {
		tx, rs := unique("tx"), newRigs("b")
		d, err := twopc.NewCoordinator(admin).Run(ctx, tx, parts(rs))
		if err != nil || d != twopc.Abort {
			t.Fatalf("Run: %s %v, want ABORT", d, err)
		}
		settled(t, tx, rs, twopc.Abort)
	})

	t.Run("coordinator-crash", func(t *testing.T) {
		n := len(names)
		steps := 2*n + 2 // prepare×n, decide, notify×n, done
		for k := range steps {
			tx, rs := unique("tx"), newRigs("")
			hook, seen := crashAt(k)
			d, err := twopc.NewCoordinator(admin, twopc.WithStepHook(hook)).Run(ctx, tx, parts(rs))
			if !errors.Is(err, twopc.ErrCrashed) {
				t.Fatalf("crash at step %d: Run returned %s %v, want ErrCrashed", k, d, err)
			}
			crashed := seen()[k]
			want := twopc.Abort
			if k > n { // crashed after recording COMMIT
				want = twopc.Commit
			}
			participantsFirst := k%2 == 0
			if participantsFirst {
				// The coordinator stays dead; each participant's timer
				// fires and it resolves on its own.
				var wg sync.WaitGroup
				for _, r := range rs {
					wg.Add(1)
					go func() {
						defer wg.Done()
						if _, err := r.agent.Resolve(ctx, tx); err != nil {
							t.Errorf("crash at %v: %s resolving: %v", crashed, r.name, err)
						}
					}()
				}
				wg.Wait()
			}
			d, err = twopc.NewCoordinator(admin).Recover(ctx, tx, parts(rs))
			if err != nil || d != want {
				t.Fatalf("crash at %v: Recover: %s %v, want %s", crashed, d, err, want)
			}
			if !participantsFirst {
				for _, r := range rs {
					if err := r.agent.Recover(ctx); err != nil {
						t.Fatalf("crash at %v: %s: Recover: %v", crashed, r.name, err)
					}
				}
			}
			settled(t, tx, rs, want)
			t.Logf("coordinator crashed at %v (participants first: %v): %s", crashed, participantsFirst, want)
		}
	})

	t.Run("participant-crash", func(t *testing.T) {
		cases := []struct {
			refuse string
			kinds  []twopc.StepKind // the target's steps, in order
			want   []twopc.Decision // the decision when it crashes at each
		}{
			{"", []twopc.StepKind{twopc.StepAgentPrepare, twopc.StepAgentPrepared, twopc.StepAgentCommit},
				[]twopc.Decision{twopc.Abort, twopc.Abort, twopc.Commit}},
			{"c", []twopc.StepKind{twopc.StepAgentPrepare, twopc.StepAgentPrepared, twopc.StepAgentAbort},
				[]twopc.Decision{twopc.Abort, twopc.Abort, twopc.Abort}},
		}
		const target = 1 // b
		for _, c := range cases {
			for k, kind := range c.kinds {
				tx, rs := unique("tx"), newRigs(c.refuse)
				hook, seen := crashAt(k)
				rs[target].agent = twopc.NewAgent(clis[target], names[target], rs[target].work, rs[target].journal,
					twopc.WithPatience(checkPatience), twopc.WithStepHook(hook))
				d, err := twopc.NewCoordinator(admin, twopc.WithNotifyAttempts(2)).Run(ctx, tx, parts(rs))
				if s := seen(); len(s) <= k || s[k].Kind != kind {
					t.Fatalf("participant steps %v: no %s at %d", s, kind, k)
				}
				if d != c.want[k] || (err != nil && !errors.Is(err, twopc.ErrUnreached)) {
					t.Fatalf("participant crashed at %s: Run: %s %v, want %s", kind, d, err, c.want[k])
				}
				// The participant restarts: a new Agent on its journal.
				restart(rs, target)
				if err := rs[target].agent.Recover(ctx); err != nil {
					t.Fatalf("participant crashed at %s: Recover: %v", kind, err)
				}
				if doubt, _ := rs[target].journal.InDoubt(); len(doubt) > 0 {
					t.Fatalf("participant crashed at %s: still in doubt after recovery: %v", kind, doubt)
				}
				// A coordinator that was told of unreached participants
				// tells them again (idempotent for the others).
				if d2, err := twopc.NewCoordinator(admin).Recover(ctx, tx, parts(rs)); err != nil || d2 != d {
					t.Fatalf("participant crashed at %s: coordinator Recover: %s %v, want %s", kind, d2, err, d)
				}
				settled(t, tx, rs, c.want[k])
			}
		}
	})

	t.Run("slow-coordinator", func(t *testing.T) {
		tx, rs := unique("tx"), newRigs("")
		resolved := make(chan twopc.Decision, 1)
		var once atomic.Bool
		hook := func(s twopc.Step) error {
			if s.Kind == twopc.StepDecide && once.CompareAndSwap(false, true) {
				// Every participant has voted yes. The coordinator
				// stalls; participant a loses patience and resolves.
				d, err := rs[0].agent.Resolve(ctx, tx)
				if err != nil {
					return fmt.Errorf("resolve: %w", err)
				}
				resolved <- d
			}
			return nil
		}
		d, err := twopc.NewCoordinator(admin, twopc.WithStepHook(hook)).Run(ctx, tx, parts(rs))
		if err != nil || d != twopc.Abort {
			t.Fatalf("slow coordinator: Run %s %v, want the ABORT its participant recorded first", d, err)
		}
		if got := <-resolved; got != twopc.Abort {
			t.Fatalf("participant in doubt resolved %s, want ABORT", got)
		}
		settled(t, tx, rs, twopc.Abort)
	})
}
