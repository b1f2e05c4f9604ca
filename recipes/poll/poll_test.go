package poll_test

import (
	"maps"
	"testing"
	"time"

	"github.com/ballotdb/ballot/recipes/poll"
	"github.com/ballotdb/ballot/recipes/recipestest"
	"github.com/ballotdb/ballot/server/servertest"
)

// TestPoll: double votes, majority, deadline with a tie, and a stopped
// member on a three-member ballot cluster; see recipestest.CheckPoll.
func TestPoll(t *testing.T) {
	recipestest.CheckPoll(t, recipestest.Ballot(servertest.New(t, 3, nil)))
}

// TestTally checks the rules of the package doc, one case per rule.
func TestTally(t *testing.T) {
	deadline := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	spec := poll.Spec{Voters: []string{"a", "b", "c", "d", "e"}, Options: []string{"steak", "pasta", "soup"}, Deadline: deadline}
	before, after := deadline.Add(-time.Second), deadline
	for _, tc := range []struct {
		name    string
		votes   map[string]string
		now     time.Time
		decided bool
		winner  string
		reason  string
	}{
		{"no votes yet", map[string]string{}, before, false, "", ""},
		{"two of five is no majority", map[string]string{"a": "pasta", "b": "pasta"}, before, false, "", ""},
		{"three of five is a majority", map[string]string{"a": "pasta", "b": "pasta", "c": "pasta"}, before, true, "pasta", poll.ReasonMajority},
		{"majority of voters, not of votes", map[string]string{"a": "pasta", "b": "pasta", "c": "soup"}, before, false, "", ""},
		{"all voted: plurality", map[string]string{"a": "pasta", "b": "pasta", "c": "soup", "d": "steak", "e": "soup"}, before, true, "pasta", poll.ReasonAllVoted},
		{"deadline: plurality", map[string]string{"a": "soup", "b": "soup", "c": "pasta"}, after, true, "soup", poll.ReasonDeadline},
		{"deadline: tie goes to the option listed first", map[string]string{"a": "soup", "b": "pasta"}, after, true, "pasta", poll.ReasonDeadline},
		{"deadline: three-way tie", map[string]string{"a": "soup", "b": "pasta", "c": "steak"}, after, true, "steak", poll.ReasonDeadline},
		{"deadline: no votes, no winner", map[string]string{}, after, true, "", poll.ReasonDeadline},
	} {
		out, ok := poll.Tally(spec, tc.votes, tc.now)
		if ok != tc.decided || out.Winner != tc.winner || out.Reason != tc.reason {
			t.Errorf("%s: Tally = %+v, %v; want decided %v, winner %q by %q", tc.name, out, ok, tc.decided, tc.winner, tc.reason)
		}
		if ok && (out.Voted != len(tc.votes) || out.Voters != 5) {
			t.Errorf("%s: counted %d votes of %d voters", tc.name, out.Voted, out.Voters)
		}
		if ok {
			sum := 0
			for v := range maps.Values(out.Counts) {
				sum += v
			}
			if sum != len(tc.votes) {
				t.Errorf("%s: counts %v sum to %d, want %d", tc.name, out.Counts, sum, len(tc.votes))
			}
		}
	}
}
