package paxos

import (
	"fmt"
	"math/rand/v2"
	"slices"

	"github.com/ballotdb/ballot/consensus"
)

// Ballot is a (round, node) pair packed into one number, so ballots order by
// round, then node, and no two nodes ever share one. It is the Epoch of
// entries, HardStates and messages. Ballot 0 is "none".
type Ballot uint64

func makeBallot(round uint64, id consensus.NodeID) Ballot {
	return Ballot(round<<nodeBits | ballotTag(id))
}

// ballotTag is what the low bits of id's ballots hold: the ID itself when
// it fits in nodeBits, else a fold of its 64 bits (the service derives
// member IDs from hashes). Two members with the same tag could own the
// same ballot, so applyConfChange refuses any configuration in which two
// tags collide.
func ballotTag(id consensus.NodeID) uint64 {
	const mask = 1<<nodeBits - 1
	x := uint64(id)
	if x <= mask {
		return x
	}
	if t := (x ^ x>>nodeBits ^ x>>(2*nodeBits)) & mask; t != 0 {
		return t
	}
	return 1
}

// Round is the ballot's round.
func (b Ballot) Round() uint64 { return uint64(b) >> nodeBits }

// Node is the ballot tag of the proposer that owns the ballot (its ID
// when the ID fits in nodeBits; see ballotTag).
func (b Ballot) Node() consensus.NodeID { return consensus.NodeID(uint64(b) & (1<<nodeBits - 1)) }

func (b Ballot) String() string { return fmt.Sprintf("(%d,%d)", b.Round(), b.Node()) }

// campaignTransfer in a Prepare's Context says the proposer was asked to
// take over by the leader (TransferLeadership), so acceptors that still hear
// from that leader answer anyway.
var campaignTransfer = []byte("transfer")

// confAt is the configuration in force for the slots after index.
type confAt struct {
	index uint64
	cs    consensus.ConfState
}

// Node is a thread-unsafe Multi-Paxos engine: one Acceptor, one Proposer and
// one Learner sharing a log. Each Ready it hands out must be handed back
// with Advance before the next.
type Node struct {
	id    consensus.NodeID
	cfg   Config
	knobs TestingKnobs
	rng   *rand.Rand

	log  *slotLog
	acc  Acceptor
	prop Proposer
	lrn  Learner

	role   consensus.Role
	leader consensus.NodeID
	// confs holds the decided configurations, oldest first; confs[0] is the
	// one as of the snapshot. The last is in force for every undecided slot.
	confs []confAt

	electionElapsed   int
	heartbeatElapsed  int
	randomizedTimeout int
	// maxRound is the highest ballot round seen in any message.
	maxRound uint64

	leadTransferee  consensus.NodeID
	transferElapsed int

	msgs []consensus.Message
	// msgsHint is how many messages the last Ready took: the next batch
	// starts with room for as many, rather than growing from one.
	msgsHint int
	// msgsGen counts the Readies that took msgs: positions in msgs are
	// valid within one generation.
	msgsGen uint64
	// selfMsgs are messages from this node to itself, taken out of the last
	// Ready: they are stepped at Advance, once that Ready is durable, so a
	// node's own promise or acceptance counts only once it is on disk.
	selfMsgs   []consensus.Message
	readStates []consensus.ReadState

	prevHS      consensus.HardState
	outstanding bool
}

