package node

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/ballotdb/ballot/consensus"
	"github.com/ballotdb/ballot/wal"
)

// loop is the engine goroutine's state. Everything here is owned by that
// one goroutine; other goroutines reach it only through the channels of
// Node (see the goroutine map in the package doc).
type loop struct {
	n   *Node
	eng consensus.Engine

	tick       uint64 // ticks since start
	lastTickAt time.Time

	// The outstanding Ready, if any: handed out by the engine, not yet
	// advanced. While it is outstanding the engine keeps ticking and
	// stepping, but produces no other Ready.
	rd    *consensus.Ready
	rdBuf consensus.Ready // where rd points, so a Ready costs no allocation
	// now and late are rd's messages that may leave at once and those sent
	// once rd is durable. Both buffers are reused from Ready to Ready: the
	// messages are copied in from rd.Messages (which the engine reuses
	// after Advance) and out again by the transport during Send.
	now          []consensus.Message
	late         []consensus.Message
	job          *persistJob // rd's durable part: persisting, or waiting to retry
	persisting   bool
	persistStart uint64 // tick the current attempt started
	retryAt      uint64 // tick of the next attempt after ENOSPC
	stallNext    uint64 // tick of the next fsync-stall hand-off
	durableHS    consensus.HardState
	carryHS      consensus.HardState // a commit-only HardState not yet written

	// Membership as applied. The engine changes its membership when told
	// (by Advance) that a conf-change entry is applied; advance stops at
	// each one to record the result, so that confAt(i) is exact for any
	// snapshot index i.
	confPending []consensus.Entry // handed to apply, engine not yet advanced past
	confHist    []confAt          // membership after each applied change, ascending
	confCur     consensus.ConfState

	// Snapshots.
	lastSnap    uint64   // index of the newest durable snapshot
	installed   uint64   // index of the newest snapshot installed from a leader
	snapWaiting *snapJob // taken, waiting for the outstanding Ready to finish

	// Reads: ReadBarriers that arrive together share one ReadIndex round
	// (readBatch); pendingReads wait for the next flush (see flushReads),
	// so every read's round starts after it arrived.
	reads        map[string]*readBatch
	pendingReads []*readReq
	readWaiting  int // reads in pendingReads and in reads' batches
	readSeq      uint64

	retryTicks        uint64 // a forwarded proposal or read unanswered this long is sent again
	stallTicks        uint64 // FsyncStallTimeout in ticks
	noSpaceRetryTicks uint64
}

type confAt struct {
	index uint64
	cs    consensus.ConfState
}

// readReq is one ReadBarrier waiting for its read index.
type readReq struct {
	done      chan result // the index, 8 bytes LE
	abandoned atomic.Bool
}

// readBatch is one ReadIndex round shared by the reads that arrived
// before it was issued.
type readBatch struct {
	rctx      []byte
	reqs      []*readReq
	triedTick uint64
	again     bool // the engine was not ready: try at the next tick
}

func ticksFor(d, tick time.Duration) uint64 {
	return max(1, uint64((d+tick-1)/tick))
}

func newLoop(n *Node, eng consensus.Engine, rec *recovered) *loop {
	cfg := n.cfg
	snapMeta := rec.initial.Snapshot
	l := &loop{
		n: n, eng: eng,
		durableHS:         rec.initial.HardState,
		confHist:          []confAt{{snapMeta.Index, snapMeta.ConfState.Clone()}},
		confCur:           snapMeta.ConfState.Clone(),
		lastSnap:          snapMeta.Index,
		installed:         snapMeta.Index,
		reads:             map[string]*readBatch{},
		retryTicks:        uint64(cfg.ElectionTicks),
		stallTicks:        ticksFor(cfg.FsyncStallTimeout, cfg.TickInterval),
		noSpaceRetryTicks: ticksFor(250*time.Millisecond, cfg.TickInterval),
	}
	return l
}

