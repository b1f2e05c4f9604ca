package chaos

import (
	"encoding/binary"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// TestHostProxyCutsBySender: the proxy names the sender from the
// handshake, relays its bytes, and a cut of that sender closes its
// connection and refuses new ones while other senders get through.
func TestHostProxyCutsBySender(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan string, 8)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				b := make([]byte, handshakeBytes+2)
				if _, err := io.ReadFull(c, b); err == nil {
					got <- string(b[handshakeBytes:])
					io.Copy(io.Discard, c)
				}
			}()
		}
	}()
	p, err := newHostProxy(ln.Addr().String(), 2)
	if err != nil {
		t.Fatal(err)
	}
	defer p.close()
	p.serve(map[uint64]int{0xa: 0, 0xb: 1})
	dial := func(from uint64, payload string) net.Conn {
		t.Helper()
		c, err := net.Dial("tcp", p.addr())
		if err != nil {
			t.Fatal(err)
		}
		var hs [handshakeBytes]byte
		binary.LittleEndian.PutUint64(hs[handshakeFromOffset:], from)
		c.Write(append(hs[:], payload...))
		return c
	}
	expect := func(want string) {
		t.Helper()
		select {
		case g := <-got:
			if g != want {
				t.Fatalf("relayed %q, want %q", g, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%q was not relayed", want)
		}
	}
	a := dial(0xa, "a1")
	defer a.Close()
	expect("a1")
	p.setCut(0, true)
	// The cut closes a's connection: a read ends.
	a.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := a.Read(make([]byte, 1)); err == nil || strings.Contains(err.Error(), "timeout") {
		t.Fatalf("a's connection survived the cut: %v", err)
	}
	a2 := dial(0xa, "a2")
	defer a2.Close()
	b := dial(0xb, "b1")
	defer b.Close()
	expect("b1") // b gets through; a2 is refused: closed unread
	a2.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := a2.Read(make([]byte, 1)); err == nil || strings.Contains(err.Error(), "timeout") {
		t.Fatalf("a's new connection was not refused under the cut: %v", err)
	}
	p.setCut(0, false)
	a3 := dial(0xa, "a3")
	defer a3.Close()
	expect("a3")
	if len(p.problems()) != 0 {
		t.Fatalf("problems: %v", p.problems())
	}
	u := dial(0xff, "u1")
	defer u.Close()
	deadline := time.After(5 * time.Second)
	poll := time.NewTicker(10 * time.Millisecond)
	defer poll.Stop()
wait:
	for len(p.problems()) == 0 {
		select {
		case <-deadline:
			break wait
		case <-poll.C:
		}
	}
	if len(p.problems()) != 1 {
		t.Fatalf("a connection from an unknown member was not reported: %v", p.problems())
	}
}
