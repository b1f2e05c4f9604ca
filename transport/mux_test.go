package transport

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ballotdb/ballot/consensus"
	"github.com/ballotdb/ballot/internal/testutil"
)

// countingListener counts the connections it accepts.
type countingListener struct {
	net.Listener
	accepted atomic.Int32
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.accepted.Add(1)
	}
	return c, err
}

// host is one node process hosting several groups on a Mux.
type host struct {
	id     consensus.NodeID
	mux    *Mux
	ln     *countingListener
	groups map[uint64]Transport
	recs   map[uint64]*recorder
}

// newHost starts a mux for node id in host cluster 9 with the given groups.
func newHost(t *testing.T, id consensus.NodeID, groups []uint64, tweak func(*Config)) *host {
	t.Helper()
	ln := &countingListener{Listener: listen(t)}
	cfg := Config{ID: id, ClusterID: 9, Listener: ln, BackoffMin: 5 * time.Millisecond, BackoffMax: 20 * time.Millisecond}
	if tweak != nil {
		tweak(&cfg)
	}
	m, err := NewMux(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	h := &host{id: id, mux: m, ln: ln, groups: map[uint64]Transport{}, recs: map[uint64]*recorder{}}
	for _, g := range groups {
		h.addGroup(t, g)
	}
	return h
}

func (h *host) addGroup(t *testing.T, g uint64) {
	t.Helper()
	rec := newRecorder()
	tr, err := h.mux.Group(g, rec)
	if err != nil {
		t.Fatal(err)
	}
	h.groups[g], h.recs[g] = tr, rec
}

// connect makes every group of every host a peer of the same group on the
// other hosts, before anything is sent, so no connection is refused.
func connect(hosts ...*host) {
	for _, a := range hosts {
		for g, tr := range a.groups {
			for _, b := range hosts {
				if b != a && b.groups[g] != nil {
					tr.AddPeer(b.id, b.mux.Addr().String())
				}
			}
		}
	}
}

// groupMsgs are n messages of group g, which each carries as its epoch.
func groupMsgs(g uint64, from, to consensus.NodeID, n int) []consensus.Message {
	out := msgs(from, to, n)
	for i := range out {
		out[i].Epoch = g
	}
	return out
}

func (r *recorder) unreachableCount(p consensus.NodeID) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.unreachable[p]
}

func (r *recorder) snapCounts(p consensus.NodeID) (ok, fail int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.snapOK[p], r.snapFail[p]
}

// TestMuxGroupsReceiveOnlyTheirOwn: two and three hosts with four groups
// each; every group of every host sends to every other; each group
// receives exactly its own messages, in order per sender, over one
// connection per peer.
func TestMuxGroupsReceiveOnlyTheirOwn(t *testing.T) {
	for _, n := range []int{2, 3} {
		t.Run(fmt.Sprintf("%d hosts", n), func(t *testing.T) {
			groups := []uint64{1, 2, 7, 1 << 40}
			var hosts []*host
			for i := range n {
				hosts = append(hosts, newHost(t, consensus.NodeID(i+1), groups, nil))
			}
			connect(hosts...)
			const per = 50
			for _, a := range hosts {
				for _, b := range hosts {
					if a == b {
						continue
					}
					for _, g := range groups {
						a.groups[g].Send(groupMsgs(g, a.id, b.id, per))
					}
				}
			}
			want := (n - 1) * per
			for _, b := range hosts {
				for _, g := range groups {
					rec := b.recs[g]
					testutil.Eventually(t, 10*time.Second, func() bool { return rec.count() >= want },
						"host %d group %d got %d of %d messages", b.id, g, rec.count(), want)
				}
			}
			for _, b := range hosts {
				for _, g := range groups {
					rec := b.recs[g]
					rec.mu.Lock()
					if len(rec.got) != want {
						t.Errorf("host %d group %d: %d messages, want %d", b.id, g, len(rec.got), want)
					}
					next := map[consensus.NodeID]uint64{}
					for _, m := range rec.got {
						if m.Epoch != g || m.To != b.id || m.Index != next[m.From] {
							t.Errorf("host %d group %d got %v (next index from %d: %d)", b.id, g, m, m.From, next[m.From])
						}
						next[m.From]++
					}
					rec.mu.Unlock()
				}
				st := b.mux.Stats()
				if st.Dropped != 0 || st.Refused != 0 || st.UnknownGroup != 0 {
					t.Errorf("host %d: %+v", b.id, st)
				}
				if st.Groups != len(groups) || st.Peers != n-1 {
					t.Errorf("host %d: %d groups and %d peers, want %d and %d", b.id, st.Groups, st.Peers, len(groups), n-1)
				}
				// One inbound message connection per peer, not per group.
				if got := b.ln.accepted.Load(); got != int32(n-1) {
					t.Errorf("host %d accepted %d connections for %d peers and %d groups", b.id, got, n-1, len(groups))
				}
			}
		})
	}
}