func (l *loop) run() {
	n := l.n
	ticker := n.cfg.Clock.NewTicker(n.cfg.TickInterval)
	defer ticker.Stop()
	defer l.shutdown()
	for {
		l.flushReads()
		l.maybeReady()
		select {
		case <-n.stopc:
			return
		case <-ticker.C():
			l.onTick()
		case m := <-n.recvc:
			l.step(m)
			for range 255 { // take what else arrived, bounded
				select {
				case m := <-n.recvc:
					l.step(m)
					continue
				default:
				}
				break
			}
		case p := <-n.propc:
			l.propose(p)
			for range 1023 {
				select {
				case p := <-n.propc:
					l.propose(p)
					continue
				default:
				}
				break
			}
		case fn := <-n.reqc:
			fn(l)
			for range 255 { // take what else arrived (reads batch up), bounded
				select {
				case fn := <-n.reqc:
					fn(l)
					continue
				default:
				}
				break
			}
		case j := <-n.persisted:
			l.onPersisted(j)
		case <-n.appliedNote:
			if l.rd == nil {
				l.advance(n.applied.Load())
			}
		case j := <-n.snapTaken:
			l.onSnapTaken(j)
		case j := <-n.snapSaved:
			l.onSnapSaved(j)
		case <-n.reports.note:
			unr, snaps := n.reports.take()
			for peer := range unr {
				l.eng.ReportUnreachable(peer)
			}
			for peer, ok := range snaps {
				l.eng.ReportSnapshot(peer, ok)
			}
		}
	}
}

// shutdown answers what only the engine goroutine knows about.
func (l *loop) shutdown() {
	err := l.n.stoppedErr()
	for _, b := range l.reads {
		for _, r := range b.reqs {
			r.done <- result{err: err}
		}
	}
	for _, r := range l.pendingReads {
		r.done <- result{err: err}
	}
	l.reads, l.pendingReads = nil, nil
}

func (l *loop) onTick() {
	n := l.n
	now := n.cfg.Clock.Now()
	if !l.lastTickAt.IsZero() {
		if gap := now.Sub(l.lastTickAt); gap > time.Duration(n.cfg.ElectionTicks)*n.cfg.TickInterval {
			// Reads are confirmed by a quorum round after they arrive
			// (ReadOnlySafe), never by a lease, so a pause cannot make
			// one stale; it is logged because it explains elections.
			n.log.Warn("process was paused longer than an election timeout", "gap", gap, "term", n.term.Load())
		}
	}
	l.lastTickAt = now
	l.tick++
	l.eng.Tick()
	l.refreshStatus()
	l.retryProposals()
	l.retryReads()
	if l.job != nil && !l.persisting && l.tick >= l.retryAt {
		l.startPersist()
	}
	l.checkStall()
}

func (l *loop) step(m consensus.Message) {
	if err := l.eng.Step(m); err != nil {
		l.n.log.Debug("step", "peer", m.From, "type", m.Type.String(), "err", err)
	}
}

// ---- Proposals ----

func (l *loop) propose(p *proposal) {
	if !p.state.CompareAndSwap(propQueued, propProposed) {
		return // abandoned while queued
	}
	p.triedTick, p.triedTerm = l.tick, l.n.term.Load()
	if p.leaderTerm != 0 {
		if st := l.eng.Status(); st.Role != consensus.Leader || st.Epoch != p.leaderTerm {
			l.n.props.settle(p.seq, result{err: &consensus.NotLeaderError{Leader: st.Leader}})
			return
		}
	}
	if err := l.eng.Propose(p.data); err != nil {
		l.n.props.settle(p.seq, result{err: proposeErr(err)})
	}
}

func proposeErr(err error) error {
	if errors.Is(err, consensus.ErrNotLeader) {
		return err // the *consensus.NotLeaderError with the hint
	}
	return fmt.Errorf("node: proposal refused: %w", err)
}

func (l *loop) proposeConf(p *proposal) {
	if !p.state.CompareAndSwap(propQueued, propProposed) {
		return
	}
	st := l.eng.Status()
	if st.Role != consensus.Leader {
		l.n.props.settle(p.seq, result{err: &consensus.NotLeaderError{Leader: st.Leader}})
		return
	}
	if err := l.eng.ProposeConfChange(p.cc); err != nil {
		l.n.props.settle(p.seq, result{err: fmt.Errorf("node: membership change refused: %w", err)})
	}
}

