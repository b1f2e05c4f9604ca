package main

import (
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"
)

// handshake is the start of a peer connection as the transport writes it.
func handshake(from, to uint64) []byte {
	hs := make([]byte, devHandshakeBytes)
	copy(hs, "BLT1")
	binary.LittleEndian.PutUint64(hs[14:], from)
	binary.LittleEndian.PutUint64(hs[22:], to)
	return hs
}

// echoServer answers each connection by echoing what it reads.
func echoServer(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	return ln.Addr().String()
}

// through dials the proxy as member from would dial member to, and
// reports whether bytes make the round trip.
func through(t *testing.T, proxy string, from, to uint64) bool {
	t.Helper()
	c, err := net.Dial("tcp", proxy)
	if err != nil {
		return false
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	msg := append(handshake(from, to), "ping"...)
	if _, err := c.Write(msg); err != nil {
		return false
	}
	got := make([]byte, len(msg))
	_, err = io.ReadFull(c, got)
	return err == nil && string(got[devHandshakeBytes:]) == "ping"
}

// TestDevPartition cuts a member off both ways through ballot dev's peer
// proxies, and heals it.
func TestDevPartition(t *testing.T) {
	d := newDevNet()
	defer d.close()
	proxies := map[string]string{}
	for _, n := range []string{"n1", "n2"} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		d.add(n, ln, echoServer(t))
		proxies[n] = ln.Addr().String()
	}
	d.idName[1], d.idName[2] = "n1", "n2"

	if !through(t, proxies["n2"], 1, 2) || !through(t, proxies["n1"], 2, 1) {
		t.Fatal("traffic does not pass before the partition")
	}
	d.setPartitioned("n1", true)
	if through(t, proxies["n2"], 1, 2) {
		t.Error("n1 → n2 passes with n1 partitioned")
	}
	if through(t, proxies["n1"], 2, 1) {
		t.Error("n2 → n1 passes with n1 partitioned")
	}
	if got := d.partitioned(); len(got) != 1 || got[0] != "n1" {
		t.Errorf("partitioned() = %v", got)
	}
	d.setPartitioned("n1", false)
	if !through(t, proxies["n2"], 1, 2) || !through(t, proxies["n1"], 2, 1) {
		t.Error("traffic does not pass after healing")
	}
}
