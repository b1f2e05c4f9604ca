package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/ballotdb/ballot/recipes/election"
	"github.com/ballotdb/ballot/recipes/fence"
	"github.com/ballotdb/ballot/recipes/poll"
	"github.com/ballotdb/ballot/recipes/twopc"
)

// chefNames are the kitchen's chefs, in the order they take their stations.
var chefNames = []string{"Alice", "Bruno", "Chen", "Dana", "Emeka"}

// chef is one chef: its own client, preferring its own member.
type chef struct {
	name string
	cli  *clientv3.Client
}

// kitchen is the shared scene: the chefs, the order board, and the head
// chef of the moment.
type kitchen struct {
	chefs         []*chef
	ttlSeconds    int
	nar           *narrator
	run           string // suffix that keeps this run's keys apart from earlier runs'
	board         fence.Register
	head          *chef
	headTerm      *election.Term
	stopCampaigns context.CancelFunc
	campaigns     sync.WaitGroup
}

func newKitchen(ctx context.Context, eps []string, ttlSeconds int, nar *narrator) (*kitchen, error) {
	k := &kitchen{ttlSeconds: ttlSeconds, nar: nar, run: fmt.Sprintf("%x", time.Now().UnixNano()), stopCampaigns: func() {}}
	for i, n := range chefNames {
		// Each chef lists the members starting from a different one.
		mine := append(slices.Clone(eps[i%len(eps):]), eps[:i%len(eps)]...)
		cli, err := clientv3.New(clientv3.Config{Endpoints: mine, DialTimeout: 5 * time.Second, Logger: zap.NewNop(), Context: ctx})
		if err != nil {
			k.close()
			return nil, fmt.Errorf("chef %s: %w", n, err)
		}
		k.chefs = append(k.chefs, &chef{name: n, cli: cli})
	}
	return k, nil
}

func (k *kitchen) close() {
	k.stopCampaigns()
	k.campaigns.Wait()
	for _, c := range k.chefs {
		c.cli.Close()
	}
}

func (k *kitchen) chef(name string) *chef {
	for _, c := range k.chefs {
		if c.name == name {
			return c
		}
	}
	panic("kitchen: no chef " + name)
}

// electHeadChef: every chef campaigns; the head chef posts the menu, then
// collapses; the next head chef takes over with a larger token, and the old
// one's late post is refused.
func (k *kitchen) electHeadChef(ctx context.Context) error {
	name := "head-chef-" + k.run
	k.nar.say("act", map[string]any{"act": "election"}, "Act 1 — who is head chef? Every chef puts their name forward (election %q, lease %d s).", "head-chef", k.ttlSeconds)
	type win struct {
		c    *chef
		term *election.Term
	}
	won := make(chan win, len(k.chefs))
	cctx, cancel := context.WithCancel(ctx)
	k.stopCampaigns = cancel
	for _, c := range k.chefs {
		k.campaigns.Add(1)
		go func() {
			defer k.campaigns.Done()
			term, err := election.New(c.cli, election.WithTTL(k.ttlSeconds)).Campaign(cctx, name, c.name)
			if err != nil {
				return // the service ended before this chef led
			}
			won <- win{c, term}
			// A head chef leads until the kitchen closes (or collapses).
			<-cctx.Done()
			rctx, rcancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer rcancel()
			_ = term.Resign(rctx)
		}()
	}
	first, err := waitFor(ctx, won, 30*time.Second, "first head chef")
	if err != nil {
		return err
	}
	k.nar.say("elected", map[string]any{"chef": first.c.name, "token": first.term.Token, "term": 1},
		"%s is elected head chef (fencing token %d).", first.c.name, first.term.Token)
	if err := k.post(first.c.name, first.term.Token, "tonight: chef's choice"); err != nil {
		return err
	}

	// The head chef collapses: no resignation, the lease just stops being
	// renewed.
	collapsed := time.Now()
	first.term.Session().Orphan()
	k.nar.say("killed", map[string]any{"chef": first.c.name, "token": first.term.Token},
		"%s collapses mid-service without a word: nobody renews the head chef's lease any more.", first.c.name)
	second, err := waitFor(ctx, won, time.Duration(k.ttlSeconds)*time.Second+30*time.Second, "next head chef")
	if err != nil {
		return err
	}
	after := time.Since(collapsed)
	k.nar.say("elected", map[string]any{"chef": second.c.name, "token": second.term.Token, "term": 2,
		"previous_chef": first.c.name, "previous_token": first.term.Token, "after_ms": after.Milliseconds()},
		"%s takes over as head chef %.1f s later, when %s's lease ran out (token %d > %d).",
		second.c.name, after.Seconds(), first.c.name, second.term.Token, first.term.Token)
	if second.term.Token <= first.term.Token {
		return fmt.Errorf("token %d after %d: %w", second.term.Token, first.term.Token, errStory)
	}
	if err := k.post(second.c.name, second.term.Token, "tonight: to be voted"); err != nil {
		return err
	}

	// The old head chef comes to and, still believing they lead, posts.
	err = k.board.Write(first.term.Token, "tonight: chef's choice (again)")
	if !errors.Is(err, fence.ErrStale) {
		return fmt.Errorf("the board accepted a stale head chef's post (%v): %w", err, errStory)
	}
	k.nar.say("stale_write_refused", map[string]any{"chef": first.c.name, "token": first.term.Token, "current_token": second.term.Token},
		"%s comes to and posts a new menu as head chef — the board refuses it: token %d is older than %d.",
		first.c.name, first.term.Token, second.term.Token)
	r, err := first.c.cli.Txn(ctx).If(first.term.Fence()).Then(clientv3.OpPut("kitchen/"+k.run+"/menu", "chef's choice")).Commit()
	if err != nil {
		return fmt.Errorf("stale fenced write: %w", err)
	}
	if r.Succeeded {
		return fmt.Errorf("ballot accepted a fenced write of a replaced head chef: %w", errStory)
	}
	k.head, k.headTerm = second.c, second.term
	return nil
}

