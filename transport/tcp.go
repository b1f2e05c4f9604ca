package transport

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ballotdb/ballot/consensus"
)

const (
	magic          = "BLT1"
	wireVersion    = 2 // a plain transport: one group per connection
	wireVersionMux = 3 // a Mux: each message tagged with its group (mux.go)
	streamMsgs     = 0
	streamSnap     = 1
	handshakeSize  = 4 + 1 + 1 + 8 + 8 + 8

	ackOK            = 0
	ackOtherCluster  = 1
	ackUnknownNode   = 2
	ackWrongVersion  = 3
	ackNotAddressee  = 4
	maxBatchMessages = 512
)

// ackReason names a refusal code for logs and errors.
func ackReason(code byte) string {
	switch code {
	case ackOtherCluster:
		return "another cluster"
	case ackUnknownNode:
		return "unknown node"
	case ackWrongVersion:
		return "another wire version (a plain transport and a Mux do not talk to each other)"
	case ackNotAddressee:
		return "another node ID"
	}
	return "unknown refusal code"
}

// Config configures a TCP transport.
type Config struct {
	ID        consensus.NodeID
	ClusterID uint64
	// Listener accepts peers' connections (tests pass one bound to port 0).
	Listener net.Listener
	Handler  Handler
	// TLS, when set, secures peer connections with mutual TLS.
	TLS *TLSConfig
	// QueueLen bounds each peer's message queue. Default 4096.
	QueueLen int
	// SnapshotQueueLen bounds each peer's snapshot queue. Default 4.
	SnapshotQueueLen int
	// MaxFrameBytes bounds one frame. Default 64 MiB.
	MaxFrameBytes int
	// SnapshotChunkBytes is how much snapshot data one frame of the
	// snapshot stream carries. Default 1 MiB.
	SnapshotChunkBytes int
	// DialTimeout bounds connecting and the handshake. Default 2 s.
	DialTimeout time.Duration
	// WriteTimeout bounds writing one frame. Default 5 s (snapshots: 20×).
	WriteTimeout time.Duration
	// BackoffMin and BackoffMax bound the jittered redial backoff.
	// Defaults 50 ms and 2 s.
	BackoffMin, BackoffMax time.Duration
	Logger                 *slog.Logger
}

