package sim

import (
	"fmt"

	"github.com/ballotdb/ballot/consensus"
)

// Invariant names, as printed in violations.
const (
	ElectionSafety     = "election-safety"      // at most one leader per epoch
	LogMatching        = "log-matching"         // same index and epoch ⇒ same entry and same prefix
	LeaderCompleteness = "leader-completeness"  // a committed entry is in every later epoch's log
	StateMachineSafety = "state-machine-safety" // no two nodes apply different entries at an index
	Monotonic          = "monotonic"            // commit and applied never go backwards
	Linearizability    = "linearizability"      // the client history is linearizable
	Liveness           = "liveness"             // healed, the cluster elects and commits in bounded time
	Contract           = "contract"             // the engine broke the Ready/storage contract
	Validity           = "validity"             // only values some client proposed are applied
)

// Violation is a broken invariant, with what was observed.
type Violation struct {
	Invariant string
	Detail    string
	// Group is the number (from 1) of the group whose invariant broke, in a
	// multi-group run; 0 in a single-group run.
	Group int
}

func (v *Violation) Error() string {
	if v.Group > 0 {
		return fmt.Sprintf("group %d: %s: %s", v.Group, v.Invariant, v.Detail)
	}
	return v.Invariant + ": " + v.Detail
}

func violation(inv, format string, args ...any) *Violation {
	return &Violation{Invariant: inv, Detail: fmt.Sprintf(format, args...)}
}

type entryKey struct{ index, epoch uint64 }

type entrySig struct {
	typ       consensus.EntryType
	data      uint64 // hash of Data
	prevEpoch uint64 // epoch of the entry before it in the writer's log
	writer    consensus.NodeID
}

type appliedSig struct {
	epoch uint64
	typ   consensus.EntryType
	data  uint64
	state uint64 // hash of the state machine after applying it
	node  consensus.NodeID
}

type progressMark struct {
	incarnation    int
	commit, applie uint64
}

// checker holds what every invariant needs to remember across the run. Each
// observe method checks one kind of event the moment it happens, so a
// violation is reported at the step that caused it.
type checker struct {
	leaders  map[uint64]consensus.NodeID // epoch → the leader seen in it
	written  map[entryKey]entrySig       // every entry any node wrote
	applied  map[uint64]appliedSig       // index → what was applied there
	commitAt map[uint64]uint64           // index → epoch at which it was first seen committed
	// committedUpTo is the highest index seen committed anywhere.
	committedUpTo uint64
	progress      map[consensus.NodeID]progressMark
	// checkedEpoch is the highest epoch of entries whose writer's log was
	// checked for leader completeness, per node.
	checkedEpoch map[consensus.NodeID]uint64
	// logMatching says the engine's logs obey log matching and leader
	// completeness, and that an index is applied with the same epoch
	// everywhere (Raft). Otherwise (Paxos) agreement compares what was
	// applied and the state after it, not the ballot it was learned in.
	logMatching bool
	// issued are the commands clients proposed, by (client, op).
	issued map[[2]int]string
}

func newChecker() *checker {
	return &checker{
		leaders:      map[uint64]consensus.NodeID{},
		written:      map[entryKey]entrySig{},
		applied:      map[uint64]appliedSig{},
		commitAt:     map[uint64]uint64{},
		progress:     map[consensus.NodeID]progressMark{},
		checkedEpoch: map[consensus.NodeID]uint64{},
		logMatching:  true,
		issued:       map[[2]int]string{},
	}
}

// observeLeader: node id is leader in epoch. Election safety.
func (c *checker) observeLeader(id consensus.NodeID, epoch uint64) *Violation {
	if prev, ok := c.leaders[epoch]; ok && prev != id {
		return violation(ElectionSafety, "nodes %d and %d are both leaders of epoch %d", prev, id, epoch)
	}
	c.leaders[epoch] = id
	return nil
}

// observeWrite: node id wrote e with prevEpoch the epoch of the entry before
// it in its log. Log matching, by induction: if every (index, epoch) pair
// names one entry with one predecessor epoch, any two logs that share an
// (index, epoch) share the whole prefix.
func (c *checker) observeWrite(id consensus.NodeID, e consensus.Entry, prevEpoch uint64) *Violation {
	k := entryKey{e.Index, e.Epoch}
	sig := entrySig{typ: e.Type, data: dataHash(e.Data), prevEpoch: prevEpoch, writer: id}
	prev, ok := c.written[k]
	if !ok {
		c.written[k] = sig
		return nil
	}
	if prev.typ != sig.typ || prev.data != sig.data {
		return violation(LogMatching, "entry %d/%d differs: node %d wrote %s %x, node %d wrote %s %x",
			e.Index, e.Epoch, prev.writer, prev.typ, prev.data, id, sig.typ, sig.data)
	}
	if prev.prevEpoch != sig.prevEpoch {
		return violation(LogMatching, "entry %d/%d follows epoch %d on node %d but epoch %d on node %d",
			e.Index, e.Epoch, prev.prevEpoch, prev.writer, sig.prevEpoch, id)
	}
	return nil
}

// observeCommit: node id, in epoch, reports commit index commit. The first
// sighting of each index's commitment records the epoch it happened by
// (the observer's epoch is at least the committing leader's).
func (c *checker) observeCommit(commit, epoch uint64) {
	for i := c.committedUpTo + 1; i <= commit; i++ {
		c.commitAt[i] = epoch
	}
	c.committedUpTo = max(c.committedUpTo, commit)
}

