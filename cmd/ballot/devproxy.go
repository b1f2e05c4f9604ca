package main

import (
	"encoding/binary"
	"io"
	"net"
	"sync"
	"time"
)

// Peer traffic in ballot dev goes through one proxy per member: the
// address in --initial-cluster is the proxy's, which relays to the
// member's own peer listener. Each connection starts with the transport's
// plain-text handshake (magic, version, stream, cluster ID, from, to: 30
// bytes; see transport/tcp.go), so the proxy knows who is talking to whom
// and can cut a partitioned member off both ways: it refuses connections
// to it and from it, and closes those open. Dev never uses peer TLS.
const devHandshakeBytes = 4 + 1 + 1 + 8 + 8 + 8

// devNet is the set of proxies and who is partitioned.
type devNet struct {
	mu      sync.Mutex
	parted  map[string]bool
	idName  map[uint64]string // learned from handshakes
	proxies []*devProxy
}

type devProxy struct {
	net    *devNet
	name   string // the member behind it
	ln     net.Listener
	target string

	mu    sync.Mutex
	conns map[net.Conn]string // → the sender's name ("" unknown)
	wg    sync.WaitGroup
}

func newDevNet() *devNet {
	return &devNet{parted: map[string]bool{}, idName: map[uint64]string{}}
}

// add starts the proxy for member name, listening on ln.
func (d *devNet) add(name string, ln net.Listener, target string) {
	p := &devProxy{net: d, name: name, ln: ln, target: target, conns: map[net.Conn]string{}}
	d.mu.Lock()
	d.proxies = append(d.proxies, p)
	d.mu.Unlock()
	p.wg.Add(1)
	go p.accept()
}

// setPartitioned cuts member name off (or heals it).
func (d *devNet) setPartitioned(name string, on bool) {
	d.mu.Lock()
	d.parted[name] = on
	ps := d.proxies
	d.mu.Unlock()
	if !on {
		return
	}
	for _, p := range ps {
		p.mu.Lock()
		for c, from := range p.conns {
			if p.name == name || from == name {
				c.Close()
			}
		}
		p.mu.Unlock()
	}
}

func (d *devNet) partitioned() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []string
	for n, on := range d.parted {
		if on {
			out = append(out, n)
		}
	}
	return out
}

// cut reports whether traffic from → to must not pass.
func (d *devNet) cut(from, to string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.parted[from] || d.parted[to]
}

func (d *devNet) close() {
	d.mu.Lock()
	ps := d.proxies
	d.mu.Unlock()
	for _, p := range ps {
		p.ln.Close()
		p.mu.Lock()
		for c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	}
}

func (p *devProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.wg.Add(1)
		go p.serve(c)
	}
}

func (p *devProxy) track(c net.Conn, from string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.net.cut(from, p.name) {
		return false
	}
	p.conns[c] = from
	return true
}

func (p *devProxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	c.Close()
}

func (p *devProxy) serve(c net.Conn) {
	defer p.wg.Done()
	defer c.Close()
	var hs [devHandshakeBytes]byte
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, hs[:]); err != nil {
		return
	}
	c.SetReadDeadline(time.Time{})
	fromID, toID := binary.LittleEndian.Uint64(hs[14:]), binary.LittleEndian.Uint64(hs[22:])
	p.net.mu.Lock()
	p.net.idName[toID] = p.name
	from := p.net.idName[fromID]
	p.net.mu.Unlock()
	if !p.track(c, from) {
		return
	}
	defer p.untrack(c)
	up, err := net.DialTimeout("tcp", p.target, 2*time.Second)
	if err != nil {
		return
	}
	if !p.track(up, from) {
		up.Close()
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