func (c *Config) defaults() error {
	if c.ID == consensus.None {
		return errors.New("transport: Config.ID must not be 0")
	}
	if c.Listener == nil {
		return errors.New("transport: Config.Listener is required")
	}
	if c.Handler == nil {
		return errors.New("transport: Config.Handler is required")
	}
	if c.QueueLen == 0 {
		c.QueueLen = 4096
	}
	if c.SnapshotQueueLen == 0 {
		c.SnapshotQueueLen = 4
	}
	if c.MaxFrameBytes == 0 {
		c.MaxFrameBytes = 64 << 20
	}
	if c.SnapshotChunkBytes == 0 {
		c.SnapshotChunkBytes = 1 << 20
	}
	if c.SnapshotChunkBytes > c.MaxFrameBytes/2 {
		return fmt.Errorf("transport: Config.SnapshotChunkBytes (%d) must be at most half of MaxFrameBytes (%d)", c.SnapshotChunkBytes, c.MaxFrameBytes)
	}
	if c.DialTimeout == 0 {
		c.DialTimeout = 2 * time.Second
	}
	if c.WriteTimeout == 0 {
		c.WriteTimeout = 5 * time.Second
	}
	if c.BackoffMin == 0 {
		c.BackoffMin = 50 * time.Millisecond
	}
	if c.BackoffMax == 0 {
		c.BackoffMax = 2 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Stats are the transport's counters.
type Stats struct {
	Sent, Received, Dropped, Refused uint64
}

// TCP is the TCP transport.
type TCP struct {
	cfg Config
	// mux, when set, makes this the shared transport of a Mux: it speaks
	// wire version 3 and delivers to the mux's groups instead of
	// cfg.Handler. version is the wire version it speaks.
	mux     *Mux
	version byte
	ln      net.Listener
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup

	mu      sync.Mutex
	peers   map[consensus.NodeID]*peer
	inbound map[net.Conn]struct{}
	closed  bool
	// partial holds, per peer, the snapshot being received: kept across
	// broken connections so the sender can resume where it stopped.
	partial map[consensus.NodeID]*partialSnap
	// snapIn is each peer's current inbound snapshot connection and a
	// channel closed when its reader has stopped.
	snapIn map[consensus.NodeID]*snapReader

	sent, received, dropped, refused atomic.Uint64
}

type peer struct {
	id     consensus.NodeID
	addr   atomic.Value // string
	q      chan envelope
	sq     chan envelope
	cancel context.CancelFunc
}

// envelope is a message queued for a peer with the group it belongs to
// (always 0 on a plain transport).
type envelope struct {
	group uint64
	consensus.Message
}

// NewTCP starts a transport listening on cfg.Listener.
func NewTCP(cfg Config) (*TCP, error) { return newTCP(cfg, nil) }

// newTCP starts a plain transport (mux nil) or a mux's shared transport.
func newTCP(cfg Config, mux *Mux) (*TCP, error) {
	version := byte(wireVersion)
	if mux != nil {
		version = wireVersionMux
		cfg.Handler = nopHandler{} // never called: the mux delivers
	}
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	t := &TCP{cfg: cfg, mux: mux, version: version, ln: cfg.Listener, ctx: ctx, cancel: cancel,
		peers: map[consensus.NodeID]*peer{}, inbound: map[net.Conn]struct{}{},
		partial: map[consensus.NodeID]*partialSnap{}, snapIn: map[consensus.NodeID]*snapReader{}}
	if cfg.TLS != nil {
		t.ln = tls.NewListener(cfg.Listener, cfg.TLS.serverConfig())
	}
	t.wg.Add(1)
	go t.acceptLoop()
	return t, nil
}

// Addr is the address the transport listens on.
func (t *TCP) Addr() net.Addr { return t.cfg.Listener.Addr() }

// Stats returns the counters.
func (t *TCP) Stats() Stats {
	return Stats{Sent: t.sent.Load(), Received: t.received.Load(), Dropped: t.dropped.Load(), Refused: t.refused.Load()}
}

// AddPeer adds a peer or updates its address.
func (t *TCP) AddPeer(id consensus.NodeID, addr string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed || id == t.cfg.ID {
		return
	}
	if p, ok := t.peers[id]; ok {
		p.addr.Store(addr)
		return
	}
	ctx, cancel := context.WithCancel(t.ctx)
	p := &peer{id: id, q: make(chan envelope, t.cfg.QueueLen),
		sq: make(chan envelope, t.cfg.SnapshotQueueLen), cancel: cancel}
	p.addr.Store(addr)
	t.peers[id] = p
	t.wg.Add(2)
	go t.writeLoop(ctx, p, streamMsgs, p.q)
	go t.writeLoop(ctx, p, streamSnap, p.sq)
}

// RemovePeer forgets a peer.
func (t *TCP) RemovePeer(id consensus.NodeID) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if p, ok := t.peers[id]; ok {
		p.cancel()
		delete(t.peers, id)
	}
	delete(t.partial, id)
}

// Send queues msgs; a message for an unknown peer or a full queue is dropped,
// counted and reported unreachable.
func (t *TCP) Send(msgs []consensus.Message) { t.send(0, msgs) }

// send queues msgs of group (0 on a plain transport).
func (t *TCP) send(group uint64, msgs []consensus.Message) {
	t.mu.Lock()
	closed := t.closed
	t.mu.Unlock()
	if closed {
		return
	}
	for _, m := range msgs {
		e := envelope{group: group, Message: m}
		t.mu.Lock()
		p := t.peers[m.To]
		t.mu.Unlock()
		if p == nil {
			t.drop(e, "unknown peer")
			continue
		}
		q := p.q
		if m.Type == consensus.MsgSnap {
			q = p.sq
		}
		select {
		case q <- e:
		default:
			t.drop(e, "queue full")
		}
	}
}

func (t *TCP) drop(e envelope, why string) {
	t.dropped.Add(1)
	if e.Type == consensus.MsgSnap {
		t.snapshotStatus(e.group, e.To, false)
	} else {
		t.unreachable(e.group, e.To)
	}
	if t.mux != nil {
		t.cfg.Logger.Debug("message dropped", "peer", e.To, "group", e.group, "type", e.Type.String(), "reason", why)
		return
	}
	t.cfg.Logger.Debug("message dropped", "peer", e.To, "type", e.Type.String(), "reason", why)
}

// The handler calls: to cfg.Handler on a plain transport, to the group's
// handler on a mux. They are never made with t.mu held.

func (t *TCP) receive(group uint64, m consensus.Message) {
	if t.mux != nil {
		t.mux.receive(group, m)
		return
	}
	t.cfg.Handler.Receive(m)
}

func (t *TCP) unreachable(group uint64, peer consensus.NodeID) {
	if t.mux != nil {
		t.mux.unreachable(group, peer)
		return
	}
	t.cfg.Handler.Unreachable(peer)
}

func (t *TCP) snapshotStatus(group uint64, peer consensus.NodeID, ok bool) {
	if t.mux != nil {
		t.mux.snapshotStatus(group, peer, ok)
		return
	}
	t.cfg.Handler.SnapshotStatus(peer, ok)
}

// peerDown tells a mux that a dial or a write of the message stream to
// peer failed, so that every group that has the peer hears of it, not only
// the groups whose messages were in the failed batch (once per failure,
// not per batch dropped while backing off). A plain transport has one
// group, already told by drop.
func (t *TCP) peerDown(peer consensus.NodeID) {
	if t.mux != nil {
		t.mux.peerDown(peer)
	}
}

// nopHandler stands in for Config.Handler on a mux's transport.
type nopHandler struct{}

func (nopHandler) Receive(consensus.Message)             {}
func (nopHandler) Unreachable(consensus.NodeID)          {}
func (nopHandler) SnapshotStatus(consensus.NodeID, bool) {}

// writeLoop sends one peer's stream, redialling with jittered backoff.
func (t *TCP) writeLoop(ctx context.Context, p *peer, stream byte, q chan envelope) {
	defer t.wg.Done()
	var conn net.Conn
	var bw *bufio.Writer
	var resume snapKey // what the peer already holds (snapshot stream)
	defer func() {
		if conn != nil {
			conn.Close()
		}
	}()
	backoff := t.cfg.BackoffMin
	var retryAt time.Time
	buf := make([]byte, 0, 64<<10)
	batch := make([]envelope, 0, maxBatchMessages)
	for {
		var m envelope
		select {
		case <-ctx.Done():
			return
		case m = <-q:
		}
		batch = append(batch[:0], m)
		if stream == streamMsgs {
		drain:
			for len(batch) < maxBatchMessages {
				select {
				case m2 := <-q:
					batch = append(batch, m2)
				default:
					break drain
				}
			}
		}
		if conn == nil {
			if time.Now().Before(retryAt) {
				for _, m := range batch {
					t.drop(m, "peer unreachable (backing off)")
				}
				continue
			}
			c, rs, err := t.dial(ctx, p, stream)
			if err != nil {
				t.cfg.Logger.Debug("dial failed", "peer", p.id, "stream", stream, "err", err)
				for _, m := range batch {
					t.drop(m, "dial failed")
				}
				if stream == streamMsgs {
					t.peerDown(p.id)
				}
				// Jittered exponential backoff: [backoff/2, backoff).
				retryAt = time.Now().Add(backoff/2 + rand.N(backoff/2+1))
				backoff = min(backoff*2, t.cfg.BackoffMax)
				continue
			}
			conn, bw, resume = c, bufio.NewWriterSize(c, 64<<10), rs
			backoff = t.cfg.BackoffMin
		}
		if stream == streamSnap {
			var err error
			if resume, err = t.sendSnapshot(conn, bw, batch[0], resume); err != nil {
				t.cfg.Logger.Debug("snapshot send failed", "peer", p.id, "err", err)
				conn.Close()
				conn = nil
				t.drop(batch[0], "write failed")
				continue
			}
			t.sent.Add(1)
			t.snapshotStatus(batch[0].group, batch[0].To, true)
			continue
		}
		buf = encodeFrame(buf[:0], batch, t.mux != nil)
		conn.SetWriteDeadline(time.Now().Add(t.cfg.WriteTimeout))
		_, err := bw.Write(buf)
		if err == nil {
			err = bw.Flush()
		}
		if err != nil {
			t.cfg.Logger.Debug("write failed", "peer", p.id, "err", err)
			conn.Close()
			conn = nil
			for _, m := range batch {
				t.drop(m, "write failed")
			}
			t.peerDown(p.id)
			continue
		}
		t.sent.Add(uint64(len(batch)))
	}
}

// encodeFrame appends a frame of batch; tagged (wire version 3) puts each
// message's group before it.
func encodeFrame(buf []byte, batch []envelope, tagged bool) []byte {
	buf = append(buf, 0, 0, 0, 0)
	buf = binary.AppendUvarint(buf, uint64(len(batch)))
	for i := range batch {
		if tagged {
			buf = binary.AppendUvarint(buf, batch[i].group)
		}
		start := len(buf)
		buf = append(buf, make([]byte, binary.MaxVarintLen64)...)
		msgStart := len(buf)
		buf = consensus.AppendMessage(buf, &batch[i].Message)
		n := len(buf) - msgStart
		var lb [binary.MaxVarintLen64]byte
		k := binary.PutUvarint(lb[:], uint64(n))
		copy(buf[start:], lb[:k])
		copy(buf[start+k:], buf[msgStart:])
		buf = buf[:start+k+n]
	}
	binary.LittleEndian.PutUint32(buf, uint32(len(buf)-4))
	return buf
}

func (t *TCP) dial(ctx context.Context, p *peer, stream byte) (net.Conn, snapKey, error) {
	addr, _ := p.addr.Load().(string)
	dctx, cancel := context.WithTimeout(ctx, t.cfg.DialTimeout)
	defer cancel()
	var d net.Dialer
	var none snapKey
	c, err := d.DialContext(dctx, "tcp", addr)
	if err != nil {
		return nil, none, err
	}
	if t.cfg.TLS != nil {
		tc := tls.Client(c, t.cfg.TLS.clientConfig())
		if err := tc.HandshakeContext(dctx); err != nil {
			c.Close()
			return nil, none, fmt.Errorf("tls handshake with %s: %w", addr, err)
		}
		c = tc
	}
	deadline, _ := dctx.Deadline()
	c.SetDeadline(deadline)
	var hs [handshakeSize]byte
	copy(hs[:], magic)
	hs[4], hs[5] = t.version, stream
	binary.LittleEndian.PutUint64(hs[6:], t.cfg.ClusterID)
	binary.LittleEndian.PutUint64(hs[14:], uint64(t.cfg.ID))
	binary.LittleEndian.PutUint64(hs[22:], uint64(p.id))
	if _, err := c.Write(hs[:]); err != nil {
		c.Close()
		return nil, none, err
	}
	var ack [1]byte
	if _, err := io.ReadFull(c, ack[:]); err != nil {
		c.Close()
		return nil, none, err
	}
	if ack[0] != ackOK {
		c.Close()
		if ack[0] == ackWrongVersion {
			t.cfg.Logger.Warn("peer speaks another wire version", "peer", p.id, "addr", addr, "version", t.version)
		}
		return nil, none, fmt.Errorf("%w: %s refused us (code %d: %s)", ErrRefused, addr, ack[0], ackReason(ack[0]))
	}
	var resume snapKey
	if stream == streamSnap {
		var rb [32]byte
		n := resumeSize(t.version)
		if _, err := io.ReadFull(c, rb[:n]); err != nil {
			c.Close()
			return nil, none, err
		}
		resume = snapKey{index: binary.LittleEndian.Uint64(rb[0:]), epoch: binary.LittleEndian.Uint64(rb[8:]),
			have: binary.LittleEndian.Uint64(rb[16:])}
		if n == 32 {
			resume.group = binary.LittleEndian.Uint64(rb[24:])
		}
	}
	c.SetDeadline(time.Time{})
	return c, resume, nil
}

func (t *TCP) acceptLoop() {
	defer t.wg.Done()
	for {
		c, err := t.ln.Accept()
		if err != nil {
			if t.ctx.Err() != nil {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			t.cfg.Logger.Warn("accept failed", "err", err)
			return
		}
		t.mu.Lock()
		if t.closed {
			t.mu.Unlock()
			c.Close()
			return
		}
		t.inbound[c] = struct{}{}
		t.wg.Add(1)
		t.mu.Unlock()
		go t.readLoop(c)
	}
}

func (t *TCP) readLoop(c net.Conn) {
	defer t.wg.Done()
	defer func() {
		c.Close()
		t.mu.Lock()
		delete(t.inbound, c)
		t.mu.Unlock()
	}()
	c.SetReadDeadline(time.Now().Add(t.cfg.DialTimeout))
	var hs [handshakeSize]byte
	if _, err := io.ReadFull(c, hs[:]); err != nil {
		return
	}
	from := consensus.NodeID(binary.LittleEndian.Uint64(hs[14:]))
	code := byte(ackOK)
	switch {
	case string(hs[:4]) != magic || hs[4] != t.version:
		code = ackWrongVersion
	case binary.LittleEndian.Uint64(hs[6:]) != t.cfg.ClusterID:
		code = ackOtherCluster
	case consensus.NodeID(binary.LittleEndian.Uint64(hs[22:])) != t.cfg.ID:
		code = ackNotAddressee
	default:
		t.mu.Lock()
		_, known := t.peers[from]
		t.mu.Unlock()
		if !known {
			code = ackUnknownNode
		}
	}
	c.Write([]byte{code})
	if code != ackOK {
		t.refused.Add(1)
		t.cfg.Logger.Warn("peer connection refused", "peer", from, "remote", c.RemoteAddr().String(),
			"cluster", binary.LittleEndian.Uint64(hs[6:]), "version", hs[4], "code", code, "reason", ackReason(code))
		return
	}
	stream := hs[5]
	if stream == streamSnap {
		// A new snapshot connection replaces the peer's old one: let the
		// old reader stop first, so what we say we hold is all we got.
		me := &snapReader{conn: c, done: make(chan struct{})}
		defer close(me.done)
		t.mu.Lock()
		old := t.snapIn[from]
		t.snapIn[from] = me
		t.mu.Unlock()
		if old != nil {
			// Let it drain what it has buffered (a broken connection
			// ends on its own); close it if it does not.
			select {
			case <-old.done:
			case <-time.After(t.cfg.DialTimeout):
				old.conn.Close()
				<-old.done
			}
		}
		defer func() {
			t.mu.Lock()
			if t.snapIn[from] == me {
				delete(t.snapIn, from)
			}
			t.mu.Unlock()
		}()
		// Tell the sender what we already hold, so it resumes there.
		var rb [32]byte
		t.mu.Lock()
		if ps := t.partial[from]; ps != nil {
			binary.LittleEndian.PutUint64(rb[0:], ps.key.index)
			binary.LittleEndian.PutUint64(rb[8:], ps.key.epoch)
			binary.LittleEndian.PutUint64(rb[16:], uint64(len(ps.data)))
			binary.LittleEndian.PutUint64(rb[24:], ps.key.group) // version 3 only
		}
		t.mu.Unlock()
		if _, err := c.Write(rb[:resumeSize(t.version)]); err != nil {
			return
		}
	}
	c.SetReadDeadline(time.Time{})
	br := bufio.NewReaderSize(c, 64<<10)
	var frame []byte
	var msgs []envelope // reused for every frame
	for {
		var lb [4]byte
		if _, err := io.ReadFull(br, lb[:]); err != nil {
			return
		}
		n := int(binary.LittleEndian.Uint32(lb[:]))
		if n > t.cfg.MaxFrameBytes {
			t.cfg.Logger.Warn("frame too large", "peer", from, "bytes", n, "max", t.cfg.MaxFrameBytes)
			return
		}
		if cap(frame) < n {
			frame = make([]byte, n)
		}
		frame = frame[:n]
		if _, err := io.ReadFull(br, frame); err != nil {
			return
		}
		if stream == streamSnap {
			m, done, err := t.receiveChunk(from, frame)
			if err != nil {
				t.cfg.Logger.Warn("bad snapshot chunk", "peer", from, "err", err)
				return
			}
			if done {
				t.received.Add(1)
				t.receive(m.group, m.Message)
			}
			continue
		}
		var err error
		msgs, err = decodeFrameInto(msgs[:0], frame, t.mux != nil)
		if err != nil {
			t.cfg.Logger.Warn("bad frame", "peer", from, "err", err)
			return
		}
		for _, m := range msgs {
			if m.From != from {
				t.cfg.Logger.Warn("message with a forged sender dropped", "peer", from, "from", m.From)
				continue
			}
			t.received.Add(1)
			t.receive(m.group, m.Message)
		}
	}
}

// decodeFrame decodes a frame's payload; tagged (wire version 3) reads each
// message's group before it.
func decodeFrame(frame []byte, tagged bool) ([]envelope, error) {
	return decodeFrameInto(nil, frame, tagged)
}

// decodeFrameInto is decodeFrame appending to msgs: a reader reuses one
// slice for every frame (the messages are handed on by value before the
// next frame is read).
func decodeFrameInto(msgs []envelope, frame []byte, tagged bool) ([]envelope, error) {
	count, k := binary.Uvarint(frame)
	if k <= 0 || count > uint64(len(frame)) {
		return nil, fmt.Errorf("%w: bad message count", consensus.ErrCorrupt)
	}
	off := k
	msgs = slices.Grow(msgs, int(count))
	for range count {
		var group uint64
		if tagged {
			g, k := binary.Uvarint(frame[off:])
			if k <= 0 {
				return nil, fmt.Errorf("%w: bad group at offset %d", consensus.ErrCorrupt, off)
			}
			group = g
			off += k
		}
		n, k := binary.Uvarint(frame[off:])
		if k <= 0 || n > uint64(len(frame)-off-k) {
			return nil, fmt.Errorf("%w: bad message length at offset %d", consensus.ErrCorrupt, off)
		}
		off += k
		m, err := consensus.UnmarshalMessage(frame[off : off+int(n)])
		if err != nil {
			return nil, err
		}
		off += int(n)
		msgs = append(msgs, envelope{group: group, Message: m})
	}
	return msgs, nil
}

// Close stops the transport and waits for its goroutines.
func (t *TCP) Close() error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	t.closed = true
	t.cancel()
	for c := range t.inbound {
		c.Close()
	}
	t.mu.Unlock()
	err := t.ln.Close()
	t.wg.Wait()
	return err
}

// Snapshot stream (wire version 2). A snapshot travels as a sequence of
// frames, each carrying the MsgSnap without its data, the data's total
// length, an offset and the next chunk of data:
//
//	| length (4B, LE) | header length (uvarint) | MsgSnap without data | total (uvarint) | offset (uvarint) | chunk |
//
// The receiver keeps what it has of each peer's snapshot across broken
// connections. When the sender connects the snapshot stream, the receiver
// answers the handshake with what it holds (snapshot index, epoch, bytes),
// and a sender sending that same snapshot starts from there. So a large
// snapshot is never held in one frame, and a connection broken half way
// through does not send it again from the start.
//
// Wire version 3 (a Mux) puts the snapshot's group first in each frame,
// before the header length, and the handshake answer ends with the group
// of the snapshot held (32 bytes instead of 24). The group is part of the
// snapshot's key on both ends, so a resume never splices one group's
// snapshot into another's even where index and epoch are equal.

// resumeSize is the length of the snapshot stream's handshake answer.
func resumeSize(version byte) int {
	if version == wireVersionMux {
		return 32
	}
	return 24
}

// snapKey names a snapshot and how much of it the receiver holds.
type snapKey struct {
	group, index, epoch, have uint64
}

// snapReader is a peer's inbound snapshot connection.
type snapReader struct {
	conn net.Conn
	done chan struct{}
}

// partialSnap is a snapshot being received from one peer.
type partialSnap struct {
	key   snapKey // have unused
	total uint64
	data  []byte
}

// sendSnapshot writes m's snapshot in chunks, starting where the receiver
// said it holds this snapshot up to. It returns what the receiver holds
// afterwards.
func (t *TCP) sendSnapshot(conn net.Conn, bw *bufio.Writer, e envelope, resume snapKey) (snapKey, error) {
	m := e.Message
	if m.Snapshot == nil {
		return resume, errors.New("transport: MsgSnap without a snapshot")
	}
	data := m.Snapshot.Data
	hdr := m
	snap := *m.Snapshot
	snap.Data = nil
	hdr.Snapshot = &snap
	header := consensus.AppendMessage(nil, &hdr)
	key := snapKey{group: e.group, index: snap.Meta.Index, epoch: snap.Meta.Epoch}
	off := uint64(0)
	if resume.group == key.group && resume.index == key.index && resume.epoch == key.epoch && resume.have <= uint64(len(data)) {
		off = resume.have
		if off > 0 {
			t.cfg.Logger.Info("resuming snapshot", "peer", m.To, "group", e.group, "index", key.index, "offset", off, "bytes", len(data))
		}
	}
	chunk := uint64(t.cfg.SnapshotChunkBytes)
	var buf []byte
	for {
		end := min(off+chunk, uint64(len(data)))
		buf = append(buf[:0], 0, 0, 0, 0)
		if t.mux != nil {
			buf = binary.AppendUvarint(buf, e.group)
		}
		buf = binary.AppendUvarint(buf, uint64(len(header)))
		buf = append(buf, header...)
		buf = binary.AppendUvarint(buf, uint64(len(data)))
		buf = binary.AppendUvarint(buf, off)
		buf = append(buf, data[off:end]...)
		binary.LittleEndian.PutUint32(buf, uint32(len(buf)-4))
		conn.SetWriteDeadline(time.Now().Add(t.cfg.WriteTimeout))
		if _, err := bw.Write(buf); err != nil {
			return key, err
		}
		if err := bw.Flush(); err != nil {
			return key, err
		}
		off = end
		key.have = off
		if off == uint64(len(data)) {
			return snapKey{}, nil // delivered: the receiver holds no partial
		}
	}
}

// receiveChunk adds one chunk from peer from; done is true, with the whole
// message, once the snapshot is complete.
func (t *TCP) receiveChunk(from consensus.NodeID, frame []byte) (envelope, bool, error) {
	var e envelope
	if t.mux != nil {
		g, k := binary.Uvarint(frame)
		if k <= 0 {
			return e, false, fmt.Errorf("%w: bad snapshot chunk group", consensus.ErrCorrupt)
		}
		e.group, frame = g, frame[k:]
	}
	m, done, err := t.addChunk(from, e.group, frame)
	e.Message = m
	return e, done, err
}

// addChunk is receiveChunk after the group.
func (t *TCP) addChunk(from consensus.NodeID, group uint64, frame []byte) (consensus.Message, bool, error) {
	var m consensus.Message
	hl, k := binary.Uvarint(frame)
	if k <= 0 || hl > uint64(len(frame)-k) {
		return m, false, fmt.Errorf("%w: bad snapshot chunk header length", consensus.ErrCorrupt)
	}
	m, err := consensus.UnmarshalMessage(frame[k : k+int(hl)])
	if err != nil {
		return m, false, err
	}
	rest := frame[k+int(hl):]
	total, k1 := binary.Uvarint(rest)
	if k1 <= 0 {
		return m, false, fmt.Errorf("%w: bad snapshot chunk total", consensus.ErrCorrupt)
	}
	off, k2 := binary.Uvarint(rest[k1:])
	if k2 <= 0 {
		return m, false, fmt.Errorf("%w: bad snapshot chunk offset", consensus.ErrCorrupt)
	}
	chunk := rest[k1+k2:]
	if m.From != from || m.Type != consensus.MsgSnap || m.Snapshot == nil {
		return m, false, fmt.Errorf("snapshot stream carried %s from %d", m.Type, m.From)
	}
	if off+uint64(len(chunk)) > total {
		return m, false, fmt.Errorf("%w: snapshot chunk past its end (%d+%d > %d)", consensus.ErrCorrupt, off, len(chunk), total)
	}
	key := snapKey{group: group, index: m.Snapshot.Meta.Index, epoch: m.Snapshot.Meta.Epoch}
	t.mu.Lock()
	defer t.mu.Unlock()
	ps := t.partial[from]
	if ps == nil || ps.key != key || ps.total != total {
		if off != 0 {
			delete(t.partial, from)
			return m, false, fmt.Errorf("snapshot %d chunk at %d, but nothing of it is held", key.index, off)
		}
		ps = &partialSnap{key: key, total: total, data: make([]byte, 0, min(total, 64<<20))}
		t.partial[from] = ps
	}
	// A chunk may overlap what is held: the reader of a broken connection
	// can still be adding the chunks it had buffered when the sender's new
	// connection is told how much is held. The bytes are the same snapshot's.
	have := uint64(len(ps.data))
	if off > have {
		return m, false, fmt.Errorf("snapshot %d chunk at %d, but only %d bytes are held", key.index, off, have)
	}
	if skip := have - off; skip < uint64(len(chunk)) {
		ps.data = append(ps.data, chunk[skip:]...)
	}
	if uint64(len(ps.data)) < total {
		return m, false, nil
	}
	delete(t.partial, from)
	m.Snapshot.Data = ps.data
	return m, true, nil
}
