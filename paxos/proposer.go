package paxos

import (
	"slices"

	"github.com/ballotdb/ballot/consensus"
)

// maxResendSlots bounds the slots resent to one acceptor per heartbeat.
const maxResendSlots = 64

// peer is the leader's view of one member.
type peer struct {
	// decided is the member's decided prefix, as it last reported it.
	decided uint64
	// sent is the last slot sent to it in a Decide; the next batch goes
	// once it reports having decided that far.
	sent uint64
	// snapWait counts heartbeats until a snapshot may be sent again (see
	// snapResendHeartbeats).
	snapWait int
	// reported: decided is what the member said, not the leader's guess
	// (a new peer starts at the leader's decided prefix until it answers).
	reported bool
}

// pendingRead is a ReadIndex request awaiting confirmation of the ballot.
type pendingRead struct {
	ctx   []byte
	index uint64           // the highest slot proposed when the read arrived
	seq   uint64           // heartbeat round that must be acknowledged
	from  consensus.NodeID // who asked (this node, or a follower)
}

// Proposer is the role that picks ballots, runs phase 1 once for all slots
// from its first undecided one, and then, as the distinguished proposer
// (leader), phase 2 for slot after slot.
type Proposer struct {
	ballot   Ballot
	transfer []byte // Context of our Prepares (campaignTransfer or nil)

	// Phase 1.
	start    uint64                    // first slot phase 1 covers
	promised map[consensus.NodeID]bool // acceptors whose every page arrived
	pageFrom map[consensus.NodeID]uint64
	// recovered is, per slot, the value accepted in the highest ballot that
	// any promise reported; recoveredMax the highest such slot.
	recovered    map[uint64]consensus.Entry
	recoveredMax uint64
	// decidedReported is the highest decided prefix any promise reported:
	// nothing at or below it may be proposed before it is learned.
	decidedReported uint64

	// Phase 2 (leader).
	next uint64 // next slot to propose
	// proposals are the values proposed in this ballot and not yet known
	// decided: the slots from the decided prefix up to next.
	proposals slotRing[consensus.Entry]
	// sent holds the runs of slots Accepts carried, which the messages
	// to every voter share: appended to, never written over (a full
	// array is replaced, not reused), so a message never changes once
	// handed out.
	sent []consensus.Entry
	// open is the last run of Accepts maybePropose sent, while its
	// messages still wait in n.msgs.
	open openAccepts
	// confSlot is the slot of the last conf change proposed; while it is
	// undecided nothing after it is proposed (alpha = 1).
	confSlot uint64
	// queue[queueHead:] are the proposals waiting for a slot, oldest first.
	queue     []consensus.Entry
	queueHead int
	peers     map[consensus.NodeID]*peer
	active    map[consensus.NodeID]bool // heard from since the last quorum check

	// Reads.
	readSeq uint64
	acks    map[consensus.NodeID]uint64 // highest heartbeat round acknowledged
	reads   []pendingRead
}

func (p *Proposer) reset(b Ballot) {
	*p = Proposer{ballot: b, promised: map[consensus.NodeID]bool{}, pageFrom: map[consensus.NodeID]uint64{},
		recovered: map[uint64]consensus.Entry{}}
}

// queued is how many proposals wait for a slot.
func (p *Proposer) queued() int { return len(p.queue) - p.queueHead }

// enqueue adds a proposal to the queue, reusing the queue's buffer.
func (p *Proposer) enqueue(e consensus.Entry) {
	if p.queueHead > 0 && len(p.queue) == cap(p.queue) {
		k := copy(p.queue, p.queue[p.queueHead:])
		clear(p.queue[k:])
		p.queue, p.queueHead = p.queue[:k], 0
	}
	p.queue = append(p.queue, e)
}

// dequeue takes the oldest queued proposal.
func (p *Proposer) dequeue() consensus.Entry {
	e := p.queue[p.queueHead]
	p.queue[p.queueHead] = consensus.Entry{}
	p.queueHead++
	if p.queueHead == len(p.queue) {
		p.queue, p.queueHead = p.queue[:0], 0
	}
	return e
}

