package raft

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"

	"github.com/ballotdb/ballot/consensus"
	"github.com/ballotdb/ballot/quorum"
)

// Errors particular to the Raft engine. Each wraps a consensus sentinel so
// callers can branch on either.
var (
	// ErrReadIndexNotReady: the leader has not yet committed an entry of its
	// term, so it cannot know the true commit index (thesis §6.4).
	ErrReadIndexNotReady = fmt.Errorf("%w: leader has not committed an entry of its term yet", consensus.ErrProposalDropped)
	// ErrTransferInProgress: proposals are refused during leadership transfer.
	ErrTransferInProgress = fmt.Errorf("%w: leadership transfer in progress", consensus.ErrProposalDropped)
	// ErrLearnerNotReady: a learner may be promoted only once caught up.
	ErrLearnerNotReady = consensus.ErrLearnerNotReady
	// ErrStepLocalMsg: a local message (MsgHup, MsgBeat) arrived from a peer.
	ErrStepLocalMsg = fmt.Errorf("%w: local message from the network", consensus.ErrUnknownMessage)
	// ErrRemoved: this node was removed from the group.
	ErrRemoved = fmt.Errorf("%w: node removed from the group", consensus.ErrProposalDropped)
)

// campaignTransfer marks a vote request made for a leadership transfer: it
// bypasses the receivers' leader stickiness (the old leader asked for it).
var campaignTransfer = []byte("transfer")

type campaignKind uint8

const (
	campaignPreElection campaignKind = iota
	campaignElection
	campaignTransferKind
)

type stepFunc func(r *Raft, m consensus.Message) error

// Raft is a thread-unsafe Raft engine implementing consensus.Engine. One
// goroutine owns it; every Ready must be handed back with Advance.
type Raft struct {
	id  consensus.NodeID
	cfg Config

	role  consensus.Role
	epoch uint64 // current term
	vote  consensus.NodeID
	lead  consensus.NodeID

	log     *raftLog
	conf    consensus.ConfState // applied membership
	trk     tracker
	removed map[consensus.NodeID]bool // IDs removed during this incarnation
	// confHistory holds the membership after each applied change, oldest
	// first, so Compact can attach the membership as of its index.
	confHistory []confAt
	// confQueue holds conf-change entries handed to the application, to be
	// applied to the membership once reported applied.
	confQueue []consensus.Entry

	votes map[consensus.NodeID]bool

	// msgs collects what the engine sends until the next Ready hands it
	// out. Message buffers alternate: the one the outstanding Ready holds
	// (msgsOut) is the caller's until Advance, which gives it back as
	// msgsFree for the next Ready after that to collect into. So a caller
	// must not keep rd.Messages past Advance (copying the messages out is
	// fine: they are values); no caller does.
	msgs       []consensus.Message
	msgsOut    []consensus.Message
	msgsFree   []consensus.Message
	readStates []consensus.ReadState
	reads      readOnly
	hbRound    uint64 // heartbeat rounds sent while reads wait; never decreases

	// electionElapsed counts ticks since the last valid leader contact
	// (follower) or since the last CheckQuorum round (leader).
	electionElapsed  int
	heartbeatElapsed int
	// Invariant: ElectionTick <= randomizedElectionTimeout < 2*ElectionTick.
	randomizedElectionTimeout int
	rng                       *rand.Rand

	// pendingConfIndex: a conf change at or below it may be unapplied; new
	// ones are refused until applied reaches it.
	pendingConfIndex uint64
	// uncommittedSize is the payload bytes the leader has appended but not
	// yet committed. Invariant: <= MaxUncommittedEntriesSize unless a
	// single entry was admitted into an empty budget.
	uncommittedSize uint64
	leadTransferee  consensus.NodeID

	step stepFunc
	tick func()

	// Ready bookkeeping.
	prevHS      consensus.HardState // last HardState handed out
	outstanding bool                // a Ready was handed out and not advanced
	readyLast   uint64              // last entry index in the outstanding Ready
	readyGen    uint64              // log.truncGen when it was handed out
}

type confAt struct {
	index uint64
	cs    consensus.ConfState
}

var _ consensus.Engine = (*Raft)(nil)

