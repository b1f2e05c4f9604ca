package node

import (
	"context"
	"fmt"
	"testing"
	"time"
)

func TestMemClusterProposeAndRead(t *testing.T) {
	c := newCluster(t, 3, false, nil)
	lead := c.leader()
	var acked []string
	for i := range 20 {
		cmd := fmt.Sprintf("c%d", i)
		n := c.running()[i%3]
		if err := proposeRetry(t, n, cmd, 5*time.Second); err != nil {
			t.Fatalf("propose %s via %d: %v", cmd, n.id, err)
		}
		acked = append(acked, cmd)
	}
	for _, n := range c.running() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := n.ReadBarrier(ctx); err != nil {
			t.Fatalf("read barrier on %d: %v", n.id, err)
		}
		cancel()
		if got := c.sm(n.id).len(); got < len(acked) {
			t.Fatalf("node %d after ReadBarrier has %d commands, want %d", n.id, got, len(acked))
		}
	}
	c.checkExactlyOnce(acked)
	if got := c.running()[0].Leader(); got != lead.id {
		t.Logf("leader moved from %d to %d", lead.id, got)
	}
}