// retryProposals sends again the proposals that may have been lost: a
// follower's forward (lost on the way, or dropped by a leader that then
// lost its leadership). A leader's own proposal in its own term is in its
// log and needs no retry. Duplicates are harmless: the appliers skip them.
func (l *loop) retryProposals() {
	n := l.n
	lead, term := consensus.NodeID(n.lead.Load()), n.term.Load()
	if lead == consensus.None {
		return
	}
	var again []*proposal
	n.props.each(func(p *proposal) {
		if p.kind != propNormal || p.state.Load() != propProposed || p.leaderTerm != 0 {
			return
		}
		age := l.tick - p.triedTick
		switch {
		case n.cfg.knobs.retryEveryTick:
		case lead == n.id && p.triedTerm == term:
			return
		case p.triedTerm != term && age >= 1:
		case age >= 3*l.retryTicks:
		default:
			return
		}
		again = append(again, p)
	})
	slices.SortFunc(again, func(a, b *proposal) int { return cmp.Compare(a.seq, b.seq) })
	for _, p := range again {
		if err := l.eng.Propose(p.data); err != nil {
			return // no leader to forward to, or a transfer under way: next tick
		}
		p.triedTick, p.triedTerm = l.tick, term
	}
}

// ---- Reads ----

func (l *loop) startRead(r *readReq) {
	if l.readWaiting >= l.n.cfg.MaxPendingProposals {
		r.done <- result{err: ErrBusy}
		return
	}
	l.readWaiting++
	l.pendingReads = append(l.pendingReads, r)
}

// flushReads issues one ReadIndex round for every read that arrived since
// the last flush, once no round is in flight: reads that arrive during a
// round cannot use it (it started before them), so they gather and share
// the next one, as etcd's read loop does. One client sees one round; many
// see a round each at most every round trip, however many they are.
func (l *loop) flushReads() {
	if len(l.pendingReads) == 0 || len(l.reads) > 0 {
		return
	}
	l.readSeq++
	b := &readBatch{rctx: binary.LittleEndian.AppendUint64(nil, l.readSeq), reqs: l.pendingReads}
	l.pendingReads = nil
	l.reads[string(b.rctx)] = b
	l.issueRead(b)
}

func (l *loop) issueRead(b *readBatch) {
	b.triedTick, b.again = l.tick, false
	err := l.eng.ReadIndex(b.rctx)
	switch {
	case err == nil:
	case errors.Is(err, consensus.ErrNotLeader):
		l.finishRead(b, result{err: err})
	default:
		// A new leader that has not committed its no-op yet, or too
		// many reads pending in the engine: try again at the next tick.
		b.again = true
	}
}

// finishRead answers every read of a round.
func (l *loop) finishRead(b *readBatch, res result) {
	delete(l.reads, string(b.rctx))
	for _, r := range b.reqs {
		r.done <- res
	}
	l.readWaiting -= len(b.reqs)
}

func (l *loop) retryReads() {
	for k, b := range l.reads {
		live := b.reqs[:0]
		for _, r := range b.reqs {
			if r.abandoned.Load() {
				l.readWaiting--
				continue
			}
			live = append(live, r)
		}
		b.reqs = live
		switch {
		case len(b.reqs) == 0:
			delete(l.reads, k)
		case b.again || l.tick-b.triedTick >= l.retryTicks:
			l.issueRead(b)
		}
	}
}

func (l *loop) onReadState(rs consensus.ReadState) {
	b := l.reads[string(rs.RequestCtx)]
	if b == nil {
		return
	}
	l.finishRead(b, result{val: binary.LittleEndian.AppendUint64(nil, rs.Index)})
}

// ---- Ready ----