// quorum reports whether the voters of cs in ok number at least q.
func quorum(cs consensus.ConfState, q int, ok func(consensus.NodeID) bool) bool {
	c := 0
	for _, id := range cs.Voters {
		if ok(id) {
			c++
		}
	}
	return c >= q
}

// prepared reports whether phase 1 covers the current configuration: a
// phase-1 quorum of it promised (this node among them) and every slot a
// promise reported decided is learned.
func (p *Proposer) prepared(n *Node) bool {
	cs := n.conf()
	q1, _ := n.cfg.quorums(len(cs.Voters))
	return p.promised[n.id] && quorum(cs, q1, func(id consensus.NodeID) bool { return p.promised[id] }) &&
		n.log.commit >= p.decidedReported
}

// ensurePrepared sends Prepare to the voters of the current configuration
// that have not finished promising: all of them when resend, else only
// those never asked.
func (p *Proposer) ensurePrepared(n *Node, resend bool) {
	for _, id := range n.conf().Voters {
		if p.promised[id] {
			continue
		}
		from, asked := p.pageFrom[id]
		if asked && !resend {
			continue
		}
		if !asked {
			from = n.log.commit + 1
			p.pageFrom[id] = from
		}
		n.send(consensus.Message{Type: consensus.MsgPrepare, To: id, Epoch: uint64(p.ballot), Index: from, Context: p.transfer})
	}
}

// onPromise takes one page of a promise.
func (p *Proposer) onPromise(n *Node, m consensus.Message) {
	if Ballot(m.Epoch) != p.ballot || p.ballot == 0 || p.promised[m.From] ||
		(n.role != consensus.Candidate && n.role != consensus.Leader) {
		return
	}
	p.decidedReported = max(p.decidedReported, m.Commit)
	old := n.log.commit
	for _, e := range m.Entries {
		if e.Index <= m.Commit {
			n.log.learn(e) // decided at that acceptor: its entry is the value
			continue
		}
		if n.knobs.IgnoreAcceptedValues {
			continue // broken on purpose
		}
		if cur, ok := p.recovered[e.Index]; !ok || e.Epoch > cur.Epoch {
			p.recovered[e.Index] = e
		}
		p.recoveredMax = max(p.recoveredMax, e.Index)
	}
	p.pageFrom[m.From] = max(p.pageFrom[m.From], m.LogEpoch+1)
	if m.LogEpoch >= m.RejectHint {
		p.promised[m.From] = true
	} else {
		n.send(consensus.Message{Type: consensus.MsgPrepare, To: m.From, Epoch: uint64(p.ballot), Index: m.LogEpoch + 1, Context: p.transfer})
	}
	n.learned(old)
	if n.role == consensus.Candidate {
		p.checkPhase1(n)
	} else if n.role == consensus.Leader {
		p.maybePropose(n)
	}
}

// checkPhase1 makes a candidate leader once phase 1 is complete.
func (p *Proposer) checkPhase1(n *Node) {
	if n.role == consensus.Candidate && p.prepared(n) {
		n.becomeLeader()
	}
}

// onNack: a member promised a higher ballot. A leader steps down (the
// higher ballot's proposer, or the next timeout, takes over, above the
// round seen here); a candidate waits for its timeout, to give the higher
// ballot a chance. A learner's refusal counts too: a member that promised
// higher (a voter demoted while it campaigned, say) learns nothing from
// this ballot, and only a higher one can reach it.
func (p *Proposer) onNack(n *Node, m consensus.Message) {
	b := Ballot(m.Epoch)
	n.observe(b)
	if b > p.ballot && n.role == consensus.Leader && n.conf().IsMember(m.From) {
		n.becomeFollower(consensus.None)
	}
}

