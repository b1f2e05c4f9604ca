package chaos

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// The lease workload: "leases expire when and only when their holders stop
// keeping them alive".
//
// Holders grant leases with short TTLs (2–5 s) under IDs they choose (so a
// grant whose outcome is unknown can still be followed), attach one key to
// each, and then either keep the lease alive to the end of the run (with
// KeepAliveOnce every TTL/3, as etcd's client does) or abandon it after a
// few keep-alives, at a recorded time after which no keep-alive of theirs
// is in flight. Every call is recorded with its invoke and complete times
// and the TTL the member answered. A lease is seen expired when a watcher
// receives its key's deletion, when a keep-alive is answered TTL 0 (etcd's
// "lease not found"), or when the final poll of LeaseLeases no longer
// lists it; each such sighting is at or after the expiry itself.
//
// Safety: a member that answers a keep-alive (or a grant) with TTL t has
// moved the lease's deadline to at least t after it received the call, so
// no lease may be seen expired before (invoke time of an acknowledged
// keep-alive) + its TTL. Expiring later is fine: a new leader gives every
// lease a fresh full TTL. Client and members share one host clock, so the
// only slack is leaseClockTolerance, for reading the clock on either side of
// a call.
//
// Liveness, once every fault has healed (at healedAt): every abandoned lease
// is gone by max(abandoned, healedAt) + TTL + the liveness bound (a possible
// election, the lessor's check period, a revoke's round through the log and
// the poll period); every lease its holder still keeps alive is present,
// with its key, and the holder's keep-alives succeed again.

// leaseClockTolerance is the slack of the safety check: both ends read one
// monotonic clock, and the call's invoke time is taken before the request
// leaves, the sighting after the deletion arrives, so in principle none is
// needed; 20 ms covers the granularity of reading the clock on both sides.
const leaseClockTolerance = 20 * time.Millisecond

// leaseKeyPrefix holds the lease workload's keys.
const leaseKeyPrefix = "lease/"

// leaseCall is one grant or keep-alive as the holder saw it, in nanoseconds
// since the recorder's start.
type leaseCall struct {
	call, ret int64
	ttl       int64 // the TTL answered; <= 0: "lease not found"
	err       error // the outcome is unknown (nothing was answered)
}

// leaseHistory is everything known about one lease.
type leaseHistory struct {
	id      int64
	key     string
	member  int   // the member the holder talks to
	askTTL  int64 // the TTL asked for, in seconds
	grant   leaseCall
	attach  leaseCall // the Put of the key with the lease (ttl unused)
	kas     []leaseCall
	keep    bool  // the holder keeps it alive to the end
	dropped bool  // abandoned by the holder
	dropAt  int64 // no keep-alive of the holder is in flight after it
	lost    bool  // a keep-alive was answered "not found" while the holder kept it
	// seen are sightings of the expiry: when, and how.
	seen []leaseSighting
}

type leaseSighting struct {
	at  int64
	how string
}

// leaseWorkload runs the holders and keeps every lease's history.
type leaseWorkload struct {
	rec      *recorder
	base     int64 // lease IDs are base + holder<<20 + seq, unique to the run
	election time.Duration
	// home, in a sharded run, is the shard that keeps the lease keys now:
	// a lease ID names its home shard in its top 16 bits, and a key may
	// only be attached to a lease of its own shard (or of an ancestor the
	// shard was split from). nil: one group.
	home func() uint64

	mu     sync.Mutex
	leases []*leaseHistory
	byKey  map[string]*leaseHistory
	byID   map[int64]*leaseHistory
	kaOK   int
	// frozen stops recording sightings: the run revokes the kept leases
	// itself at the end.
	frozen bool
}

func newLeaseWorkload(rec *recorder, seed uint64, election time.Duration, home func() uint64) *leaseWorkload {
	base := int64(seed%(1<<20)+1) << 32
	if home != nil {
		base = int64(seed%(1<<15)+1) << 32 // below bit 48, where the home shard goes
	}
	return &leaseWorkload{rec: rec, base: base, election: election, home: home,
		byKey: map[string]*leaseHistory{}, byID: map[int64]*leaseHistory{}}
}