// New returns an engine for cfg, restarted from st (see
// consensus.InitialState). A brand-new group passes its initial members as
// st.Snapshot.ConfState.
func New(cfg Config, st consensus.InitialState) (*Raft, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	boot := isBootstrap(st)
	if boot {
		if st.Snapshot.ConfState.Joint() {
			return nil, fmt.Errorf("raft: cannot bootstrap with a joint configuration (%s)", st.Snapshot.ConfState)
		}
		st.Entries = BootstrapEntries(st.Snapshot.ConfState)
		st.HardState = consensus.HardState{Epoch: 1, Commit: uint64(len(st.Entries))}
	}
	l, err := newLog(st.Snapshot, st.Entries, st.Applied, st.HardState.Commit)
	if err != nil {
		return nil, err
	}
	if boot {
		// The bootstrap entries are not on disk yet: the first Ready
		// carries them and the HardState that commits them.
		l.written, l.stable = 0, 0
	}
	r := &Raft{
		id:      cfg.ID,
		cfg:     cfg,
		log:     l,
		removed: map[consensus.NodeID]bool{},
		rng:     rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15)),
		reads:   readOnly{max: cfg.MaxPendingReadIndex},
	}
	r.setConf(st.Snapshot.ConfState)
	r.confHistory = []confAt{{st.Snapshot.Index, r.conf.Clone()}}
	// Conf changes the application already applied past the snapshot.
	for i := l.snapIndex + 1; i <= l.applied; i++ {
		if e := l.entry(i); e.Type == consensus.EntryConfChange {
			r.applyConfEntry(*e)
		}
	}
	if hs := st.HardState; hs.Vote != consensus.None && hs.Epoch == 0 {
		return nil, fmt.Errorf("raft: hard state has vote %d in epoch 0", hs.Vote)
	}
	r.becomeFollower(st.HardState.Epoch, consensus.None)
	r.vote = st.HardState.Vote
	r.prevHS = r.hardState()
	if boot {
		r.prevHS = consensus.HardState{}
	}
	return r, nil
}

// isBootstrap reports whether st is a brand-new group member's state: no
// log, no HardState, and the initial membership in the snapshot metadata.
func isBootstrap(st consensus.InitialState) bool {
	return st.Snapshot.Index == 0 && len(st.Entries) == 0 && st.HardState.IsEmpty() &&
		len(st.Snapshot.ConfState.Members()) > 0
}

// BootstrapEntries are the first entries of a new group's log: one
// membership change per initial member (voters, then learners, each in ID
// order), in epoch 1, committed by construction because every initial member
// writes the same ones. Keeping the initial membership in the log, not only
// in the index-0 snapshot metadata, is what lets a node that joins later and
// replays the log from index 1 arrive at the same configuration as everyone
// else (without them it would apply "add voter 5" to an empty set and
// believe itself the only voter).
func BootstrapEntries(cs consensus.ConfState) []consensus.Entry {
	var ents []consensus.Entry
	add := func(ids []consensus.NodeID, t consensus.ConfChangeType) {
		ids = slices.Clone(ids)
		slices.Sort(ids)
		for _, id := range ids {
			cc := consensus.ConfChange{Changes: []consensus.ConfChangeSingle{{Type: t, NodeID: id}}}
			ents = append(ents, consensus.Entry{Index: uint64(len(ents) + 1), Epoch: 1, Type: consensus.EntryConfChange, Data: cc.Marshal()})
		}
	}
	add(cs.Voters, consensus.AddVoter)
	add(cs.Learners, consensus.AddLearner)
	return ents
}

func (r *Raft) hardState() consensus.HardState {
	return consensus.HardState{Epoch: r.epoch, Vote: r.vote, Commit: r.log.committed}
}

// ---- Role transitions ----

func (r *Raft) reset(epoch uint64) {
	if r.epoch != epoch {
		r.epoch = epoch
		r.vote = consensus.None
	}
	r.lead = consensus.None
	r.electionElapsed = 0
	r.heartbeatElapsed = 0
	r.randomizedElectionTimeout = r.cfg.ElectionTick + r.rng.IntN(r.cfg.ElectionTick)
	r.leadTransferee = consensus.None
	r.votes = map[consensus.NodeID]bool{}
	for _, id := range r.trk.ids {
		pr := r.trk.prs[id]
		*pr = progress{next: r.log.lastIndex() + 1, isLearner: pr.isLearner,
			inflights: newInflights(r.cfg.MaxInflightMsgs, r.cfg.MaxInflightBytes)}
		if id == r.id {
			pr.match = r.log.stable
		}
	}
	r.pendingConfIndex = 0
	r.uncommittedSize = 0
	r.reads.reset()
}