// New returns an engine restored from st. A brand-new group member passes
// only the bootstrap membership in st.Snapshot.ConfState.
func New(cfg Config, st consensus.InitialState) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	boot := st.Snapshot.Index == 0 && len(st.Entries) == 0 && st.HardState.IsEmpty() &&
		len(st.Snapshot.ConfState.Members()) > 0
	if boot {
		if st.Snapshot.ConfState.Joint() {
			return nil, fmt.Errorf("paxos: cannot bootstrap with a joint configuration (%s)", st.Snapshot.ConfState)
		}
		if err := cfg.checkQuorums(len(st.Snapshot.ConfState.Voters)); err != nil {
			return nil, fmt.Errorf("paxos: bootstrap configuration %s: %w", st.Snapshot.ConfState, err)
		}
		st.Entries = BootstrapEntries(st.Snapshot.ConfState)
		st.HardState = consensus.HardState{Commit: uint64(len(st.Entries))}
	}
	l, err := newSlotLog(st.Snapshot, st.Entries, st.HardState.Commit, st.Applied)
	if err != nil {
		return nil, err
	}
	if boot {
		// The bootstrap entries are not on disk yet: the first Ready
		// carries them and the HardState that decides them.
		for _, e := range l.ents {
			l.markDirty(e.Index)
		}
	}
	n := &Node{
		id:  cfg.ID,
		cfg: cfg,
		log: l,
		rng: rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15)),
	}
	if cfg.Knobs != nil {
		n.knobs = *cfg.Knobs
	}
	n.acc.promised = Ballot(st.HardState.Epoch)
	if n.knobs.ForgetPromiseOnRestart {
		n.acc.promised = 0
	}
	n.maxRound = n.acc.promised.Round()
	n.confs = []confAt{{st.Snapshot.Index, st.Snapshot.ConfState.Clone()}}
	n.applyDecidedConfs(st.Snapshot.Index)
	if !boot {
		n.prevHS = consensus.HardState{Epoch: uint64(n.acc.promised), Commit: l.commit}
		if n.knobs.ForgetPromiseOnRestart {
			n.prevHS = st.HardState
		}
	}
	n.becomeFollower(consensus.None)
	return n, nil
}

// BootstrapEntries are the first slots of a new group's log: one membership
// change per initial member (voters, then learners, each in ID order),
// decided by construction because every initial member writes the same
// ones. A node that joins later and learns the log from slot 1 arrives at
// the same configuration as everyone else.
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

// ---- configuration ----

// conf is the configuration of every undecided slot.
func (n *Node) conf() consensus.ConfState { return n.confs[len(n.confs)-1].cs }

// confAsOf is the configuration after applying every slot up to index.
func (n *Node) confAsOf(index uint64) consensus.ConfState {
	cs := n.confs[0].cs
	for _, c := range n.confs {
		if c.index <= index {
			cs = c.cs
		}
	}
	return cs
}

func (n *Node) isVoter(id consensus.NodeID) bool { return n.conf().IsVoter(id) }

// applyDecidedConfs records the conf changes decided in (from, commit].
func (n *Node) applyDecidedConfs(from uint64) {
	for i := from + 1; i <= n.log.commit; i++ {
		e := n.log.entry(i)
		if e == nil || e.Type != consensus.EntryConfChange {
			continue
		}
		cc, err := consensus.UnmarshalConfChange(e.Data)
		if err != nil {
			panic(fmt.Sprintf("paxos: decided conf change at slot %d is corrupt: %v", i, err))
		}
		cs, err := applyConfChange(n.conf(), cc)
		if err != nil {
			// Validated when proposed; a change that no longer fits is a
			// no-op on every member alike.
			continue
		}
		n.confs = append(n.confs, confAt{i, cs})
	}
}

// applyConfChange returns cs with cc applied. Every change takes effect in
// one step: the configuration is per slot, so no joint phase is needed.
func applyConfChange(cs consensus.ConfState, cc consensus.ConfChange) (consensus.ConfState, error) {
	if cc.LeaveJoint() {
		return cs, fmt.Errorf("%w: paxos has no joint configurations to leave", consensus.ErrInvalidConfChange)
	}
	out := cs.Clone()
	del := func(s []consensus.NodeID, id consensus.NodeID) []consensus.NodeID {
		return slices.DeleteFunc(s, func(x consensus.NodeID) bool { return x == id })
	}
	for _, c := range cc.Changes {
		if c.NodeID == consensus.None {
			return cs, fmt.Errorf("%w: node ID 0", consensus.ErrInvalidConfChange)
		}
		switch c.Type {
		case consensus.AddVoter:
			out.Learners = del(out.Learners, c.NodeID)
			if !slices.Contains(out.Voters, c.NodeID) {
				out.Voters = append(out.Voters, c.NodeID)
			}
		case consensus.AddLearner:
			out.Voters = del(out.Voters, c.NodeID)
			if !slices.Contains(out.Learners, c.NodeID) {
				out.Learners = append(out.Learners, c.NodeID)
			}
		case consensus.RemoveNode:
			out.Voters = del(out.Voters, c.NodeID)
			out.Learners = del(out.Learners, c.NodeID)
		default:
			return cs, fmt.Errorf("%w: unknown change type %d", consensus.ErrInvalidConfChange, c.Type)
		}
	}
	if len(out.Voters) == 0 {
		return cs, fmt.Errorf("%w: the change leaves no voter", consensus.ErrInvalidConfChange)
	}
	tags := map[uint64]consensus.NodeID{}
	for _, id := range append(slices.Clone(out.Voters), out.Learners...) {
		if other, dup := tags[ballotTag(id)]; dup && other != id {
			return cs, fmt.Errorf("%w: members %d and %d would share ballots (same ballot tag %d)", consensus.ErrInvalidConfChange, other, id, ballotTag(id))
		}
		tags[ballotTag(id)] = id
	}
	out.VotersOutgoing, out.LearnersNext, out.AutoLeave = nil, nil, false
	return out, nil
}