// TestMuxRemovePeerInOneGroupLeavesOthers: a group that removes a peer
// can no longer send to it; the other groups still can, over the same
// connection; the peer goes when the last group removes it.
func TestMuxRemovePeerInOneGroupLeavesOthers(t *testing.T) {
	groups := []uint64{1, 2, 3}
	a := newHost(t, 1, groups, nil)
	b := newHost(t, 2, groups, nil)
	connect(a, b)
	for _, g := range groups {
		a.groups[g].Send(groupMsgs(g, 1, 2, 5))
	}
	for _, g := range groups {
		rec := b.recs[g]
		testutil.Eventually(t, 10*time.Second, func() bool { return rec.count() == 5 }, "group %d: first messages", g)
	}

	a.groups[1].RemovePeer(2)
	a.groups[1].RemovePeer(2) // twice is harmless
	if st := a.mux.Stats(); st.Peers != 1 {
		t.Fatalf("peer gone after one group removed it: %+v", st)
	}
	a.groups[1].Send(groupMsgs(1, 1, 2, 4))
	if got := a.recs[1].unreachableCount(2); got != 4 {
		t.Fatalf("group 1 told of %d unreachable messages, want 4", got)
	}
	for _, g := range []uint64{2, 3} {
		a.groups[g].Send(groupMsgs(g, 1, 2, 10))
	}
	for _, g := range []uint64{2, 3} {
		rec := b.recs[g]
		testutil.Eventually(t, 10*time.Second, func() bool { return rec.count() == 15 }, "group %d after group 1 removed the peer", g)
	}
	if got := b.recs[1].count(); got != 5 {
		t.Fatalf("group 1 received %d messages after removing the peer", got)
	}
	if got := b.ln.accepted.Load(); got != 1 {
		t.Fatalf("%d connections: removing the peer from one group broke the shared one", got)
	}
	for _, r := range []*recorder{a.recs[2], a.recs[3]} {
		if r.unreachableCount(2) != 0 {
			t.Fatalf("other groups told the peer is unreachable")
		}
	}

	a.groups[2].RemovePeer(2)
	a.groups[3].RemovePeer(2)
	if st := a.mux.Stats(); st.Peers != 0 {
		t.Fatalf("peer kept after every group removed it: %+v", st)
	}
	a.groups[2].Send(groupMsgs(2, 1, 2, 1))
	if got := a.recs[2].unreachableCount(2); got != 1 {
		t.Fatalf("group 2 told of %d unreachable messages after removing the peer, want 1", got)
	}
}

// TestMuxAddPeerLastWriterWins: two groups give the same peer different
// addresses; the last one is used for both.
func TestMuxAddPeerLastWriterWins(t *testing.T) {
	a := newHost(t, 1, []uint64{1, 2}, nil)
	b := newHost(t, 2, []uint64{1, 2}, nil)
	dead := listen(t)
	deadAddr := dead.Addr().String()
	dead.Close()
	b.groups[1].AddPeer(1, a.mux.Addr().String())
	b.groups[2].AddPeer(1, a.mux.Addr().String())
	a.groups[1].AddPeer(2, deadAddr)
	a.groups[2].AddPeer(2, b.mux.Addr().String())
	sendUntil(t, a.groups[1], b.recs[1], 1, 2, 10)
	sendUntil(t, a.groups[2], b.recs[2], 1, 2, 10)
}