func (r *Raft) becomeFollower(epoch uint64, lead consensus.NodeID) {
	r.step = stepFollower
	r.reset(epoch)
	r.tick = r.tickElection
	r.lead = lead
	r.role = consensus.Follower
}

func (r *Raft) becomePreCandidate() {
	if r.role == consensus.Leader {
		panic("raft: invariant: leader cannot become pre-candidate")
	}
	// A pre-election changes neither epoch nor vote.
	r.step = stepCandidate
	r.votes = map[consensus.NodeID]bool{}
	r.tick = r.tickElection
	r.lead = consensus.None
	r.role = consensus.PreCandidate
}

func (r *Raft) becomeCandidate() {
	if r.role == consensus.Leader {
		panic("raft: invariant: leader cannot become candidate")
	}
	r.step = stepCandidate
	r.reset(r.epoch + 1)
	r.tick = r.tickElection
	r.vote = r.id
	r.role = consensus.Candidate
}

func (r *Raft) becomeLeader() {
	if r.role == consensus.Follower {
		panic("raft: invariant: follower cannot become leader without an election")
	}
	r.step = stepLeader
	r.reset(r.epoch)
	r.tick = r.tickHeartbeat
	r.lead = r.id
	r.role = consensus.Leader
	if pr := r.trk.prs[r.id]; pr != nil {
		pr.becomeReplicate()
	}
	// Conf changes in the uncommitted tail count as pending.
	r.pendingConfIndex = r.log.lastIndex()
	// The no-op that opens the term: only entries of the current term are
	// committed by counting replicas (§5.4.2), so this entry is what lets
	// the entries of earlier terms, and ReadIndex, make progress.
	r.appendEntry(consensus.Entry{Type: consensus.EntryNoop})
}

// ---- Ticks ----

// Tick advances the logical clock by one tick.
func (r *Raft) Tick() { r.tick(); r.checkInvariants() }

func (r *Raft) tickElection() {
	r.electionElapsed++
	if r.promotable() && r.electionElapsed >= r.randomizedElectionTimeout {
		r.electionElapsed = 0
		r.hup(campaignElection)
	}
}

func (r *Raft) tickHeartbeat() {
	r.heartbeatElapsed++
	r.electionElapsed++
	if r.electionElapsed >= r.cfg.ElectionTick {
		r.electionElapsed = 0
		if r.cfg.CheckQuorum {
			if !r.quorumActive() {
				r.becomeFollower(r.epoch, consensus.None)
				return
			}
		}
		// A transfer that did not finish within an election timeout is
		// abandoned, so proposals flow again.
		r.leadTransferee = consensus.None
	}
	if r.role != consensus.Leader {
		return
	}
	if r.heartbeatElapsed >= r.cfg.HeartbeatTick {
		r.heartbeatElapsed = 0
		r.bcastHeartbeat()
	}
}

// quorumActive reports whether a quorum of voters was heard from since the
// last round, and starts a new round.
func (r *Raft) quorumActive() bool {
	votes := map[consensus.NodeID]bool{}
	for id, pr := range r.trk.prs {
		if id == r.id {
			votes[id] = true
			continue
		}
		votes[id] = pr.recentActive
		pr.recentActive = false
	}
	return r.trk.voters.VoteResult(votes) == quorum.VoteWon
}

// promotable reports whether this node may campaign: it is a voter and has
// no snapshot waiting to be installed.
func (r *Raft) promotable() bool {
	return r.isVoter(r.id) && r.log.pendingSnapshot == nil
}

// ---- Elections ----

func (r *Raft) hup(kind campaignKind) {
	if r.role == consensus.Leader || !r.promotable() {
		return
	}
	// A conf change committed but not yet applied may change who votes;
	// campaigning under the old membership could elect a leader that the
	// new one does not recognise.
	for i := r.log.applied + 1; i <= r.log.committed; i++ {
		if i > r.log.snapIndex && r.log.entry(i).Type == consensus.EntryConfChange {
			return
		}
	}
	if kind == campaignElection && r.cfg.PreVote {
		kind = campaignPreElection
	}
	r.campaign(kind)
}

