// Package freeport picks TCP ports for listeners that must keep their port
// across restarts of the process behind them: the members that ballot dev
// and the chaos rig start, stop and start again.
//
// Listening on port 0 and closing again gives a port from the kernel's
// ephemeral range, where every outgoing connection on the machine also
// takes its local port: by the time the member binds it (or binds it again
// after a kill), a connection may hold it ("address already in use"). So
// ports are drawn at random below the ephemeral range, checked by
// listening, and never handed out twice by one process.
package freeport

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
)

// lowest is the first port drawn from; below it are the well-known and
// commonly configured ports.
const lowest = 10000

var (
	mu    sync.Mutex
	given = map[int]bool{}
)

// Pick returns host:port for a port that is free now, below the kernel's
// ephemeral range, and not returned before by this process. Where no such
// port is found it falls back to one the kernel picks.
func Pick(host string) (string, error) {
	ln, err := Listen(host)
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// Listen listens on a port Pick would return and keeps the listener, so
// nothing can take the port between picking and binding; a listener closed
// later can be bound again on the same address (a member's restart) without
// an outgoing connection having taken its port meanwhile.
func Listen(host string) (net.Listener, error) {
	low := EphemeralLow()
	for range 100 {
		port := lowest + rand.IntN(low-lowest)
		mu.Lock()
		taken := given[port]
		given[port] = true
		mu.Unlock()
		if taken {
			continue
		}
		ln, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err != nil {
			continue // in use: draw another
		}
		return ln, nil
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return nil, fmt.Errorf("freeport: %w", err)
	}
	return ln, nil
}

// EphemeralLow is the first port of the kernel's ephemeral range (Linux's
// default 32768 where it cannot be read, or where it leaves too little
// room below it).
func EphemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 32768
	}
	low, err := strconv.Atoi(f[0])
	if err != nil || low < lowest+2000 {
		return 32768
	}
	return low
}
