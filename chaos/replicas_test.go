package chaos

import (
	"context"
	"strings"
	"testing"
	"time"
)

// TestReplicaDisagreements: members compared at the same applied index
// only; a different revision or hash there is reported, naming both.
func TestReplicaDisagreements(t *testing.T) {
	s := func(applied uint64, rev int64, hash uint32) replicaSample {
		return replicaSample{applied: applied, rev: rev, hash: hash}
	}
	agree := map[string]map[uint64]replicaSample{
		"n1": {10: s(10, 5, 0xaa), 12: s(12, 6, 0xbb)},
		"n2": {12: s(12, 6, 0xbb)},
		"n3": {9: s(9, 4, 0x11)}, // behind: never compared at 10 or 12
	}
	if v := replicaDisagreements("shard 1", agree); len(v) != 0 {
		t.Fatalf("members that agree were reported: %v", v)
	}
	for _, bad := range []replicaSample{s(12, 7, 0xbb), s(12, 6, 0xbc)} {
		seen := map[string]map[uint64]replicaSample{"n1": {12: s(12, 6, 0xbb)}, "n4": {12: bad}}
		v := replicaDisagreements("shard 1", seen)
		if len(v) != 1 || !strings.Contains(v[0], "n1 has") || !strings.Contains(v[0], "n4 has") {
			t.Fatalf("%v against %v: got %v", bad, seen["n1"][12], v)
		}
	}
}

// TestReplicaCheckBites: a build whose first member applies every put with
// its value changed is caught by the replica check, on one group and on a
// sharded cluster (where the per-key checkers may never read that member).
func TestReplicaCheckBites(t *testing.T) {
	rep := brokenRound(t, UnsafeCorruptPuts, WorkloadRegister, WorkloadSet)
	if !strings.Contains(strings.Join(rep.Violations, "\n"), "replicas: the cluster: n1 has") {
		t.Fatalf("caught, but not by the replica check: %v", rep.Violations)
	}
}

func TestShardedReplicaCheckBites(t *testing.T) {
	if testing.Short() {
		t.Skip("chaos round skipped in -short mode")
	}
	rep, err := Run(context.Background(), Options{Nodes: 3, Shards: 2, Duration: 5 * time.Second,
		Workloads: []string{WorkloadRegister, WorkloadSet}, Unsafe: []string{UnsafeCorruptPuts},
		Binary: ballotBinary(t), Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(rep.Violations, "\n"), "replicas: shard ") {
		t.Fatalf("the replica check missed a member that corrupts every put: %v", rep.Violations)
	}
}