func (r *Raft) campaign(kind campaignKind) {
	var voteType consensus.MessageType
	var epoch uint64
	if kind == campaignPreElection {
		r.becomePreCandidate()
		voteType, epoch = consensus.MsgPreVote, r.epoch+1
	} else {
		r.becomeCandidate()
		voteType, epoch = consensus.MsgVote, r.epoch
	}
	if r.poll(r.id, true) == quorum.VoteWon {
		// A single-voter group wins at once.
		if kind == campaignPreElection {
			r.campaign(campaignElection)
		} else {
			r.becomeLeader()
		}
		return
	}
	var ctx []byte
	if kind == campaignTransferKind {
		ctx = campaignTransfer
	}
	for _, id := range r.trk.voters.IDs() {
		if id == r.id {
			continue
		}
		r.send(consensus.Message{Type: voteType, To: id, Epoch: epoch,
			Index: r.log.lastIndex(), LogEpoch: r.log.lastEpoch(), Context: ctx})
	}
}

func (r *Raft) poll(id consensus.NodeID, granted bool) quorum.VoteResult {
	if _, ok := r.votes[id]; !ok {
		r.votes[id] = granted
	}
	return r.trk.voters.VoteResult(r.votes)
}

// ---- Step ----

// Step feeds one message received from a peer.
func (r *Raft) Step(m consensus.Message) error {
	if m.Type.IsLocal() {
		return ErrStepLocalMsg
	}
	if !m.Type.Known() {
		return fmt.Errorf("%w: type %d", consensus.ErrUnknownMessage, m.Type)
	}
	err := r.stepMsg(m)
	r.checkInvariants()
	return err
}

func (r *Raft) stepMsg(m consensus.Message) error {
	switch {
	case m.Epoch == 0:
		// Local message or forwarded proposal/read: no epoch.
	case m.Epoch > r.epoch:
		if m.Type == consensus.MsgVote || m.Type == consensus.MsgPreVote {
			force := bytes.Equal(m.Context, campaignTransfer)
			inLease := r.cfg.CheckQuorum && r.lead != consensus.None && r.electionElapsed < r.cfg.ElectionTick
			if !force && inLease {
				// Leader stickiness: we heard from a leader within the
				// election timeout, so this candidate is disruptive.
				return nil
			}
		}
		switch {
		case m.Type == consensus.MsgPreVote:
			// A pre-vote never changes our epoch.
		case m.Type == consensus.MsgPreVoteResp && !m.Reject:
			// The epoch is the one we will campaign in; nothing to adopt.
		default:
			if m.Type == consensus.MsgApp || m.Type == consensus.MsgHeartbeat || m.Type == consensus.MsgSnap {
				r.becomeFollower(m.Epoch, m.From)
			} else {
				r.becomeFollower(m.Epoch, consensus.None)
			}
		}
	case m.Epoch < r.epoch:
		switch {
		case (r.cfg.CheckQuorum || r.cfg.PreVote) && (m.Type == consensus.MsgHeartbeat || m.Type == consensus.MsgApp):
			// A stale leader, perhaps cut off by a partition, will never
			// learn of our epoch through votes when PreVote or stickiness
			// hold them back; tell it directly so it steps down.
			r.send(consensus.Message{Type: consensus.MsgAppResp, To: m.From})
		case m.Type == consensus.MsgPreVote:
			r.send(consensus.Message{Type: consensus.MsgPreVoteResp, To: m.From, Epoch: r.epoch, Reject: true})
		}
		return nil
	}

	switch m.Type {
	case consensus.MsgVote, consensus.MsgPreVote:
		canVote := r.vote == m.From ||
			(r.vote == consensus.None && r.lead == consensus.None) ||
			(m.Type == consensus.MsgPreVote && m.Epoch > r.epoch)
		upToDate := r.log.isUpToDate(m.LogEpoch, m.Index)
		if r.cfg.Knobs != nil && r.cfg.Knobs.GrantVoteWithoutLogCheck {
			upToDate = true
		}
		resp := consensus.MsgVoteResp
		if m.Type == consensus.MsgPreVote {
			resp = consensus.MsgPreVoteResp
		}
		if canVote && upToDate {
			// The response carries the request's epoch: for a pre-vote
			// that is the future epoch, which we do not adopt.
			r.send(consensus.Message{Type: resp, To: m.From, Epoch: m.Epoch})
			if m.Type == consensus.MsgVote {
				r.electionElapsed = 0
				r.vote = m.From
			}
		} else {
			r.send(consensus.Message{Type: resp, To: m.From, Epoch: r.epoch, Reject: true})
		}
		return nil
	}
	return r.step(r, m)
}

