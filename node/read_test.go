package node

import (
	"context"
	"sync"
	"testing"
	"time"
)

// TestReadsShareRounds: reads that arrive together share one ReadIndex
// round, and many concurrent ReadBarriers all succeed.
func TestReadsShareRounds(t *testing.T) {
	c := newCluster(t, 3, false, nil)
	lead := c.leader()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	onLoop := func(fn func(l *loop)) {
		done := make(chan struct{})
		if err := lead.request(ctx, func(l *loop) { fn(l); close(done) }); err != nil {
			t.Fatal(err)
		}
		<-done
	}
	var before, after uint64
	onLoop(func(l *loop) { before = l.readSeq })

	// 300 reads handed to the loop at once: one round.
	const together = 300
	reqs := make([]*readReq, together)
	onLoop(func(l *loop) {
		for i := range reqs {
			reqs[i] = &readReq{done: make(chan result, 1)}
			l.startRead(reqs[i])
		}
	})
	for i, r := range reqs {
		select {
		case res := <-r.done:
			if res.err != nil {
				t.Fatalf("read %d: %v", i, res.err)
			}
		case <-ctx.Done():
			t.Fatalf("read %d never answered", i)
		}
	}
	onLoop(func(l *loop) { after = l.readSeq })
	if used := after - before; used != 1 {
		t.Fatalf("%d reads arriving together used %d rounds, want 1", together, used)
	}

	// And concurrent ReadBarriers, however they interleave, all succeed.
	var wg sync.WaitGroup
	errs := make(chan error, 400)
	for range 400 {
		wg.Add(1)
		go func() { defer wg.Done(); errs <- lead.ReadBarrier(ctx) }()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("read barrier: %v", err)
		}
	}
	onLoop(func(l *loop) { t.Logf("400 concurrent reads used %d rounds", l.readSeq-after) })
}