// TestMuxUnknownGroupDroppedAndCounted: messages for a group the receiver
// does not host (never created, or closed) are counted and reach no group;
// a group created again receives again.
func TestMuxUnknownGroupDroppedAndCounted(t *testing.T) {
	a := newHost(t, 1, []uint64{1, 2, 3}, nil)
	b := newHost(t, 2, []uint64{1, 2}, nil)
	connect(a, b)
	a.groups[3].AddPeer(2, b.mux.Addr().String()) // b does not host group 3
	a.groups[3].Send(groupMsgs(3, 1, 2, 7))
	a.groups[1].Send(groupMsgs(1, 1, 2, 1))
	testutil.Eventually(t, 10*time.Second, func() bool { return b.recs[1].count() == 1 }, "group 1 message")
	testutil.Eventually(t, 10*time.Second, func() bool { return b.mux.Stats().UnknownGroup == 7 },
		"unknown-group drops: %d", b.mux.Stats().UnknownGroup)
	if b.recs[2].count() != 0 {
		t.Fatalf("group 2 received another group's messages")
	}

	// A closed group is unknown too; the other groups keep working.
	if err := b.groups[2].Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.groups[2].Close(); err != nil {
		t.Fatal(err)
	}
	if st := b.mux.Stats(); st.Groups != 1 || st.Peers != 1 {
		t.Fatalf("after closing group 2: %+v", st)
	}
	a.groups[2].Send(groupMsgs(2, 1, 2, 3))
	a.groups[1].Send(groupMsgs(1, 1, 2, 1))
	testutil.Eventually(t, 10*time.Second, func() bool { return b.recs[1].count() == 2 }, "group 1 after closing group 2")
	testutil.Eventually(t, 10*time.Second, func() bool { return b.mux.Stats().UnknownGroup == 10 },
		"unknown-group drops: %d", b.mux.Stats().UnknownGroup)
	if b.recs[2].count() != 0 {
		t.Fatalf("closed group received messages")
	}

	// The ID can be used again.
	b.addGroup(t, 2)
	b.groups[2].AddPeer(1, a.mux.Addr().String())
	a.groups[2].Send(groupMsgs(2, 1, 2, 1))
	testutil.Eventually(t, 10*time.Second, func() bool { return b.recs[2].count() == 1 }, "re-created group 2 never received")
	if got := b.recs[2].got[0].Epoch; got != 2 {
		t.Fatalf("re-created group 2 got a message of group %d", got)
	}

	if _, err := b.mux.Group(1, newRecorder()); !errors.Is(err, ErrGroupExists) {
		t.Fatalf("second group 1: %v", err)
	}
	if _, err := b.mux.Group(0, newRecorder()); err == nil {
		t.Fatal("group 0 accepted")
	}
}

// TestMuxReportsReachTheRightGroups: a peer that cannot be dialled is
// reported unreachable to every group that has it, and to no other; a
// failed snapshot is reported to its own group only.
func TestMuxReportsReachTheRightGroups(t *testing.T) {
	a := newHost(t, 1, []uint64{1, 2, 3}, func(c *Config) { c.BackoffMin, c.BackoffMax = time.Hour, time.Hour })
	dead := listen(t)
	deadAddr := dead.Addr().String()
	dead.Close()
	a.groups[1].AddPeer(9, deadAddr)
	a.groups[2].AddPeer(9, deadAddr)
	a.groups[1].Send(groupMsgs(1, 1, 9, 1))
	testutil.Eventually(t, 10*time.Second, func() bool {
		return a.recs[1].unreachableCount(9) > 0 && a.recs[2].unreachableCount(9) > 0
	}, "groups 1 and 2 told peer 9 is unreachable")
	if a.recs[3].unreachableCount(9) != 0 {
		t.Fatalf("group 3, which does not have peer 9, told it is unreachable")
	}

	a.groups[2].Send([]consensus.Message{snapMsg(1, 9, []byte("snapshot"))})
	testutil.Eventually(t, 10*time.Second, func() bool { _, fail := a.recs[2].snapCounts(9); return fail == 1 },
		"group 2 told its snapshot failed")
	for _, g := range []uint64{1, 3} {
		if ok, fail := a.recs[g].snapCounts(9); ok+fail != 0 {
			t.Fatalf("group %d told of group 2's snapshot", g)
		}
	}
}