func stepLeader(r *Raft, m consensus.Message) error {
	switch m.Type {
	case consensus.MsgProp:
		return r.leaderPropose(m)
	case consensus.MsgReadIndex:
		return r.leaderReadIndex(m)
	case consensus.MsgTransferLeader:
		return r.leaderTransfer(consensus.NodeID(m.Index))
	}
	pr := r.trk.prs[m.From]
	if pr == nil {
		return nil // a response from a node no longer a member
	}
	switch m.Type {
	case consensus.MsgAppResp:
		pr.recentActive = true
		if m.Reject {
			hint := m.RejectHint
			if m.LogEpoch > 0 {
				// Skip every entry of ours whose epoch exceeds the
				// follower's at the hint: they cannot match.
				hint, _ = r.log.findConflictByTerm(m.RejectHint, m.LogEpoch)
			}
			if pr.maybeDecrTo(m.Index, hint) {
				if pr.state == stateReplicate {
					pr.becomeProbe()
				}
				r.maybeSendAppend(m.From, true)
			}
			return nil
		}
		oldPaused := pr.isPaused()
		if pr.maybeUpdate(m.Index) || (pr.match == m.Index && pr.state == stateProbe) {
			switch {
			case pr.state == stateProbe:
				pr.becomeReplicate()
			case pr.state == stateSnapshot && pr.match >= pr.pendingSnapshot:
				pr.becomeProbe()
				pr.becomeReplicate()
			case pr.state == stateReplicate:
				pr.inflights.freeLE(m.Index)
			}
			if r.maybeCommit() {
				r.bcastAppend()
			} else if oldPaused {
				r.maybeSendAppend(m.From, true)
			}
			for r.maybeSendAppend(m.From, false) {
			}
			if m.From == r.leadTransferee && pr.match == r.log.lastIndex() {
				r.send(consensus.Message{Type: consensus.MsgTimeoutNow, To: m.From})
			}
		}
	case consensus.MsgHeartbeatResp:
		pr.recentActive = true
		pr.probeSent = false
		if pr.state == stateReplicate && pr.inflights.full() {
			pr.inflights.freeLE(pr.inflights.buf[pr.inflights.start].index)
		}
		if pr.match < r.log.lastIndex() {
			r.maybeSendAppend(m.From, true)
		}
		if round, ok := decodeRound(m.Context); ok && r.cfg.ReadOnly == ReadOnlySafe {
			r.reads.ack(m.From, round)
			for _, rd := range r.reads.advance(r.trk.voters, r.id) {
				r.answerRead(rd.from, rd.ctx, rd.index)
			}
		}
	}
	return nil
}

func stepCandidate(r *Raft, m consensus.Message) error {
	want := consensus.MsgVoteResp
	if r.role == consensus.PreCandidate {
		want = consensus.MsgPreVoteResp
	}
	switch m.Type {
	case consensus.MsgProp:
		return &consensus.NotLeaderError{Leader: consensus.None}
	case consensus.MsgReadIndex, consensus.MsgTransferLeader:
		return &consensus.NotLeaderError{Leader: consensus.None}
	case consensus.MsgApp:
		r.becomeFollower(m.Epoch, m.From)
		r.handleAppend(m)
	case consensus.MsgHeartbeat:
		r.becomeFollower(m.Epoch, m.From)
		r.handleHeartbeat(m)
	case consensus.MsgSnap:
		r.becomeFollower(m.Epoch, m.From)
		r.handleSnapshot(m)
	case want:
		switch r.poll(m.From, !m.Reject) {
		case quorum.VoteWon:
			if r.role == consensus.PreCandidate {
				r.campaign(campaignElection)
			} else {
				r.becomeLeader()
				r.bcastAppend()
			}
		case quorum.VoteLost:
			r.becomeFollower(r.epoch, consensus.None)
		}
	}
	return nil
}