// post writes the menu on the board with a fencing token.
func (k *kitchen) post(chef string, token int64, menu string) error {
	if err := k.board.Write(token, menu); err != nil {
		return fmt.Errorf("%s's post: %w", chef, err)
	}
	k.nar.say("board_write", map[string]any{"chef": chef, "token": token, "menu": menu},
		"%s posts %q on the order board with token %d: accepted.", chef, menu, token)
	return nil
}

// voteMainCourse: the chefs vote on the main course by majority.
func (k *kitchen) voteMainCourse(ctx context.Context) error {
	name := "main-course-" + k.run
	options := []string{"pasta", "steak", "risotto"}
	k.nar.say("act", map[string]any{"act": "poll"}, "Act 2 — what is the main course? %s calls a vote among all five chefs: %s; 3 votes win.",
		k.head.name, strings.Join(options, ", "))
	if err := poll.New(k.head.cli).Create(ctx, name, poll.Spec{Voters: chefNames, Options: options}); err != nil {
		return err
	}
	vote := func(voter, option string) (poll.Recorded, error) {
		return poll.New(k.chef(voter).cli).Vote(ctx, name, voter, option)
	}
	counted := func(voter, option string) error {
		if _, err := vote(voter, option); err != nil {
			return fmt.Errorf("%s's vote: %w", voter, err)
		}
		k.nar.say("vote", map[string]any{"poll": "main-course", "voter": voter, "option": option}, "%s votes %s.", voter, option)
		return nil
	}
	if err := counted("Bruno", "pasta"); err != nil {
		return err
	}
	if err := counted("Chen", "steak"); err != nil {
		return err
	}
	// Dana cannot make up her mind and sends two votes at once.
	type res struct {
		option string
		rec    poll.Recorded
		err    error
	}
	both := make(chan res, 2)
	for _, o := range []string{"pasta", "steak"} {
		go func() {
			rec, err := vote("Dana", o)
			both <- res{o, rec, err}
		}()
	}
	var accepted []string
	var rs []res
	for range 2 {
		rs = append(rs, <-both)
	}
	slices.SortFunc(rs, func(a, b res) int { // the counted vote first
		if (a.err == nil) == (b.err == nil) {
			return 0
		}
		if a.err == nil {
			return -1
		}
		return 1
	})
	for _, r := range rs {
		switch {
		case r.err == nil:
			accepted = append(accepted, r.option)
			k.nar.say("vote", map[string]any{"poll": "main-course", "voter": "Dana", "option": r.option}, "Dana, torn, sends two votes at once; her vote for %s is counted.", r.option)
		case errors.Is(r.err, poll.ErrAlreadyVoted):
			k.nar.say("vote_refused", map[string]any{"poll": "main-course", "voter": "Dana", "option": r.option, "reason": "already voted", "standing": r.rec.Option},
				"Dana's other vote, for %s, is refused: one chef, one vote.", r.option)
		default:
			return fmt.Errorf("vote of Dana: %w", r.err)
		}
	}
	if len(accepted) != 1 {
		return fmt.Errorf("%d votes of Dana counted: %w", len(accepted), errStory)
	}
	for _, v := range []string{"Emeka", "Alice"} {
		_, err := vote(v, "pasta")
		switch {
		case err == nil:
			k.nar.say("vote", map[string]any{"poll": "main-course", "voter": v, "option": "pasta"}, "%s votes pasta.", v)
		case errors.Is(err, poll.ErrClosed):
			k.nar.say("vote_refused", map[string]any{"poll": "main-course", "voter": v, "option": "pasta", "reason": "decided"},
				"%s's vote comes too late: the main course is already decided.", v)
		default:
			return fmt.Errorf("%s's vote: %w", v, err)
		}
	}
	out, err := poll.New(k.head.cli).Result(ctx, name)
	if err != nil {
		return err
	}
	k.nar.say("poll_outcome", map[string]any{"poll": "main-course", "winner": out.Winner, "reason": out.Reason, "counts": out.Counts, "voted": out.Voted},
		"The main course is %s, by %s (%d of %d voted: %s).", out.Winner, out.Reason, out.Voted, out.Voters, describeCounts(out.Counts, options))
	if out.Winner != "pasta" {
		return fmt.Errorf("the kitchen cooks %s: %w", out.Winner, errStory)
	}
	return nil
}