// maybePropose assigns slots to recovered values, holes and queued
// proposals, and sends the Accepts.
func (p *Proposer) maybePropose(n *Node) {
	if n.role != consensus.Leader {
		return
	}
	if !p.prepared(n) {
		// The configuration changed: extend phase 1 to its voters.
		p.ensurePrepared(n, false)
		return
	}
	l := n.log
	start := len(p.sent)
	for {
		if p.next <= l.commit {
			p.next = l.commit + 1
		}
		s := p.next
		if s > l.commit+uint64(n.cfg.MaxInflightSlots) || (p.confSlot > l.commit) || p.decidedReported >= s {
			break
		}
		var e consensus.Entry
		switch {
		case s <= p.recoveredMax:
			if r, ok := p.recovered[s]; ok {
				e = r // the value that may have been chosen
			} else {
				e = consensus.Entry{Type: consensus.EntryNoop} // a hole
			}
		case p.queued() > 0:
			e = p.dequeue()
		default:
			s = 0
		}
		if s == 0 {
			break
		}
		e.Index, e.Epoch = s, uint64(p.ballot)
		*p.proposals.push(s) = e
		n.lrn.track(s)
		if e.Type == consensus.EntryConfChange {
			p.confSlot = s
		}
		p.next++
		if len(p.sent) == cap(p.sent) {
			// A new array: messages hold slices of the old one.
			fresh := p.sent[start:]
			p.sent = make([]consensus.Entry, len(fresh), max(acceptArenaSlots, 2*len(fresh)))
			copy(p.sent, fresh)
			start = 0
		}
		p.sent = append(p.sent, e)
	}
	if start < len(p.sent) {
		p.acceptRun(n, start)
	}
}

// openAccepts are the Accepts of the last run of proposals, one per voter,
// not yet handed out in a Ready. Proposals that follow before the Ready
// extend them (in place, to the same shared run) rather than add a message
// per voter per proposal, so a Ready carries one Accept per voter for all
// the slots proposed since the last one.
type openAccepts struct {
	gen      uint64             // Node.msgsGen of the messages
	base     *consensus.Entry   // the array of Proposer.sent they share
	voters   []consensus.NodeID // to whom, in order
	at       []int              // their positions in n.msgs
	lo, hi   int                // they carry sent[lo:hi]
	bytes    uint64             // entry bytes of sent[lo:hi]
	lastSlot uint64
}

// acceptRun sends the Accepts for the slots proposed in sent[start:],
// extending the open Accepts when they are the run just before and there
// is room under MaxSizePerMsg.
func (p *Proposer) acceptRun(n *Node, start int) {
	fresh := p.sent[start:]
	var size uint64
	for i := range fresh {
		size += fresh[i].Size()
	}
	voters := n.conf().Voters
	o := &p.open
	if o.gen == n.msgsGen && o.base == &p.sent[0] && o.hi == start && o.lastSlot+1 == fresh[0].Index &&
		o.bytes+size <= n.cfg.MaxSizePerMsg && slices.Equal(o.voters, voters) {
		o.hi, o.bytes, o.lastSlot = len(p.sent), o.bytes+size, fresh[len(fresh)-1].Index
		for _, k := range o.at {
			n.msgs[k].Entries = p.sent[o.lo:o.hi:o.hi]
		}
		return
	}
	run := p.sent[start:len(p.sent):len(p.sent)]
	for _, id := range voters {
		p.sendAccepts(n, id, run)
	}
	*o = openAccepts{voters: o.voters[:0], at: o.at[:0]}
	if size > n.cfg.MaxSizePerMsg {
		return // split over several messages per voter: leave them be
	}
	o.gen, o.base, o.lo, o.hi, o.bytes, o.lastSlot = n.msgsGen, &p.sent[0], start, len(p.sent), size, fresh[len(fresh)-1].Index
	o.voters = append(o.voters, voters...)
	for k := len(n.msgs) - len(voters); k < len(n.msgs); k++ {
		o.at = append(o.at, k)
	}
}

// acceptArenaSlots is how many proposed slots one array of Proposer.sent
// holds: one allocation per that many proposals.
const acceptArenaSlots = 256

