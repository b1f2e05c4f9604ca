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
)

// AllNemeses lists every nemesis the process rig knows.
var AllNemeses = []string{NemesisKill, NemesisPause, NemesisPartition}

// nemesis injects faults into a cluster on a seeded schedule, one at a
// time: apply, hold, heal, rest.
type nemesis struct {
	c     cluster
	kinds []string
	rng   *rand.Rand
	logf  func(string, ...any)

	mu       sync.Mutex
	counts   map[string]int
	schedule []string
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
			nm.note(at, kind, "kill -9 "+name(i))
			nm.c.kill(i)
			pace(hold)
			if err := nm.c.start(i); err != nil {
				nm.logf("nemesis: restart %s: %v", name(i), err)
			}
			nm.note(time.Since(start), "heal", "restarted "+name(i))
		case NemesisPause:
			i := nm.rng.IntN(n)
			if l := nm.c.leader(); l >= 0 && nm.rng.IntN(2) == 0 {
				i = l
			}
			nm.note(at, kind, "SIGSTOP "+name(i))
			nm.c.pause(i, true)
			pace(hold)
			nm.c.pause(i, false)
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

func (nm *nemesis) summary() (map[string]int, []string) {
	nm.mu.Lock()
	defer nm.mu.Unlock()
	c := map[string]int{}
	for k, v := range nm.counts {
		c[k] = v
	}
	return c, append([]string(nil), nm.schedule...)
}
