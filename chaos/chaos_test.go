package chaos

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

type builtBinary struct {
	once sync.Once
	path string
	err  error
}

var (
	plainBin builtBinary // the production build
	clockBin builtBinary // -tags chaosclock: the clock nemesis's hook
)

// ballotBinary builds the ballot binary once per test binary.
func ballotBinary(t *testing.T) string { return (&plainBin).build(t) }

// chaosClockBinary builds the chaosclock ballot binary once per test binary.
func chaosClockBinary(t *testing.T) string { return (&clockBin).build(t, "chaosclock") }

func (b *builtBinary) build(t *testing.T, tags ...string) string {
	t.Helper()
	b.once.Do(func() {
		_, file, _, _ := runtime.Caller(0)
		root := filepath.Dir(filepath.Dir(file))
		dir, err := os.MkdirTemp("", "ballot-chaos-bin-")
		if err != nil {
			b.err = err
			return
		}
		b.path, b.err = BuildBinary(root, dir, tags...)
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}

func soak() time.Duration {
	if d, err := time.ParseDuration(os.Getenv("BALLOT_CHAOS_TIME")); err == nil {
		return d
	}
	return 15 * time.Second
}

// cleanRound runs a round of a build that should pass (the production
// build unless o.Binary says otherwise), logs its summary and fails the
// test on any violation.
func cleanRound(t *testing.T, o Options) *Report {
	t.Helper()
	if testing.Short() {
		t.Skip("chaos round skipped in -short mode")
	}
	if o.Binary == "" {
		o.Binary = ballotBinary(t)
	}
	o.Logf = t.Logf
	rep, err := Run(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + rep.Summary())
	if rep.HasViolations() {
		t.Fatalf("violations:\n%s\nschedule:\n%s", strings.Join(rep.Violations, "\n"), strings.Join(rep.Schedule, "\n"))
	}
	return rep
}

// TestChaosProcesses runs three real ballot processes of the production
// build under every nemesis but clock (which needs the chaosclock build;
// TestChaosDiskAndClock runs it) and every workload, and expects no
// violation.
func TestChaosProcesses(t *testing.T) {
	rep := cleanRound(t, Options{Nodes: 3, Duration: soak(),
		Nemeses: []string{NemesisKill, NemesisPause, NemesisPartition, NemesisDisk}})
	if rep.OK < 500 || rep.SetAcked < 100 || rep.WatchEvents < 100 {
		t.Fatalf("too little happened to prove anything: %d ok register ops, %d set adds, %d watch events", rep.OK, rep.SetAcked, rep.WatchEvents)
	}
	if rep.Lease.Granted < 20 || rep.Lease.KeepAlivesOK < 20 || rep.Lease.Expired < 10 {
		t.Fatalf("too few leases to prove anything: %+v", rep.Lease)
	}
	faults := 0
	for k, v := range rep.Faults {
		if k != "heal" {
			faults += v
		}
	}
	if faults < 3 {
		t.Fatalf("only %d faults injected", faults)
	}
}

// TestShardedChaos runs three real `ballot serve --shards 4` processes
// under kill, pause and partition faults while the split nemesis splits
// the shards that hold the workloads' keys, with every workload on, and
// expects no violation and at least one split. (Of the deliberately
// broken builds only corrupt-puts runs sharded — TestShardedReplicaCheckBites
// — so the other rounds that prove the checkers bite are single-group
// only; the checkers themselves are the same.)
func TestShardedChaos(t *testing.T) {
	rep := cleanRound(t, Options{Nodes: 3, Shards: 4, Duration: max(soak(), 20*time.Second),
		Nemeses:   []string{NemesisKill, NemesisPause, NemesisPartition, NemesisSplit},
		Workloads: []string{WorkloadRegister, WorkloadSet, WorkloadWatch, WorkloadLease, WorkloadLock, WorkloadElection}})
	if rep.Splits < 1 {
		t.Fatalf("no split succeeded: %s", rep.Shards)
	}
	if rep.OK < 300 || rep.SetAcked < 50 || rep.WatchEvents < 50 {
		t.Fatalf("too little happened to prove anything: %d ok register ops, %d set adds, %d watch events",
			rep.OK, rep.SetAcked, rep.WatchEvents)
	}
	if strings.HasPrefix(rep.Lock, "lock: 0 acquisitions") {
		t.Fatalf("the lock workload never held its lock (leases homed in the wrong shard?): %s", rep.Lock)
	}
	if rep.Lease.Granted < 20 || rep.Lease.Expired < 10 {
		t.Fatalf("too few leases to prove anything: %+v", rep.Lease)
	}
}

// TestShardedRefusals: what a sharded run cannot do is refused before
// anything starts, and the shard nemeses need a sharded cluster.
func TestShardedRefusals(t *testing.T) {
	for _, o := range []Options{
		{Shards: 4, Containers: true, Binary: "ballot"},
		{Shards: 300, Binary: "ballot"},
		{Shards: 4, Unsafe: []string{"stale-reads"}, Binary: "ballot"},
		{Nemeses: []string{NemesisSplit}, Binary: "ballot"},
		{Nemeses: []string{NemesisMove}, Binary: "ballot"},
	} {
		o.Dir = t.TempDir()
		if _, err := Run(context.Background(), o); err == nil {
			t.Fatalf("%+v was not refused", o)
		}
	}
}

// TestChaosDiskAndClock runs a round under only the disk and clock
// nemeses: a member whose file system fills refuses writes with etcd's
// "database space exceeded", never crashes, and catches up once space
// returns (the nemesis checks); a member whose clock runs 2–4× fast or
// slow breaks nothing. Where the disk nemesis cannot run (not root, no
// loop devices) it is skipped, and the test says so loudly.
func TestChaosDiskAndClock(t *testing.T) {
	if testing.Short() {
		t.Skip("chaos round skipped in -short mode")
	}
	dir := t.TempDir()
	rep := cleanRound(t, Options{Nodes: 3, Duration: soak(), Nemeses: []string{NemesisDisk, NemesisClock},
		Seed: 7, Binary: chaosClockBinary(t), Dir: dir})
	for _, s := range rep.Skipped {
		t.Logf("!!! SKIPPED: %s", s)
	}
	if rep.Faults[NemesisDisk] > 0 && rep.NoSpace == 0 {
		t.Fatalf("%d disk faults, yet no client was refused with \"database space exceeded\": the disk was never full", rep.Faults[NemesisDisk])
	}
	if rep.Faults[NemesisClock] > 0 {
		// The members' logs show the hook took the rates.
		seen := false
		for i := range 3 {
			b, _ := os.ReadFile(filepath.Join(dir, name(i)+".log"))
			seen = seen || strings.Contains(string(b), "chaos clock: tick rate changed")
		}
		if !seen {
			t.Fatalf("%d clock faults, but no member logged a rate change", rep.Faults[NemesisClock])
		}
	}
	if rep.Faults[NemesisDisk]+rep.Faults[NemesisClock] == 0 {
		t.Fatalf("neither the disk nor the clock nemesis ran (skipped: %v)", rep.Skipped)
	}
}

// TestChaosContainers runs the same round with each member in its own
// container on a private Docker network, where a Docker engine answers.
func TestChaosContainers(t *testing.T) {
	if testing.Short() {
		t.Skip("chaos round skipped in -short mode")
	}
	if !DockerAvailable() {
		t.Skip("NO DOCKER ENGINE: the container round did not run")
	}
	// The production build, so not the clock nemesis; disk runs on
	// processes only.
	rep := cleanRound(t, Options{Nodes: 3, Duration: soak(),
		Nemeses: []string{NemesisKill, NemesisPause, NemesisPartition}, Containers: true})
	if rep.OK < 300 || rep.SetAcked < 50 {
		t.Fatalf("too little happened to prove anything: %d ok register ops, %d set adds", rep.OK, rep.SetAcked)
	}
}

// brokenRound runs rounds of a deliberately broken build under partitions
// until the checkers report a violation (at most three rounds: whether a
// fault lines up with an operation is a matter of timing).
func brokenRound(t *testing.T, unsafe string, workloads ...string) *Report {
	t.Helper()
	if testing.Short() {
		t.Skip("chaos round skipped in -short mode")
	}
	for round := range 3 {
		rep, err := Run(context.Background(), Options{Nodes: 3, Duration: soak(), Nemeses: []string{NemesisPartition},
			Seed: uint64(round + 1), Binary: ballotBinary(t), Unsafe: []string{unsafe}, Workloads: workloads})
		if err != nil {
			t.Fatal(err)
		}
		if rep.HasViolations() {
			t.Logf("round %d caught the broken build:\n%s", round, rep.Summary())
			os.RemoveAll(rep.Dir)
			return rep
		}
		t.Logf("round %d: no violation yet:\n%s", round, rep.Summary())
	}
	t.Fatalf("three rounds of the %s build and the checkers saw nothing", unsafe)
	return nil
}

// TestCatchesStaleReads: reads served from a member's local state while
// called linearizable are caught by the linearizability checker.
func TestCatchesStaleReads(t *testing.T) {
	rep := brokenRound(t, "stale-reads")
	if !strings.Contains(strings.Join(rep.Violations, "\n"), "linearizability") {
		t.Fatalf("caught, but not as a linearizability violation: %v", rep.Violations)
	}
}

// TestCatchesEarlyAck: writes acknowledged before they commit are caught
// (lost set adds, or a non-linearizable register history).
func TestCatchesEarlyAck(t *testing.T) {
	brokenRound(t, "early-ack")
}

// TestCatchesLeaseEarlyExpiry: a lessor that expires leases at half their
// TTL is caught by the lease checker, as leases seen expired before the
// TTL their last acknowledged keep-alive promised.
func TestCatchesLeaseEarlyExpiry(t *testing.T) {
	rep := brokenRound(t, "lease-early-expiry", WorkloadLease)
	if !strings.Contains(strings.Join(rep.Violations, "\n"), "expired early") {
		t.Fatalf("caught, but not as a lease expiring early: %v", rep.Violations)
	}
}

func op(client int, call, ret int64, in regInput, out regOutput) porcupine.Operation {
	return porcupine.Operation{ClientId: client, Call: call, Return: ret, Input: in, Output: out}
}

// TestRegisterModelBites: the model refuses a stale read and a wrong CAS,
// accepts a write whose outcome was unknown taking effect late or never.
func TestRegisterModelBites(t *testing.T) {
	put := regInput{kind: opPut, key: "k", value: "1"}
	get := regInput{kind: opGet, key: "k"}
	stale := []porcupine.Operation{
		op(0, 0, 10, put, regOutput{}),
		op(1, 20, 30, get, regOutput{}), // absent after the put completed
	}
	if ok, _, _ := checkRegister(stale, time.Second, ""); ok {
		t.Fatal("a read missing a completed write passed")
	}
	cas := []porcupine.Operation{
		op(0, 0, 10, put, regOutput{}),
		op(1, 20, 30, regInput{kind: opCAS, key: "k", expected: "1", value: "2"}, regOutput{ok: false}),
	}
	if ok, _, _ := checkRegister(cas, time.Second, ""); ok {
		t.Fatal("a CAS that failed although its compare held passed")
	}
	unknown := []porcupine.Operation{
		op(0, 0, unknownReturn, put, regOutput{unknown: true}),
		op(1, 20, 30, get, regOutput{}),
		op(1, 40, 50, get, regOutput{exists: true, value: "1"}),
	}
	if ok, detail, _ := checkRegister(unknown, time.Second, ""); !ok {
		t.Fatalf("an unknown write taking effect late was refused: %s", detail)
	}
}

// TestWatchCheckerBites: a gap, a repeat and a wrong final state are each
// reported.
func TestWatchCheckerBites(t *testing.T) {
	ev := func(rev int64, key, val string) *mvccpb.Event {
		return &mvccpb.Event{Type: mvccpb.PUT, Kv: &mvccpb.KeyValue{Key: []byte(key), Value: []byte(val), ModRevision: rev}}
	}
	full := &watchRecorder{member: 0, events: []*mvccpb.Event{ev(2, "a", "1"), ev(3, "b", "1"), ev(4, "a", "2")}}
	final := map[string]string{"a": "2", "b": "1"}
	if p := checkWatches([]*watchRecorder{full}, final, 4); len(p) != 0 {
		t.Fatalf("a complete watch was refused: %v", p)
	}
	gap := &watchRecorder{member: 1, events: []*mvccpb.Event{ev(2, "a", "1"), ev(4, "a", "2")}}
	if p := checkWatches([]*watchRecorder{full, gap}, final, 4); len(p) == 0 {
		t.Fatal("a watcher that skipped an event passed")
	}
	dup := &watchRecorder{member: 1, events: []*mvccpb.Event{ev(2, "a", "1"), ev(2, "a", "1")}}
	if p := checkWatches([]*watchRecorder{full, dup}, final, 4); len(p) == 0 {
		t.Fatal("a watcher that saw an event twice passed")
	}
	if p := checkWatches([]*watchRecorder{full}, map[string]string{"a": "3", "b": "1"}, 4); len(p) == 0 {
		t.Fatal("a watch whose replay differs from the final state passed")
	}
}