// earlySafe reports whether a message of type t may leave before the Ready
// that produced it is durable, provided the term and vote it was produced
// under are already durable. These messages promise nothing about this
// node's log: a leader's appends, heartbeats, snapshots and transfer orders
// (the engine counts the leader's own log only once Advance reports it
// durable), read answers, and requests forwarded to the leader. Votes and
// append acknowledgements are promises, and wait.
func earlySafe(t consensus.MessageType) bool {
	switch t {
	case consensus.MsgApp, consensus.MsgHeartbeat, consensus.MsgSnap, consensus.MsgTimeoutNow,
		consensus.MsgReadIndexResp, consensus.MsgProp, consensus.MsgReadIndex, consensus.MsgTransferLeader:
		return true
	}
	return false
}

func (l *loop) maybeReady() {
	n := l.n
	if l.rd != nil || len(n.applyc) == cap(n.applyc) || !l.eng.HasReady() {
		return
	}
	l.rdBuf = l.eng.Ready()
	rd := &l.rdBuf
	l.rd = rd
	early := rd.HardState.IsEmpty() || (rd.HardState.Epoch == l.durableHS.Epoch && rd.HardState.Vote == l.durableHS.Vote)
	l.now, l.late = l.now[:0], l.late[:0]
	for i := range rd.Messages {
		if m := &rd.Messages[i]; early && earlySafe(m.Type) {
			l.now = append(l.now, *m)
		} else {
			l.late = append(l.late, *m)
		}
	}
	l.send(l.now)
	clear(l.now) // drop the references to entries until the next Ready
	for _, rs := range rd.ReadStates {
		l.onReadState(rs)
	}
	if rd.Snapshot != nil {
		l.onInstall(rd.Snapshot)
	}
	if rd.Snapshot == nil && !rd.Truncate && len(rd.Entries) == 0 && !rd.MustSync {
		// Nothing that must be durable before the messages go: a
		// commit-only HardState rides along with the next write (on
		// restart the commit index is learned again from the leader).
		if !rd.HardState.IsEmpty() {
			l.carryHS = rd.HardState
		}
		l.finishReady()
		return
	}
	hs := rd.HardState
	if hs.IsEmpty() {
		hs = l.carryHS
	}
	l.carryHS = consensus.HardState{}
	l.job = &persistJob{snap: rd.Snapshot, batches: l.batches(rd, hs), hs: hs}
	l.startPersist()
}

// batches splits a Ready's durable part into WAL batches small enough for
// a segment.
func (l *loop) batches(rd *consensus.Ready, hs consensus.HardState) []wal.Batch {
	limit := uint64(l.segmentBytes() / 4)
	b := wal.Batch{Truncate: rd.Truncate, TruncateAfter: rd.TruncateAfter}
	if rd.Snapshot != nil {
		meta := rd.Snapshot.Meta
		b.Snapshot = &meta
	}
	out := []wal.Batch{b}
	// Each batch's entries are a sub-slice of rd.Entries, not a copy:
	// nothing writes to them (the engine never changes an entry it handed
	// out, and the persister and the WAL only read them).
	var size uint64
	start := 0
	for i := range rd.Entries {
		if s := rd.Entries[i].Size() + 16; size+s > limit && i > start {
			out[len(out)-1].Entries = rd.Entries[start:i:i]
			out = append(out, wal.Batch{})
			start, size = i, 0
		}
		size += rd.Entries[i].Size() + 16
	}
	if start < len(rd.Entries) {
		out[len(out)-1].Entries = rd.Entries[start:len(rd.Entries):len(rd.Entries)]
	}
	out[len(out)-1].HardState = hs
	return out
}

func (l *loop) segmentBytes() int64 {
	if l.n.cfg.WALSegmentBytes > 0 {
		return l.n.cfg.WALSegmentBytes
	}
	return wal.DefaultSegmentBytes
}

func (l *loop) startPersist() {
	l.persisting = true
	l.persistStart = l.tick
	l.stallNext = l.tick + l.stallTicks
	l.n.persist <- l.job // capacity 1, one job in flight
}

