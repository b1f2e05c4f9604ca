package shard_test

import (
	"context"
	"testing"
	"time"

	"github.com/ballotdb/ballot/shard"
	"github.com/ballotdb/ballot/shard/shardtest"
)

// TestIdleGroupsStopTicking: idle groups go quiet on every host; a write
// wakes its group and succeeds; when the host leading quiet groups dies,
// the others notice through host liveness, elect new leaders and serve.
func TestIdleGroupsStopTicking(t *testing.T) {
	c := shardtest.NewWith(t, 3, 8, func(cfg *shard.Config) { cfg.MapRefresh = time.Hour })
	c.WaitLeaders(20 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	groups := 8 + 1 // shards and the meta group, all on every host
	waitFor(t, 20*time.Second, "every group on every host to go quiet", func() bool {
		for _, n := range c.Names() {
			if c.Host(n).Quiet() != groups {
				return false
			}
		}
		return true
	})
	// Quiet groups run no ticks at all.
	ticks := func() (n int64) {
		for _, name := range c.Names() {
			n += c.Host(name).Ticks()
		}
		return n
	}
	before := ticks()
	idle := time.NewTimer(300 * time.Millisecond) // 30 ticks of 10 ms
	<-idle.C
	if after := ticks(); after != before {
		t.Fatalf("quiet groups ran %d ticks in 300 ms", after-before)
	}
	// A write wakes its group and is served; it goes quiet again.
	key := keyIn(3, 8, "wake")
	if _, err := c.Client("h1").Put(ctx, key, "v"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "the woken group to go quiet again", func() bool {
		for _, n := range c.Names() {
			if c.Host(n).Quiet() != groups {
				return false
			}
		}
		return true
	})
	if ticks() == before {
		t.Fatal("the write woke no group")
	}

	// Kill the host leading shard 3; the others elect a new leader.
	h2 := c.Host("h2")
	lead := uint64(h2.Server(3).Node().Leader())
	var victim string
	for _, n := range c.Names() {
		if c.Host(n).MemberID() == lead {
			victim = n
		}
	}
	c.Stop(victim)
	var other string
	for _, n := range c.Names() {
		if n != victim {
			other = n
		}
	}
	waitFor(t, 20*time.Second, "shard 3 to elect a leader on a live host", func() bool {
		l := uint64(c.Host(other).Server(3).Node().Leader())
		return l != 0 && l != lead
	})
	if _, err := c.Client(other).Put(ctx, key, "after"); err != nil {
		t.Fatalf("write after the leader's host died: %v", err)
	}
}

// TestNoQuiesceKeepsTicking is the control: with quiescence off nothing
// goes quiet.
func TestNoQuiesceKeepsTicking(t *testing.T) {
	c := shardtest.NewWith(t, 3, 2, func(cfg *shard.Config) { cfg.NoQuiesce = true })
	c.WaitLeaders(20 * time.Second)
	deadline := time.Now().Add(time.Second)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for time.Now().Before(deadline) {
		if q := c.Host("h1").Quiet(); q != 0 {
			t.Fatalf("%d groups quiet with NoQuiesce", q)
		}
		<-tick.C
	}
}
