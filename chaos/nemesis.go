package chaos

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"time"
)

// Nemesis kinds.
const (
	NemesisKill      = "kill"      // kill -9 a member (half the time the leader), restart it later
	NemesisPause     = "pause"     // SIGSTOP a member longer than an election timeout, then SIGCONT
	NemesisPartition = "partition" // isolate the leader, split majority/minority, a bridge, or one-way loss
	NemesisDisk      = "disk"      // fill a member's loop-mounted file system, hold, free it (processes, root)
	NemesisClock     = "clock"     // run a member's clock 2–4× fast or slow (a chaosclock build)
)

// AllNemeses lists every nemesis the process rig knows (split and move:
// sharded runs only).
var AllNemeses = []string{NemesisKill, NemesisPause, NemesisPartition, NemesisDisk, NemesisClock, NemesisTransfer, NemesisMember,
	NemesisSplit, NemesisMove}

// clockRates are the rates the clock nemesis picks from.
var clockRates = []float64{2, 3, 4, 1.0 / 2, 1.0 / 3, 1.0 / 4}

// nemesis injects faults into a cluster on a seeded schedule, one at a
// time: apply, hold, heal, rest.
type nemesis struct {
	c     cluster
	kinds []string
	rng   *rand.Rand
	logf  func(string, ...any)

	// locks keeps the fault and change schedules off the same member at
	// once (a kill must not restart a member being replaced).
	locks *memberLocks

	mu         sync.Mutex
	counts     map[string]int
	schedule   []string
	violations []string
}

func (nm *nemesis) violation(v string) {
	nm.mu.Lock()
	defer nm.mu.Unlock()
	nm.violations = append(nm.violations, v)
	nm.logf("nemesis: VIOLATION %s", v)
}

// pickMember picks a member, half the time the leader.
func (nm *nemesis) pickMember() int {
	i := nm.rng.IntN(nm.c.size())
	if l := nm.c.leader(); l >= 0 && nm.rng.IntN(2) == 0 {
		i = l
	}
	return i
}

func (nm *nemesis) note(at time.Duration, kind, what string) {
	nm.mu.Lock()
	defer nm.mu.Unlock()
	nm.counts[kind]++
	line := fmt.Sprintf("%8.3fs %s: %s", at.Seconds(), kind, what)
	nm.schedule = append(nm.schedule, line)
	nm.logf("nemesis %s", line)
}

func (nm *nemesis) run(ctx context.Context, start time.Time, election time.Duration) {
	pace := func(d time.Duration) bool {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(d):
			return true
		}
	}
	n := nm.c.size()
	for ctx.Err() == nil {
		if !pace(time.Duration(500+nm.rng.IntN(1500)) * time.Millisecond) {
			return
		}
		kind := nm.kinds[nm.rng.IntN(len(nm.kinds))]
		hold := election*2 + time.Duration(nm.rng.IntN(2000))*time.Millisecond
		at := time.Since(start)
		switch kind {
		case NemesisKill:
			i := nm.rng.IntN(n)
			if l := nm.c.leader(); l >= 0 && nm.rng.IntN(2) == 0 {
				i = l
			}
			if !nm.locks.tryLock(i) {
				continue
			}
			nm.note(at, kind, "kill -9 "+name(i))
			nm.c.kill(i)
			pace(hold)
			if err := nm.c.start(i); err != nil {
				nm.logf("nemesis: restart %s: %v", name(i), err)
			}
			nm.locks.unlock(i)
			nm.note(time.Since(start), "heal", "restarted "+name(i))
		case NemesisPause:
			i := nm.rng.IntN(n)
			if l := nm.c.leader(); l >= 0 && nm.rng.IntN(2) == 0 {
				i = l
			}
			if !nm.locks.tryLock(i) {
				continue
			}
			nm.note(at, kind, "SIGSTOP "+name(i))
			nm.c.pause(i, true)
			pace(hold)
			nm.c.pause(i, false)
			nm.locks.unlock(i)
			nm.note(time.Since(start), "heal", "SIGCONT "+name(i))
		case NemesisPartition:
			cuts, what := nm.pickPartition()
			nm.note(at, kind, what)
			for _, e := range cuts {
				nm.c.cut(e[0], e[1], true)
			}
			pace(hold)
			for _, e := range cuts {
				nm.c.cut(e[0], e[1], false)
			}
			nm.note(time.Since(start), "heal", "partition healed")
		case NemesisDisk:
			i := nm.pickMember()
			if !nm.locks.tryLock(i) {
				continue
			}
			took, err := nm.c.fillDisk(i, true)
			if err != nil {
				nm.logf("nemesis: fill %s's disk: %v", name(i), err)
			}
			nm.note(at, kind, fmt.Sprintf("filled %s's file system (%d MiB filler)", name(i), took>>20))
			pace(hold)
			if _, err := nm.c.fillDisk(i, false); err != nil {
				nm.violation(fmt.Sprintf("could not free %s's disk: %v", name(i), err))
			}
			nm.locks.unlock(i)
			nm.note(time.Since(start), "heal", "space returned to "+name(i))
			nm.awaitCatchUp(ctx, i, 20*election)
		case NemesisClock:
			i := nm.pickMember()
			if !nm.locks.tryLock(i) {
				continue
			}
			rate := clockRates[nm.rng.IntN(len(clockRates))]
			if err := nm.c.setClockRate(i, rate); err != nil {
				nm.logf("nemesis: %v", err)
			}
			nm.note(at, kind, fmt.Sprintf("%s's clock runs at %.2f× (ticks every %v)", name(i), rate, time.Duration(float64(election/10)/rate).Round(time.Millisecond)))
			pace(2 * hold)
			if err := nm.c.setClockRate(i, 1); err != nil {
				nm.logf("nemesis: %v", err)
			}
			nm.locks.unlock(i)
			nm.note(time.Since(start), "heal", name(i)+"'s clock at 1×")
		}
	}
}

