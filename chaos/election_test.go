package chaos

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ballotdb/ballot/server/servertest"
)

// electionHistory builds a committed history from (rev, token, candidate, term) rows.
func electionHistory(rows ...[4]int) []electionWrite {
	var out []electionWrite
	for i, r := range rows {
		out = append(out, electionWrite{rev: int64(r[0]), token: int64(r[1]), candidate: r[2], term: r[3], seq: i})
	}
	return out
}

// TestElectionCheckerBites: the election workload's checker accepts a
// clean history, and reports a stale leader's write accepted after a newer
// one's, two leaderships sharing a token, interleaved leaderships, a lost
// acknowledged write, two campaigns granted one token, a token that did
// not grow in real time, and leadership that never came back.
func TestElectionCheckerBites(t *testing.T) {
	t0 := time.Now()
	clean := func() *electionWorkload {
		h := electionHistory([4]int{10, 5, 0, 0}, [4]int{11, 5, 0, 0}, [4]int{15, 9, 1, 0}, [4]int{16, 9, 1, 0}, [4]int{20, 17, 0, 1})
		return &electionWorkload{
			history: h,
			acked:   []electionWrite{h[0], h[2], h[4]}, // the others' outcomes unknown to their writers
			terms: []electionTerm{
				{candidate: 0, term: 0, token: 5, invoked: t0, won: t0.Add(time.Second)},
				{candidate: 1, term: 0, token: 9, invoked: t0, won: t0.Add(2 * time.Second)},
				{candidate: 0, term: 1, token: 17, invoked: t0.Add(3 * time.Second), won: t0.Add(4 * time.Second)},
			},
			regained: 3 * time.Second,
		}
	}
	if v := clean().verify(); len(v) != 0 {
		t.Fatalf("clean history reported: %v", v)
	}
	cases := []struct {
		name   string
		mutate func(*electionWorkload)
		want   string
	}{
		{"stale leader passes the fence", func(w *electionWorkload) {
			w.history = append(w.history, electionWrite{rev: 21, token: 9, candidate: 1, term: 0, seq: 9})
		}, "token 9 committed at revision 21 after one with token 17"},
		{"two leaderships share a token", func(w *electionWorkload) {
			w.history[1].candidate = 2
		}, "token 5 written by two leaderships"},
		{"leaderships interleave under one token", func(w *electionWorkload) {
			// Candidates 1 and 2 alternate under token 9: a second leader
			// the fence let through.
			w.history[3].candidate = 2
			w.acked = w.acked[:2]
		}, "token 9 written by two leaderships: candidate 1 term 0 and candidate 2 term 0"},
		{"a new term with the old token", func(w *electionWorkload) {
			// Candidate 0's next term wrote with its first term's token:
			// tokens of successive leaderships did not grow.
			w.history = w.history[:2]
			w.history = append(w.history, electionWrite{rev: 12, token: 5, candidate: 0, term: 1})
			w.acked = w.acked[:1]
		}, "token 5 written by two leaderships: candidate 0 term 0 and candidate 0 term 1"},
		{"lost acknowledged write", func(w *electionWorkload) {
			w.history = w.history[:4]
		}, "acknowledged at revision 20 is not in the committed history"},
		{"acknowledged value differs", func(w *electionWorkload) {
			w.acked[1].seq = 42
		}, "acknowledged at revision 15 is not in the committed history"},
		{"two campaigns won one token", func(w *electionWorkload) {
			w.terms[1].token = 5
		}, "two campaigns won with token 5"},
		{"token did not grow in real time", func(w *electionWorkload) {
			w.terms[2].token = 8 // invoked after candidate 1 won with 9
		}, "began campaigning after candidate 1 term 0 had won with token 9"},
		{"leadership not regained", func(w *electionWorkload) {
			w.regained = -1
		}, "no new leader wrote within"},
	}
	for _, c := range cases {
		w := clean()
		c.mutate(w)
		v := w.verify()
		if len(v) == 0 || !strings.Contains(strings.Join(v, "\n"), c.want) {
			t.Errorf("%s: got %v, want a violation mentioning %q", c.name, v, c.want)
		}
	}
}

