// Package poll is majority voting on ballot (or on any etcd v3 API): a poll
// has a fixed set of voters and options, each voter votes once, and the
// poll has exactly one outcome that every observer sees.
//
//	b := poll.New(cli)
//	err := b.Create(ctx, "main-course", poll.Spec{
//		Voters: []string{"alice", "bruno", "chen"}, Options: []string{"pasta", "steak"}})
//	_, err = b.Vote(ctx, "main-course", "bruno", "pasta")
//	out, err := b.Result(ctx, "main-course") // ErrUndecided until decided
//	for ev := range b.Watch(ctx, "main-course") { ... } // votes, then the outcome
//
// # Keys
//
//	ballot/poll/NAME/spec          the Spec, JSON; written once
//	ballot/poll/NAME/vote/VOTER    the option VOTER chose; written once
//	ballot/poll/NAME/outcome       the Outcome, JSON; written once
//
// # Rules
//
// An outcome is decided as soon as one option has a majority of the voters
// (more than half of all voters, not of those who voted; reason
// "majority"), or by plurality once every voter has voted (reason
// "all-voted") or once the deadline has passed (reason "deadline"). Ties of
// a plurality go to the tied option listed first in Spec.Options (the
// poll's creator orders the options by precedence). A poll that reaches its
// deadline with no vote at all has the outcome "no winner" (Winner empty).
//
// # Guarantee
//
// Every vote is a Txn that writes the voter's key only if neither that key
// nor the outcome exists, so a voter's second vote is refused (ErrAlreadyVoted),
// never counted, and no vote lands after the outcome (ErrClosed). The outcome
// is written by a Txn that compares that the outcome is absent and that no
// vote was written after the votes it counted (a compare on the modify
// revision of the whole vote prefix), so it is computed from exactly the
// votes the store holds, is written once, and is the same for every
// observer. Any client may write it — a voter right after its vote, a
// watcher at the deadline, Decide — and a lost or duplicated attempt is
// harmless. Votes, outcome and spec are durable in the consensus log.
//
// # Assumption
//
// Voters are trusted to vote under their own names (authenticate them in
// front of the poll if they are not). The deadline is a wall-clock time
// judged by the clock of whichever client closes the poll: a client whose
// clock runs ahead closes it early, one whose clock lags closes it late,
// and a vote that lands before the outcome is written counts even if its
// voter's clock said the deadline had passed. The majority and all-voted
// rules need no clock at all.
package poll

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ballotdb/ballot/recipes/internal/queue"
)

// Prefix is where every poll's keys live.
const Prefix = "ballot/poll/"

// Reasons an outcome was decided.
const (
	ReasonMajority = "majority"
	ReasonAllVoted = "all-voted"
	ReasonDeadline = "deadline"
)

var (
	// ErrExists is returned by Create for a poll that already exists.
	ErrExists = errors.New("poll: already exists")
	// ErrNotFound is returned for a poll that does not exist.
	ErrNotFound = errors.New("poll: no such poll")
	// ErrNotVoter is returned for a vote by someone not among the voters.
	ErrNotVoter = errors.New("poll: not a voter of this poll")
	// ErrNoOption is returned for a vote for an option the poll lacks.
	ErrNoOption = errors.New("poll: no such option")
	// ErrAlreadyVoted is returned for a voter's second vote; the first
	// one stands.
	ErrAlreadyVoted = errors.New("poll: already voted")
	// ErrClosed is returned for a vote after the outcome was decided.
	ErrClosed = errors.New("poll: already decided")
	// ErrUndecided is returned when the poll has no outcome yet.
	ErrUndecided = errors.New("poll: not decided yet")
	// ErrBadSpec is returned by Create for an invalid Spec.
	ErrBadSpec = errors.New("poll: invalid spec")
	// ErrBadName is returned for a poll or voter name that cannot be a
	// key segment.
	ErrBadName = queue.ErrBadName
)

// Spec is a poll's fixed definition.
type Spec struct {
	Voters  []string `json:"voters"`
	Options []string `json:"options"` // in order of precedence for ties
	// Deadline, if not zero, closes the poll by plurality once passed.
	Deadline time.Time `json:"deadline,omitzero"`
}

func (s Spec) validate() error {
	if len(s.Voters) == 0 || len(s.Options) == 0 {
		return fmt.Errorf("%w: at least one voter and one option", ErrBadSpec)
	}
	for _, list := range [][]string{s.Voters, s.Options} {
		seen := map[string]bool{}
		for _, v := range list {
			if err := queue.CheckName(v); err != nil {
				return fmt.Errorf("%w: %w", ErrBadSpec, err)
			}
			if seen[v] {
				return fmt.Errorf("%w: %q listed twice", ErrBadSpec, v)
			}
			seen[v] = true
		}
	}
	return nil
}

