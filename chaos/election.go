package chaos

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ballotdb/ballot/recipes/election"
)

// The election workload: one candidate per member campaigns for one
// election (recipes/election). Each leader writes a register a few times,
// every write a Txn fenced by its term (Term.Fence: the write commits only
// while the term's election key exists) and tagged with the term's fencing
// token, then resigns. Every third term the leader instead stops renewing
// its lease without resigning — a crash, or a pause as the store sees it —
// and goes on writing as a zombie until the fence refuses it, so the next
// leader is elected by lease expiry while a stale one still writes.
//
// Checked at the end, on the register's committed history (read back with
// a watch from revision 1, so writes whose outcome the writer never learnt
// are in it too):
//   - in commit order tokens never go down: no fenced write with a lower
//     token is accepted after one with a higher token;
//   - a token is written by one leadership only (one candidate's one term),
//     and the writes of two leaderships never interleave: the leaderships,
//     in commit order, come one after another with strictly growing tokens;
//   - every acknowledged write is in the history, at its revision;
//   - no two campaigns were granted the same token, and a campaign begun
//     after another was won gets a larger token;
//   - liveness: once the faults heal, a candidate wins a new term and a
//     fenced write of it is acknowledged within electionRegainBound.

const (
	electionName        = "chaos"
	electionRegisterKey = "chaos-election/register"
	electionTTLSeconds  = 2
	// electionWritesPerTerm is how many fenced writes a leader makes
	// before it resigns.
	electionWritesPerTerm = 4
	// electionZombieEvery: every this many terms of a candidate, the
	// leader orphans its lease instead of resigning.
	electionZombieEvery = 3
	// electionZombieWritesMax bounds a zombie's writes; electionZombiePace
	// spaces them.
	electionZombieWritesMax = 60
	electionZombiePace      = 100 * time.Millisecond
	// electionRegainBound is how soon after the faults heal a new term
	// must be won and write: a lease TTL for a dead leader's key to go, a
	// few TTLs for a campaign and a write to get through, and slack for
	// the cluster's own elections.
	electionRegainBound = 20 * time.Second
	// electionHistoryMax bounds the committed history read back.
	electionHistoryMax = 200_000
)

// electionWrite is one fenced write to the register, as acknowledged or as
// read back from the committed history.
type electionWrite struct {
	rev       int64
	token     int64
	candidate int
	term      int // the candidate's campaign count
	seq       int
	at        time.Time // acknowledged at (acknowledged writes only)
}

// value encodes the write's leadership in the register: token, candidate,
// term and sequence number.
func (w electionWrite) value() string {
	return fmt.Sprintf("%d/%d/%d/%d", w.token, w.candidate, w.term, w.seq)
}

// leadership names the term that made the write.
func (w electionWrite) leadership() string {
	return fmt.Sprintf("candidate %d term %d", w.candidate, w.term)
}

func parseElectionWrite(rev int64, v string) (electionWrite, error) {
	f := strings.Split(v, "/")
	if len(f) != 4 {
		return electionWrite{}, fmt.Errorf("register value %q at revision %d is not token/candidate/term/seq", v, rev)
	}
	var n [4]int64
	for i, s := range f {
		x, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return electionWrite{}, fmt.Errorf("register value %q at revision %d: %w", v, rev, err)
		}
		n[i] = x
	}
	return electionWrite{rev: rev, token: n[0], candidate: int(n[1]), term: int(n[2]), seq: int(n[3])}, nil
}

// electionTerm is one won campaign.
type electionTerm struct {
	candidate, term int
	token           int64
	invoked, won    time.Time
	zombie          bool
}

