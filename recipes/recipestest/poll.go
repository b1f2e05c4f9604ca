package recipestest

import (
	"context"
	"errors"
	"maps"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ballotdb/ballot/recipes/poll"
)

// CheckPoll checks recipes/poll:
//   - concurrent double votes: every voter votes twice at once, for
//     different options, through different clients; at most one of the two
//     is counted, the other is refused, and the poll has exactly one
//     outcome (written once) that two watchers and every client read alike,
//     computed from exactly the votes the store holds;
//   - a majority closes the poll before everyone voted, and later votes are
//     refused; non-voters and unknown options are refused;
//   - at the deadline a watcher closes the poll by plurality, a tie going to
//     the option listed first;
//   - with three or more members: the member a voter talks to is stopped
//     while it votes; the voter retries through another member and its
//     vote is counted exactly once, and the outcome is the same everywhere.
func CheckPoll(t *testing.T, b Backend) {
	ctx := testCtx(t, 120*time.Second)
	admin := poll.New(client(t, b.Endpoints()))

	t.Run("double-votes", func(t *testing.T) {
		name := unique("poll")
		voters := []string{"v0", "v1", "v2", "v3", "v4", "v5", "v6"}
		options := []string{"pasta", "steak", "risotto"}
		if err := admin.Create(ctx, name, poll.Spec{Voters: voters, Options: options}); err != nil {
			t.Fatal(err)
		}
		if err := admin.Create(ctx, name, poll.Spec{Voters: voters, Options: options}); !errors.Is(err, poll.ErrExists) {
			t.Fatalf("second Create: %v, want ErrExists", err)
		}
		watched := [2]chan []poll.Event{make(chan []poll.Event, 1), make(chan []poll.Event, 1)}
		for i := range watched {
			go func() {
				var evs []poll.Event
				for ev := range poll.New(client(t, member(b, i))).Watch(ctx, name) {
					evs = append(evs, ev)
				}
				watched[i] <- evs
			}()
		}
		boxes := []*poll.Box{poll.New(client(t, member(b, 0))), poll.New(client(t, member(b, 1)))}
		type attempt struct {
			voter, option string
			rec           poll.Recorded
			err           error
		}
		results := make(chan attempt, 2*len(voters))
		var wg sync.WaitGroup
		for i, v := range voters {
			for j := range 2 {
				opt := options[(i+j)%len(options)]
				wg.Add(1)
				go func() {
					defer wg.Done()
					rec, err := boxes[j].Vote(ctx, name, v, opt)
					results <- attempt{v, opt, rec, err}
				}()
			}
		}
		wg.Wait()
		close(results)
		counted := map[string]string{} // voter → option of its accepted vote
		for a := range results {
			switch {
			case a.err == nil:
				if prev, ok := counted[a.voter]; ok {
					t.Errorf("%s: two votes accepted (%s and %s)", a.voter, prev, a.option)
				}
				counted[a.voter] = a.option
			case errors.Is(a.err, poll.ErrAlreadyVoted), errors.Is(a.err, poll.ErrClosed):
			default:
				t.Errorf("%s: vote: %v", a.voter, a.err)
			}
		}
		recs, err := admin.Votes(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		stored := map[string]string{}
		for _, r := range recs {
			stored[r.Voter] = r.Option
		}
		if !maps.Equal(stored, counted) {
			t.Errorf("the store holds votes %v, but the accepted votes were %v", stored, counted)
		}
		out, err := admin.Result(ctx, name)
		if err != nil {
			t.Fatalf("no outcome after every voter voted: %v", err)
		}
		checkOutcome(t, ctx, b, name, out, stored, voters, options)
		for i := range watched {
			var evs []poll.Event
			select {
			case evs = <-watched[i]:
			case <-ctx.Done():
				t.Fatalf("watcher %d did not end", i)
			}
			seen := map[string]string{}
			var last *poll.Outcome
			for _, ev := range evs {
				switch {
				case ev.Vote != nil:
					seen[ev.Vote.Voter] = ev.Vote.Option
				case ev.Outcome != nil:
					last = ev.Outcome
				case ev.Err != nil:
					t.Errorf("watcher %d: %v", i, ev.Err)
				}
			}
			if last == nil || last.Winner != out.Winner || last.Revision != out.Revision {
				t.Errorf("watcher %d saw outcome %+v, want %+v", i, last, out)
			}
			if !maps.Equal(seen, stored) {
				t.Errorf("watcher %d saw votes %v, the store holds %v", i, seen, stored)
			}
		}
		t.Logf("accepted %d votes of %d voters; outcome %s by %s %v", len(stored), len(voters), out.Winner, out.Reason, out.Counts)
	})

	t.Run("majority", func(t *testing.T) {
		name := unique("poll")
		voters := []string{"a", "b", "c", "d", "e"}
		if err := admin.Create(ctx, name, poll.Spec{Voters: voters, Options: []string{"steak", "pasta"}}); err != nil {
			t.Fatal(err)
		}
		if _, err := admin.Vote(ctx, name, "zed", "pasta"); !errors.Is(err, poll.ErrNotVoter) {
			t.Errorf("vote by a non-voter: %v, want ErrNotVoter", err)
		}
		if _, err := admin.Vote(ctx, name, "a", "soup"); !errors.Is(err, poll.ErrNoOption) {
			t.Errorf("vote for no option: %v, want ErrNoOption", err)
		}
		for i, v := range []string{"a", "b", "c"} {
			if _, err := admin.Vote(ctx, name, v, "pasta"); err != nil {
				t.Fatal(err)
			}
			out, err := admin.Result(ctx, name)
			if i < 2 && !errors.Is(err, poll.ErrUndecided) {
				t.Fatalf("after %d votes: %+v %v, want undecided", i+1, out, err)
			}
			if i == 2 && (err != nil || out.Winner != "pasta" || out.Reason != poll.ReasonMajority || out.Voted != 3) {
				t.Fatalf("after a majority: %+v %v, want pasta by majority of 3 votes", out, err)
			}
		}
		if _, err := admin.Vote(ctx, name, "d", "steak"); !errors.Is(err, poll.ErrClosed) {
			t.Errorf("vote after the outcome: %v, want ErrClosed", err)
		}
		if rec, err := admin.Vote(ctx, name, "a", "steak"); !errors.Is(err, poll.ErrAlreadyVoted) || rec.Option != "pasta" {
			t.Errorf("second vote: %+v %v, want ErrAlreadyVoted with the first vote standing", rec, err)
		}
	})

	t.Run("deadline-tie", func(t *testing.T) {
		name := unique("poll")
		deadline := time.Now().Add(1500 * time.Millisecond)
		if err := admin.Create(ctx, name, poll.Spec{Voters: []string{"a", "b", "c", "d"},
			Options: []string{"steak", "pasta", "soup"}, Deadline: deadline}); err != nil {
			t.Fatal(err)
		}
		events := admin.Watch(ctx, name)
		for v, o := range map[string]string{"a": "pasta", "b": "steak"} {
			if _, err := admin.Vote(ctx, name, v, o); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := admin.Decide(ctx, name); !errors.Is(err, poll.ErrUndecided) && time.Now().Before(deadline) {
			t.Fatalf("Decide before the deadline: %v, want ErrUndecided", err)
		}
		var out *poll.Outcome
		for ev := range events {
			if ev.Outcome != nil {
				out = ev.Outcome
			}
		}
		if out == nil {
			t.Fatal("the watcher saw no outcome")
		}
		if out.Winner != "steak" || out.Reason != poll.ReasonDeadline || out.Voted != 2 {
			t.Fatalf("outcome %+v, want steak (first of the tied options) by deadline with 2 votes", *out)
		}
	})

	t.Run("member-stopped", func(t *testing.T) {
		if b.Members() < 3 {
			t.Skipf("%s has %d member(s): no member to stop", b.Name(), b.Members())
		}
		name := unique("poll")
		voters := []string{"a", "b", "c", "d", "e"}
		options := []string{"pasta", "steak"}
		if err := admin.Create(ctx, name, poll.Spec{Voters: voters, Options: options}); err != nil {
			t.Fatal(err)
		}
		mine := map[string]string{"a": "pasta", "b": "steak", "c": "steak", "d": "pasta", "e": "pasta"}
		// Voter a talks to member 0 only; it is stopped as a votes.
		onZero := poll.New(client(t, member(b, 0)))
		first := make(chan error, 1)
		go func() {
			_, err := onZero.Vote(ctx, name, "a", mine["a"])
			first <- err
		}()
		b.Stop(0)
		restarted := false
		defer func() {
			if !restarted {
				b.Restart(0)
			}
		}()
		// The voter gives up on the stuck request after a while (it may
		// or may not have landed) and retries through another member.
		var firstErr error
		firstDone := false
		vctx, cancel := context.WithTimeout(ctx, time.Second)
		select {
		case firstErr = <-first:
			firstDone = true
		case <-vctx.Done():
		}
		cancel()
		other := poll.New(client(t, member(b, 1)))
		rec, retryErr := other.Vote(ctx, name, "a", mine["a"])
		if retryErr != nil && !(errors.Is(retryErr, poll.ErrAlreadyVoted) && rec.Option == mine["a"]) {
			t.Fatalf("retry of a's vote: %+v %v", rec, retryErr)
		}
		for _, v := range voters[1:] {
			if _, err := other.Vote(ctx, name, v, mine[v]); err != nil && !errors.Is(err, poll.ErrClosed) {
				t.Fatalf("vote of %s: %v", v, err)
			}
		}
		b.Restart(0)
		restarted = true
		if !firstDone {
			// The stuck request ends once its member is back.
			select {
			case firstErr = <-first:
			case <-ctx.Done():
				t.Fatal("voter a's first request never ended")
			}
		}
		t.Logf("voter a: first attempt through the stopped member: %v; retry: %v", firstErr, retryErr)
		// Both cannot have been counted; if neither reports success, the
		// first landed with its answer lost, and the retry was refused.
		if firstErr == nil && retryErr == nil {
			t.Errorf("voter a: both the first attempt and the retry were accepted")
		}
		recs, err := other.Votes(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		stored := map[string]string{}
		for _, r := range recs {
			if _, dup := stored[r.Voter]; dup {
				t.Errorf("%s counted twice", r.Voter)
			}
			stored[r.Voter] = r.Option
		}
		if stored["a"] != "pasta" {
			t.Errorf("voter a's vote is %q, want pasta counted once", stored["a"])
		}
		out, err := other.Result(ctx, name)
		if err != nil || out.Winner != "pasta" {
			t.Fatalf("outcome %+v %v, want pasta", out, err)
		}
		checkOutcome(t, ctx, b, name, out, stored, voters, options)
	})
}

// checkOutcome checks that out was written once, is what every member's
// clients read, and follows the rules from the stored votes.
func checkOutcome(t *testing.T, ctx context.Context, b Backend, name string, out poll.Outcome, stored map[string]string, voters, options []string) {
	t.Helper()
	want, ok := poll.Tally(poll.Spec{Voters: voters, Options: options}, stored, time.Time{})
	if !ok || want.Winner != out.Winner || want.Reason != out.Reason || !maps.Equal(want.Counts, out.Counts) || want.Voted != out.Voted {
		t.Errorf("outcome %+v does not follow from the stored votes %v (want %+v)", out, stored, want)
	}
	for i := range b.Members() {
		cli := client(t, b.Endpoints(i))
		o, err := poll.New(cli).Result(ctx, name)
		if err != nil || o.Winner != out.Winner || o.Revision != out.Revision {
			t.Errorf("member %d reads outcome %+v %v, want %+v", i, o, err, out)
		}
		r, err := cli.Get(ctx, poll.Prefix+name+"/outcome", clientv3.WithSerializable())
		if err == nil && len(r.Kvs) == 1 && r.Kvs[0].Version != 1 {
			t.Errorf("member %d: the outcome was written %d times", i, r.Kvs[0].Version)
		}
	}
}