// Majority is the number of votes an option needs to win before everyone
// has voted: more than half of all voters.
func (s Spec) Majority() int { return len(s.Voters)/2 + 1 }

// Outcome is a poll's decision.
type Outcome struct {
	Winner string `json:"winner"` // empty: no winner (no votes by the deadline)
	Reason string `json:"reason"`
	// Counts holds the votes per option that the outcome counted;
	// Voted is their sum.
	Counts map[string]int `json:"counts"`
	Voted  int            `json:"voted"`
	Voters int            `json:"voters"`
	// Revision is the store revision at which the outcome was written.
	Revision int64 `json:"-"`
}

// Tally applies the poll's rules to the votes cast (voter → option): it
// returns the outcome and true if the rules decide one now, or false.
// It is pure, and what every client runs before it tries to write the
// outcome.
func Tally(s Spec, votes map[string]string, now time.Time) (Outcome, bool) {
	counts := map[string]int{}
	for _, o := range s.Options {
		counts[o] = 0
	}
	for _, o := range votes {
		counts[o]++
	}
	out := Outcome{Counts: counts, Voted: len(votes), Voters: len(s.Voters)}
	for _, o := range s.Options {
		if counts[o] >= s.Majority() {
			out.Winner, out.Reason = o, ReasonMajority
			return out, true
		}
	}
	switch {
	case len(votes) >= len(s.Voters):
		out.Reason = ReasonAllVoted
	case !s.Deadline.IsZero() && !now.Before(s.Deadline):
		out.Reason = ReasonDeadline
	default:
		return Outcome{}, false
	}
	best := 0
	for _, o := range s.Options { // the first of the tied options wins
		if counts[o] > best {
			out.Winner, best = o, counts[o]
		}
	}
	return out, true
}

// Box runs polls through one client. It is safe for concurrent use.
type Box struct {
	cli *clientv3.Client
	now func() time.Time
}

// New returns a Box that talks through cli.
func New(cli *clientv3.Client) *Box { return &Box{cli: cli, now: time.Now} }

func specKey(name string) string           { return Prefix + name + "/spec" }
func votePrefix(name string) string        { return Prefix + name + "/vote/" }
func voteKey(name, voter string) string    { return votePrefix(name) + voter }
func outcomeKey(name string) string        { return Prefix + name + "/outcome" }
func absent(key string) clientv3.Cmp       { return clientv3.Compare(clientv3.CreateRevision(key), "=", 0) }
func pollPrefix(name string) string        { return Prefix + name + "/" }
func voterOf(name string, k []byte) string { return strings.TrimPrefix(string(k), votePrefix(name)) }