func (w *leaseWorkload) add(h *leaseHistory) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.leases = append(w.leases, h)
	w.byKey[h.key] = h
	w.byID[h.id] = h
}

// holder grants leases for as long as grantCtx lasts, one every 300–800 ms,
// and keeps those it keeps alive until keepCtx ends. It returns when all
// its leases' goroutines have.
func (w *leaseWorkload) holder(grantCtx, keepCtx context.Context, id, member int, cli *clientv3.Client, rng *rand.Rand, opTimeout time.Duration) {
	lc := pb.NewLeaseClient(cli.ActiveConnection()) // no retries: each call is recorded as it went
	var wg sync.WaitGroup
	defer wg.Wait()
	var kept atomic.Int32 // kept leases still held
	for seq := 1; grantCtx.Err() == nil; seq++ {
		h := &leaseHistory{id: w.base + int64(id)<<20 + int64(seq), member: member, askTTL: 2 + rng.Int64N(4)}
		if w.home != nil {
			h.id |= int64(w.home()) << 48
		}
		h.key = fmt.Sprintf("%s%x", leaseKeyPrefix, h.id)
		// Keep at most three at a time per holder: kept leases live to the
		// end of the run, or until a fault makes them expire.
		h.keep = kept.Load() < 3 && rng.IntN(3) == 0
		if h.keep {
			kept.Add(1)
		}
		kas := rng.IntN(4) // keep-alives before an abandonment
		w.add(h)
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.hold(keepCtx, h, lc, cli, kas, opTimeout)
			if h.keep {
				kept.Add(-1)
			}
		}()
		select {
		case <-grantCtx.Done():
		case <-time.After(time.Duration(300+rng.IntN(500)) * time.Millisecond):
		}
	}
}

// hold grants h, attaches its key and keeps it alive (until ctx ends if it
// is kept, else for kas keep-alives), then abandons it.
func (w *leaseWorkload) hold(ctx context.Context, h *leaseHistory, lc pb.LeaseClient, cli *clientv3.Client, kas int, opTimeout time.Duration) {
	abandon := func() {
		w.mu.Lock()
		h.dropped, h.dropAt = true, w.rec.now()
		w.mu.Unlock()
	}
	gctx, cancel := context.WithTimeout(ctx, opTimeout)
	call := w.rec.now()
	resp, err := lc.LeaseGrant(gctx, &pb.LeaseGrantRequest{ID: h.id, TTL: h.askTTL})
	cancel()
	if err == nil && resp.Error != "" {
		err = errors.New(resp.Error)
	}
	w.rec.refused(err)
	w.mu.Lock()
	h.grant = leaseCall{call: call, ret: w.rec.now(), err: err}
	if err == nil {
		h.grant.ttl = resp.TTL
	}
	w.mu.Unlock()
	if err != nil {
		abandon()
		return
	}
	pctx, cancel := context.WithTimeout(ctx, opTimeout)
	call = w.rec.now()
	_, err = cli.Put(pctx, h.key, "held", clientv3.WithLease(clientv3.LeaseID(h.id)))
	cancel()
	w.rec.refused(err)
	w.mu.Lock()
	h.attach = leaseCall{call: call, ret: w.rec.now(), err: err}
	w.mu.Unlock()
	if err != nil {
		abandon()
		return
	}
	every := time.Duration(h.grant.ttl) * time.Second / 3
	for n := 0; h.keep || n < kas; n++ {
		select {
		case <-ctx.Done():
			if !h.keep {
				abandon()
			}
			return // a kept lease is revoked by revokeKept
		case <-time.After(every):
		}
		c := w.keepAliveOnce(ctx, lc, h.id, min(opTimeout, every))
		w.rec.refused(c.err)
		w.mu.Lock()
		h.kas = append(h.kas, c)
		switch {
		case c.err != nil:
		case c.ttl > 0:
			w.kaOK++
		default:
			h.seen = append(h.seen, leaseSighting{c.ret, "a keep-alive was answered TTL 0 (not found)"})
			h.lost = true
		}
		w.mu.Unlock()
		if c.err == nil && c.ttl <= 0 {
			abandon() // nothing left to hold
			return
		}
	}
	abandon()
}

