package chaos

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func sec(s float64) int64 { return int64(s * float64(time.Second)) }

// TestLeaseCheckerBites: a lease seen expired before its last acknowledged
// keep-alive's invoke time plus TTL, an abandoned lease that never
// expires and one that expires too late are each reported; expiring late
// within the bound, and an unknown keep-alive, are not.
func TestLeaseCheckerBites(t *testing.T) {
	bound := 2 * time.Second
	held := func() *leaseHistory {
		return &leaseHistory{id: 0x10, key: "lease/10", askTTL: 2,
			grant:   leaseCall{call: sec(0), ret: sec(0.01), ttl: 2},
			kas:     []leaseCall{{call: sec(0.6), ret: sec(0.61), ttl: 2}}, // promised until 2.6 s
			dropped: true, dropAt: sec(0.61)}
	}
	check := func(h *leaseHistory, healedAt float64) []string {
		return checkLeases([]*leaseHistory{h}, sec(healedAt), bound)
	}
	expect := func(what string, problems []string, want string) {
		t.Helper()
		if len(problems) != 1 || !strings.Contains(problems[0], want) {
			t.Errorf("%s: want one violation containing %q, got %q", what, want, problems)
		}
	}

	ok := held()
	ok.seen = []leaseSighting{{sec(2.7), "watch"}}
	if p := check(ok, 0); len(p) != 0 {
		t.Errorf("a lease expiring after its promise was refused: %v", p)
	}
	late := held()
	late.seen = []leaseSighting{{sec(4.5), "watch"}} // a new leader's fresh TTL: later, within the bound
	if p := check(late, 0); len(p) != 0 {
		t.Errorf("a lease expiring late within the bound was refused: %v", p)
	}

	early := held()
	early.seen = []leaseSighting{{sec(1.5), "watch"}}
	expect("expired before its promise", check(early, 0), "expired early")

	notFound := held()
	notFound.dropped = false
	notFound.kas = append(notFound.kas, leaseCall{call: sec(1.2), ret: sec(1.21), ttl: 0})
	notFound.seen = []leaseSighting{{sec(1.21), "a keep-alive was answered TTL 0"}}
	expect("a keep-alive answered not found too soon", check(notFound, 0), "expired early")

	renewedAfter := held() // a keep-alive acknowledged after the expiry was seen
	renewedAfter.kas = append(renewedAfter.kas, leaseCall{call: sec(2.9), ret: sec(2.91), ttl: 2})
	renewedAfter.seen = []leaseSighting{{sec(2.7), "watch"}}
	expect("renewed after it expired", check(renewedAfter, 0), "expired early")

	unknown := held() // an unknown keep-alive promises nothing
	unknown.kas = append(unknown.kas, leaseCall{call: sec(1.5), ret: sec(2), err: errors.New("deadline exceeded")})
	unknown.seen = []leaseSighting{{sec(2.7), "watch"}}
	if p := check(unknown, 0); len(p) != 0 {
		t.Errorf("an unknown keep-alive was taken as a promise: %v", p)
	}

	never := held()
	expect("abandoned and never expired", check(never, 0), "never expired")

	tooLate := held() // due by 0.61 + 2 + 2 = 4.61 s
	tooLate.seen = []leaseSighting{{sec(6), "poll"}}
	expect("abandoned and expired too late", check(tooLate, 0), "expired only at")

	afterHeal := held() // faults healed at 5 s: due by 9 s
	afterHeal.seen = []leaseSighting{{sec(6), "poll"}}
	if p := check(afterHeal, 5); len(p) != 0 {
		t.Errorf("a lease expiring within TTL + bound of the heal was refused: %v", p)
	}
}

// TestLeaseCheckerNamesLateRenewals: a keep-alive acknowledged after the
// lease's previous promise ran out, followed by the deletion, is reported
// as such.
func TestLeaseCheckerNamesLateRenewals(t *testing.T) {
	h := &leaseHistory{id: 0x20, key: "lease/20", askTTL: 2, keep: true,
		grant: leaseCall{call: sec(0), ret: sec(0.01), ttl: 2},
		kas: []leaseCall{
			{call: sec(0.6), ret: sec(0.61), ttl: 2}, // until 2.6 s
			{call: sec(1.2), ret: sec(2.8), err: errors.New("deadline exceeded")},
			{call: sec(2.9), ret: sec(2.95), ttl: 2}, // after 2.6 s: until 4.9 s
		},
		seen: []leaseSighting{{sec(3), "watch"}}}
	p := checkLeases([]*leaseHistory{h}, 0, 2*time.Second)
	if len(p) != 1 || !strings.Contains(p[0], "after its previous promise ran out at 2.600s") {
		t.Fatalf("want the late renewal named, got %q", p)
	}
}