// Create creates the poll name, or returns ErrExists.
func (b *Box) Create(ctx context.Context, name string, s Spec) error {
	if err := queue.CheckName(name); err != nil {
		return fmt.Errorf("poll: %w", err)
	}
	if err := s.validate(); err != nil {
		return fmt.Errorf("poll %s: %w", name, err)
	}
	spec, err := json.Marshal(s)
	if err != nil {
		return fmt.Errorf("poll %s: %w", name, err)
	}
	resp, err := b.cli.Txn(ctx).If(absent(specKey(name))).Then(clientv3.OpPut(specKey(name), string(spec))).Commit()
	if err != nil {
		return fmt.Errorf("poll %s: create: %w", name, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("poll %s: %w", name, ErrExists)
	}
	return nil
}

// Spec returns the poll's definition.
func (b *Box) Spec(ctx context.Context, name string) (Spec, error) {
	if err := queue.CheckName(name); err != nil {
		return Spec{}, fmt.Errorf("poll: %w", err)
	}
	resp, err := b.cli.Get(ctx, specKey(name))
	if err != nil {
		return Spec{}, fmt.Errorf("poll %s: read spec: %w", name, err)
	}
	if len(resp.Kvs) == 0 {
		return Spec{}, fmt.Errorf("poll %s: %w", name, ErrNotFound)
	}
	return parseSpec(name, resp.Kvs[0].Value)
}

func parseSpec(name string, b []byte) (Spec, error) {
	var s Spec
	if err := json.Unmarshal(b, &s); err != nil {
		return Spec{}, fmt.Errorf("poll %s: corrupt spec: %w", name, err)
	}
	return s, nil
}

// Recorded is a vote as the store holds it.
type Recorded struct {
	Voter, Option string
	Revision      int64 // when it was recorded
}

// Vote casts voter's vote for option and returns it as recorded. A second
// vote by the same voter is refused with ErrAlreadyVoted, and Recorded is
// then the vote that stands (so a client retrying after an unknown outcome
// can tell its own first attempt landed). A vote after the outcome is
// refused with ErrClosed. After a vote is recorded, Vote tries to decide the
// poll, so the vote that makes a majority also closes it.
func (b *Box) Vote(ctx context.Context, name, voter, option string) (Recorded, error) {
	s, err := b.Spec(ctx, name)
	if err != nil {
		return Recorded{}, err
	}
	if !slices.Contains(s.Voters, voter) {
		return Recorded{}, fmt.Errorf("poll %s: %q: %w", name, voter, ErrNotVoter)
	}
	if !slices.Contains(s.Options, option) {
		return Recorded{}, fmt.Errorf("poll %s: %q: %w", name, option, ErrNoOption)
	}
	vk := voteKey(name, voter)
	resp, err := b.cli.Txn(ctx).
		If(absent(outcomeKey(name)), absent(vk)).
		Then(clientv3.OpPut(vk, option)).
		Else(clientv3.OpGet(vk), clientv3.OpGet(outcomeKey(name))).Commit()
	if err != nil {
		return Recorded{}, fmt.Errorf("poll %s: vote of %s: %w", name, voter, err)
	}
	if !resp.Succeeded {
		if kvs := resp.Responses[0].GetResponseRange().GetKvs(); len(kvs) > 0 {
			return Recorded{Voter: voter, Option: string(kvs[0].Value), Revision: kvs[0].ModRevision},
				fmt.Errorf("poll %s: %s: %w", name, voter, ErrAlreadyVoted)
		}
		return Recorded{}, fmt.Errorf("poll %s: vote of %s: %w", name, voter, ErrClosed)
	}
	rec := Recorded{Voter: voter, Option: option, Revision: resp.Header.Revision}
	// The vote stands whatever happens here: if this attempt to decide
	// fails, a watcher, a later vote or Decide will.
	_, _ = b.Decide(ctx, name)
	return rec, nil
}

// state is a poll read at one revision.
type state struct {
	spec    Spec
	votes   map[string]string
	order   []Recorded // votes in the order they were recorded
	outcome *Outcome
	rev     int64
}

func (b *Box) read(ctx context.Context, name string) (state, error) {
	if err := queue.CheckName(name); err != nil {
		return state{}, fmt.Errorf("poll: %w", err)
	}
	resp, err := b.cli.Get(ctx, pollPrefix(name), clientv3.WithPrefix())
	if err != nil {
		return state{}, fmt.Errorf("poll %s: read: %w", name, err)
	}
	st := state{votes: map[string]string{}, rev: resp.Header.Revision}
	found := false
	for _, kv := range resp.Kvs {
		switch k := string(kv.Key); {
		case k == specKey(name):
			if st.spec, err = parseSpec(name, kv.Value); err != nil {
				return state{}, err
			}
			found = true
		case k == outcomeKey(name):
			o, err := parseOutcome(name, kv)
			if err != nil {
				return state{}, err
			}
			st.outcome = &o
		case strings.HasPrefix(k, votePrefix(name)):
			v := voterOf(name, kv.Key)
			st.votes[v] = string(kv.Value)
			st.order = append(st.order, Recorded{Voter: v, Option: string(kv.Value), Revision: kv.ModRevision})
		}
	}
	if !found {
		return state{}, fmt.Errorf("poll %s: %w", name, ErrNotFound)
	}
	slices.SortFunc(st.order, func(a, b Recorded) int { return cmp.Compare(a.Revision, b.Revision) })
	return st, nil
}

func parseOutcome(name string, kv *mvccpb.KeyValue) (Outcome, error) {
	var o Outcome
	if err := json.Unmarshal(kv.Value, &o); err != nil {
		return Outcome{}, fmt.Errorf("poll %s: corrupt outcome: %w", name, err)
	}
	o.Revision = kv.ModRevision
	return o, nil
}

// Decide writes the poll's outcome if its rules decide one now (see the
// package doc) and returns the outcome, whoever wrote it; it returns
// ErrUndecided if the rules do not decide yet.
func (b *Box) Decide(ctx context.Context, name string) (Outcome, error) {
	// Each failed attempt means a vote landed in between, and there are at
	// most len(Voters) votes: the loop is bounded by the voters plus one.
	for attempt := 0; ; attempt++ {
		st, err := b.read(ctx, name)
		if err != nil {
			return Outcome{}, err
		}
		if st.outcome != nil {
			return *st.outcome, nil
		}
		if attempt > len(st.spec.Voters) {
			return Outcome{}, fmt.Errorf("poll %s: decide: %d attempts raced with votes", name, attempt)
		}
		out, ok := Tally(st.spec, st.votes, b.now())
		if !ok {
			return Outcome{}, fmt.Errorf("poll %s: %w", name, ErrUndecided)
		}
		js, err := json.Marshal(out)
		if err != nil {
			return Outcome{}, fmt.Errorf("poll %s: %w", name, err)
		}
		// Written only if no outcome exists and no vote was written
		// after the ones counted.
		noNewVote := clientv3.Compare(clientv3.ModRevision(votePrefix(name)), "<", st.rev+1).WithPrefix()
		resp, err := b.cli.Txn(ctx).If(absent(outcomeKey(name)), noNewVote).
			Then(clientv3.OpPut(outcomeKey(name), string(js))).Commit()
		if err != nil {
			return Outcome{}, fmt.Errorf("poll %s: write outcome: %w", name, err)
		}
		if resp.Succeeded {
			out.Revision = resp.Header.Revision
			return out, nil
		}
	}
}

// Result returns the poll's outcome, or ErrUndecided. It only reads.
func (b *Box) Result(ctx context.Context, name string) (Outcome, error) {
	st, err := b.read(ctx, name)
	if err != nil {
		return Outcome{}, err
	}
	if st.outcome == nil {
		return Outcome{}, fmt.Errorf("poll %s: %w", name, ErrUndecided)
	}
	return *st.outcome, nil
}

// Votes returns the votes recorded so far, in the order they were recorded.
func (b *Box) Votes(ctx context.Context, name string) ([]Recorded, error) {
	st, err := b.read(ctx, name)
	if err != nil {
		return nil, err
	}
	return st.order, nil
}

// Event is one thing that happened to a poll: a vote or the outcome.
type Event struct {
	Vote    *Recorded // a vote was recorded
	Outcome *Outcome  // the poll was decided; the last event
	Err     error     // the watch failed (the last event)
}

// Watch streams the poll's votes in the order they were recorded (those
// already cast first), then its outcome, and then closes the channel; it
// also closes it when ctx ends. When the poll has a deadline, Watch decides
// the poll once the deadline passes (as Decide does), so a watcher alone
// suffices to close a poll that not every voter answers.
func (b *Box) Watch(ctx context.Context, name string) <-chan Event {
	out := make(chan Event)
	go func() {
		defer close(out)
		send := func(ev Event) bool {
			select {
			case out <- ev:
				return true
			case <-ctx.Done():
				return false
			}
		}
		seen := map[string]bool{}
		var deadline <-chan time.Time
		for ctx.Err() == nil {
			st, err := b.read(ctx, name)
			if err != nil {
				if ctx.Err() == nil {
					send(Event{Err: err})
				}
				return
			}
			for _, r := range st.order {
				if !seen[r.Voter] {
					seen[r.Voter] = true
					if !send(Event{Vote: &r}) {
						return
					}
				}
			}
			if st.outcome != nil {
				send(Event{Outcome: st.outcome})
				return
			}
			if deadline == nil && !st.spec.Deadline.IsZero() {
				t := time.NewTimer(st.spec.Deadline.Sub(b.now()))
				defer t.Stop()
				deadline = t.C
			}
			if !b.follow(ctx, name, st.rev+1, seen, send, deadline) {
				return
			}
		}
	}()
	return out
}

// follow streams events of the poll from rev until the outcome (true: the
// caller re-reads and ends) or a watch error (true: the caller re-reads),
// or ctx ends (false). When deadline fires it decides the poll.
func (b *Box) follow(ctx context.Context, name string, rev int64, seen map[string]bool, send func(Event) bool, deadline <-chan time.Time) bool {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wch := b.cli.Watch(clientv3.WithRequireLeader(wctx), pollPrefix(name), clientv3.WithPrefix(), clientv3.WithRev(rev))
	for {
		select {
		case <-ctx.Done():
			return false
		case <-deadline:
			deadline = nil
			// The outcome arrives through the watch; an error here
			// leaves it to the next reader.
			dctx, dcancel := context.WithTimeout(ctx, 10*time.Second)
			_, _ = b.Decide(dctx, name)
			dcancel()
		case wr, ok := <-wch:
			if !ok || wr.Canceled || wr.Err() != nil {
				return ctx.Err() == nil
			}
			for _, ev := range wr.Events {
				if ev.Type != mvccpb.PUT {
					continue
				}
				k := string(ev.Kv.Key)
				switch {
				case k == outcomeKey(name):
					return true // the caller reads it and sends it
				case strings.HasPrefix(k, votePrefix(name)):
					v := voterOf(name, ev.Kv.Key)
					if seen[v] {
						continue
					}
					seen[v] = true
					if !send(Event{Vote: &Recorded{Voter: v, Option: string(ev.Kv.Value), Revision: ev.Kv.ModRevision}}) {
						return false
					}
				}
			}
		}
	}
}