// TestMuxSnapshotsOfTwoGroups: two groups send a peer snapshots with the
// same index and epoch at once; each arrives whole at its own group and is
// reported sent to its own group, over one snapshot connection.
func TestMuxSnapshotsOfTwoGroups(t *testing.T) {
	small := func(c *Config) { c.MaxFrameBytes, c.SnapshotChunkBytes = 256<<10, 64<<10 }
	a := newHost(t, 1, []uint64{1, 2}, small)
	b := newHost(t, 2, []uint64{1, 2}, small)
	connect(a, b)
	data := map[uint64][]byte{1: randomBytes(1 << 20), 2: bytes.Repeat([]byte("group two "), 150_000)}
	for _, g := range []uint64{1, 2} {
		a.groups[g].Send([]consensus.Message{snapMsg(1, 2, data[g])})
	}
	for _, g := range []uint64{1, 2} {
		rec := b.recs[g]
		testutil.Eventually(t, 10*time.Second, func() bool { return rec.count() == 1 }, "group %d snapshot", g)
		if got := rec.got[0].Snapshot.Data; !bytes.Equal(got, data[g]) {
			t.Fatalf("group %d snapshot arrived damaged or swapped (%d bytes, want %d)", g, len(got), len(data[g]))
		}
		sender := a.recs[g]
		testutil.Eventually(t, 5*time.Second, func() bool { ok, fail := sender.snapCounts(2); return ok == 1 && fail == 0 },
			"group %d told its snapshot was sent", g)
	}
	if got := b.ln.accepted.Load(); got != 1 {
		t.Fatalf("%d connections for two groups' snapshots, want 1", got)
	}
}

// muxOverProxy is a pair of hosts with groups 1 and 2 where the sender
// reaches the receiver through a proxy that cuts the first connection after
// cutAfter bytes.
func muxOverProxy(t *testing.T, cutAfter int64) (a, b *host, proxy *cutProxy) {
	small := func(c *Config) { c.MaxFrameBytes, c.SnapshotChunkBytes = 256<<10, 64<<10 }
	b = newHost(t, 2, []uint64{1, 2}, small)
	proxy = newCutProxy(t, b.mux.Addr().String(), cutAfter)
	a = newHost(t, 1, []uint64{1, 2}, small)
	for _, g := range []uint64{1, 2} {
		a.groups[g].AddPeer(2, proxy.ln.Addr().String())
		b.groups[g].AddPeer(1, a.mux.Addr().String())
	}
	return a, b, proxy
}

// cutFirstTransfer sends group 1's snapshot and waits until the proxy has
// cut it and the sender has heard how it ended.
func cutFirstTransfer(t *testing.T, a *host, proxy *cutProxy, data []byte) {
	t.Helper()
	a.groups[1].Send([]consensus.Message{snapMsg(1, 2, data)})
	select {
	case <-proxy.cut:
	case <-time.After(10 * time.Second):
		t.Fatal("the first transfer never reached the cut")
	}
	testutil.Eventually(t, 10*time.Second, func() bool { ok, fail := a.recs[1].snapCounts(2); return ok+fail > 0 },
		"the first transfer never ended")
}

// sendSnapshotUntil sends group g's snapshot, one attempt at a time, until
// it arrives: each attempt ends in arrival or a reported failure (the first
// may fail on the dead connection before a new one is dialled).
func sendSnapshotUntil(t *testing.T, a, b *host, g uint64, data []byte) {
	t.Helper()
	fails := func() int { _, fail := a.recs[g].snapCounts(2); return fail }
	for attempt := 0; b.recs[g].count() == 0; attempt++ {
		if attempt == 5 {
			t.Fatalf("group %d snapshot never arrived after the broken connection", g)
		}
		before := fails()
		a.groups[g].Send([]consensus.Message{snapMsg(1, 2, data)})
		testutil.Eventually(t, 10*time.Second, func() bool { return b.recs[g].count() > 0 || fails() > before },
			"attempt %d neither arrived nor failed", attempt)
	}
}

// TestMuxSnapshotResumesWithinItsGroup: group 1's snapshot is cut at 60%;
// sent again, it resumes.
func TestMuxSnapshotResumesWithinItsGroup(t *testing.T) {
	const size = 4 << 20
	a, b, proxy := muxOverProxy(t, size*6/10)
	data := randomBytes(size)
	cutFirstTransfer(t, a, proxy, data)
	sendSnapshotUntil(t, a, b, 1, data)
	if got := b.recs[1].got[0].Snapshot.Data; !bytes.Equal(got, data) {
		t.Fatalf("resumed snapshot arrived damaged (%d bytes)", len(got))
	}
	if later := proxy.later.Load(); later >= size {
		t.Fatalf("%d bytes after the cut for a %d-byte snapshot: the transfer restarted instead of resuming", later, size)
	} else {
		t.Logf("%d bytes before the cut, %d after", proxy.forward.Load()-later, later)
	}
	if b.recs[2].count() != 0 {
		t.Fatal("group 2 received group 1's snapshot")
	}
}

