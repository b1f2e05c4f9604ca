// Package testutil holds helpers shared by ballot's tests: waiting on a
// condition with a deadline (never sleeping for an outcome) and making
// throwaway certificates.
package testutil

import (
	"testing"
	"time"
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
