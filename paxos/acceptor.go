package paxos

import (
	"bytes"
	"slices"

	"github.com/ballotdb/ballot/consensus"
)

// Acceptor is the voting role. Its promise is the HardState's Epoch and its
// acceptances are the log's entries; both reach stable storage in the same
// Ready as its replies, so neither is ever answered before it is durable.
type Acceptor struct {
	// promised is the highest ballot promised. Invariant: it never
	// decreases, across restarts too.
	promised Ballot
}

// onPrepare answers phase 1a: a promise (a page of what this acceptor
// accepted from the requested slot on, and its decided prefix), or a Nack.
func (a *Acceptor) onPrepare(n *Node, m consensus.Message) {
	b := Ballot(m.Epoch)
	n.observe(b)
	if b < a.promised {
		n.send(consensus.Message{Type: consensus.MsgNack, To: m.From, Epoch: uint64(a.promised)})
		return
	}
	if b > a.promised {
		// Leader stickiness: while this acceptor hears from a leader it
		// ignores other proposers (ignoring is always safe), unless the
		// leader itself handed over.
		sticky := n.leader != consensus.None && n.leader != m.From && n.electionElapsed < n.cfg.ElectionTick
		if m.From != n.id && sticky && !bytes.Equal(m.Context, campaignTransfer) {
			return
		}
		a.promised = b
		if n.role != consensus.Follower || n.leader != consensus.None {
			n.becomeFollower(consensus.None)
		}
	}
	a.sendPromise(n, m.From, b, m.Index)
}

// sendPromise sends one page of the promise for ballot b, from slot from.
func (a *Acceptor) sendPromise(n *Node, to consensus.NodeID, b Ballot, from uint64) {
	l := n.log
	commit := l.commit
	start := max(from, l.snap.Index+1)
	if from <= l.snap.Index && l.snap.Index > 0 {
		if n.knobs.OmitDecidedThrough {
			commit = 0
		} else {
			// The proposer's first undecided slot is compacted here: the
			// slots up to our snapshot are decided, and it needs their
			// values before proposing anything.
			n.send(consensus.Message{Type: consensus.MsgSnap, To: to, Epoch: uint64(b),
				Snapshot: &consensus.Snapshot{Meta: l.snap}})
		}
	}
	last := l.lastIndex()
	var ents []consensus.Entry
	var size uint64
	i := start
	for ; i <= last; i++ {
		e, ok := l.accepted(i)
		if !ok {
			continue
		}
		if len(ents) > 0 && size+e.Size() > n.cfg.MaxSizePerMsg {
			break
		}
		size += e.Size()
		ents = append(ents, e)
	}
	// The page covers [start, i-1]; RejectHint is where the log ends, so the
	// proposer knows whether to ask for the next page.
	n.send(consensus.Message{Type: consensus.MsgPromise, To: to, Epoch: uint64(b),
		Index: start, LogEpoch: max(i, start) - 1, RejectHint: last, Commit: commit, Entries: ents})
}

// onAccept answers phase 2a: the slots are written (never dropping any
// other slot) and acknowledged, unless a higher ballot was promised.
func (a *Acceptor) onAccept(n *Node, m consensus.Message) {
	b := Ballot(m.Epoch)
	n.observe(b)
	if b < a.promised {
		n.send(consensus.Message{Type: consensus.MsgNack, To: m.From, Epoch: uint64(a.promised)})
		return
	}
	a.promised = b
	n.followLeader(b, m.From)
	if len(m.Entries) == 0 {
		return
	}
	l := n.log
	first, last := m.Entries[0].Index, m.Entries[len(m.Entries)-1].Index
	if first > l.lastIndex()+uint64(2*n.cfg.MaxInflightSlots) {
		// Too far ahead: this acceptor must first catch up with the
		// decided prefix (a snapshot) rather than fill a long gap.
		return
	}
	for _, e := range m.Entries {
		if e.Index <= l.commit {
			continue // decided here already, with the same value
		}
		l.write(e)
	}
	if n.knobs.TruncateSuffixOnAccept && last < l.lastIndex() && last >= l.commit && last >= l.snap.Index {
		// Broken on purpose: drop what was accepted after these slots.
		l.ents = l.ents[:last-l.snap.Index]
		l.dirty = slices.DeleteFunc(l.dirty, func(i uint64) bool { return i > last })
		for i := range l.decided {
			if i > last {
				delete(l.decided, i)
			}
		}
		if !l.truncate || last < l.truncateAfter {
			l.truncateAfter = last
		}
		l.truncate = true
	}
	n.send(consensus.Message{Type: consensus.MsgAccepted, To: m.From, Epoch: uint64(b),
		Index: first, LogEpoch: last, Commit: l.commit})
}