// keepAliveOnce renews a lease once on its own stream, as clientv3's
// KeepAliveOnce does, and records the call.
func (w *leaseWorkload) keepAliveOnce(ctx context.Context, lc pb.LeaseClient, id int64, timeout time.Duration) leaseCall {
	kctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c := leaseCall{call: w.rec.now()}
	stream, err := lc.LeaseKeepAlive(kctx)
	if err == nil {
		err = stream.Send(&pb.LeaseKeepAliveRequest{ID: id})
	}
	var resp *pb.LeaseKeepAliveResponse
	if err == nil {
		resp, err = stream.Recv()
	}
	c.ret = w.rec.now()
	if err != nil {
		c.err = fmt.Errorf("keep-alive: %w", err)
		return c
	}
	stream.CloseSend()
	c.ttl = resp.TTL
	return c
}

// watch records every deletion of a lease key that a watcher on member
// receives, with the time it arrived, resuming after a broken stream.
func (w *leaseWorkload) watch(ctx context.Context, cli *clientv3.Client) {
	next := int64(1)
	for ctx.Err() == nil {
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		for wr := range cli.Watch(wctx, leaseKeyPrefix, clientv3.WithPrefix(), clientv3.WithRev(next)) {
			if wr.Err() != nil {
				break
			}
			at := w.rec.now()
			for _, ev := range wr.Events {
				next = ev.Kv.ModRevision + 1
				if ev.Type != mvccpb.DELETE {
					continue
				}
				w.mu.Lock()
				if h := w.byKey[string(ev.Kv.Key)]; h != nil && !w.frozen {
					h.seen = append(h.seen, leaseSighting{at, fmt.Sprintf("a watcher saw its key deleted at revision %d", ev.Kv.ModRevision)})
				}
				w.mu.Unlock()
			}
		}
		cancel()
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond): // redial pacing
		}
	}
}

// livenessBound is how long after TTL a lease may outlive its holder once
// faults have healed: an election (up to two election timeouts), after
// which the new leader gives every lease a full TTL anyway; the lessor's
// 100 ms check period; the revoke's round through the log; and the final
// poll's period. The last two get a second between them.
func (w *leaseWorkload) livenessBound() time.Duration {
	return 2*w.election + 100*time.Millisecond + time.Second + leasePollEvery
}

// leasePollEvery paces the final poll of LeaseLeases.
const leasePollEvery = 200 * time.Millisecond