// TestElectionRegained: awaitRegained sees a term won after the heal write
// within the bound, and ignores terms won before the heal.
func TestElectionRegained(t *testing.T) {
	healed := time.Now()
	w := &electionWorkload{
		terms: []electionTerm{{candidate: 0, term: 0, token: 5, won: healed.Add(-time.Second)}},
		acked: []electionWrite{{rev: 10, token: 5, candidate: 0, term: 0, at: healed.Add(time.Millisecond)}},
	}
	if _, ok := w.regainedSince(healed); ok {
		t.Fatal("a term won before the heal counted as regained leadership")
	}
	w.terms = append(w.terms, electionTerm{candidate: 1, term: 0, token: 9, won: healed.Add(time.Second)})
	w.acked = append(w.acked, electionWrite{rev: 12, token: 9, candidate: 1, term: 0, at: healed.Add(1500 * time.Millisecond)})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	w.awaitRegained(ctx, healed)
	if w.regained != 1500*time.Millisecond {
		t.Fatalf("regained after %v, want 1.5s", w.regained)
	}
	w.history = w.acked
	if v := w.verify(); len(v) != 0 {
		t.Fatalf("clean run reported: %v", v)
	}
}

// TestElectionWorkload runs the workload alone, under kill, pause and
// partition, against real ballot processes, and expects many terms, a
// stale zombie refused by the fence, and no violation.
func TestElectionWorkload(t *testing.T) {
	rep := cleanRound(t, Options{Nodes: 3, Duration: soak(), Seed: 8,
		Nemeses:   []string{NemesisKill, NemesisPause, NemesisPartition},
		Workloads: []string{WorkloadElection}})
	if !strings.Contains(rep.Election, "leadership regained") {
		t.Fatalf("no election summary: %q", rep.Election)
	}
}

// runElectionInProcess runs the election workload's candidates against an
// in-process three-member cluster, without faults, until ctx ends or
// enough zombies have come and gone, and checks the history.
func runElectionInProcess(t *testing.T, ew *electionWorkload) []string {
	t.Helper()
	c := servertest.New(t, 3, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for i, name := range c.Names() {
		cli := c.Client(name)
		wg.Add(1)
		go func() { defer wg.Done(); ew.candidate(ctx, i, cli, 2*time.Second) }()
	}
	// Until a zombie has stopped writing (refused by the fence once its
	// lease expired, or, unfenced, after its bound of writes, well past
	// its successor's election), bounded by ctx.
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for ctx.Err() == nil {
		ew.mu.Lock()
		enough := ew.zombieEnd >= 1
		ew.mu.Unlock()
		if enough {
			break
		}
		<-tick.C
	}
	cancel()
	wg.Wait()
	cctx, ccancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer ccancel()
	return ew.check(cctx, c.Client())
}

// TestElectionUnfencedCaught: leaders whose writes skip the fence — the
// zombie writing on after its lease expired and a successor took over —
// are caught by the checker on a real cluster's history; the same
// workload, fenced, passes, with the zombies' late writes refused.
func TestElectionUnfencedCaught(t *testing.T) {
	if testing.Short() {
		t.Skip("in-process cluster rounds skipped in -short mode")
	}
	fenced := &electionWorkload{}
	if v := runElectionInProcess(t, fenced); len(v) != 0 {
		t.Fatalf("fenced run reported: %v\n%s", v, fenced.summary())
	}
	t.Log(fenced.summary())
	if fenced.zombies == 0 || fenced.fenced == 0 {
		t.Fatalf("no zombie refused by the fence, so the run proves nothing: %s", fenced.summary())
	}
	broken := &electionWorkload{unfenced: true}
	v := runElectionInProcess(t, broken)
	t.Log(broken.summary())
	if !strings.Contains(strings.Join(v, "\n"), "a stale leader passed the fence") {
		t.Fatalf("unfenced writes not caught: %v", v)
	}
}