type electionWorkload struct {
	// registerKey is the register (default electionRegisterKey); sharded
	// runs keep it beside the election's keys, so the fenced write stays
	// in one shard (see keyspace).
	registerKey string
	// sharded: candidates grant their leases in the shard of the
	// election's prefix (shard.LeaseKeyHeader).
	sharded bool
	// unfenced, BROKEN ON PURPOSE, makes writes without the fence, for
	// tests proving the checker catches a stale leader let through.
	unfenced bool

	mu        sync.Mutex
	campaigns int
	terms     []electionTerm
	acked     []electionWrite
	unknown   int
	fenced    int // writes refused because the term had ended
	zombies   int
	zombieEnd int             // zombies that stopped writing before ctx ended
	history   []electionWrite // the register's committed history, read at the end
	regained  time.Duration   // from the heal to the first write of a term won after it; -1: not within the bound
	awaited   bool            // whether regained was measured (a run heals; in-process tests do not)
}

func (ew *electionWorkload) register() string {
	if ew.registerKey != "" {
		return ew.registerKey
	}
	return electionRegisterKey
}

// candidate campaigns, leads, writes and resigns (or turns zombie), again
// and again until ctx ends.
func (ew *electionWorkload) candidate(ctx context.Context, id int, cli *clientv3.Client, opTimeout time.Duration) {
	el := election.New(cli, election.WithTTL(electionTTLSeconds))
	if ew.sharded {
		ctx = leaseHomedAt(ctx, election.Prefix+electionName+"/")
	}
	for n := 0; ctx.Err() == nil; n++ {
		cctx, cancel := context.WithTimeout(ctx, 4*opTimeout)
		invoked := time.Now()
		term, err := el.Campaign(cctx, electionName, "candidate-"+strconv.Itoa(id))
		cancel()
		ew.mu.Lock()
		ew.campaigns++
		ew.mu.Unlock()
		if err != nil {
			if !pause(ctx, opTimeout/4) {
				return
			}
			continue
		}
		zombie := n%electionZombieEvery == electionZombieEvery-1
		ew.mu.Lock()
		ew.terms = append(ew.terms, electionTerm{candidate: id, term: n, token: term.Token, invoked: invoked, won: time.Now(), zombie: zombie})
		ew.mu.Unlock()
		if zombie {
			ew.zombie(ctx, id, n, cli, term, opTimeout)
		} else {
			for seq := range electionWritesPerTerm {
				if !ew.write(ctx, cli, term, electionWrite{token: term.Token, candidate: id, term: n, seq: seq}, opTimeout) {
					break
				}
			}
		}
		// Resign even when ctx has ended: the next candidate need not wait
		// out the TTL. Only this term's key is deleted.
		rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), opTimeout)
		term.Resign(rctx)
		rcancel()
	}
}