// awaitCatchUp waits, up to within, until member i has applied what the
// leader had committed when i's fault healed; otherwise it is a violation
// (after space returns, a member must catch up).
func (nm *nemesis) awaitCatchUp(ctx context.Context, i int, within time.Duration) {
	addrs := nm.c.statusAddrs()
	deadline := time.Now().Add(within)
	var target uint64
	poll := time.NewTicker(50 * time.Millisecond)
	defer poll.Stop()
	for {
		if target == 0 {
			if l := leaderOf(addrs); l >= 0 {
				if st, err := memberStatus(addrs[l]); err == nil {
					target = st.Commit
				}
			}
		}
		if target != 0 {
			if st, err := memberStatus(addrs[i]); err == nil && st.Applied >= target {
				return
			}
		}
		if time.Now().After(deadline) {
			what := "no leader was found"
			if target != 0 {
				what = fmt.Sprintf("it had not applied index %d (the leader's commit when space returned)", target)
			}
			nm.violation(fmt.Sprintf("%s did not catch up within %v after its disk had space again: %s", name(i), within, what))
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-poll.C:
		}
	}
}

// pickPartition chooses a partition and returns the directions to cut.
func (nm *nemesis) pickPartition() ([][2]int, string) {
	n := nm.c.size()
	both := func(a, b []int) [][2]int {
		var out [][2]int
		for _, x := range a {
			for _, y := range b {
				out = append(out, [2]int{x, y}, [2]int{y, x})
			}
		}
		return out
	}
	perm := nm.rng.Perm(n)
	switch nm.rng.IntN(4) {
	case 0: // isolate the leader (or anyone)
		i := nm.c.leader()
		if i < 0 {
			i = perm[0]
		}
		var rest []int
		for j := range n {
			if j != i {
				rest = append(rest, j)
			}
		}
		return both([]int{i}, rest), "isolate " + name(i)
	case 1: // majority / minority
		k := n / 2
		minority, majority := perm[:k], perm[k:]
		return both(minority, majority), "split " + names(minority) + " | " + names(majority)
	case 2: // a bridge: two halves that both see one member
		if n < 3 {
			return both(perm[:1], perm[1:]), "isolate " + name(perm[0])
		}
		bridge := perm[0]
		rest := perm[1:]
		a, b := rest[:len(rest)/2], rest[len(rest)/2:]
		return both(a, b), "bridge " + name(bridge) + " between " + names(a) + " and " + names(b)
	default: // one-way loss: one member hears nothing from the others
		i := perm[0]
		var cuts [][2]int
		for j := range n {
			if j != i {
				cuts = append(cuts, [2]int{j, i})
			}
		}
		return cuts, "one-way: " + name(i) + " hears no one (its own messages still go out)"
	}
}

func names(ids []int) string {
	s := make([]string, len(ids))
	for i, id := range ids {
		s[i] = name(id)
	}
	sort.Strings(s)
	return strings.Join(s, ",")
}

func (nm *nemesis) violationsFound() []string {
	nm.mu.Lock()
	defer nm.mu.Unlock()
	return append([]string(nil), nm.violations...)
}

func (nm *nemesis) summary() (map[string]int, []string) {
	nm.mu.Lock()
	defer nm.mu.Unlock()
	c := map[string]int{}
	for k, v := range nm.counts {
		c[k] = v
	}
	return c, append([]string(nil), nm.schedule...)
}

// absorb adds another nemesis's counts, schedule and violations to nm's
// (the change schedule's, once both have stopped).
func (nm *nemesis) absorb(o *nemesis) {
	o.mu.Lock()
	defer o.mu.Unlock()
	nm.mu.Lock()
	defer nm.mu.Unlock()
	for k, v := range o.counts {
		nm.counts[k] += v
	}
	nm.schedule = append(nm.schedule, o.schedule...)
	sort.SliceStable(nm.schedule, func(a, b int) bool { return nm.schedule[a] < nm.schedule[b] })
	nm.violations = append(nm.violations, o.violations...)
}

// memberLocks marks members a nemesis is working on.
type memberLocks struct {
	mu   sync.Mutex
	held map[int]bool
}

func (l *memberLocks) tryLock(i int) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.held == nil {
		l.held = map[int]bool{}
	}
	if l.held[i] {
		return false
	}
	l.held[i] = true
	return true
}

func (l *memberLocks) unlock(i int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.held, i)
}