// ---- roles over time ----

func (n *Node) resetElection() {
	n.electionElapsed = 0
	n.randomizedTimeout = n.cfg.ElectionTick + n.rng.IntN(n.cfg.ElectionTick)
}

func (n *Node) becomeFollower(leader consensus.NodeID) {
	n.role = consensus.Follower
	n.leader = leader
	n.leadTransferee = consensus.None
	n.prop.reset(0)
	n.lrn.reset()
	n.resetElection()
}

// campaign starts phase 1 with a ballot above every one seen.
func (n *Node) campaign(transfer bool) {
	if !n.isVoter(n.id) {
		return
	}
	b := makeBallot(max(n.acc.promised.Round(), n.maxRound)+1, n.id)
	n.maxRound = b.Round()
	n.role = consensus.Candidate
	n.leader = consensus.None
	n.leadTransferee = consensus.None
	n.acc.promised = b // our own acceptor's promise, persisted with the next Ready
	n.prop.reset(b)
	n.lrn.reset()
	n.prop.start = n.log.commit + 1
	n.prop.decidedReported = n.log.commit
	n.resetElection()
	var ctx []byte
	if transfer {
		ctx = campaignTransfer
	}
	n.prop.transfer = ctx
	n.prop.ensurePrepared(n, true)
}

func (n *Node) becomeLeader() {
	n.role = consensus.Leader
	n.leader = n.id
	n.heartbeatElapsed, n.electionElapsed = 0, 0
	p := &n.prop
	p.next = n.log.commit + 1
	p.peers = map[consensus.NodeID]*peer{}
	p.active = map[consensus.NodeID]bool{}
	p.acks = map[consensus.NodeID]uint64{}
	p.maybePropose(n)
	p.broadcastDecide(n, decideResend)
}

// followLeader notes that the proposer of ballot b, from, leads.
func (n *Node) followLeader(b Ballot, from consensus.NodeID) {
	if from == n.id {
		return
	}
	if n.role == consensus.Leader || n.role == consensus.Candidate {
		if b == n.prop.ballot {
			return
		}
		n.becomeFollower(from)
	}
	n.leader = from
	n.electionElapsed = 0
}

// observe records a ballot seen in a message.
func (n *Node) observe(b Ballot) { n.maxRound = max(n.maxRound, b.Round()) }

func (n *Node) send(m consensus.Message) {
	m.From = n.id
	if n.msgs == nil {
		n.msgs = make([]consensus.Message, 0, max(n.msgsHint, 4))
	}
	n.msgs = append(n.msgs, m)
}

// learned is called after slots were learned: it records decided conf
// changes and lets the proposer go on.
func (n *Node) learned(oldCommit uint64) {
	if n.log.commit == oldCommit {
		return
	}
	n.applyDecidedConfs(oldCommit)
	if n.role == consensus.Leader {
		n.prop.decided(n)
		if !n.isVoter(n.id) {
			// Removed or demoted, and the change is decided: step down.
			n.becomeFollower(consensus.None)
			return
		}
		n.prop.maybePropose(n)
		n.prop.broadcastDecide(n, decideNewOnly)
	}
	if n.role == consensus.Candidate {
		n.prop.checkPhase1(n)
	}
}

func (n *Node) checkInvariants() {
	l := n.log
	if l.applied > l.handed || l.handed > l.commit || l.commit > l.lastIndex() {
		panic(fmt.Sprintf("paxos: node %d: applied %d, handed %d, commit %d, last %d out of order", n.id, l.applied, l.handed, l.commit, l.lastIndex()))
	}
	if n.role == consensus.Leader && n.acc.promised != n.prop.ballot {
		panic(fmt.Sprintf("paxos: node %d leads ballot %s but promised %s", n.id, n.prop.ballot, n.acc.promised))
	}
}