func stepFollower(r *Raft, m consensus.Message) error {
	switch m.Type {
	case consensus.MsgProp:
		if r.lead == consensus.None || r.cfg.DisableProposalForwarding || m.From != r.id {
			return &consensus.NotLeaderError{Leader: r.lead}
		}
		m.To = r.lead
		r.send(m)
	case consensus.MsgApp:
		r.electionElapsed = 0
		r.lead = m.From
		r.handleAppend(m)
	case consensus.MsgHeartbeat:
		r.electionElapsed = 0
		r.lead = m.From
		r.handleHeartbeat(m)
	case consensus.MsgSnap:
		r.electionElapsed = 0
		r.lead = m.From
		r.handleSnapshot(m)
	case consensus.MsgTransferLeader:
		if r.lead == consensus.None {
			return &consensus.NotLeaderError{Leader: consensus.None}
		}
		m.To = r.lead
		r.send(m)
	case consensus.MsgTimeoutNow:
		// The leader is handing over: campaign at once, skipping the
		// pre-vote, with a request that bypasses leader stickiness.
		if r.promotable() {
			r.hup(campaignTransferKind)
		}
	case consensus.MsgReadIndex:
		if m.From != r.id {
			return nil // misrouted: only our own requests are forwarded
		}
		if r.lead == consensus.None {
			return &consensus.NotLeaderError{Leader: consensus.None}
		}
		m.To = r.lead
		r.send(m)
	case consensus.MsgReadIndexResp:
		if !m.Reject {
			r.readStates = append(r.readStates, consensus.ReadState{Index: m.Index, RequestCtx: m.Context})
		}
	}
	return nil
}

// ---- Follower handlers ----

func (r *Raft) handleAppend(m consensus.Message) {
	if m.Index < r.log.committed {
		r.send(consensus.Message{Type: consensus.MsgAppResp, To: m.From, Index: r.log.committed})
		return
	}
	if last, ok := r.log.maybeAppend(m.Index, m.LogEpoch, m.Commit, m.Entries); ok {
		r.send(consensus.Message{Type: consensus.MsgAppResp, To: m.From, Index: last})
		return
	}
	// Reject, with a hint: the largest index <= the probe whose epoch is <=
	// the leader's epoch there, so the leader skips a term per round trip.
	hintIndex := min(m.Index, r.log.lastIndex())
	hintIndex, hintEpoch := r.log.findConflictByTerm(hintIndex, m.LogEpoch)
	r.send(consensus.Message{Type: consensus.MsgAppResp, To: m.From, Index: m.Index,
		Reject: true, RejectHint: hintIndex, LogEpoch: hintEpoch})
}

func (r *Raft) handleHeartbeat(m consensus.Message) {
	// The leader sends min(match, commit), so every index up to it matches.
	r.log.commitTo(min(m.Commit, r.log.lastIndex()))
	r.send(consensus.Message{Type: consensus.MsgHeartbeatResp, To: m.From, Context: m.Context})
}

func (r *Raft) handleSnapshot(m consensus.Message) {
	if m.Snapshot == nil {
		return
	}
	meta := m.Snapshot.Meta
	switch {
	case meta.Index <= r.log.committed:
		// Stale: we already have all of it.
	case r.log.matchTerm(meta.Index, meta.Epoch):
		// Our log already holds the snapshot's last entry: fast-forward.
		r.log.commitTo(meta.Index)
	default:
		// The snapshot's configuration may predate this node's own
		// addition (the leader's latest snapshot is older than the entry
		// that added us): install it anyway; the entries after it bring
		// the membership up to date. Refusing would leave a new member
		// waiting for the leader's next compaction.
		s := *m.Snapshot
		r.log.restore(&s)
		r.confQueue = nil
		r.setConf(meta.ConfState)
		r.confHistory = []confAt{{meta.Index, r.conf.Clone()}}
	}
	r.send(consensus.Message{Type: consensus.MsgAppResp, To: m.From, Index: r.log.lastIndex()})
}

// ---- Leader ----

