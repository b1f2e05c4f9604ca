package sim

import (
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/ballotdb/ballot/consensus"
)

func ent(i, e uint64, data string) consensus.Entry {
	return consensus.Entry{Index: i, Epoch: e, Type: consensus.EntryNormal, Data: []byte(data)}
}

func wantViolation(t *testing.T, v *Violation, inv string) {
	t.Helper()
	if v == nil {
		t.Fatalf("want a %s violation, got none", inv)
	}
	if v.Invariant != inv {
		t.Fatalf("want a %s violation, got %v", inv, v)
	}
}

func wantNone(t *testing.T, v *Violation) {
	t.Helper()
	if v != nil {
		t.Fatalf("unexpected violation: %v", v)
	}
}

func TestCheckerElectionSafety(t *testing.T) {
	c := newChecker()
	wantNone(t, c.observeLeader(1, 2))
	wantNone(t, c.observeLeader(1, 2)) // the same leader seen again
	wantNone(t, c.observeLeader(2, 3))
	wantViolation(t, c.observeLeader(3, 2), ElectionSafety)
}

func TestCheckerLogMatching(t *testing.T) {
	c := newChecker()
	wantNone(t, c.observeWrite(1, ent(5, 2, "x"), 1))
	wantNone(t, c.observeWrite(2, ent(5, 2, "x"), 1))
	// Same index and epoch, different command.
	wantViolation(t, c.observeWrite(3, ent(5, 2, "y"), 1), LogMatching)
	// Same entry, different history before it.
	wantViolation(t, c.observeWrite(3, ent(5, 2, "x"), 2), LogMatching)
}

func TestCheckerLeaderCompleteness(t *testing.T) {
	log := map[uint64]consensus.Entry{1: ent(1, 1, "a"), 2: ent(2, 1, "b")}
	at := func(i uint64) (consensus.Entry, bool) { e, ok := log[i]; return e, ok }

	c := newChecker()
	wantNone(t, c.observeApply(1, ent(1, 1, "a"), 10))
	wantNone(t, c.observeApply(1, ent(2, 1, "b"), 11))
	c.observeCommit(2, 1)
	// A node writing epoch 2 at index 3 whose log holds both: fine.
	wantNone(t, c.checkCompleteness(2, 2, 3, 0, at))
	// One whose log holds something else at index 2: violation.
	log[2] = ent(2, 1, "other")
	wantViolation(t, newCheckerWith(c).checkCompleteness(3, 2, 3, 0, at), LeaderCompleteness)
	// One that writes epoch 2 at index 2, over the committed entry.
	wantViolation(t, newCheckerWith(c).checkCompleteness(3, 2, 2, 0, at), LeaderCompleteness)
	// Entries under the writer's snapshot are not compared.
	wantNone(t, newCheckerWith(c).checkCompleteness(3, 2, 3, 2, at))
}

// newCheckerWith copies what checkCompleteness reads, with a fresh
// per-node memory.
func newCheckerWith(c *checker) *checker {
	n := newChecker()
	n.applied, n.commitAt, n.committedUpTo = c.applied, c.commitAt, c.committedUpTo
	return n
}

func TestCheckerStateMachineSafety(t *testing.T) {
	c := newChecker()
	wantNone(t, c.observeApply(1, ent(1, 1, "a"), 10))
	wantNone(t, c.observeApply(2, ent(1, 1, "a"), 10))
	wantViolation(t, c.observeApply(3, ent(1, 2, "b"), 10), StateMachineSafety)
	wantViolation(t, c.observeApply(3, ent(1, 1, "a"), 99), StateMachineSafety) // same entry, diverged state
	wantNone(t, c.observeInstall(4, 1, 1, 10))
	wantViolation(t, c.observeInstall(4, 1, 1, 11), StateMachineSafety)
	wantViolation(t, c.observeInstall(4, 1, 3, 10), StateMachineSafety)
}

