// Package testutil holds helpers shared by ballot's tests: waiting on a
// condition with a deadline (never sleeping for an outcome) and making
// throwaway certificates.
package testutil

import (
	"net"
	"testing"
	"time"

	"github.com/ballotdb/ballot/internal/freeport"
)

// Eventually polls cond every few milliseconds until it holds or timeout
// passes, then fails the test with msg.
func Eventually(t testing.TB, timeout time.Duration, cond func() bool, msg string, args ...any) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline.C:
			t.Fatalf("condition not met within %v: "+msg, append([]any{timeout}, args...)...)
		case <-tick.C:
		}
	}
}

// Listen returns a loopback listener for a member: on addr, retrying for
// up to 5 s (a restarted member takes its old port back, which another
// test's listener may hold for a moment), or, where addr is empty, on a
// port below the ephemeral range (internal/freeport), so that no outgoing
// connection holds it when the member restarts on it.
func Listen(t testing.TB, addr string) net.Listener {
	t.Helper()
	if addr == "" {
		ln, err := freeport.Listen("127.0.0.1")
		if err != nil {
			t.Fatal(err)
		}
		return ln
	}
	var ln net.Listener
	Eventually(t, 5*time.Second, func() bool {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err == nil
	}, "listen on %s", addr)
	return ln
}