func (l *loop) onPersisted(j *persistJob) {
	n := l.n
	l.persisting = false
	if j.err != nil {
		if isNoSpace(j.err) {
			if n.diskFull.Load() == nil {
				n.log.Error("disk full: refusing new proposals until a write succeeds", "term", n.term.Load(), "err", j.err)
			}
			e := j.err
			n.diskFull.Store(&e)
			l.retryAt = l.tick + l.noSpaceRetryTicks
			return
		}
		l.fail(j.err)
		return
	}
	if n.diskFull.Load() != nil {
		n.diskFull.Store(nil)
		n.log.Info("disk writes succeed again: proposals resume", "term", n.term.Load())
	}
	if !j.hs.IsEmpty() {
		l.durableHS = j.hs
	}
	l.job = nil
	l.finishReady()
}

// fail stops the node after a storage failure it must not retry (an fsync
// error: the kernel may have dropped the dirty pages). Restart recovers
// from what is on disk.
func (l *loop) fail(err error) {
	l.n.log.Error("storage failure: stopping the node", "term", l.n.term.Load(), "err", err)
	l.n.signalStop(fmt.Errorf("node: storage failure: %w", err))
}

// finishReady completes the outstanding Ready once its durable part is on
// disk: send what had to wait, hand the committed entries to the apply
// goroutine, and advance the engine.
func (l *loop) finishReady() {
	n := l.n
	rd := l.rd
	l.send(l.late)
	clear(l.late)
	l.late = l.late[:0]
	if rd.Snapshot != nil || len(rd.Committed) > 0 {
		n.applyc <- applyTask{snap: rd.Snapshot, ents: rd.Committed} // room checked before Ready
	}
	for _, e := range rd.Committed {
		if e.Type == consensus.EntryConfChange {
			l.confPending = append(l.confPending, e)
		}
	}
	l.rd = nil
	l.rdBuf = consensus.Ready{} // drop the references; applyc and the job hold their own
	l.advance(n.applied.Load())
	l.refreshStatus()
	if j := l.snapWaiting; j != nil {
		l.snapWaiting = nil
		l.processSnap(j)
	}
}

// advance reports apply progress to the engine, stopping at each applied
// conf change to record the membership it produced. The first call hands
// back the outstanding Ready, if any: the caller makes sure it is done.
func (l *loop) advance(applied uint64) {
	for len(l.confPending) > 0 && l.confPending[0].Index <= applied {
		e := l.confPending[0]
		l.confPending = l.confPending[1:]
		l.eng.Advance(e.Index)
		before := l.confCur
		l.confCur = l.eng.Status().ConfState
		l.confHist = append(l.confHist, confAt{e.Index, l.confCur})
		if !sameConf(before, l.confCur) {
			l.n.obs.MembershipChanged(e.Index, l.confCur)
		}
		l.settleConf(e, before, l.confCur)
	}
	l.eng.Advance(applied)
}

// settleConf answers the caller of a membership change once applied.
func (l *loop) settleConf(e consensus.Entry, before, after consensus.ConfState) {
	n := l.n
	cc, err := consensus.UnmarshalConfChange(e.Data)
	if err != nil {
		return
	}
	env, ok := decodeConfContext(cc.Context)
	if !ok || env.origin != n.id || env.incarnation != n.incarnation {
		return
	}
	if sameConf(before, after) {
		n.props.settle(env.seq, result{err: fmt.Errorf("%w: committed at index %d (membership %s)",
			ErrConfUnchanged, e.Index, after)})
		return
	}
	n.props.settle(env.seq, result{})
}

func sameConf(a, b consensus.ConfState) bool {
	return slices.Equal(a.Voters, b.Voters) && slices.Equal(a.VotersOutgoing, b.VotersOutgoing) &&
		slices.Equal(a.Learners, b.Learners) && slices.Equal(a.LearnersNext, b.LearnersNext) && a.AutoLeave == b.AutoLeave
}