// settle runs once faults have healed (at healedAt) and the holders still
// keep their kept leases alive: it polls LeaseLeases until every abandoned
// lease is gone or the last liveness deadline has passed, then checks that
// every kept lease is present with its key and was renewed since the heal.
func (w *leaseWorkload) settle(ctx context.Context, cli *clientv3.Client, healedAt int64) []string {
	bound := w.livenessBound()
	poll := time.NewTicker(leasePollEvery)
	defer poll.Stop()
	var problems []string
	// Bounded: the last leases granted are abandoned within a TTL and a few
	// keep-alive timeouts, and each must then be gone within TTL + bound.
	hardStop := time.Now().Add(time.Minute)
	for {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		call := w.rec.now()
		r, err := cli.Leases(pctx)
		cancel()
		now := w.rec.now()
		pending, holding := 0, 0
		var last int64
		w.mu.Lock()
		live := map[int64]bool{}
		if err == nil {
			for _, l := range r.Leases {
				live[int64(l.ID)] = true
			}
		}
		for _, h := range w.leases {
			switch {
			case h.dropped:
				last = max(last, w.deadline(h, healedAt, bound))
				if err != nil || live[h.id] {
					pending++
				}
			case !h.keep:
				holding++ // still kept alive for a few more calls
			}
			// Absence means expiry only for a lease whose grant had
			// returned before the poll was sent.
			granted := h.grant.ret != 0 && h.grant.ret < call
			if err == nil && granted && !live[h.id] && (len(h.seen) == 0 || h.seen[len(h.seen)-1].how != leaseGoneFromList) {
				h.seen = append(h.seen, leaseSighting{now, leaseGoneFromList})
			}
		}
		w.mu.Unlock()
		if pending == 0 && holding == 0 {
			break
		}
		if (holding == 0 && now > last) || time.Now().After(hardStop) {
			if err != nil {
				problems = append(problems, fmt.Sprintf("lease: the final LeaseLeases polls failed: %v", err))
			}
			break // checkLeases names every lease still present
		}
		select {
		case <-ctx.Done():
			return append(problems, fmt.Sprintf("lease: final poll: %v", ctx.Err()))
		case <-poll.C:
		}
	}
	// Every kept lease must be present, with its key, and renewed since the
	// heal: its holder is still at work.
	deadline := time.Now().Add(10*time.Second + 2*w.election)
	for {
		missing := w.keptNotRenewedSince(healedAt)
		if len(missing) == 0 {
			break
		}
		if time.Now().After(deadline) {
			problems = append(problems, fmt.Sprintf("lease: %d kept leases had no keep-alive acknowledged in the 10 s after the heal, first %x", len(missing), missing[0]))
			break
		}
		select {
		case <-ctx.Done():
			return append(problems, fmt.Sprintf("lease: %v", ctx.Err()))
		case <-poll.C:
		}
	}
	gctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	keys, err := cli.Get(gctx, leaseKeyPrefix, clientv3.WithPrefix())
	var leases *clientv3.LeaseLeasesResponse
	if err == nil {
		leases, err = cli.Leases(gctx)
	}
	if err != nil {
		return append(problems, fmt.Sprintf("lease: the final read of kept leases failed: %v", err))
	}
	have := map[string]int64{}
	for _, kv := range keys.Kvs {
		have[string(kv.Key)] = kv.Lease
	}
	live := map[int64]bool{}
	for _, l := range leases.Leases {
		live[int64(l.ID)] = true
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, h := range w.leases {
		if !h.keep || h.dropped || h.lost || h.attach.err != nil || h.attach.ret == 0 {
			continue
		}
		switch {
		case !live[h.id]:
			problems = append(problems, fmt.Sprintf("lease %x: kept alive by its holder, but gone at the end", h.id))
		case have[h.key] != h.id:
			problems = append(problems, fmt.Sprintf("lease %x: kept alive by its holder, but its key %s is gone at the end", h.id, h.key))
		}
	}
	return problems
}

const leaseGoneFromList = "the final LeaseLeases poll no longer listed it"

// keptNotRenewedSince names the kept leases (still held) whose holder has
// no acknowledged keep-alive invoked after at.
func (w *leaseWorkload) keptNotRenewedSince(at int64) []int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []int64
	for _, h := range w.leases {
		if !h.keep || h.dropped || h.lost || h.attach.err != nil || h.attach.ret == 0 {
			continue
		}
		ok := false
		for _, c := range h.kas {
			if c.err == nil && c.ttl > 0 && c.call >= at {
				ok = true
			}
		}
		if !ok {
			out = append(out, h.id)
		}
	}
	return out
}

// deadline is when an abandoned lease must be gone.
// REQUIRES: w.mu is held (or h is not shared).
func (w *leaseWorkload) deadline(h *leaseHistory, healedAt int64, bound time.Duration) int64 {
	ttl := h.askTTL
	if h.grant.err == nil && h.grant.ttl > 0 {
		ttl = h.grant.ttl
	}
	return max(h.dropAt, healedAt) + int64(time.Duration(ttl)*time.Second+bound)
}

