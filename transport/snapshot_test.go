package transport

import (
	"bytes"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ballotdb/ballot/consensus"
	"github.com/ballotdb/ballot/internal/testutil"
)

func snapMsg(from, to consensus.NodeID, data []byte) consensus.Message {
	return consensus.Message{Type: consensus.MsgSnap, From: from, To: to, Epoch: 4,
		Snapshot: &consensus.Snapshot{Meta: consensus.SnapshotMeta{Index: 900, Epoch: 3,
			ConfState: consensus.ConfState{Voters: []consensus.NodeID{1, 2, 3}}}, Data: data}}
}

func randomBytes(n int) []byte {
	r := rand.New(rand.NewPCG(1, 2))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func smallFrames(id consensus.NodeID, ln net.Listener, rec *recorder) Config {
	c := Config{ID: id, ClusterID: 9, Listener: ln, Handler: rec, MaxFrameBytes: 256 << 10, SnapshotChunkBytes: 64 << 10,
		BackoffMin: 5 * time.Millisecond, BackoffMax: 20 * time.Millisecond}
	if os.Getenv("TRANSPORT_TEST_LOG") != "" {
		c.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return c
}

// TestTCPSnapshotLargerThanAFrame: a snapshot twelve times the largest
// frame arrives whole, in chunks, and is reported sent.
func TestTCPSnapshotLargerThanAFrame(t *testing.T) {
	ra, rb := newRecorder(), newRecorder()
	a, err := NewTCP(smallFrames(1, listen(t), ra))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := NewTCP(smallFrames(2, listen(t), rb))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	a.AddPeer(2, b.Addr().String())
	b.AddPeer(1, a.Addr().String())
	data := randomBytes(3 << 20)
	a.Send([]consensus.Message{snapMsg(1, 2, data)})
	testutil.Eventually(t, 10*time.Second, func() bool { return rb.count() == 1 }, "snapshot never arrived")
	got := rb.got[0]
	if got.Type != consensus.MsgSnap || got.Snapshot.Meta.Index != 900 || !bytes.Equal(got.Snapshot.Data, data) {
		t.Fatalf("snapshot arrived damaged: index %d, %d bytes", got.Snapshot.Meta.Index, len(got.Snapshot.Data))
	}
	testutil.Eventually(t, 5*time.Second, func() bool {
		ra.mu.Lock()
		defer ra.mu.Unlock()
		return ra.snapOK[2] == 1
	}, "sender never reported the snapshot sent")
}

// cutProxy forwards connections to target, counting the bytes sent towards
// it, and cuts the first connection after cutAfter bytes.
type cutProxy struct {
	ln       net.Listener
	target   string
	cutAfter int64
	forward  atomic.Int64
	later    atomic.Int64 // bytes towards target on connections after the first
	conns    atomic.Int32
	cut      chan struct{}
	wg       sync.WaitGroup
}

func newCutProxy(t *testing.T, target string, cutAfter int64) *cutProxy {
	p := &cutProxy{ln: listen(t), target: target, cutAfter: cutAfter, cut: make(chan struct{})}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := p.ln.Accept()
			if err != nil {
				return
			}
			first := p.conns.Add(1) == 1
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				defer c.Close()
				up, err := net.Dial("tcp", p.target)
				if err != nil {
					return
				}
				defer up.Close()
				go io.Copy(c, up) // handshake answers
				buf := make([]byte, 32<<10)
				var sent int64
				for {
					n, err := c.Read(buf)
					if n > 0 {
						if first && sent+int64(n) > p.cutAfter {
							n = int(p.cutAfter - sent)
							up.Write(buf[:n])
							p.forward.Add(int64(n))
							close(p.cut)
							return
						}
						up.Write(buf[:n])
						sent += int64(n)
						p.forward.Add(int64(n))
						if !first {
							p.later.Add(int64(n))
						}
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() { p.ln.Close(); p.wg.Wait() })
	return p
}

// TestTCPSnapshotResumesAfterBrokenConnection: the connection breaks after
// 60% of a snapshot; sent again, it resumes where the receiver stopped
// instead of sending the whole snapshot again.
func TestTCPSnapshotResumesAfterBrokenConnection(t *testing.T) {
	ra, rb := newRecorder(), newRecorder()
	b, err := NewTCP(smallFrames(2, listen(t), rb))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	const size = 4 << 20
	proxy := newCutProxy(t, b.Addr().String(), size*6/10)
	a, err := NewTCP(smallFrames(1, listen(t), ra))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	a.AddPeer(2, proxy.ln.Addr().String())
	b.AddPeer(1, a.Addr().String())
	data := randomBytes(size)
	a.Send([]consensus.Message{snapMsg(1, 2, data)})
	select {
	case <-proxy.cut:
	case <-time.After(10 * time.Second):
		t.Fatal("the first transfer never reached the cut")
	}
	// Send again until it arrives, one attempt at a time: each attempt
	// ends in arrival or in a reported failure (the first may fail on the
	// dead connection before a new one is dialled).
	fails := func() int {
		ra.mu.Lock()
		defer ra.mu.Unlock()
		return ra.snapFail[2]
	}
	testutil.Eventually(t, 10*time.Second, func() bool {
		ra.mu.Lock()
		defer ra.mu.Unlock()
		return ra.snapOK[2]+ra.snapFail[2] > 0
	}, "the first transfer never ended")
	for attempt := 0; rb.count() == 0; attempt++ {
		if attempt == 5 {
			t.Fatal("snapshot never arrived after the broken connection")
		}
		before := fails()
		a.Send([]consensus.Message{snapMsg(1, 2, data)})
		testutil.Eventually(t, 10*time.Second, func() bool { return rb.count() > 0 || fails() > before },
			"attempt %d neither arrived nor failed", attempt)
	}
	if got := rb.got[0].Snapshot.Data; !bytes.Equal(got, data) {
		t.Fatalf("resumed snapshot arrived damaged (%d bytes)", len(got))
	}
	// Whatever the receiver held when the new connection came (bytes in
	// flight at the cut may be lost), the new connection did not carry the
	// whole snapshot again.
	if later := proxy.later.Load(); later >= size {
		t.Fatalf("%d bytes after the cut for a %d-byte snapshot: the transfer restarted instead of resuming", later, size)
	} else {
		t.Logf("%d bytes before the cut, %d after, for a %d-byte snapshot, over %d connections",
			proxy.forward.Load()-later, later, size, proxy.conns.Load())
	}
}