// checkCompleteness: node id has written entries up to index in epoch, so
// its log up to index is the epoch's leader's. Every entry committed in an
// earlier epoch must be in it (or under its snapshot). entryAt returns the
// node's entry at an index.
func (c *checker) checkCompleteness(id consensus.NodeID, epoch, index, snapIndex uint64, entryAt func(uint64) (consensus.Entry, bool)) *Violation {
	if epoch <= c.checkedEpoch[id] {
		return nil
	}
	c.checkedEpoch[id] = epoch
	// An entry committed by an earlier epoch at or after index: the
	// epoch's leader holds it there with an older epoch, yet holds epoch at
	// index, and epochs never decrease along a log. So it lacks it.
	for j := index; j <= c.committedUpTo; j++ {
		if at, ok := c.commitAt[j]; ok && at < epoch {
			return violation(LeaderCompleteness, "node %d writes epoch %d at index %d, but index %d was committed by epoch %d: the epoch's leader lacks it", id, epoch, index, j, at)
		}
	}
	for i := snapIndex + 1; i < index && i <= c.committedUpTo; i++ {
		at, ok := c.commitAt[i]
		if !ok || at >= epoch {
			continue
		}
		want, ok := c.applied[i]
		if !ok {
			continue // committed, not yet applied anywhere: nothing to compare
		}
		got, ok := entryAt(i)
		if !ok {
			return violation(LeaderCompleteness, "node %d writes epoch %d at index %d but lacks index %d, committed by epoch %d", id, epoch, index, i, at)
		}
		if got.Epoch != want.epoch || dataHash(got.Data) != want.data || got.Type != want.typ {
			return violation(LeaderCompleteness, "node %d writes epoch %d at index %d but holds %s at index %d, where %d/%d was committed by epoch %d",
				id, epoch, index, got, i, i, want.epoch, at)
		}
	}
	return nil
}

// observeApply: node id applied e, leaving its state machine with hash
// state. State machine safety.
func (c *checker) observeApply(id consensus.NodeID, e consensus.Entry, state uint64) *Violation {
	sig := appliedSig{epoch: e.Epoch, typ: e.Type, data: dataHash(e.Data), state: state, node: id}
	prev, ok := c.applied[e.Index]
	if !ok {
		c.applied[e.Index] = sig
		return nil
	}
	if (c.logMatching && prev.epoch != sig.epoch) || prev.typ != sig.typ || prev.data != sig.data {
		return violation(StateMachineSafety, "index %d: node %d applied %d/%s %x, node %d applied %d/%s %x",
			e.Index, prev.node, prev.epoch, prev.typ, prev.data, id, sig.epoch, sig.typ, sig.data)
	}
	if prev.state != sig.state {
		return violation(StateMachineSafety, "index %d: state after applying differs between node %d and node %d", e.Index, prev.node, id)
	}
	return nil
}

// observeInstall: node id installed a snapshot at index whose state hashes
// to state.
func (c *checker) observeInstall(id consensus.NodeID, index, epoch, state uint64) *Violation {
	prev, ok := c.applied[index]
	if !ok {
		return nil
	}
	if c.logMatching && prev.epoch != epoch {
		return violation(StateMachineSafety, "node %d installed a snapshot at %d/%d but node %d applied epoch %d there", id, index, epoch, prev.node, prev.epoch)
	}
	if prev.state != state {
		return violation(StateMachineSafety, "node %d installed a snapshot at %d whose state differs from node %d's", id, index, prev.node)
	}
	return nil
}

// observeProgress: node id, in incarnation inc, reports commit and applied.
// floor is, for a fresh incarnation, the durable commit it restarted from.
// Within an incarnation neither may go backwards; a restart may not start
// below what was durable.
func (c *checker) observeProgress(id consensus.NodeID, inc int, commit, applied, floor uint64) *Violation {
	prev, ok := c.progress[id]
	c.progress[id] = progressMark{incarnation: inc, commit: commit, applie: applied}
	if !ok || prev.incarnation != inc {
		if commit < floor {
			return violation(Monotonic, "node %d restarted (incarnation %d) with commit %d below its durable commit %d", id, inc, commit, floor)
		}
		return nil
	}
	if commit < prev.commit {
		return violation(Monotonic, "node %d commit went back from %d to %d", id, prev.commit, commit)
	}
	if applied < prev.applie {
		return violation(Monotonic, "node %d applied went back from %d to %d", id, prev.applie, applied)
	}
	return nil
}

// proposed records a command a client proposed.
func (c *checker) proposed(cmd command) {
	c.issued[[2]int{cmd.client, cmd.op}] = cmd.key + "=" + cmd.value
}

// observeValidity: node id applies cmd at index. Only a command some client
// proposed may be applied (validity: only proposed values are chosen).
func (c *checker) observeValidity(id consensus.NodeID, index uint64, cmd command) *Violation {
	if got, ok := c.issued[[2]int{cmd.client, cmd.op}]; !ok || got != cmd.key+"="+cmd.value {
		return violation(Validity, "node %d applies at index %d client %d op %d put(%s,%s), which no client proposed",
			id, index, cmd.client, cmd.op, cmd.key, cmd.value)
	}
	return nil
}