// zombie stops renewing the term's lease and writes on, paced, until the
// fence refuses a write (the lease expired and the key went with it) or
// the bound is reached.
func (ew *electionWorkload) zombie(ctx context.Context, id, n int, cli *clientv3.Client, term *election.Term, opTimeout time.Duration) {
	term.Session().Orphan()
	ew.mu.Lock()
	ew.zombies++
	ew.mu.Unlock()
	tick := time.NewTicker(electionZombiePace)
	defer tick.Stop()
	defer func() {
		if ctx.Err() == nil {
			ew.mu.Lock()
			ew.zombieEnd++
			ew.mu.Unlock()
		}
	}()
	for seq := range electionZombieWritesMax {
		if !ew.write(ctx, cli, term, electionWrite{token: term.Token, candidate: id, term: n, seq: seq}, opTimeout) {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// write makes one fenced write and records its outcome. It reports
// whether the term may go on writing.
func (ew *electionWorkload) write(ctx context.Context, cli *clientv3.Client, term *election.Term, w electionWrite, opTimeout time.Duration) bool {
	wctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	txn := cli.Txn(wctx)
	if !ew.unfenced {
		txn = txn.If(term.Fence())
	}
	resp, err := txn.Then(clientv3.OpPut(ew.register(), w.value())).Commit()
	ew.mu.Lock()
	defer ew.mu.Unlock()
	switch {
	case err != nil:
		ew.unknown++ // it may have committed
		return false
	case !resp.Succeeded:
		ew.fenced++
		return false
	}
	w.rev, w.at = resp.Header.Revision, time.Now()
	ew.acked = append(ew.acked, w)
	return true
}

// pause waits d or until ctx ends, and reports whether ctx is still live.
func pause(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// regainedSince reports whether a term won at or after healed has had a
// write acknowledged, and when.
func (ew *electionWorkload) regainedSince(healed time.Time) (time.Time, bool) {
	ew.mu.Lock()
	defer ew.mu.Unlock()
	won := map[[2]int]time.Time{}
	for _, t := range ew.terms {
		won[[2]int{t.candidate, t.term}] = t.won
	}
	for _, w := range ew.acked {
		if at, ok := won[[2]int{w.candidate, w.term}]; ok && !at.Before(healed) {
			return w.at, true
		}
	}
	return time.Time{}, false
}

// awaitRegained waits, up to electionRegainBound after healed, for a term
// won after the heal to write, and records how long it took.
func (ew *electionWorkload) awaitRegained(ctx context.Context, healed time.Time) {
	deadline := time.NewTimer(time.Until(healed.Add(electionRegainBound)))
	defer deadline.Stop()
	poll := time.NewTicker(50 * time.Millisecond)
	defer poll.Stop()
	for {
		if at, ok := ew.regainedSince(healed); ok {
			ew.mu.Lock()
			ew.regained, ew.awaited = at.Sub(healed), true
			ew.mu.Unlock()
			return
		}
		select {
		case <-ctx.Done():
		case <-deadline.C:
		case <-poll.C:
			continue
		}
		ew.mu.Lock()
		ew.regained, ew.awaited = -1, true
		ew.mu.Unlock()
		return
	}
}

// readHistory reads every committed version of the register with a watch
// from revision 1 (chaos runs never compact), up to the current one.
func (ew *electionWorkload) readHistory(ctx context.Context, cli *clientv3.Client) error {
	r, err := cli.Get(ctx, ew.register())
	if err != nil {
		return fmt.Errorf("reading the register: %w", err)
	}
	if len(r.Kvs) == 0 {
		return nil // never written
	}
	last := r.Kvs[0].ModRevision
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var hist []electionWrite
	for wr := range cli.Watch(wctx, ew.register(), clientv3.WithRev(1)) {
		if err := wr.Err(); err != nil {
			return fmt.Errorf("watching the register's history: %w", err)
		}
		for _, ev := range wr.Events {
			w, err := parseElectionWrite(ev.Kv.ModRevision, string(ev.Kv.Value))
			if err != nil {
				return err
			}
			hist = append(hist, w)
			if len(hist) > electionHistoryMax {
				return fmt.Errorf("the register's history is over %d writes", electionHistoryMax)
			}
			if ev.Kv.ModRevision >= last {
				ew.mu.Lock()
				ew.history = hist
				ew.mu.Unlock()
				return nil
			}
		}
	}
	return fmt.Errorf("the register's history ended before revision %d: %w", last, ctx.Err())
}

// check reads the committed history back and verifies it.
func (ew *electionWorkload) check(ctx context.Context, final *clientv3.Client) []string {
	if err := ew.readHistory(ctx, final); err != nil {
		return []string{"election: " + err.Error()}
	}
	return ew.verify()
}

// verify checks the committed history, the acknowledged writes, the terms
// and the time leadership took to come back after the heal.
func (ew *electionWorkload) verify() []string {
	ew.mu.Lock()
	defer ew.mu.Unlock()
	var out []string
	add := func(f string, a ...any) { out = append(out, "election: "+fmt.Sprintf(f, a...)) }

	// The committed history, in commit order.
	hist := slices.Clone(ew.history)
	slices.SortStableFunc(hist, func(a, b electionWrite) int { return cmp.Compare(a.rev, b.rev) })
	// Tokens never going down and each token having one leadership
	// together mean the leaderships come one after another, never
	// interleaving, each with a larger token than the one before.
	owner := map[int64]string{} // token -> the leadership that wrote with it
	for i, w := range hist {
		if o, ok := owner[w.token]; ok && o != w.leadership() {
			add("token %d written by two leaderships: %s and %s (revision %d): two leaders passed the fence at once",
				w.token, o, w.leadership(), w.rev)
			break
		}
		owner[w.token] = w.leadership()
		if i > 0 && w.token < hist[i-1].token {
			p := hist[i-1]
			add("a write with token %d committed at revision %d after one with token %d at %d: a stale leader passed the fence",
				w.token, w.rev, p.token, p.rev)
			break
		}
	}

	// Every acknowledged write, committed where it was acknowledged.
	at := map[int64]electionWrite{}
	for _, w := range hist {
		at[w.rev] = w
	}
	for _, a := range ew.acked {
		if h, ok := at[a.rev]; !ok || h.value() != a.value() {
			add("the write %s acknowledged at revision %d is not in the committed history", a.value(), a.rev)
			break
		}
	}

	// Campaigns: one term per token; a campaign begun after another was
	// won gets a larger token.
	byToken := map[int64]electionTerm{}
	for _, t := range ew.terms {
		if o, ok := byToken[t.token]; ok {
			add("two campaigns won with token %d: candidate %d term %d and candidate %d term %d", t.token, o.candidate, o.term, t.candidate, t.term)
			break
		}
		byToken[t.token] = t
	}
	for _, b := range ew.terms {
		for _, a := range ew.terms {
			if a.won.Before(b.invoked) && a.token >= b.token {
				add("candidate %d term %d won with token %d, yet began campaigning after candidate %d term %d had won with token %d",
					b.candidate, b.term, b.token, a.candidate, a.term, a.token)
				return out
			}
		}
	}

	if ew.regained < 0 {
		add("no new leader wrote within %v of the faults healing", electionRegainBound)
	}
	return out
}

func (ew *electionWorkload) summary() string {
	ew.mu.Lock()
	defer ew.mu.Unlock()
	regained := ""
	switch {
	case !ew.awaited:
	case ew.regained < 0:
		regained = "; leadership NOT regained within " + electionRegainBound.String() + " of healing"
	default:
		regained = "; leadership regained " + ew.regained.Round(time.Millisecond).String() + " after healing"
	}
	return fmt.Sprintf("election: %d campaigns, %d terms won (%d turned zombie), %d fenced writes acknowledged, %d refused by the fence, %d unknown, %d committed%s",
		ew.campaigns, len(ew.terms), ew.zombies, len(ew.acked), ew.fenced, ew.unknown, len(ew.history), regained)
}

// writeEvidence saves what the checks saw, for a reader chasing a
// violation: every won term (invoke and win times relative to start), every
// acknowledged write and the committed history, each in its own section.
func (ew *electionWorkload) writeEvidence(path string, start time.Time) error {
	ew.mu.Lock()
	defer ew.mu.Unlock()
	var b strings.Builder
	rel := func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return t.Sub(start).Round(time.Millisecond).String()
	}
	fmt.Fprintf(&b, "# terms won: candidate term token invoked won zombie\n")
	for _, t := range ew.terms {
		fmt.Fprintf(&b, "term %d %d %d %s %s %v\n", t.candidate, t.term, t.token, rel(t.invoked), rel(t.won), t.zombie)
	}
	fmt.Fprintf(&b, "# acknowledged writes: revision value acknowledged-at\n")
	for _, w := range ew.acked {
		fmt.Fprintf(&b, "acked %d %s %s\n", w.rev, w.value(), rel(w.at))
	}
	fmt.Fprintf(&b, "# committed history: revision value\n")
	for _, w := range ew.history {
		fmt.Fprintf(&b, "history %d %s\n", w.rev, w.value())
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("chaos: saving the election evidence: %w", err)
	}
	return nil
}