// sendAccepts sends ents (consecutive slots) to one acceptor, as many
// Accepts as MaxSizePerMsg asks for. The messages share ents: the caller
// hands it over.
func (p *Proposer) sendAccepts(n *Node, to consensus.NodeID, ents []consensus.Entry) {
	for len(ents) > 0 {
		k, size := 0, uint64(0)
		for k < len(ents) && (k == 0 || size+ents[k].Size() <= n.cfg.MaxSizePerMsg) {
			size += ents[k].Size()
			k++
		}
		n.send(consensus.Message{Type: consensus.MsgAccept, To: to, Epoch: uint64(p.ballot), Index: ents[0].Index,
			Commit: n.log.commit, Entries: ents[:k:k]})
		ents = ents[k:]
	}
}

// decided drops what the decided prefix now covers.
func (p *Proposer) decided(n *Node) {
	p.proposals.dropThrough(n.log.commit)
	n.lrn.forget(n.log.commit)
}

// heartbeat is the leader's periodic work: Decide to every member (which
// carries catch-up and confirms reads), Accepts again for slots an acceptor
// has not acknowledged, and Prepares again to voters not yet promised.
func (p *Proposer) heartbeat(n *Node) {
	for _, pr := range p.peers {
		if pr.snapWait > 0 {
			pr.snapWait--
		}
	}
	p.broadcastDecide(n, decideResend)
	if !p.prepared(n) {
		p.ensurePrepared(n, true)
	}
	for _, id := range n.conf().Voters {
		if id == n.id {
			continue
		}
		// Resend from the first slot it has not acknowledged, a bounded run.
		var run []consensus.Entry
		for s := n.log.commit + 1; s < p.next && len(run) < maxResendSlots; s++ {
			if len(run) == 0 && n.lrn.has(s, id) {
				continue
			}
			e := p.proposals.at(s)
			if e == nil || e.Index != s {
				break
			}
			run = append(run, *e)
		}
		if len(run) > 0 {
			p.sendAccepts(n, id, run)
		}
	}
}

// decideMode says which decided slots a Decide carries.
type decideMode int

const (
	// decideResend: every decided slot the member has not reported, from
	// its decided prefix on (heartbeats, a new leader, catch-up batches).
	decideResend decideMode = iota
	// decideNew: only slots not yet sent to the member, for a member
	// within a window of the leader; a Decide goes out even if empty (it
	// carries a read round).
	decideNew
	// decideNewOnly: as decideNew, but no message when there is nothing
	// new (the leader just learned slots).
	decideNewOnly
)

// snapResendHeartbeats, times ElectionTick, is how many heartbeats a
// snapshot sent to a member has to arrive before the leader sends it again
// (a failed transfer, reported by ReportSnapshot, is sent again at the
// next heartbeat). A large snapshot takes a while: sending it again every
// few moments would start a new transfer each time and none would finish.
const snapResendHeartbeats = 5

// broadcastDecide sends every member but this node a Decide.
func (p *Proposer) broadcastDecide(n *Node, mode decideMode) {
	for _, id := range n.conf().Members() {
		if id != n.id {
			p.sendDecide(n, id, mode)
		}
	}
}