func (r *Raft) leaderPropose(m consensus.Message) error {
	if len(m.Entries) == 0 {
		return fmt.Errorf("%w: empty proposal", consensus.ErrProposalDropped)
	}
	if r.trk.prs[r.id] == nil {
		return ErrRemoved
	}
	if r.leadTransferee != consensus.None {
		return ErrTransferInProgress
	}
	for i := range m.Entries {
		e := &m.Entries[i]
		if uint64(len(e.Data)) > r.cfg.MaxEntrySize {
			return fmt.Errorf("%w: entry of %d bytes exceeds MaxEntrySize %d", consensus.ErrTooLarge, len(e.Data), r.cfg.MaxEntrySize)
		}
		if e.Type == consensus.EntryConfChange {
			if err := r.checkConfChange(e); err != nil {
				return err
			}
		}
	}
	if !r.appendEntry(m.Entries...) {
		return fmt.Errorf("%w: uncommitted entries exceed MaxUncommittedEntriesSize %d", consensus.ErrProposalDropped, r.cfg.MaxUncommittedEntriesSize)
	}
	r.bcastAppend()
	return nil
}

// checkConfChange validates a proposed conf change and marks it pending.
func (r *Raft) checkConfChange(e *consensus.Entry) error {
	cc, err := consensus.UnmarshalConfChange(e.Data)
	if err != nil {
		return fmt.Errorf("%w: %w", consensus.ErrInvalidConfChange, err)
	}
	if r.pendingConfIndex > r.log.applied {
		return fmt.Errorf("%w: change at index %d not yet applied (applied %d)", consensus.ErrConfChangePending, r.pendingConfIndex, r.log.applied)
	}
	if _, err := applyConfChange(r.conf, cc); err != nil {
		return err
	}
	for _, c := range cc.Changes {
		if c.Type != consensus.RemoveNode && r.removed[c.NodeID] {
			return fmt.Errorf("%w: node ID %d", consensus.ErrIDRemoved, c.NodeID)
		}
		if c.Type == consensus.AddVoter && r.conf.IsLearner(c.NodeID) {
			pr := r.trk.prs[c.NodeID]
			if pr == nil || pr.match+r.log.committed/10 < r.log.committed {
				return fmt.Errorf("%w: node %d", ErrLearnerNotReady, c.NodeID)
			}
		}
	}
	r.pendingConfIndex = r.log.lastIndex() + 1
	return nil
}

// appendEntry assigns indexes and the current epoch to es and appends them to
// the leader's log. It reports false, appending nothing, when the
// uncommitted-bytes budget would be exceeded.
func (r *Raft) appendEntry(es ...consensus.Entry) bool {
	var size uint64
	for i := range es {
		size += uint64(len(es[i].Data))
	}
	if size > 0 && r.uncommittedSize > 0 && r.uncommittedSize+size > r.cfg.MaxUncommittedEntriesSize {
		return false
	}
	r.uncommittedSize += size
	last := r.log.lastIndex()
	for i := range es {
		es[i].Epoch = r.epoch
		es[i].Index = last + 1 + uint64(i)
	}
	r.log.append(es...)
	// The leader counts its own entries only once they are durable
	// (Advance); nothing to update here.
	return true
}

// maybeCommit advances the commit index to what a quorum holds, if the entry
// there is of the current epoch (the Figure 8 rule, §5.4.2).
func (r *Raft) maybeCommit() bool {
	idx := r.trk.voters.CommittedIndex(func(id consensus.NodeID) (uint64, bool) {
		if pr := r.trk.prs[id]; pr != nil {
			return pr.match, true
		}
		return 0, false
	})
	if idx <= r.log.committed {
		return false
	}
	if t, _ := r.log.term(idx); t != r.epoch {
		if r.cfg.Knobs == nil || !r.cfg.Knobs.CommitPriorTermByCounting {
			return false
		}
	}
	return r.log.commitTo(idx)
}

func (r *Raft) bcastAppend() {
	for _, id := range r.trk.ids {
		if id != r.id {
			r.maybeSendAppend(id, true)
		}
	}
}

