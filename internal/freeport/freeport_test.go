package freeport

import (
	"net"
	"strconv"
	"testing"
)

// TestPickGivesDistinctPortsBelowTheEphemeralRange: many picks in one
// process are all different, all below the ephemeral range, and each can
// be listened on.
func TestPickGivesDistinctPortsBelowTheEphemeralRange(t *testing.T) {
	low := EphemeralLow()
	seen := map[string]bool{}
	for range 200 {
		a, err := Pick("127.0.0.1")
		if err != nil {
			t.Fatal(err)
		}
		if seen[a] {
			t.Fatalf("port %s handed out twice", a)
		}
		seen[a] = true
		_, p, _ := net.SplitHostPort(a)
		if n, _ := strconv.Atoi(p); n < lowest || n >= low {
			t.Fatalf("port %d outside [%d, %d)", n, lowest, low)
		}
		ln, err := net.Listen("tcp", a)
		if err != nil {
			t.Fatalf("picked %s, but cannot listen on it: %v", a, err)
		}
		ln.Close()
	}
}
