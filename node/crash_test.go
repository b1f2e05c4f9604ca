package node

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

// writers proposes distinct commands from several goroutines through every
// running node in turn until stop is closed, and returns the acknowledged
// ones.
func writers(t *testing.T, c *testCluster, prefix string, workers int, stop <-chan struct{}) func() []string {
	var mu sync.Mutex
	var acked []string
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				nodes := c.running()
				if len(nodes) == 0 {
					return
				}
				n := nodes[(w+i)%len(nodes)]
				cmd := fmt.Sprintf("%s-w%d-%d", prefix, w, i)
				if err := proposeRetry(t, n, cmd, 500*time.Millisecond); err == nil {
					mu.Lock()
					acked = append(acked, cmd)
					mu.Unlock()
				}
			}
		}()
	}
	return func() []string {
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), acked...)
	}
}

// TestTCPClusterLeaderCrashRestart: three real nodes over TCP on loopback
// elect a leader and take writes; the leader crashes (everything it had not
// fsynced is lost, its WAL tail torn); writes go on; it restarts from its
// disk; every acknowledged proposal is applied exactly once on every node.
func TestTCPClusterLeaderCrashRestart(t *testing.T) {
	c := newCluster(t, 3, true, nil)
	lead := c.leader()

	stop := make(chan struct{})
	wait := writers(t, c, "a", 4, stop)
	waitCount(t, c, 100)
	c.crash(lead.id, true)
	t.Logf("crashed leader %d", lead.id)
	newLead := c.leader()
	if newLead.id == lead.id {
		t.Fatalf("crashed node %d still leads", lead.id)
	}
	waitCount(t, c, 200)
	c.start(lead.id, false)
	t.Logf("restarted %d", lead.id)
	waitCount(t, c, 300)
	close(stop)
	acked := wait()
	if len(acked) < 300 {
		t.Fatalf("only %d proposals acknowledged", len(acked))
	}
	want := 0
	for _, n := range c.running() {
		want = max(want, c.sm(n.id).len())
	}
	c.waitConverged(want)
	c.checkExactlyOnce(acked)
}

// waitCount waits until the running nodes' maximum applied command count
// reaches want.
func waitCount(t *testing.T, c *testCluster, want int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		got := 0
		for _, n := range c.running() {
			got = max(got, c.sm(n.id).len())
		}
		if got >= want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("cluster applied %d commands, want %d", got, want)
		}
		ch := c.running()[0].appliedN.wait()
		select {
		case <-ch:
		case <-time.After(50 * time.Millisecond):
		}
	}
}