// TestMuxSnapshotResumeNeverSplicesGroups: group 1's snapshot is cut at
// 60%; group 2 then sends a snapshot with the same index and epoch and
// other bytes. It must arrive whole, as its own bytes, at group 2 — not
// resume from group 1's partial one.
func TestMuxSnapshotResumeNeverSplicesGroups(t *testing.T) {
	const size = 4 << 20
	a, b, proxy := muxOverProxy(t, size*6/10)
	cutFirstTransfer(t, a, proxy, randomBytes(size))
	data2 := bytes.Repeat([]byte{0xB2}, size)
	sendSnapshotUntil(t, a, b, 2, data2)
	if got := b.recs[2].got[0].Snapshot.Data; !bytes.Equal(got, data2) {
		n := 0
		for n < len(got) && n < len(data2) && got[n] == data2[n] {
			n++
		}
		t.Fatalf("group 2's snapshot arrived spliced or damaged: %d bytes, first difference at %d", len(got), n)
	}
	if later := proxy.later.Load(); later < size {
		t.Fatalf("only %d bytes after the cut for group 2's %d-byte snapshot: it resumed from group 1's", later, size)
	}
	if b.recs[1].count() != 0 {
		t.Fatal("group 1 received a snapshot")
	}
}

// syncBuffer is a log sink for tests.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestMuxAndPlainTransportRefuseEachOther: a plain transport (wire version
// 2) and a mux (version 3) refuse each other's connections with the
// version refusal, both ways, even where the mux hosts a group whose ID is
// the plain node's cluster ID; nothing is delivered and both senders are
// told the peer is unreachable.
func TestMuxAndPlainTransportRefuseEachOther(t *testing.T) {
	plain, plainRec := newNode(t, 1, 9, nil)
	var muxLog syncBuffer
	h := newHost(t, 2, []uint64{9}, func(c *Config) {
		c.Logger = slog.New(slog.NewTextHandler(&muxLog, &slog.HandlerOptions{Level: slog.LevelWarn}))
	})
	plain.AddPeer(2, h.mux.Addr().String())
	h.groups[9].AddPeer(1, plain.Addr().String())

	plain.Send(msgs(1, 2, 3))
	testutil.Eventually(t, 5*time.Second, func() bool { return h.mux.Stats().Refused > 0 }, "mux refused the plain transport")
	testutil.Eventually(t, 5*time.Second, func() bool { return plainRec.unreachableCount(2) > 0 }, "plain sender told")

	h.groups[9].Send(groupMsgs(9, 2, 1, 3))
	testutil.Eventually(t, 5*time.Second, func() bool { return plain.Stats().Refused > 0 }, "plain transport refused the mux")
	testutil.Eventually(t, 5*time.Second, func() bool { return h.recs[9].unreachableCount(1) > 0 }, "mux group told")

	if plainRec.count() != 0 || h.recs[9].count() != 0 || h.mux.Stats().Received != 0 {
		t.Fatal("a message crossed between a plain transport and a mux")
	}
	logs := muxLog.String()
	for _, want := range []string{"peer speaks another wire version", "another wire version"} {
		if !strings.Contains(logs, want) {
			t.Fatalf("mux log lacks %q:\n%s", want, logs)
		}
	}
}

// countHandler counts one group's messages and any of another group.
type countHandler struct {
	group       uint64
	got, wrong  atomic.Int32
	unreachable atomic.Int32
}

func (h *countHandler) Receive(m consensus.Message) {
	if m.Epoch == h.group {
		h.got.Add(1)
	} else {
		h.wrong.Add(1)
	}
}
func (h *countHandler) Unreachable(consensus.NodeID)          { h.unreachable.Add(1) }
func (h *countHandler) SnapshotStatus(consensus.NodeID, bool) {}