func describeCounts(counts map[string]int, order []string) string {
	var parts []string
	for _, o := range order {
		parts = append(parts, fmt.Sprintf("%s %d", o, counts[o]))
	}
	return strings.Join(parts, ", ")
}

// station is a chef's station: the Work of its 2PC participant.
type station struct {
	chef   string
	nar    *narrator
	mu     sync.Mutex
	refuse string // why it cannot prepare, if it cannot
	did    map[string]twopc.State
}

func (s *station) Prepare(_ context.Context, tx string) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.refuse != "" {
		s.nar.say("station_vote", map[string]any{"tx": tx, "station": s.chef, "vote": "no", "why": s.refuse}, "  %s's station: no — %s.", s.chef, s.refuse)
		return false, nil
	}
	s.did[tx] = twopc.Prepared
	s.nar.say("station_vote", map[string]any{"tx": tx, "station": s.chef, "vote": "yes"}, "  %s's station: yes, water boiling, pans out.", s.chef)
	return true, nil
}

func (s *station) Commit(_ context.Context, tx string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.did[tx] = twopc.Committed
	return nil
}

func (s *station) Abort(_ context.Context, tx string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.did[tx] = twopc.Aborted
	return nil
}

// stationRig is a station's participant: its work and journal outlive any
// one agent, as a restarted station keeps its notes.
type stationRig struct {
	c       *chef
	work    *station
	journal *twopc.MemJournal
	agent   *twopc.Agent
}

const stationPatience = time.Second