// confAt returns the membership as of index i.
func (l *loop) confAt(i uint64) consensus.ConfState {
	for k := len(l.confHist) - 1; k >= 0; k-- {
		if l.confHist[k].index <= i {
			return l.confHist[k].cs.Clone()
		}
	}
	panic(fmt.Sprintf("node %d: invariant: no membership recorded at or below index %d (oldest %d)", l.n.id, i, l.confHist[0].index))
}

// onInstall notes a snapshot from the leader that the engine has installed.
func (l *loop) onInstall(s *consensus.Snapshot) {
	n := l.n
	n.log.Info("installing snapshot from the leader", "index", s.Meta.Index, "term", s.Meta.Epoch, "bytes", len(s.Data))
	l.confPending = nil
	l.confCur = s.Meta.ConfState.Clone()
	l.confHist = []confAt{{s.Meta.Index, l.confCur}}
	l.installed = s.Meta.Index
	// Membership changes this node was waiting on were folded in.
	var conf []uint64
	n.props.each(func(p *proposal) {
		if p.kind == propConf && p.state.Load() == propProposed {
			conf = append(conf, p.seq)
		}
	})
	for _, seq := range conf {
		n.props.settle(seq, result{err: fmt.Errorf("%w: folded into the leader's snapshot %d", ErrOutcomeUnknown, s.Meta.Index)})
	}
}

// send sends messages, routing snapshots through the snapshotter, which
// attaches their data.
//
// Ownership: msgs is one of the loop's reused buffers. The transports copy
// each message out (into a peer queue or an inbox) before Send returns
// and keep no reference to the slice, so the buffer is the loop's again
// when send returns; its capacity is clipped so that a Transport wrapper
// that appends to it allocates instead of writing into the buffer.
func (l *loop) send(msgs []consensus.Message) {
	n := l.n
	out := msgs
	if slices.ContainsFunc(msgs, func(m consensus.Message) bool { return m.Type == consensus.MsgSnap }) {
		// Rare: a snapshot goes through the snapshotter; the others are
		// copied into a new slice.
		out = nil
		for _, m := range msgs {
			if m.Type != consensus.MsgSnap {
				out = append(out, m)
				continue
			}
			select {
			case n.snapSend <- m:
			default:
				n.obs.MessageDropped(m, DropSnapshotBusy)
				n.reports.snapshot(m.To, false)
			}
		}
	}
	if len(out) > 0 {
		for i := range out {
			n.obs.MessageSent(out[i])
		}
		n.tr.Send(out[:len(out):len(out)])
	}
}

// ---- Snapshots ----

func (l *loop) onSnapTaken(j *snapJob) {
	if l.rd != nil {
		l.snapWaiting = j
		return
	}
	l.processSnap(j)
}

// processSnap completes a local snapshot with its membership and hands it
// to the snapshotter. No Ready is outstanding.
func (l *loop) processSnap(j *snapJob) {
	n := l.n
	if j.meta.Index <= l.installed || j.meta.Index <= l.lastSnap {
		n.snapInFlight.Store(false) // overtaken by the leader's snapshot
		return
	}
	l.advance(n.applied.Load()) // records every membership up to j.meta.Index
	j.meta.ConfState = l.confAt(j.meta.Index)
	n.snapSave <- j // capacity 1, one in flight
}

func (l *loop) onSnapSaved(j *snapJob) {
	n := l.n
	n.snapInFlight.Store(false)
	if j.err != nil {
		if errors.Is(j.err, wal.ErrBroken) {
			l.fail(j.err)
			return
		}
		n.log.Warn("snapshot not saved; the next one will try again", "index", j.meta.Index, "err", j.err)
		return
	}
	// Compact the engine's log to the previous snapshot, not this one:
	// followers a little behind still catch up from the log.
	if prev := l.lastSnap; prev > 0 {
		if err := l.eng.Compact(prev); err != nil && !errors.Is(err, consensus.ErrCompacted) {
			n.log.Warn("log compaction failed", "index", prev, "err", err)
		}
	}
	l.lastSnap = j.meta.Index
	keep := 0
	for i, c := range l.confHist {
		if c.index <= l.lastSnap {
			keep = i
		}
	}
	l.confHist = l.confHist[keep:]
	n.log.Info("snapshot saved", "index", j.meta.Index, "term", j.meta.Epoch, "bytes", len(j.data))
}