// maybeSendAppend sends an append (or a snapshot) to a follower if flow
// control allows. With sendIfEmpty false it sends only when there are new
// entries. It reports whether a message was sent.
func (r *Raft) maybeSendAppend(to consensus.NodeID, sendIfEmpty bool) bool {
	pr := r.trk.prs[to]
	if pr == nil || pr.isPaused() {
		return false
	}
	prevIndex := pr.next - 1
	prevEpoch, errT := r.log.term(prevIndex)
	ents, errE := r.log.slice(pr.next, r.log.lastIndex()+1, r.cfg.MaxSizePerMsg)
	if errors.Is(errT, consensus.ErrCompacted) || errors.Is(errE, consensus.ErrCompacted) {
		return r.sendSnapshot(to, pr)
	}
	if errT != nil {
		// next is beyond our log (we lost entries we acknowledged?): probe.
		pr.becomeProbe()
		pr.next = min(pr.next, r.log.lastIndex()+1)
		return false
	}
	if len(ents) == 0 && !sendIfEmpty {
		return false
	}
	r.send(consensus.Message{Type: consensus.MsgApp, To: to, Index: prevIndex, LogEpoch: prevEpoch,
		Entries: ents, Commit: r.log.committed})
	if n := len(ents); n > 0 {
		switch pr.state {
		case stateReplicate:
			last := ents[n-1].Index
			pr.next = last + 1
			var b uint64
			for i := range ents {
				b += ents[i].Size()
			}
			pr.inflights.add(last, b)
		case stateProbe:
			pr.probeSent = true
		}
	} else if pr.state == stateProbe {
		pr.probeSent = true
	}
	return true
}

func (r *Raft) sendSnapshot(to consensus.NodeID, pr *progress) bool {
	if !pr.recentActive {
		return false
	}
	meta := r.snapshotMeta()
	pr.becomeSnapshot(meta.Index)
	r.send(consensus.Message{Type: consensus.MsgSnap, To: to, Snapshot: &consensus.Snapshot{Meta: meta}})
	return true
}

// snapshotMeta is the metadata of the latest compaction point.
func (r *Raft) snapshotMeta() consensus.SnapshotMeta {
	cs := r.confHistory[0].cs
	for _, c := range r.confHistory {
		if c.index <= r.log.snapIndex {
			cs = c.cs
		}
	}
	return consensus.SnapshotMeta{Index: r.log.snapIndex, Epoch: r.log.snapEpoch, ConfState: cs.Clone()}
}

func (r *Raft) bcastHeartbeat() {
	// While reads wait, every heartbeat opens a new round (see read.go).
	var ctx []byte
	if len(r.reads.queue) > 0 {
		r.hbRound++
		ctx = encodeRound(r.hbRound)
	}
	for _, id := range r.trk.ids {
		pr := r.trk.prs[id]
		if id == r.id {
			continue
		}
		// Never tell a follower to commit past what it is known to hold.
		commit := min(pr.match, r.log.committed)
		r.send(consensus.Message{Type: consensus.MsgHeartbeat, To: id, Commit: commit, Context: ctx})
	}
}

func (r *Raft) leaderTransfer(target consensus.NodeID) error {
	if target == r.id {
		return nil
	}
	pr := r.trk.prs[target]
	if pr == nil || !r.isVoter(target) {
		return fmt.Errorf("%w: node %d is not a voter", consensus.ErrTransferInvalid, target)
	}
	if r.leadTransferee == target {
		return nil
	}
	r.leadTransferee = target
	// The transfer must finish within an election timeout.
	r.electionElapsed = 0
	if pr.match == r.log.lastIndex() {
		r.send(consensus.Message{Type: consensus.MsgTimeoutNow, To: target})
	} else {
		r.maybeSendAppend(target, true)
	}
	return nil
}

// ---- Output ----

func (r *Raft) send(m consensus.Message) {
	m.From = r.id
	if m.Epoch == 0 && m.Type != consensus.MsgProp && m.Type != consensus.MsgReadIndex &&
		m.Type != consensus.MsgTransferLeader && m.Type != consensus.MsgReadIndexResp {
		m.Epoch = r.epoch
	}
	r.msgs = append(r.msgs, m)
}

func (r *Raft) checkInvariants() {
	r.log.checkInvariants()
	if r.role == consensus.Leader && r.lead != r.id {
		panic(fmt.Sprintf("raft: invariant: leader %d has lead %d", r.id, r.lead))
	}
	if r.vote != consensus.None && r.epoch == 0 {
		panic(fmt.Sprintf("raft: invariant: vote %d in epoch 0", r.vote))
	}
}
