package sim

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

// TestSweepCorrectPaxos: the Paxos engine passes the same sweep as Raft,
// over 3-, 5- and 7-node clusters, with the same activity minimums, and
// the same checkers (agreement, validity, in-order delivery, monotonic
// progress, linearizability, liveness) watching.
func TestSweepCorrectPaxos(t *testing.T) {
	seeds := 90
	if testing.Short() {
		seeds = 30
	}
	var out strings.Builder
	m := DefaultMinimums
	res := Sweep(SweepOptions{Run: Options{Engine: "paxos"}, Start: 7_000, Seeds: seeds,
		NodeCounts: []int{3, 5, 7}, Minimums: &m, TraceDir: t.TempDir(), Out: &out})
	t.Log(out.String())
	if !res.OK() {
		t.Fatalf("sweep failed:\n%s", out.String())
	}
	if want := fmt.Sprintf("%d passed, 0 failed\n", seeds); !strings.HasSuffix(out.String(), want) {
		t.Fatalf("sweep report does not end with %q", want)
	}
}

// TestDeterminismPaxos: one seed fixes a Paxos run, event for event.
func TestDeterminismPaxos(t *testing.T) {
	for _, seed := range []uint64{5, 77} {
		o := Options{Engine: "paxos", Nodes: 5, Seed: seed, SafetyTicks: 300, TraceTail: 1 << 20}
		a, b := Run(o), Run(o)
		if a.Stats != b.Stats {
			t.Fatalf("seed %d: stats differ:\n%v\n%v", seed, a.Stats, b.Stats)
		}
		if len(a.Trace) < 1000 || !slices.Equal(a.Trace, b.Trace) {
			t.Fatalf("seed %d: traces differ (%d and %d events)", seed, len(a.Trace), len(b.Trace))
		}
	}
}

// TestPaxosBrokenVariantsCaught: every deliberately broken Paxos variant is
// caught by the simulator within its seed budget, by agreement (two nodes
// apply different values at one slot) or the checkers behind it.
func TestPaxosBrokenVariantsCaught(t *testing.T) {
	safety := []string{StateMachineSafety, Linearizability, Validity}
	cases := []struct {
		v      Variant
		nodes  int
		ticks  int
		start  uint64
		budget int
		want   []string
		long   bool
	}{
		{IgnoreAccepted, 3, 500, 1, 50, safety, false},
		{TruncateSuffix, 3, 500, 1, 150, safety, false},
		{OmitDecidedThrough, 3, 500, 1, 300, safety, false},
		// A forgotten promise matters only when a deposed leader's
		// Accept reaches the acceptor after its restart and before the
		// new leader's next message (leader stickiness, stepping down on
		// the first refusal and Decide heartbeats that renew the promise
		// all narrow that window): about one run in a thousand hits it,
		// so this hunt is long and skipped with -short.
		{ForgetPromise, 3, 1000, 1000, 1000, safety, true},
	}
	for _, c := range cases {
		t.Run(string(c.v), func(t *testing.T) {
			if c.long && testing.Short() {
				t.Skipf("%s: long hunt skipped in -short mode", c.v)
			}
			t.Parallel()
			r, ok := hunt(Options{Engine: "paxos", Nodes: c.nodes, SafetyTicks: c.ticks, Variant: c.v}, c.start, c.budget)
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

// TestValidityChecker: a command no client proposed is a violation.
func TestValidityChecker(t *testing.T) {
	c := newChecker()
	c.proposed(command{client: 1, op: 1, key: "a", value: "1.1"})
	if v := c.observeValidity(1, 5, command{client: 1, op: 1, key: "a", value: "1.1"}); v != nil {
		t.Fatalf("proposed command refused: %v", v)
	}
	v := c.observeValidity(1, 6, command{client: 1, op: 2, key: "a", value: "1.2"})
	if v == nil || v.Invariant != Validity {
		t.Fatalf("unproposed command: got %v, want a validity violation", v)
	}
	if v := c.observeValidity(1, 6, command{client: 1, op: 1, key: "a", value: "forged"}); v == nil {
		t.Fatalf("a forged value for a proposed op passed")
	}
}

// TestCheckVariant: an engine knob is refused on the other engine, where it
// would silently do nothing; runtime variants apply to both.
func TestCheckVariant(t *testing.T) {
	if err := CheckVariant("raft", TruncateSuffix); err == nil {
		t.Fatalf("a Paxos knob accepted for raft")
	}
	if err := CheckVariant("paxos", CommitPriorTerm); err == nil {
		t.Fatalf("a Raft knob accepted for paxos")
	}
	for _, e := range []string{"raft", "paxos"} {
		if err := CheckVariant(e, SendBeforePersist); err != nil {
			t.Fatalf("runtime variant refused for %s: %v", e, err)
		}
	}
	if err := CheckVariant("paxos", OmitDecidedThrough); err != nil {
		t.Fatal(err)
	}
}
