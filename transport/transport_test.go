package transport

import (
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ballotdb/ballot/consensus"
	"github.com/ballotdb/ballot/internal/testutil"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type recorder struct {
	mu          sync.Mutex
	got         []consensus.Message
	unreachable map[consensus.NodeID]int
	snapOK      map[consensus.NodeID]int
	snapFail    map[consensus.NodeID]int
}

func newRecorder() *recorder {
	return &recorder{unreachable: map[consensus.NodeID]int{}, snapOK: map[consensus.NodeID]int{}, snapFail: map[consensus.NodeID]int{}}
}

func (r *recorder) Receive(m consensus.Message) {
	r.mu.Lock()
	r.got = append(r.got, m)
	r.mu.Unlock()
}

func (r *recorder) Unreachable(p consensus.NodeID) {
	r.mu.Lock()
	r.unreachable[p]++
	r.mu.Unlock()
}

func (r *recorder) SnapshotStatus(p consensus.NodeID, ok bool) {
	r.mu.Lock()
	if ok {
		r.snapOK[p]++
	} else {
		r.snapFail[p]++
	}
	r.mu.Unlock()
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.got)
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

func newNode(t *testing.T, id consensus.NodeID, cluster uint64, tlsCfg *TLSConfig) (*TCP, *recorder) {
	t.Helper()
	rec := newRecorder()
	tr, err := NewTCP(Config{ID: id, ClusterID: cluster, Listener: listen(t), Handler: rec, TLS: tlsCfg,
		BackoffMin: 5 * time.Millisecond, BackoffMax: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	return tr, rec
}

func msgs(from, to consensus.NodeID, n int) []consensus.Message {
	out := make([]consensus.Message, n)
	for i := range out {
		out[i] = consensus.Message{Type: consensus.MsgApp, From: from, To: to, Epoch: 3, Index: uint64(i),
			Entries: []consensus.Entry{{Index: uint64(i + 1), Epoch: 3, Data: []byte(fmt.Sprintf("e%d", i))}}}
	}
	return out
}

// sendUntil keeps sending batches until the receiver has want messages:
// the first sends may be dropped while the connection is being dialled.
func sendUntil(t *testing.T, tr Transport, rec *recorder, from, to consensus.NodeID, want int) {
	t.Helper()
	testutil.Eventually(t, 10*time.Second, func() bool {
		if rec.count() >= want {
			return true
		}
		tr.Send(msgs(from, to, 10))
		return false
	}, "receiver got %d of %d messages", rec.count(), want)
}

func TestTCPDeliversInOrderWithSender(t *testing.T) {
	a, _ := newNode(t, 1, 42, nil)
	b, recB := newNode(t, 2, 42, nil)
	a.AddPeer(2, b.Addr().String())
	b.AddPeer(1, a.Addr().String())
	sendUntil(t, a, recB, 1, 2, 1)
	before := recB.count()
	a.Send(msgs(1, 2, 1000))
	testutil.Eventually(t, 10*time.Second, func() bool { return recB.count() >= before+1000 }, "1000 messages")
	recB.mu.Lock()
	defer recB.mu.Unlock()
	tail := recB.got[before:]
	for i, m := range tail[:1000] {
		if m.From != 1 || m.Index != uint64(i) || string(m.Entries[0].Data) != fmt.Sprintf("e%d", i) {
			t.Fatalf("message %d: %v", i, m)
		}
	}
}

func TestTCPRefusesOtherClusterAndUnknownNode(t *testing.T) {
	a, recA := newNode(t, 1, 42, nil)
	b, recB := newNode(t, 2, 99, nil) // another cluster
	a.AddPeer(2, b.Addr().String())
	b.AddPeer(1, a.Addr().String())
	a.Send(msgs(1, 2, 5))
	testutil.Eventually(t, 5*time.Second, func() bool { return b.Stats().Refused > 0 }, "connection from another cluster refused")
	testutil.Eventually(t, 5*time.Second, func() bool {
		recA.mu.Lock()
		defer recA.mu.Unlock()
		return recA.unreachable[2] > 0
	}, "sender told the peer is unreachable")
	if recB.count() != 0 {
		t.Fatalf("messages from another cluster delivered")
	}
	c, recC := newNode(t, 3, 42, nil) // does not know node 1
	a.AddPeer(3, c.Addr().String())
	a.Send(msgs(1, 3, 5))
	testutil.Eventually(t, 5*time.Second, func() bool { return c.Stats().Refused > 0 }, "unknown node refused")
	if recC.count() != 0 {
		t.Fatalf("messages from an unknown node delivered")
	}
}

func TestTCPFullQueueDropsAndReports(t *testing.T) {
	rec := newRecorder()
	ln := listen(t)
	dead := listen(t)
	deadAddr := dead.Addr().String()
	dead.Close() // nothing listens there
	tr, err := NewTCP(Config{ID: 1, Listener: ln, Handler: rec, QueueLen: 4, BackoffMin: time.Hour, BackoffMax: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	tr.AddPeer(2, deadAddr)
	tr.Send(msgs(1, 2, 100))
	tr.Send(msgs(1, 7, 1)) // unknown peer
	testutil.Eventually(t, 5*time.Second, func() bool { return tr.Stats().Dropped == 101 }, "all 101 messages dropped, got %d", tr.Stats().Dropped)
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if rec.unreachable[2] == 0 || rec.unreachable[7] != 1 {
		t.Fatalf("unreachable reports: %v", rec.unreachable)
	}
}

func TestTCPReconnectsAfterPeerRestart(t *testing.T) {
	a, _ := newNode(t, 1, 5, nil)
	b, recB := newNode(t, 2, 5, nil)
	addr := b.Addr().String()
	a.AddPeer(2, addr)
	b.AddPeer(1, a.Addr().String())
	sendUntil(t, a, recB, 1, 2, 10)
	b.Close()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("cannot rebind %s: %v", addr, err)
	}
	rec2 := newRecorder()
	b2, err := NewTCP(Config{ID: 2, ClusterID: 5, Listener: ln, Handler: rec2})
	if err != nil {
		t.Fatal(err)
	}
	defer b2.Close()
	b2.AddPeer(1, a.Addr().String())
	sendUntil(t, a, rec2, 1, 2, 10)
}

func TestTCPMutualTLS(t *testing.T) {
	ca := testutil.NewCA(t, "cluster")
	cfg := func(name string, ca *testutil.CA) *TLSConfig {
		cert, key := ca.Issue(t, name)
		return &TLSConfig{CertFile: cert, KeyFile: key, CAFile: ca.File}
	}
	a, _ := newNode(t, 1, 1, cfg("n1", ca))
	b, recB := newNode(t, 2, 1, cfg("n2", ca))
	a.AddPeer(2, b.Addr().String())
	b.AddPeer(1, a.Addr().String())
	sendUntil(t, a, recB, 1, 2, 20)

	other := testutil.NewCA(t, "intruder")
	c, _ := newNode(t, 3, 1, cfg("n3", other))
	c.AddPeer(2, b.Addr().String())
	b.AddPeer(3, c.Addr().String())
	for range 20 {
		c.Send(msgs(3, 2, 1))
	}
	testutil.Eventually(t, 5*time.Second, func() bool { return c.Stats().Dropped >= 20 }, "intruder's messages dropped")
	recB.mu.Lock()
	defer recB.mu.Unlock()
	for _, m := range recB.got {
		if m.From == 3 {
			t.Fatalf("message from a certificate of another CA delivered")
		}
	}
}

func TestMemNetworkCutAndHeal(t *testing.T) {
	n := NewMemNetwork()
	r1, r2 := newRecorder(), newRecorder()
	t1 := n.Join(1, r1, 0)
	t2 := n.Join(2, r2, 0)
	defer t1.Close()
	defer t2.Close()
	n.Cut(1, 2)
	t1.Send(msgs(1, 2, 3))
	t2.Send(msgs(2, 1, 3))
	testutil.Eventually(t, time.Second, func() bool { return r1.count() == 3 }, "2→1 delivered")
	if r2.count() != 0 {
		t.Fatalf("cut link delivered")
	}
	r1.mu.Lock()
	if r1.unreachable[2] != 3 {
		t.Fatalf("unreachable %v", r1.unreachable)
	}
	r1.mu.Unlock()
	n.Heal()
	t1.Send(msgs(1, 2, 3))
	testutil.Eventually(t, time.Second, func() bool { return r2.count() == 3 }, "healed link delivered")
}