// revokeKept revokes every lease still listed, once the holders have
// stopped, so that none expires after the final read of the run. From
// here on no sighting is recorded: these are not expiries.
func (w *leaseWorkload) revokeKept(ctx context.Context, cli *clientv3.Client) error {
	w.mu.Lock()
	w.frozen = true
	w.mu.Unlock()
	var errs []error
	for attempt := 0; attempt < 5; attempt++ {
		lctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		r, err := cli.Leases(lctx)
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("list leases: %w", err))
			continue
		}
		if len(r.Leases) == 0 {
			return nil
		}
		for _, l := range r.Leases {
			rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			_, err := cli.Revoke(rctx, l.ID)
			cancel()
			if err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
				errs = append(errs, fmt.Errorf("revoke lease %x: %w", l.ID, err))
			}
		}
	}
	return errors.Join(errs...)
}

// leaseStats is the lease workload's part of the summary.
type leaseStats struct {
	Granted, Kept, Abandoned, Unknown int
	KeepAlivesOK                      int
	Expired                           int           // leases seen expired
	LostUnderFaults                   int           // kept leases answered "not found" (legitimate when keep-alives failed for a TTL)
	MaxLate                           time.Duration // the latest expiry past (last acknowledged invoke + TTL)
}

func (w *leaseWorkload) stats() leaseStats {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := leaseStats{KeepAlivesOK: w.kaOK}
	for _, h := range w.leases {
		switch {
		case h.grant.err != nil:
			s.Unknown++
			continue
		case h.grant.ret == 0:
			continue
		}
		s.Granted++
		if h.keep && !h.lost {
			s.Kept++
		} else {
			s.Abandoned++
		}
		if h.lost {
			s.LostUnderFaults++
		}
		if len(h.seen) > 0 {
			s.Expired++
			if b, ok := safeUntil(h); ok {
				s.MaxLate = max(s.MaxLate, time.Duration(firstSighting(h).at-b))
			}
		}
	}
	return s
}

// safeUntil is the earliest time h may be seen expired: the latest
// (invoke + TTL) over its acknowledged grant and keep-alives.
func safeUntil(h *leaseHistory) (int64, bool) {
	var until int64
	ok := false
	for _, c := range append([]leaseCall{h.grant}, h.kas...) {
		if c.err != nil || c.ttl <= 0 || c.ret == 0 {
			continue
		}
		ok = true
		until = max(until, c.call+int64(time.Duration(c.ttl)*time.Second))
	}
	return until, ok
}

// latestPromise returns the acknowledged call that promised the most, and
// the promise of the acknowledged calls invoked before it (0 if none).
func latestPromise(h *leaseHistory) (leaseCall, int64) {
	var best leaseCall
	var bestUntil, before int64
	calls := append([]leaseCall{h.grant}, h.kas...)
	for _, c := range calls {
		if c.err == nil && c.ttl > 0 && c.ret != 0 {
			if u := c.call + int64(time.Duration(c.ttl)*time.Second); u > bestUntil {
				best, bestUntil = c, u
			}
		}
	}
	for _, c := range calls {
		if c.err == nil && c.ttl > 0 && c.ret != 0 && c.call < best.call {
			before = max(before, c.call+int64(time.Duration(c.ttl)*time.Second))
		}
	}
	return best, before
}

func firstSighting(h *leaseHistory) leaseSighting {
	first := h.seen[0]
	for _, s := range h.seen[1:] {
		if s.at < first.at {
			first = s
		}
	}
	return first
}

