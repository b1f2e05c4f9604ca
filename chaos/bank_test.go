package chaos

import (
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
)

// bankHistory is a hand-made history over three accounts: transfer 1
// (10 from a0 to a1) acknowledged, 2 (5 from a1 to a2) refused, 3 (7 from
// a2 to a0) unknown, 4 (3 from a0 to a2) unknown.
func bankHistory() *bankWorkload {
	return &bankWorkload{keys: []string{"a0", "a1", "a2"}, transfers: []bankTransfer{
		{from: 0, to: 1, amount: 10, outcome: bankAcked},
		{from: 1, to: 2, amount: 5, outcome: bankRefused},
		{from: 2, to: 0, amount: 7, outcome: bankUnknown},
		{from: 0, to: 2, amount: 3, outcome: bankUnknown},
	}}
}

// acct makes an account value.
func acct(balance int64, applied ...int64) *bankAccount {
	return &bankAccount{Balance: balance, Applied: applied}
}

// TestBankCheckerBites: the bank's checker reports a full read with a
// wrong total, a torn or stale full read, an acknowledged transfer not
// applied, a half-applied transfer, a lost final total, a refused transfer
// applied and a transfer applied twice; it accepts a correct history, in
// which an unknown transfer applied or not.
func TestBankCheckerBites(t *testing.T) {
	// Transfers 1 and 3 applied (3 unknown, so either way), 4 not.
	good := []*bankAccount{acct(1000-10+7, 1, 3), acct(1000+10, 1), acct(1000-7, 3)}
	bw := bankHistory()
	bw.noteRead([]*bankAccount{acct(1000), acct(1000), acct(1000)}, nil, "opening read")
	bw.noteRead([]*bankAccount{acct(990, 1), acct(1010, 1), acct(1000)}, []int64{1, 1, 0}, "read")
	bw.noteRead(good, []int64{1, 1, 0}, "read")
	if v := bw.verifyFinal(good); len(v) != 0 || bw.badReads != 0 || len(bw.violations) != 0 {
		t.Fatalf("a correct history reported: %v %v", v, bw.violations)
	}
	if bw.reads != 3 || bw.unknownApplied != 1 || bw.finalTotal != 3000 {
		t.Fatalf("counted %d reads, %d unknown applied, final total %d; want 3, 1, 3000", bw.reads, bw.unknownApplied, bw.finalTotal)
	}
	if s := bw.summary(); !strings.Contains(s, "1 transfers acknowledged, 1 refused, 2 unknown (1 applied), 3 consistent full reads") {
		t.Fatalf("summary: %s", s)
	}
	if v := bankHistory().verifyFinal([]*bankAccount{acct(990, 1), acct(1010, 1), acct(1000)}); len(v) != 0 {
		t.Fatalf("a history with no unknown transfer applied reported: %v", v)
	}

	reads := []struct {
		name  string
		state []*bankAccount
		seen  []int64
		want  string
	}{
		// (a) a full read that sees money appear: a1 credited by a
		// transfer the read does not see debited from a0.
		{"full read with a wrong total", []*bankAccount{acct(1000), acct(1010, 1), acct(1000)}, nil, "hold 3010 in all, want 3000"},
		// A torn read whose total is right by chance (a0 debited by
		// transfer 1, a1 not credited, a2 off by as much): the logs
		// show it.
		{"torn read with the right total", []*bankAccount{acct(990, 1), acct(1000), acct(1010)}, nil, "half-applied"},
		{"a balance its log does not give", []*bankAccount{acct(995, 1), acct(1005, 1), acct(1000)}, nil, "holds 995, but its log of 1 transfers gives 990"},
		{"a transfer no client made", []*bankAccount{acct(1000, 9), acct(1000), acct(1000)}, nil, "no client made"},
		{"a transfer logged on an account it does not touch", []*bankAccount{acct(1000), acct(1000), acct(1000, 1)}, nil, "which was between"},
		{"a transfer applied twice", []*bankAccount{acct(980, 1, 1), acct(1020, 1, 1), acct(1000)}, nil, "applied twice"},
		{"a missing account", []*bankAccount{acct(1000), nil, acct(1000)}, nil, "is missing"},
		// Consistent, but older than transfer 1, acknowledged before the
		// read was invoked.
		{"stale full read", []*bankAccount{acct(1000), acct(1000), acct(1000)}, []int64{1, 1, 0}, "stale: transfer 1 was acknowledged before the read was invoked, but is not in \"a0\"'s log"},
	}
	for _, c := range reads {
		bw := bankHistory()
		bw.noteRead(c.state, c.seen, "read")
		v := bw.readViolations()
		if bw.badReads != 1 || !strings.Contains(strings.Join(v, "\n"), c.want) {
			t.Errorf("%s: got %v, want a violation mentioning %q", c.name, v, c.want)
		}
	}

	finals := []struct {
		name  string
		state []*bankAccount
		want  string
	}{
		// (b) transfer 1 was acknowledged; the final state has neither
		// side of it.
		{"acknowledged transfer not applied", []*bankAccount{acct(1000), acct(1000), acct(1000)}, "1 acknowledged transfers not applied, first 1 (10 from \"a0\" to \"a1\")"},
		// (c) unknown transfer 4 debited from a0, never credited to a2.
		{"half-applied transfer", []*bankAccount{acct(987, 1, 4), acct(1010, 1), acct(1000)}, "transfer 4 (3 from \"a0\" to \"a2\", unknown) is half-applied: in \"a0\"'s log, not in \"a2\"'s"},
		// (d) the money is gone: a2 lost 100 with nothing in its log.
		{"lost final total", []*bankAccount{acct(990, 1), acct(1010, 1), acct(900)}, "the accounts hold 2900 in all, want 3000"},
		{"refused transfer applied", []*bankAccount{acct(990, 1), acct(1005, 1, 2), acct(1005, 2)}, "1 refused transfers applied, first 2"},
	}
	for _, c := range finals {
		v := bankHistory().verifyFinal(c.state)
		if len(v) == 0 || !strings.Contains(strings.Join(v, "\n"), c.want) {
			t.Errorf("%s: got %v, want a violation mentioning %q", c.name, v, c.want)
		}
	}
}

