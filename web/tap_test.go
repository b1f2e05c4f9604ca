package web

import (
	"testing"
	"time"

	"github.com/ballotdb/ballot/consensus"
	"github.com/ballotdb/ballot/node"
)

// fakeClock is a clock the test moves by hand.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

// TestTapTokenBucket checks the hard limit with a clock the test drives: a
// flood at one instant yields exactly the burst; each further second,
// exactly the rate; the rest are counted as sampled out, and the next
// event says how many it stands for.
func TestTapTokenBucket(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1000, 0)}
	tap := NewTap(TapConfig{MessagesPerSecond: 5, MessageBurst: 8, SubscriberQueue: 1000, Now: clk.now})
	sub, _, err := tap.subscribe()
	if err != nil {
		t.Fatal(err)
	}
	defer tap.unsubscribe(sub)
	m := consensus.Message{Type: consensus.MsgApp, From: 1, To: 2}
	for range 10000 {
		tap.MessageSent(m)
	}
	if got := len(sub.ch); got != 8 {
		t.Fatalf("a flood at one instant let %d events through, want the burst, 8", got)
	}
	for range 8 {
		<-sub.ch
	}
	for sec := range 4 {
		clk.t = clk.t.Add(time.Second)
		for range 1000 {
			tap.MessageSent(m)
		}
		if got := len(sub.ch); got != 5 {
			t.Fatalf("second %d: %d events, want the rate, 5", sec+1, got)
		}
		first := <-sub.ch
		if first.Skipped != 10000-8 && sec == 0 {
			t.Errorf("first event after the flood says %d skipped, want %d", first.Skipped, 10000-8)
		}
		for range 4 {
			<-sub.ch
		}
	}
	st := tap.Stats()
	if st.Sent != 8+4*5 || st.Sampled != 10000+4*1000-st.Sent {
		t.Errorf("stats %+v", st)
	}
}

// TestTapNeverBlocks fills a subscriber that never reads: the tap drops
// and counts, and the node's call returns.
func TestTapNeverBlocks(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1000, 0)}
	tap := NewTap(TapConfig{MessagesPerSecond: 1e9, MessageBurst: 1 << 30, SubscriberQueue: 4, Now: clk.now})
	sub, _, err := tap.subscribe()
	if err != nil {
		t.Fatal(err)
	}
	defer tap.unsubscribe(sub)
	for range 100 {
		tap.MessageSent(consensus.Message{Type: consensus.MsgHeartbeat, From: 1, To: 2})
	}
	if st := tap.Stats(); st.Sent != 4 || st.QueueFull != 96 {
		t.Errorf("stats %+v, want 4 sent and 96 dropped for a full queue", st)
	}
}

// TestTapSubscribersBounded refuses a stream beyond MaxSubscribers.
func TestTapSubscribersBounded(t *testing.T) {
	tap := NewTap(TapConfig{MaxSubscribers: 2})
	for range 2 {
		if _, _, err := tap.subscribe(); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := tap.subscribe(); err == nil {
		t.Fatal("a third stream was accepted with MaxSubscribers 2")
	}
}

// TestTapLogRuns follows the log's terms through appends, an overwrite by
// a new leader and a snapshot from the leader.
func TestTapLogRuns(t *testing.T) {
	tap := NewTap(TapConfig{})
	ents := func(term uint64, from, to uint64) []consensus.Entry {
		var es []consensus.Entry
		for i := from; i <= to; i++ {
			es = append(es, consensus.Entry{Index: i, Epoch: term})
		}
		return es
	}
	tap.WALWritten(node.WALWrite{Entries: ents(1, 1, 5)})
	tap.WALWritten(node.WALWrite{Entries: ents(2, 6, 8)})
	tap.WALWritten(node.WALWrite{Entries: ents(3, 7, 9)}) // overwrites 7 and 8
	got := tap.LogRuns()
	want := []termRun{{1, 5, 1}, {6, 6, 2}, {7, 9, 3}}
	if len(got) != len(want) {
		t.Fatalf("runs %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("runs %v, want %v", got, want)
		}
	}
	tap.SnapshotSaved(node.SnapshotSave{Index: 100, Term: 4, FromLeader: true})
	if got := tap.LogRuns(); len(got) != 0 {
		t.Fatalf("runs after the leader's snapshot: %v", got)
	}
}
