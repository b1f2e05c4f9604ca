package chaos

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// hostProxy stands in front of one sharded host's peer listener. A sharded
// host (`serve --shards`) refuses --unsafe-peer-routes, and its member IDs
// derive from the addresses in --initial-cluster, which every host must be
// given alike; so the rig cannot give each member its own proxy per link.
// Instead every host is listed in --initial-cluster at its hostProxy's
// address, and the proxy learns who dials from the first bytes of the
// connection: the peer transport's handshake (transport/tcp.go) carries
// the sender's member ID. Cutting from → to closes to's connections from
// from and refuses new ones, exactly as the per-link proxies do for a
// single-group cluster.
type hostProxy struct {
	ln     net.Listener
	target string
	// senders maps a member ID to the member's index.
	senders map[uint64]int
	to      int

	mu     sync.Mutex
	cut    map[int]bool
	conns  map[net.Conn]int // both ends, by sender
	closed bool
	// unknown lists handshakes whose sender the proxy could not name: a
	// changed wire format would make partitions silently ineffective, so
	// each is reported as a violation of the rig itself.
	unknown []string
	wg      sync.WaitGroup
}

// Where the peer transport's handshake puts the sender's member ID
// (transport/tcp.go: magic 4, version 1, stream 1, cluster 8, from 8, to 8).
const (
	handshakeFromOffset = 14
	handshakeBytes      = 30
)

func newHostProxy(target string, to int) (*hostProxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &hostProxy{ln: ln, target: target, to: to, cut: map[int]bool{}, conns: map[net.Conn]int{}}
	return p, nil
}

// serve starts accepting; senders must be set first.
func (p *hostProxy) serve(senders map[uint64]int) {
	p.senders = senders
	p.wg.Add(1)
	go p.accept()
}

func (p *hostProxy) addr() string { return p.ln.Addr().String() }

func (p *hostProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.wg.Add(1)
		go p.relay(c)
	}
}

func (p *hostProxy) relay(c net.Conn) {
	defer p.wg.Done()
	defer c.Close()
	if !p.track(c, -1) {
		return
	}
	defer p.untrack(c)
	var hs [handshakeBytes]byte
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, hs[:]); err != nil {
		return
	}
	c.SetReadDeadline(time.Time{})
	id := binary.LittleEndian.Uint64(hs[handshakeFromOffset:])
	from, ok := p.senders[id]
	if !ok {
		p.mu.Lock()
		if len(p.unknown) < 10 {
			p.unknown = append(p.unknown, fmt.Sprintf("partition proxy of %s: a peer connection from unknown member %x (has the transport's handshake changed? partitions may not cut)", name(p.to), id))
		}
		p.mu.Unlock()
		return
	}
	if !p.track(c, from) {
		return
	}
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	defer up.Close()
	if !p.track(up, from) {
		return
	}
	defer p.untrack(up)
	if _, err := up.Write(hs[:]); err != nil {
		return
	}
	done := make(chan struct{}, 2)
	go func() { io.Copy(up, c); done <- struct{}{} }()
	go func() { io.Copy(c, up); done <- struct{}{} }()
	<-done
	c.Close()
	up.Close()
	<-done
}

// track registers a connection of from's; false if from → to is cut.
func (p *hostProxy) track(c net.Conn, from int) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.cut[from] {
		return false
	}
	p.conns[c] = from
	return true
}

func (p *hostProxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
}

// setCut cuts (true) or heals (false) the direction from → this host.
func (p *hostProxy) setCut(from int, cut bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut[from] = cut
	if cut {
		for c, f := range p.conns {
			if f == from {
				c.Close()
			}
		}
	}
}

func (p *hostProxy) problems() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.unknown...)
}

func (p *hostProxy) close() {
	p.ln.Close()
	p.mu.Lock()
	p.closed = true
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}