// TestMuxThousandGroups: 1,000 groups on each of two hosts exchange a
// message each over one connection per direction; closing groups and then
// the muxes leaves no goroutine behind.
func TestMuxThousandGroups(t *testing.T) {
	const groups = 1000
	baseline := runtime.NumGoroutine()
	type side struct {
		mux *Mux
		ln  *countingListener
		trs []Transport
		hs  []*countHandler
	}
	start := func(id consensus.NodeID) *side {
		ln := &countingListener{Listener: listen(t)}
		m, err := NewMux(Config{ID: id, ClusterID: 9, Listener: ln})
		if err != nil {
			t.Fatal(err)
		}
		s := &side{mux: m, ln: ln}
		for g := uint64(1); g <= groups; g++ {
			h := &countHandler{group: g}
			tr, err := m.Group(g, h)
			if err != nil {
				t.Fatal(err)
			}
			s.trs, s.hs = append(s.trs, tr), append(s.hs, h)
		}
		return s
	}
	a, b := start(1), start(2)
	defer a.mux.Close()
	defer b.mux.Close()
	for i := range groups {
		a.trs[i].AddPeer(2, b.mux.Addr().String())
		b.trs[i].AddPeer(1, a.mux.Addr().String())
	}
	for i := range groups {
		g := uint64(i + 1)
		a.trs[i].Send(groupMsgs(g, 1, 2, 1))
		b.trs[i].Send(groupMsgs(g, 2, 1, 1))
	}
	for _, s := range []*side{a, b} {
		testutil.Eventually(t, 20*time.Second, func() bool { return s.mux.Stats().Received == groups },
			"received %d of %d messages", s.mux.Stats().Received, groups)
		for i, h := range s.hs {
			if h.got.Load() != 1 || h.wrong.Load() != 0 || h.unreachable.Load() != 0 {
				t.Fatalf("group %d: %d own messages, %d of other groups, %d unreachable", i+1, h.got.Load(), h.wrong.Load(), h.unreachable.Load())
			}
		}
		if st := s.mux.Stats(); st.Groups != groups || st.Peers != 1 || st.Dropped != 0 || st.UnknownGroup != 0 {
			t.Fatalf("stats: %+v", st)
		}
		if got := s.ln.accepted.Load(); got != 1 {
			t.Fatalf("%d connections accepted for %d groups, want 1", got, groups)
		}
	}
	// Closing every group but one keeps the peer; the last one drops it.
	for i := range groups - 1 {
		if err := a.trs[i].Close(); err != nil {
			t.Fatal(err)
		}
	}
	if st := a.mux.Stats(); st.Groups != 1 || st.Peers != 1 {
		t.Fatalf("after closing %d groups: %+v", groups-1, st)
	}
	a.trs[groups-1].Close()
	if st := a.mux.Stats(); st.Groups != 0 || st.Peers != 0 {
		t.Fatalf("after closing every group: %+v", st)
	}
	a.mux.Close()
	b.mux.Close()
	// A group's Close after the mux's is harmless.
	if err := b.trs[0].Close(); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, func() bool { return runtime.NumGoroutine() <= baseline },
		"%d goroutines after Close, %d before", runtime.NumGoroutine(), baseline)
}

// TestMuxFrameRoundTrip: a version 3 frame carries each message's group,
// up to the largest group ID.
func TestMuxFrameRoundTrip(t *testing.T) {
	var batch []envelope
	for i, g := range []uint64{1, 1, 300, 1<<64 - 1, 2} {
		batch = append(batch, envelope{group: g, Message: groupMsgs(g, 1, 2, i+1)[i]})
	}
	frame := encodeFrame(nil, batch, true)
	got, err := decodeFrame(frame[4:], true)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(batch) {
		t.Fatalf("%d messages, want %d", len(got), len(batch))
	}
	for i := range got {
		if got[i].group != batch[i].group || got[i].Index != batch[i].Index || got[i].Epoch != batch[i].group {
			t.Fatalf("message %d: group %d index %d, want group %d index %d", i, got[i].group, got[i].Index, batch[i].group, batch[i].Index)
		}
	}
	// A version 2 frame still carries no groups.
	plain := encodeFrame(nil, batch, false)
	if got, err := decodeFrame(plain[4:], false); err != nil || got[3].group != 0 {
		t.Fatalf("version 2 round trip: %v", err)
	}
}
