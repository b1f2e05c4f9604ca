package node

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ballotdb/ballot/consensus"
	"github.com/ballotdb/ballot/transport"
)

// dupTransport delivers every forwarded proposal twice at once and once
// more much later, after its first copy was long applied (and the
// proposer's floor has moved past it).
type dupTransport struct {
	transport.Transport
	mu    sync.Mutex
	stash []consensus.Message
	sent  int // MsgProp messages sent, copies included
}

func (d *dupTransport) Send(msgs []consensus.Message) {
	var extra []consensus.Message
	d.mu.Lock()
	for _, m := range msgs {
		if m.Type == consensus.MsgProp {
			extra = append(extra, m)
			d.stash = append(d.stash, m)
			d.sent++
		}
	}
	if len(d.stash) > 16 {
		extra = append(extra, d.stash[:8]...)
		d.stash = d.stash[8:]
	}
	d.sent += len(extra)
	d.mu.Unlock()
	d.Transport.Send(append(msgs, extra...))
}

// TestForwardedProposalsApplyOnce: followers forward every proposal several
// times (the transport duplicates and replays forwards, and the node itself
// re-proposes every pending proposal at every tick); each is still applied
// exactly once, on every node.
func TestForwardedProposalsApplyOnce(t *testing.T) {
	var mu sync.Mutex
	dups := map[consensus.NodeID]*dupTransport{}
	c := newCluster(t, 3, false, func(cfg *Config) {
		cfg.knobs.retryEveryTick = true
		inner := cfg.NewTransport
		id := cfg.ID
		cfg.NewTransport = func(h transport.Handler) (transport.Transport, error) {
			tr, err := inner(h)
			d := &dupTransport{Transport: tr}
			mu.Lock()
			dups[id] = d
			mu.Unlock()
			return d, err
		}
	})
	lead := c.leader()
	var followers []*Node
	for _, n := range c.running() {
		if n.id != lead.id {
			followers = append(followers, n)
		}
	}
	for _, f := range followers {
		waitKnowsLeader(t, f, lead.id)
	}
	var wg sync.WaitGroup
	var amu sync.Mutex
	var acked []string
	for w, f := range followers {
		for k := range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range 40 {
					cmd := fmt.Sprintf("f%d-%d-%d", w, k, i)
					if err := proposeRetry(t, f, cmd, 5*time.Second); err != nil {
						t.Errorf("propose %s via %d: %v", cmd, f.id, err)
						return
					}
					amu.Lock()
					acked = append(acked, cmd)
					amu.Unlock()
				}
			}()
		}
	}
	wg.Wait()
	want := 0
	for _, n := range c.running() {
		want = max(want, c.sm(n.id).len())
	}
	c.waitConverged(want)
	c.checkExactlyOnce(acked)
	mu.Lock()
	defer mu.Unlock()
	total := 0
	for _, d := range dups {
		d.mu.Lock()
		total += d.sent
		d.mu.Unlock()
	}
	if total < 2*len(acked) {
		t.Fatalf("only %d forwards for %d proposals: the duplicates were not exercised", total, len(acked))
	}
	t.Logf("%d proposals, %d forwards delivered", len(acked), total)
}

// lossyTransport drops every other forwarded proposal.
type lossyTransport struct {
	transport.Transport
	mu      sync.Mutex
	n       int
	dropped int
}

func (d *lossyTransport) Send(msgs []consensus.Message) {
	out := msgs[:0:0]
	d.mu.Lock()
	for _, m := range msgs {
		if m.Type == consensus.MsgProp {
			d.n++
			if d.n%2 == 1 {
				d.dropped++
				continue
			}
		}
		out = append(out, m)
	}
	d.mu.Unlock()
	d.Transport.Send(out)
}

// TestLostForwardsAreRetried: a follower whose forwards are lost sends them
// again on its own; the callers see their proposals applied, once.
func TestLostForwardsAreRetried(t *testing.T) {
	var mu sync.Mutex
	lossy := map[consensus.NodeID]*lossyTransport{}
	c := newCluster(t, 3, false, func(cfg *Config) {
		inner := cfg.NewTransport
		id := cfg.ID
		cfg.NewTransport = func(h transport.Handler) (transport.Transport, error) {
			tr, err := inner(h)
			d := &lossyTransport{Transport: tr}
			mu.Lock()
			lossy[id] = d
			mu.Unlock()
			return d, err
		}
	})
	lead := c.leader()
	var f *Node
	for _, n := range c.running() {
		if n.id != lead.id {
			f = n
		}
	}
	waitKnowsLeader(t, f, lead.id)
	var wg sync.WaitGroup
	acked := make([]string, 8)
	for i := range acked {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd := fmt.Sprintf("lossy-%d", i)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if _, err := f.Propose(ctx, []byte(cmd)); err != nil {
				t.Errorf("propose %s: %v", cmd, err)
				return
			}
			acked[i] = cmd
		}()
	}
	wg.Wait()
	c.waitConverged(len(acked))
	c.checkExactlyOnce(acked)
	mu.Lock()
	defer mu.Unlock()
	if d := lossy[f.id]; d.dropped == 0 {
		t.Fatal("no forward was dropped")
	} else {
		t.Logf("%d forwards dropped, all proposals applied once", d.dropped)
	}
}