// checkLeases checks every lease's history: none seen expired before its
// last acknowledged keep-alive's invoke time plus the TTL answered (less
// leaseClockTolerance); and, once faults healed at healedAt, every
// abandoned lease gone within TTL + bound of max(abandonment, healedAt).
func checkLeases(hs []*leaseHistory, healedAt int64, bound time.Duration) []string {
	var problems []string
	ms := func(t int64) string { return fmt.Sprintf("%.3fs", float64(t)/1e9) }
	sorted := append([]*leaseHistory(nil), hs...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].id < sorted[j].id })
	for _, h := range sorted {
		if len(h.seen) > 0 {
			first := firstSighting(h)
			if until, ok := safeUntil(h); ok && first.at < until-int64(leaseClockTolerance) {
				what := "an acknowledged keep-alive or grant promised it until"
				if c, before := latestPromise(h); c.call > before && before > 0 {
					// The call that made the promise came after the lease's
					// previous promise had run out: it renewed a lease that
					// may already have expired (etcd answers "not found").
					what = fmt.Sprintf("a keep-alive invoked at %s, after its previous promise ran out at %s, was acknowledged with TTL %d: promised until",
						ms(c.call), ms(before), c.ttl)
				}
				problems = append(problems, fmt.Sprintf(
					"lease %x (TTL %d s, holder on %s): expired early: %s at %s, but %s %s (%v early)",
					h.id, h.grant.ttl, name(h.member), first.how, ms(first.at), what, ms(until),
					time.Duration(until-first.at).Round(time.Millisecond)))
			}
		}
		if !h.dropped {
			continue
		}
		ttl := h.askTTL
		if h.grant.err == nil && h.grant.ttl > 0 {
			ttl = h.grant.ttl
		}
		due := max(h.dropAt, healedAt) + int64(time.Duration(ttl)*time.Second+bound)
		var gone int64 = -1
		for _, s := range h.seen {
			if gone < 0 || s.at < gone {
				gone = s.at
			}
		}
		switch {
		case gone < 0:
			problems = append(problems, fmt.Sprintf(
				"lease %x (TTL %d s, holder on %s): abandoned at %s, never expired (due by %s once faults healed at %s)",
				h.id, ttl, name(h.member), ms(h.dropAt), ms(due), ms(healedAt)))
		case gone > due:
			problems = append(problems, fmt.Sprintf(
				"lease %x (TTL %d s, holder on %s): abandoned at %s, expired only at %s (due by %s once faults healed at %s)",
				h.id, ttl, name(h.member), ms(h.dropAt), ms(gone), ms(due), ms(healedAt)))
		}
	}
	return problems
}

// check runs checkLeases over the workload's histories.
func (w *leaseWorkload) check(healedAt int64) []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	p := checkLeases(w.leases, healedAt, w.livenessBound())
	if len(p) > leaseViolationsShown {
		p = append(p[:leaseViolationsShown], fmt.Sprintf("... and %d more lease violations (every lease's history is in leases.txt)", len(p)-leaseViolationsShown))
	}
	return p
}

// leaseViolationsShown bounds the lease violations a report lists.
const leaseViolationsShown = 10

// writeHistories writes every lease's history to path, for a person.
func (w *leaseWorkload) writeHistories(path string) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	ms := func(t int64) string { return fmt.Sprintf("%.3f", float64(t)/1e9) }
	call := func(c leaseCall) string {
		switch {
		case c.ret == 0:
			return fmt.Sprintf("[%s .. ?]", ms(c.call))
		case c.err != nil:
			return fmt.Sprintf("[%s .. %s] unknown (%v)", ms(c.call), ms(c.ret), c.err)
		default:
			return fmt.Sprintf("[%s .. %s] TTL %d", ms(c.call), ms(c.ret), c.ttl)
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "lease histories: times in seconds since the start\n")
	for _, h := range w.leases {
		fmt.Fprintf(&b, "lease %x key %s holder on %s, asked TTL %d, keep %v\n", h.id, h.key, name(h.member), h.askTTL, h.keep)
		fmt.Fprintf(&b, "  grant      %s\n", call(h.grant))
		if h.attach.call != 0 {
			a := h.attach
			a.ttl = 0
			fmt.Fprintf(&b, "  attach key %s\n", strings.TrimSuffix(call(a), " TTL 0"))
		}
		for _, c := range h.kas {
			fmt.Fprintf(&b, "  keep-alive %s\n", call(c))
		}
		if h.dropped {
			fmt.Fprintf(&b, "  abandoned  %s\n", ms(h.dropAt))
		}
		if until, ok := safeUntil(h); ok {
			fmt.Fprintf(&b, "  promised until %s\n", ms(until))
		}
		for _, s := range h.seen {
			fmt.Fprintf(&b, "  seen expired %s: %s\n", ms(s.at), s.how)
		}
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		return fmt.Errorf("chaos: %w", err)
	}
	return nil
}
