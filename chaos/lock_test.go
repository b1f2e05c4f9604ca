package chaos

import (
	"strings"
	"testing"
)

// TestLockCheckerBites: the lock workload's checker reports a lost
// increment, a counter beyond what was written, and a smaller token
// committed after a larger one; it accepts a clean history.
func TestLockCheckerBites(t *testing.T) {
	clean := &lockWorkload{acked: 3, unknown: 1, writes: []lockWrite{{rev: 10, token: 5}, {rev: 11, token: 5}, {rev: 14, token: 9}}}
	if v := clean.verify(3); len(v) != 0 {
		t.Fatalf("clean history reported: %v", v)
	}
	if v := clean.verify(4); len(v) != 0 {
		t.Fatalf("an unknown increment that committed reported: %v", v)
	}
	cases := []struct {
		name    string
		w       *lockWorkload
		counter int
		want    string
	}{
		{"lost increment", &lockWorkload{acked: 3}, 2, "two holders passed the fence"},
		{"phantom increment", &lockWorkload{acked: 3, unknown: 0}, 4, "exceeds"},
		{"token goes down", &lockWorkload{acked: 2, writes: []lockWrite{{rev: 12, token: 4}, {rev: 10, token: 7}}}, 2, "token 4 committed at revision 12 after one with token 7"},
	}
	for _, c := range cases {
		v := c.w.verify(c.counter)
		if len(v) == 0 || !strings.Contains(strings.Join(v, "\n"), c.want) {
			t.Errorf("%s: got %v, want a violation mentioning %q", c.name, v, c.want)
		}
	}
}