// readyForPasta: the head chef runs "ready for pasta?" four times.
func (k *kitchen) readyForPasta(ctx context.Context) error {
	k.nar.say("act", map[string]any{"act": "twopc"}, "Act 3 — %s asks every station \"ready for pasta?\" (two-phase commit; the decision is kept in ballot).", k.head.name)
	var rigs []*stationRig
	for _, c := range k.chefs {
		w := &station{chef: c.name, nar: k.nar, did: map[string]twopc.State{}}
		j := twopc.NewMemJournal()
		rigs = append(rigs, &stationRig{c: c, work: w, journal: j, agent: twopc.NewAgent(c.cli, c.name, w, j, twopc.WithPatience(stationPatience))})
	}
	parts := func() []twopc.Participant {
		var ps []twopc.Participant
		for _, r := range rigs {
			ps = append(ps, r.agent)
		}
		return ps
	}
	coordinator := func(opts ...twopc.Option) *twopc.Coordinator {
		return twopc.NewCoordinator(k.head.cli, append(opts, twopc.WithPrepareTimeout(2*time.Second), twopc.WithNotifyAttempts(2))...)
	}
	rounds := []struct {
		label, story string
		setup        func(tx string) []twopc.Option // returns coordinator options
		after        func(ctx context.Context, tx string) error
		want         twopc.Decision
	}{
		{"pasta-1", "every station is ready", func(string) []twopc.Option { return nil }, nil, twopc.Commit},
		{"pasta-2", "Dana's station is out of basil", func(string) []twopc.Option {
			rigs[3].work.refuse = "out of basil"
			return nil
		}, func(context.Context, string) error { rigs[3].work.refuse = ""; return nil }, twopc.Abort},
		{"pasta-3", "Emeka's station crashes right after saying yes", func(tx string) []twopc.Option {
			r := rigs[4]
			r.agent = twopc.NewAgent(r.c.cli, r.c.name, r.work, r.journal, twopc.WithPatience(stationPatience),
				twopc.WithStepHook(func(s twopc.Step) error {
					if s.Kind == twopc.StepAgentPrepared {
						k.nar.say("station_crash", map[string]any{"tx": tx, "station": r.c.name},
							"  %s's station crashes after promising yes, before the answer gets out.", r.c.name)
						return twopc.ErrCrashed
					}
					return nil
				}))
			return nil
		}, func(ctx context.Context, tx string) error {
			r := rigs[4]
			r.agent = twopc.NewAgent(r.c.cli, r.c.name, r.work, r.journal, twopc.WithPatience(stationPatience))
			if err := r.agent.Recover(ctx); err != nil {
				return err
			}
			st, _ := r.journal.State(tx)
			k.nar.say("station_recovered", map[string]any{"tx": tx, "station": r.c.name, "state": st},
				"  %s's station restarts, finds the promise in its notes, reads the decision from ballot: %s.", r.c.name, st)
			return nil
		}, twopc.Abort},
		{"pasta-4", k.head.name + " collapses after hearing every yes, before deciding", func(tx string) []twopc.Option {
			return []twopc.Option{twopc.WithStepHook(func(s twopc.Step) error {
				if s.Kind == twopc.StepDecide {
					k.nar.say("coordinator_crash", map[string]any{"tx": tx, "chef": k.head.name},
						"  %s collapses after hearing every yes, before deciding. In classic 2PC every station would now wait for them.", k.head.name)
					return twopc.ErrCrashed
				}
				return nil
			})}
		}, func(ctx context.Context, tx string) error {
			// Every station's patience runs out; they settle it through
			// the decision key instead of waiting for the head chef.
			var wg sync.WaitGroup
			errs := make(chan error, len(rigs))
			for _, r := range rigs {
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, err := r.agent.Resolve(ctx, tx)
					if err != nil {
						errs <- fmt.Errorf("%s resolving: %w", r.c.name, err)
					}
				}()
			}
			wg.Wait()
			close(errs)
			if err := <-errs; err != nil {
				return err
			}
			k.nar.say("stations_resolved", map[string]any{"tx": tx}, "  After %v without word, the stations read ballot's decision key: nothing decided, so one of them records ABORT, and all follow it.", stationPatience)
			return nil
		}, twopc.Abort},
	}
	for _, rd := range rounds {
		tx := rd.label + "-" + k.run
		k.nar.say("twopc_begin", map[string]any{"tx": rd.label}, "%s: %s asks \"ready for pasta?\" — %s.", rd.label, k.head.name, rd.story)
		_, err := coordinator(rd.setup(tx)...).Run(ctx, tx, parts())
		switch {
		case err == nil:
		case errors.Is(err, twopc.ErrUnreached), errors.Is(err, twopc.ErrCrashed):
			// Stations not told learn the decision from ballot below.
		default:
			return fmt.Errorf("%s: %w", rd.label, err)
		}
		if rd.after != nil {
			if err := rd.after(ctx, tx); err != nil {
				return fmt.Errorf("%s: %w", rd.label, err)
			}
		}
		// The (recovered) head chef makes sure every station was told.
		d, err := coordinator().Recover(ctx, tx, parts())
		if err != nil {
			return fmt.Errorf("%s: recover: %w", rd.label, err)
		}
		states := map[string]string{}
		for _, r := range rigs {
			st, _ := r.journal.State(tx)
			states[r.c.name] = string(st)
		}
		agreed := true
		for _, st := range states {
			agreed = agreed && st == string(stateOf(d))
		}
		verb := map[twopc.Decision]string{twopc.Commit: "everyone cooks pasta", twopc.Abort: "everyone stands down"}[d]
		k.nar.say("twopc_outcome", map[string]any{"tx": rd.label, "decision": string(d), "stations": states, "agreed": agreed},
			"%s: decision %s — %s (%s).", rd.label, d, verb, describeStates(states))
		if !agreed || d != rd.want {
			return fmt.Errorf("%s: decision %s, stations %v: %w", rd.label, d, states, errStory)
		}
	}
	return nil
}

func stateOf(d twopc.Decision) twopc.State {
	if d == twopc.Commit {
		return twopc.Committed
	}
	return twopc.Aborted
}

func describeStates(states map[string]string) string {
	var parts []string
	for _, n := range slices.Sorted(maps.Keys(states)) {
		parts = append(parts, n+" "+states[n])
	}
	return strings.Join(parts, ", ")
}
