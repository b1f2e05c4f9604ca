package node

import (
	"sync"
	"sync/atomic"

	"github.com/ballotdb/ballot/consensus"
)

// A proposal's life: queued (in propc, not yet seen by the engine
// goroutine), proposed (handed to the engine at least once), then settled
// by exactly one of: applied locally (result delivered), refused by the
// engine on the first try, abandoned by its caller, or failed by Stop.
const (
	propQueued int32 = iota
	propProposed
	propAbandoned
)

type propKind uint8

const (
	propNormal propKind = iota
	propConf
)

type result struct {
	val []byte
	err error
}

type proposal struct {
	seq   uint64
	kind  propKind
	data  []byte               // propNormal: the envelope
	cc    consensus.ConfChange // propConf
	state atomic.Int32
	done  chan result // capacity 1: settled once

	// leaderTerm, when set, makes this a leader-only proposal: taken only
	// by the leader of that term, never forwarded or sent again.
	leaderTerm uint64

	// Owned by the engine goroutine.
	triedTick uint64
	triedTerm uint64
}

// proposals is the table of this incarnation's unsettled proposals, keyed by
// seq. It is shared by the callers (add, abandon), the engine goroutine
// (retries, first-try refusals) and the apply goroutine (results).
type proposals struct {
	mu    sync.Mutex
	max   int
	m     map[uint64]*proposal
	order []uint64 // seqs in creation order; settled ones are skipped lazily
	next  uint64
	obs   Observer // told each proposal's outcome
}

func newProposals(max int, obs Observer) *proposals {
	return &proposals{max: max, m: map[uint64]*proposal{}, obs: obs}
}

// add registers a new proposal; build receives its seq and the floor (the
// smallest unsettled seq, its own included). It fails with ErrBusy when
// max proposals are unsettled.
func (ps *proposals) add(kind propKind, build func(p *proposal, floor uint64)) (*proposal, error) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if len(ps.m) >= ps.max {
		ps.obs.ProposalDone(ErrBusy)
		return nil, ErrBusy
	}
	ps.next++
	p := &proposal{seq: ps.next, kind: kind, done: make(chan result, 1)}
	ps.m[p.seq] = p
	ps.order = append(ps.order, p.seq)
	for ps.m[ps.order[0]] == nil {
		ps.order = ps.order[1:]
	}
	build(p, ps.order[0])
	return p, nil
}

// settle removes seq and delivers res to its waiter, if still unsettled.
func (ps *proposals) settle(seq uint64, res result) {
	ps.mu.Lock()
	p := ps.m[seq]
	delete(ps.m, seq)
	ps.mu.Unlock()
	if p != nil {
		p.done <- res
		ps.obs.ProposalDone(res.err)
	}
}

// forget removes seq without delivering anything (its caller gave up).
func (ps *proposals) forget(seq uint64) {
	ps.mu.Lock()
	_, ok := ps.m[seq]
	delete(ps.m, seq)
	ps.mu.Unlock()
	if ok {
		ps.obs.ProposalDone(ErrAbandoned)
	}
}

// each calls fn for every unsettled proposal, under the lock.
func (ps *proposals) each(fn func(p *proposal)) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	for _, p := range ps.m {
		fn(p)
	}
}

// failAll settles every proposal with err.
func (ps *proposals) failAll(err error) {
	ps.mu.Lock()
	all := ps.m
	ps.m = map[uint64]*proposal{}
	ps.order = nil
	ps.mu.Unlock()
	for _, p := range all {
		p.done <- result{err: err}
		ps.obs.ProposalDone(err)
	}
}

// len returns the number of unsettled proposals.
func (ps *proposals) len() int {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	return len(ps.m)
}

// proposed returns the number of unsettled proposals the engine has taken.
func (ps *proposals) proposed() int {
	k := 0
	ps.each(func(p *proposal) {
		if p.state.Load() == propProposed {
			k++
		}
	})
	return k
}
