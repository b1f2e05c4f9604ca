package shard

import (
	"testing"
	"time"
)

// TestLoadMeter: a shard is hot only after splitLoadRounds rounds in a row
// over the limit; a quiet round starts the count again, and no limit
// means never.
func TestLoadMeter(t *testing.T) {
	var m loadMeter
	at := time.Unix(1000, 0)
	commit := uint64(0)
	round := func(writes uint64, limit float64) bool {
		at, commit = at.Add(time.Second), commit+writes
		hot, _ := m.observe(at, commit, limit)
		return hot
	}
	round(0, 100) // the first observation only starts the meter
	for i := range splitLoadRounds - 1 {
		if round(500, 100) {
			t.Fatalf("hot after %d rounds over the limit", i+1)
		}
	}
	if round(50, 100) {
		t.Fatal("hot on a quiet round")
	}
	for range splitLoadRounds - 1 {
		round(500, 100)
	}
	if !round(500, 100) {
		t.Fatalf("not hot after %d rounds in a row over the limit", splitLoadRounds)
	}
	m = loadMeter{}
	for range 2 * splitLoadRounds {
		if round(1_000_000, 0) {
			t.Fatal("hot with no limit")
		}
	}
}