func TestCheckerMonotonic(t *testing.T) {
	c := newChecker()
	wantNone(t, c.observeProgress(1, 1, 5, 4, 0))
	wantNone(t, c.observeProgress(1, 1, 6, 6, 0))
	wantViolation(t, c.observeProgress(1, 1, 5, 6, 0), Monotonic)
	c = newChecker()
	wantNone(t, c.observeProgress(1, 1, 6, 6, 0))
	wantViolation(t, c.observeProgress(1, 1, 6, 5, 0), Monotonic)
	// A restart may apply from its snapshot again, but its commit may not
	// fall below what was durable.
	wantNone(t, c.observeProgress(1, 2, 6, 0, 6))
	wantViolation(t, c.observeProgress(1, 3, 4, 0, 6), Monotonic)
}

func op(client int, put bool, key, value string, call, ret int64) porcupine.Operation {
	out := kvOutput{}
	if !put {
		out.value = value
	}
	return porcupine.Operation{ClientId: client, Input: kvInput{put: put, key: key, value: value}, Call: call, Output: out, Return: ret}
}

func TestLinearizabilityChecker(t *testing.T) {
	good := []porcupine.Operation{
		op(1, true, "a", "1", 0, 10),
		op(2, false, "a", "1", 12, 20),
		op(1, true, "a", "2", 15, 25), // concurrent with the read: either order
		op(2, false, "a", "2", 30, 40),
		op(3, false, "b", "", 0, 5),
	}
	wantNone(t, checkLinearizable(good, time.Minute))

	// A stale read: the write of 2 finished before the read began.
	stale := []porcupine.Operation{
		op(1, true, "a", "1", 0, 10),
		op(1, true, "a", "2", 11, 20),
		op(2, false, "a", "1", 21, 30),
	}
	wantViolation(t, checkLinearizable(stale, time.Minute), Linearizability)

	// A write with an unknown outcome may take effect late, or never.
	unknown := []porcupine.Operation{
		op(1, true, "a", "1", 0, unknownReturn),
		op(2, false, "a", "", 5, 6),
		op(2, false, "a", "1", 100, 110),
	}
	wantNone(t, checkLinearizable(unknown, time.Minute))
	// But not take effect, be seen, and then be undone.
	undone := append(unknown, op(2, false, "a", "", 200, 210))
	wantViolation(t, checkLinearizable(undone, time.Minute), Linearizability)
}

func TestDiskCrashKeepsAPrefix(t *testing.T) {
	d := newDisk(consensus.ConfState{Voters: []consensus.NodeID{1}})
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(d.write(diskOp{kind: opEntry, ent: ent(1, 1, "a")}))
	must(d.write(diskOp{kind: opHardState, hs: consensus.HardState{Epoch: 1, Commit: 1}}))
	must(d.log.sync())
	must(d.write(diskOp{kind: opEntry, ent: ent(2, 1, "b")}))
	must(d.write(diskOp{kind: opEntry, ent: ent(3, 1, "c")}))
	must(d.write(diskOp{kind: opHardState, hs: consensus.HardState{Epoch: 1, Commit: 3}}))
	if d.view.lastIndex() != 3 || d.durable.lastIndex() != 1 {
		t.Fatalf("view %d durable %d", d.view.lastIndex(), d.durable.lastIndex())
	}
	must(d.log.crash(1)) // the torn tail keeps entry 2 only
	st := d.initial()
	if len(st.Entries) != 2 || st.HardState.Commit != 1 {
		t.Fatalf("after crash: %d entries, hs %+v", len(st.Entries), st.HardState)
	}
	// Truncation and rewrite by index.
	must(d.write(diskOp{kind: opTruncate, after: 1}))
	must(d.write(diskOp{kind: opEntry, ent: ent(2, 2, "B")}))
	if e, _ := d.view.entryAt(2); string(e.Data) != "B" || d.view.lastIndex() != 2 {
		t.Fatalf("rewrite: %v last %d", e, d.view.lastIndex())
	}
	// A hole is the engine's bug, and is reported.
	if err := d.write(diskOp{kind: opEntry, ent: ent(9, 2, "x")}); err == nil {
		t.Fatal("a write leaving a hole was accepted")
	}
}