// TestBankKeysSpreadOverShards: in a sharded run the accounts fall in
// every initial shard, for 2 to 8 shards, so transfers cross shards.
func TestBankKeysSpreadOverShards(t *testing.T) {
	keys := bankKeys(true)
	for n := 2; n <= 8; n++ {
		c := newShardMapCache(n, 3)
		in := map[uint64]bool{}
		for _, k := range keys {
			in[c.lookup(k)] = true
		}
		if len(in) != n {
			t.Errorf("with %d shards the accounts are in %d of them", n, len(in))
		}
	}
}

// TestShardedBank runs three real `ballot serve --shards 3` processes
// with the bank workload alone for 15 s (or BALLOT_CHAOS_TIME) under kill,
// pause, partition and split, and expects no violation: every full read
// sees the opening total, every acknowledged transfer is applied to both
// its accounts, none half.
func TestShardedBank(t *testing.T) {
	// Long enough for the split nemesis's several tries (one every few
	// seconds).
	rep := cleanRound(t, Options{Nodes: 3, Shards: 3, Duration: max(soak(), 15*time.Second),
		Nemeses:   []string{NemesisKill, NemesisPause, NemesisPartition, NemesisSplit},
		Workloads: []string{WorkloadBank}})
	if strings.Contains(rep.Bank, " 0 transfers acknowledged") || strings.Contains(rep.Bank, " 0 consistent full reads") {
		t.Fatalf("too little happened to prove anything: %s", rep.Bank)
	}
}

// TestWatchCheckerTakesTransfers: a transfer puts two keys at one
// revision, which a watcher of everything (single-group runs) receives as
// two events at that revision; the watch checker accepts them, and still
// reports one key's event repeated at its revision.
func TestWatchCheckerTakesTransfers(t *testing.T) {
	ev := func(rev int64, key, val string) *mvccpb.Event {
		return &mvccpb.Event{Type: mvccpb.PUT, Kv: &mvccpb.KeyValue{Key: []byte(key), Value: []byte(val), ModRevision: rev}}
	}
	w := &watchRecorder{events: []*mvccpb.Event{ev(2, "bank/0", "x"), ev(3, "bank/0", "y"), ev(3, "bank/1", "z"), ev(4, "set/a", "1")}}
	final := map[string]string{"bank/0": "y", "bank/1": "z", "set/a": "1"}
	if p := checkWatches([]*watchRecorder{w}, final, 4); len(p) != 0 {
		t.Fatalf("a transfer's two events at one revision were refused: %v", p)
	}
	dup := &watchRecorder{events: []*mvccpb.Event{ev(2, "bank/0", "x"), ev(3, "bank/0", "y"), ev(3, "bank/0", "y")}}
	if p := checkWatches([]*watchRecorder{dup}, map[string]string{"bank/0": "y"}, 3); len(p) == 0 {
		t.Fatal("a key's event repeated at one revision passed")
	}
}

// TestBankCatchesStaleReads: with linearizable reads served from a
// member's local state, the bank's reader, pinned to a member the
// partitions cut off, sees states older than transfers acknowledged before
// it asked, and the checker says so.
func TestBankCatchesStaleReads(t *testing.T) {
	rep := brokenRound(t, "stale-reads", WorkloadBank)
	if !strings.Contains(strings.Join(rep.Violations, "\n"), "bank: ") {
		t.Fatalf("caught, but not by the bank's checker: %v", rep.Violations)
	}
}