// sendDecide sends one member the decided slots it lacks (or the snapshot,
// when they are compacted), with the leader's decided prefix and the current
// read round. The slots travel in the log's own array: decided slots are
// never written again.
//
// Each decided slot goes to a member once as it is decided (decideNew),
// rather than again with every later decision: that resending made the
// leader's work per decision grow with the member's lag. A lost Decide is
// made good by the next heartbeat (decideResend), which starts from what
// the member reported.
func (p *Proposer) sendDecide(n *Node, to consensus.NodeID, mode decideMode) {
	pr := p.peers[to]
	if pr == nil {
		pr = &peer{decided: n.log.commit}
		p.peers[to] = pr
	}
	l := n.log
	m := consensus.Message{Type: consensus.MsgDecide, To: to, Epoch: uint64(p.ballot), Commit: l.commit, LogEpoch: p.readSeq}
	from := pr.decided + 1
	if mode != decideResend && pr.sent >= from {
		if pr.sent-pr.decided > uint64(2*n.cfg.MaxInflightSlots) {
			// A catch-up batch is out: the next goes when it is answered.
			from = l.commit + 1
		} else {
			from = pr.sent + 1
		}
	}
	switch {
	case pr.decided >= l.commit:
	case pr.decided < l.snap.Index:
		if mode == decideResend && pr.snapWait <= 0 {
			// Once, then again only after snapResendHeartbeats (counted
			// by heartbeat) or a failed transfer (ReportSnapshot).
			pr.snapWait = snapResendHeartbeats * n.cfg.ElectionTick
			n.send(consensus.Message{Type: consensus.MsgSnap, To: to, Epoch: uint64(p.ballot),
				Snapshot: &consensus.Snapshot{Meta: l.snap}})
		}
	case from <= l.commit:
		m.Index = from
		m.Entries = l.decidedRun(from, n.cfg.MaxSizePerMsg)
		pr.sent = m.Entries[len(m.Entries)-1].Index
	}
	if mode == decideNewOnly && len(m.Entries) == 0 {
		return
	}
	n.send(m)
}

// onDecideResp takes a member's answer to a Decide: its decided prefix, the
// read round it confirms, or a rejection because it promised higher.
func (p *Proposer) onDecideResp(n *Node, m consensus.Message) {
	if m.Reject {
		p.onNack(n, m)
		return
	}
	if n.role != consensus.Leader || Ballot(m.Epoch) != p.ballot {
		return
	}
	p.active[m.From] = true
	pr := p.peers[m.From]
	if pr == nil {
		pr = &peer{}
		p.peers[m.From] = pr
	}
	pr.decided, pr.reported = m.Index, true
	if m.Index >= n.log.snap.Index {
		pr.snapWait = 0
	}
	if m.LogEpoch > p.acks[m.From] {
		p.acks[m.From] = m.LogEpoch
		p.checkReads(n)
	}
	if m.Index < n.log.commit && m.Index >= pr.sent && m.Index >= n.log.snap.Index {
		// The last batch arrived: send the next one now rather than at
		// the next heartbeat. Not to a member that needs the snapshot:
		// it answers every Decide while the snapshot travels, and each
		// answer would bring another Decide, without end.
		p.sendDecide(n, m.From, decideResend)
	}
}

// ---- reads ----

// readIndex registers a read from (this node or a follower) and starts a
// heartbeat round to confirm the ballot.
func (p *Proposer) readIndex(n *Node, ctx []byte, from consensus.NodeID) error {
	if !p.prepared(n) {
		return consensus.ErrProposalDropped
	}
	if len(p.reads) >= n.cfg.MaxPendingReadIndex {
		return consensus.ErrProposalDropped
	}
	p.readSeq++
	p.reads = append(p.reads, pendingRead{ctx: ctx, index: max(p.next-1, p.recoveredMax, n.log.commit), seq: p.readSeq, from: from})
	p.broadcastDecide(n, decideNew)
	p.checkReads(n)
	return nil
}

// checkReads releases the reads whose heartbeat round a phase-2 quorum
// acknowledged without having promised a higher ballot.
func (p *Proposer) checkReads(n *Node) {
	cs := n.conf()
	_, q2 := n.cfg.quorums(len(cs.Voters))
	k := 0
	for ; k < len(p.reads); k++ {
		r := p.reads[k]
		if !quorum(cs, q2, func(id consensus.NodeID) bool { return id == n.id || p.acks[id] >= r.seq }) {
			break
		}
		if r.from == n.id {
			n.readStates = append(n.readStates, consensus.ReadState{Index: r.index, RequestCtx: r.ctx})
		} else {
			n.send(consensus.Message{Type: consensus.MsgReadIndexResp, To: r.from, Epoch: uint64(p.ballot), Index: r.index, Context: r.ctx})
		}
	}
	p.reads = p.reads[k:]
}
