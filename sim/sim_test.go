package sim

import (
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
)

// TestSweepCorrect: the correct engine passes a sweep over 3-, 5- and
// 7-node clusters, and the sweep really exercised the cluster (the activity
// minimums are asserted, so a simulator that stopped injecting faults or
// driving clients would fail here).
func TestSweepCorrect(t *testing.T) {
	seeds := 90
	if testing.Short() {
		seeds = 30
	}
	var out strings.Builder
	m := DefaultMinimums
	res := Sweep(SweepOptions{Run: Options{Engine: "raft"}, Start: 7_000, Seeds: seeds,
		NodeCounts: []int{3, 5, 7}, Minimums: &m, TraceDir: t.TempDir(), Out: &out})
	t.Log(out.String())
	if !res.OK() {
		t.Fatalf("sweep failed:\n%s", out.String())
	}
	if want := fmt.Sprintf("%d passed, 0 failed\n", seeds); !strings.HasSuffix(out.String(), want) {
		t.Fatalf("sweep report does not end with %q", want)
	}
}

// TestDeterminism: one seed fixes the whole run, event for event.
func TestDeterminism(t *testing.T) {
	for _, seed := range []uint64{3, 99} {
		a := Run(Options{Nodes: 5, Seed: seed, SafetyTicks: 300, TraceTail: 1 << 20})
		b := Run(Options{Nodes: 5, Seed: seed, SafetyTicks: 300, TraceTail: 1 << 20})
		if a.Stats != b.Stats {
			t.Fatalf("seed %d: stats differ:\n%v\n%v", seed, a.Stats, b.Stats)
		}
		if len(a.Trace) < 1000 || !slices.Equal(a.Trace, b.Trace) {
			t.Fatalf("seed %d: traces differ (%d and %d events)", seed, len(a.Trace), len(b.Trace))
		}
		c := Run(Options{Nodes: 5, Seed: seed + 1, SafetyTicks: 300, TraceTail: 1 << 20})
		if slices.Equal(a.Trace, c.Trace) {
			t.Fatalf("seeds %d and %d gave the same run", seed, seed+1)
		}
	}
}

// hunt runs seeds from start until one fails, at most budget of them, in
// parallel batches, and returns the first failure in seed order.
func hunt(o Options, start uint64, budget int) (Result, bool) {
	batch := runtime.GOMAXPROCS(0) * 4
	for base := 0; base < budget; base += batch {
		n := min(batch, budget-base)
		res := make([]Result, n)
		var wg sync.WaitGroup
		sem := make(chan struct{}, runtime.GOMAXPROCS(0))
		for i := range n {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				oo := o
				oo.Seed = start + uint64(base+i)
				res[i] = Run(oo)
			}()
		}
		wg.Wait()
		for _, r := range res {
			if r.Violation != nil {
				return r, true
			}
		}
	}
	return Result{}, false
}

// TestBrokenVariantsCaught: every deliberately broken variant is caught by
// the simulator within its seed budget, by the invariant that should see it.
// The budgets are what CI can afford; the hunt stops at the first catch.
func TestBrokenVariantsCaught(t *testing.T) {
	cases := []struct {
		v      Variant
		nodes  int
		ticks  int
		budget int
		want   []string
	}{
		{CommitPriorTerm, 3, 2000, 400, []string{LeaderCompleteness, StateMachineSafety}},
		{VoteWithoutLogCheck, 3, 500, 100, []string{LeaderCompleteness, StateMachineSafety}},
		{ReadIndexBeforeNoop, 3, 1000, 200, []string{Linearizability}},
		{SendBeforePersist, 3, 1000, 300, []string{LeaderCompleteness, StateMachineSafety, ElectionSafety, LogMatching, Linearizability}},
		{ForgetVote, 3, 1000, 300, []string{ElectionSafety, LogMatching}},
		{StaleCommit, 3, 500, 50, []string{Monotonic}},
		{NeverHeal, 3, 200, 10, []string{Liveness}},
	}
	for _, c := range cases {
		t.Run(string(c.v), func(t *testing.T) {
			t.Parallel()
			r, ok := hunt(Options{Nodes: c.nodes, SafetyTicks: c.ticks, Variant: c.v}, 1, c.budget)
			if !ok {
				t.Fatalf("%s not caught in %d seeds of %d ticks", c.v, c.budget, c.ticks)
			}
			if !slices.Contains(c.want, r.Violation.Invariant) {
				t.Fatalf("%s caught by %s, want one of %v: %v", c.v, r.Violation.Invariant, c.want, r.Violation)
			}
			t.Logf("%s caught at seed %d: %s", c.v, r.Seed, firstLine(r.Violation.Error()))
		})
	}
}

// TestEachCheckerCatchesAVariant: every checker, with the checkers that
// would fire before it switched off, catches a broken variant on its own.
func TestEachCheckerCatchesAVariant(t *testing.T) {
	cases := []struct {
		checker string
		v       Variant
		disable []string
		ticks   int
		budget  int
	}{
		{ElectionSafety, ForgetVote, nil, 1000, 300},
		{LogMatching, ForgetVote, []string{ElectionSafety}, 1000, 300},
		{LeaderCompleteness, VoteWithoutLogCheck, nil, 500, 100},
		{StateMachineSafety, VoteWithoutLogCheck, []string{LeaderCompleteness, LogMatching}, 500, 100},
		{Monotonic, StaleCommit, nil, 500, 50},
		{Linearizability, ReadIndexBeforeNoop, nil, 1000, 200},
		{Liveness, NeverHeal, nil, 200, 10},
	}
	for _, c := range cases {
		t.Run(c.checker, func(t *testing.T) {
			t.Parallel()
			r, ok := hunt(Options{Nodes: 3, SafetyTicks: c.ticks, Variant: c.v, Disable: c.disable}, 1, c.budget)
			if !ok {
				t.Fatalf("%s with %v off caught nothing in %d seeds", c.v, c.disable, c.budget)
			}
			if r.Violation.Invariant != c.checker {
				t.Fatalf("want %s to catch %s, got %v", c.checker, c.v, r.Violation)
			}
		})
	}
}

// TestFailureReportsReplay: a failed seed is printed with the command that
// replays it, and its trace file holds the events before the violation.
func TestFailureReportsReplay(t *testing.T) {
	dir := t.TempDir()
	var out strings.Builder
	res := Sweep(SweepOptions{Run: Options{Nodes: 3, SafetyTicks: 500, Variant: StaleCommit}, Start: 1, Seeds: 4,
		TraceDir: dir, TraceTail: 500, Out: &out})
	if res.Failed == 0 {
		t.Fatalf("no failure to report:\n%s", out.String())
	}
	s := out.String()
	for _, want := range []string{"FAIL seed ", "replay: go run ./cmd/ballot sim --engine raft --nodes 3 --seed ", "--broken stale-commit", "trace: " + dir} {
		if !strings.Contains(s, want) {
			t.Fatalf("report lacks %q:\n%s", want, s)
		}
	}
	f := res.Failures[0]
	if len(f.Trace) == 0 || !strings.Contains(f.Trace[len(f.Trace)-1], "VIOLATION") {
		t.Fatalf("trace does not end at the violation: %v", f.Trace[max(0, len(f.Trace)-3):])
	}
}