// ---- Status and leadership ----

func (l *loop) status() consensus.Status {
	st := l.eng.Status()
	st.Applied = l.n.applied.Load()
	return st
}

// refreshStatus publishes the leader, term and role for lock-free readers.
func (l *loop) refreshStatus() {
	n := l.n
	st := l.status()
	n.lastStatus.Store(&st)
	oldRole := consensus.Role(n.role.Swap(uint32(st.Role)))
	oldLead, oldTerm := consensus.NodeID(n.lead.Swap(uint64(st.Leader))), n.term.Swap(st.Epoch)
	if oldRole != st.Role || oldLead != st.Leader || oldTerm != st.Epoch {
		n.obs.StatusChanged(StatusChange{ID: n.id, Role: st.Role, PrevRole: oldRole, Term: st.Epoch, PrevTerm: oldTerm,
			Leader: st.Leader, PrevLeader: oldLead})
	}
	if oldLead != st.Leader || oldTerm != st.Epoch {
		if oldLead != st.Leader {
			n.log.Info("leader changed", "term", st.Epoch, "leader", st.Leader, "role", st.Role.String())
		}
		n.statusN.notify()
	}
	if oldRole == consensus.Leader && (st.Role != consensus.Leader || oldTerm != st.Epoch) {
		l.confLeadershipLost(oldTerm)
	}
}

// confLeadershipLost settles the membership changes this node proposed as
// leader of term, now lost, with ErrOutcomeUnknown at once: whether a
// change reached the log before the leadership went is unknown (a Raft
// successor may still commit it; a Multi-Paxos proposer that had not yet
// given it a slot drops it), and its caller, who decides whether to try
// again, should not learn that only from its own deadline.
func (l *loop) confLeadershipLost(term uint64) {
	n := l.n
	var lost []uint64
	n.props.each(func(p *proposal) {
		if p.kind == propConf && p.state.Load() == propProposed {
			lost = append(lost, p.seq)
		}
	})
	for _, seq := range lost {
		n.props.settle(seq, result{err: fmt.Errorf("%w: leadership of term %d lost before the membership change was known to commit", ErrOutcomeUnknown, term)})
	}
}

// handOffTarget picks the voter most up to date with this leader, or None.
func (l *loop) handOffTarget() consensus.NodeID {
	st := l.eng.Status()
	if st.Role != consensus.Leader {
		return consensus.None
	}
	best, bestMatch := consensus.None, uint64(0)
	for _, id := range st.ConfState.Voters {
		pr, ok := st.Progress[id]
		if id == l.n.id || !ok {
			continue
		}
		if best == consensus.None || pr.Match > bestMatch || (pr.Match == bestMatch && id < best) {
			best, bestMatch = id, pr.Match
		}
	}
	return best
}

// checkStall hands leadership away when this leader's own WAL write has
// taken longer than FsyncStallTimeout. The engine cannot send while its
// Ready is outstanding, so the node sends the transfer order itself:
// MsgTimeoutNow makes the most up-to-date follower campaign at once, and
// this node steps down when it sees the higher term. (Without it the
// leader, silent while stalled, would still lose leadership to CheckQuorum
// and the followers' election timeouts; this is just faster.)
func (l *loop) checkStall() {
	n := l.n
	if !l.persisting || l.tick < l.stallNext || consensus.Role(n.role.Load()) != consensus.Leader {
		return
	}
	l.stallNext = l.tick + l.stallTicks
	target := l.handOffTarget()
	n.log.Warn("WAL write stalled: handing leadership away", "term", n.term.Load(), "peer", target,
		"stalled", time.Duration(l.tick-l.persistStart)*n.cfg.TickInterval)
	if target != consensus.None {
		n.tr.Send([]consensus.Message{{Type: consensus.MsgTimeoutNow, From: n.id, To: target, Epoch: n.term.Load()}})
	}
}
