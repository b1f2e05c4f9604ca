package raft

import (
	"testing"

	"github.com/ballotdb/ballot/consensus"
)

// TestReadIndexIgnoresAcksSentBeforeTheRead reproduces a stale read the
// chaos rig found (a leader paused with acknowledgements in its socket
// buffer): a follower's forwarded read S is queued and a heartbeat carrying
// S goes out; the followers' acknowledgements are delayed. Then the
// leader's own read Z arrives, and the follower retries S (same context).
// The delayed acknowledgements answer heartbeats sent before Z arrived: they
// must not confirm Z, or Z is served at an index that may miss writes
// committed by a newer leader in the meantime.
func TestReadIndexIgnoresAcksSentBeforeTheRead(t *testing.T) {
	n := newTestNet(t, ids(1, 2, 3), nil, nil)
	l := electLeader(t, n)
	lead := n.nodes[l].r
	var f, g consensus.NodeID
	for _, id := range ids(1, 2, 3) {
		if id != l && f == 0 {
			f = id
		} else if id != l {
			g = id
		}
	}
	n.stabilize()
	n.queue = nil
	drain := func() []consensus.Message {
		var out []consensus.Message
		for lead.HasReady() {
			rd := lead.Ready()
			n.nodes[l].st.persist(rd)
			out = append(out, rd.Messages...)
			n.nodes[l].reads = append(n.nodes[l].reads, rd.ReadStates...)
			lead.Advance(n.nodes[l].appliedIndex)
		}
		return out
	}
	forward := consensus.Message{Type: consensus.MsgReadIndex, From: f, To: l, Context: []byte("S")}
	if err := lead.Step(forward); err != nil {
		t.Fatal(err)
	}
	// The heartbeats for S reach the followers; their answers are held.
	var delayed []consensus.Message
	for _, m := range drain() {
		if m.Type != consensus.MsgHeartbeat {
			continue
		}
		fol := n.nodes[m.To].r
		if err := fol.Step(m); err != nil {
			t.Fatal(err)
		}
		for fol.HasReady() {
			rd := fol.Ready()
			n.nodes[m.To].st.persist(rd)
			for _, r := range rd.Messages {
				if r.Type == consensus.MsgHeartbeatResp {
					delayed = append(delayed, r)
				}
			}
			fol.Advance(n.nodes[m.To].appliedIndex)
		}
	}
	if len(delayed) != 2 {
		t.Fatalf("want 2 held heartbeat answers, got %d", len(delayed))
	}
	// One answer arrives: with the leader's own vote, S is confirmed.
	if err := lead.Step(delayed[0]); err != nil {
		t.Fatal(err)
	}
	drain()
	// The leader's own read arrives, then the follower retries S.
	if err := lead.ReadIndex([]byte("Z")); err != nil {
		t.Fatal(err)
	}
	if err := lead.Step(forward); err != nil {
		t.Fatal(err)
	}
	drain() // heartbeats sent now are lost
	// The other held answer, to a heartbeat sent before Z arrived.
	if err := lead.Step(delayed[1]); err != nil {
		t.Fatal(err)
	}
	drain()
	for _, rs := range n.nodes[l].reads {
		if string(rs.RequestCtx) == "Z" {
			t.Fatalf("read Z confirmed by acknowledgements of heartbeats sent before it arrived (followers %d, %d)", f, g)
		}
	}
}

// TestStatusCountsPendingReads: the leader reports the reads waiting for
// their heartbeat quorum, and none once they are confirmed (a runtime that
// stops ticking idle groups relies on it).
func TestStatusCountsPendingReads(t *testing.T) {
	n := newTestNet(t, ids(1, 2, 3), nil, nil)
	l := electLeader(t, n)
	lead := n.nodes[l].r
	n.stabilize()
	if err := lead.ReadIndex([]byte("r")); err != nil {
		t.Fatal(err)
	}
	if got := lead.Status().PendingReads; got != 1 {
		t.Fatalf("PendingReads %d with one read waiting, want 1", got)
	}
	n.stabilize()
	if got := lead.Status().PendingReads; got != 0 {
		t.Fatalf("PendingReads %d once the read is confirmed, want 0", got)
	}
}
