package node

import (
	"bytes"
	"fmt"

	"github.com/ballotdb/ballot/consensus"
)

// applyTask is what the engine goroutine hands the apply goroutine for one
// Ready: a snapshot to install first (from the leader), then committed
// entries in index order.
type applyTask struct {
	snap *consensus.Snapshot
	ents []consensus.Entry
}

// applier is the apply goroutine's state. Only that goroutine touches it
// once the node runs (recovery fills it before).
type applier struct {
	n        *Node
	sm       StateMachine
	sessions sessions
	// book holds the peer addresses learned from the log: the Context of
	// membership changes. Part of the snapshot.
	book map[consensus.NodeID]string

	// Invariant: entries are applied at applied+1, in order.
	applied      uint64
	appliedEpoch uint64
	sinceEntries uint64 // applied since the last snapshot
	sinceBytes   uint64
}

func newApplier(n *Node, sm StateMachine) *applier {
	return &applier{n: n, sm: sm, sessions: sessions{}, book: map[consensus.NodeID]string{}}
}

func (a *applier) run() {
	n := a.n
	for {
		select {
		case <-n.stopc:
			return
		case t := <-n.applyc:
			if t.snap != nil {
				if err := a.install(t.snap); err != nil {
					n.log.Error("installing the leader's snapshot failed: stopping", "index", t.snap.Meta.Index, "err", err)
					n.signalStop(err)
					return
				}
			}
			for i := range t.ents {
				a.apply(&t.ents[i])
			}
			n.applied.Store(a.applied)
			n.appliedN.notify()
			select {
			case n.appliedNote <- struct{}{}:
			default:
			}
			a.maybeSnapshot()
		}
	}
}

// apply applies one committed entry.
func (a *applier) apply(e *consensus.Entry) {
	n := a.n
	if e.Index != a.applied+1 {
		panic(fmt.Sprintf("node %d: invariant: entry %d handed to apply after %d", n.id, e.Index, a.applied))
	}
	switch e.Type {
	case consensus.EntryNormal:
		env, err := decodeEnvelope(e.Data)
		if err != nil {
			panic(fmt.Sprintf("node %d: committed entry %d/%d is not a node envelope (%d bytes): %v", n.id, e.Index, e.Epoch, len(e.Data), err))
		}
		if a.sessions.admit(env, e.Index) {
			res := a.sm.Apply(e.Index, env.payload)
			if env.origin == n.id && env.incarnation == n.incarnation {
				n.props.settle(env.seq, result{val: res})
			}
		}
	case consensus.EntryConfChange:
		cc, err := consensus.UnmarshalConfChange(e.Data)
		if err != nil {
			panic(fmt.Sprintf("node %d: committed conf change %d/%d is corrupt: %v", n.id, e.Index, e.Epoch, err))
		}
		a.applyAddresses(cc)
	}
	a.applied, a.appliedEpoch = e.Index, e.Epoch
	a.sinceEntries++
	a.sinceBytes += uint64(len(e.Data))
}

// applyAddresses updates the address books and the transport for a
// membership change, before the engine starts sending to a new member.
func (a *applier) applyAddresses(cc consensus.ConfChange) {
	n := a.n
	env, ok := decodeConfContext(cc.Context)
	for _, c := range cc.Changes {
		switch {
		case c.Type == consensus.RemoveNode:
			delete(a.book, c.NodeID)
			if c.NodeID == n.id {
				// The change is committed (it is being applied): the
				// group no longer needs this node, which stops, as an
				// etcd member removed from its cluster does.
				n.log.Warn("this node was removed from the group: stopping")
				n.signalStop(ErrRemoved)
			}
			if n.peers != nil {
				n.peers.remove(c.NodeID)
			}
		case ok && len(env.payload) > 0:
			addr := string(env.payload)
			a.book[c.NodeID] = addr
			if n.peers != nil {
				n.peers.set(c.NodeID, addr)
			}
		}
	}
}

// install replaces the state with a snapshot (recovery, or from the
// leader).
func (a *applier) install(s *consensus.Snapshot) error {
	n := a.n
	ss, book, data, err := decodeSnapshot(s.Data)
	if err != nil {
		return fmt.Errorf("snapshot %d: %w", s.Meta.Index, err)
	}
	if err := a.sm.Restore(bytes.NewReader(data)); err != nil {
		return fmt.Errorf("node: restore the state machine from snapshot %d: %w", s.Meta.Index, err)
	}
	a.sessions, a.book = ss, book
	a.applied, a.appliedEpoch = s.Meta.Index, s.Meta.Epoch
	a.sinceEntries, a.sinceBytes = 0, 0
	if n.peers != nil {
		for id, addr := range book {
			n.peers.set(id, addr)
		}
	}
	// Our proposals that the snapshot covers were applied, but their
	// results were folded into it.
	var covered []uint64
	mine := sessionKey{n.id, n.incarnation}
	n.props.each(func(p *proposal) {
		if p.kind == propNormal && a.sessions.applied(mine, p.seq) {
			covered = append(covered, p.seq)
		}
	})
	for _, seq := range covered {
		n.props.settle(seq, result{err: fmt.Errorf("%w: applied, but its result was folded into the leader's snapshot %d", ErrOutcomeUnknown, s.Meta.Index)})
	}
	return nil
}

// maybeSnapshot takes a snapshot when enough was applied since the last one
// and none is under way, and hands it to the engine goroutine to be saved.
func (a *applier) maybeSnapshot() {
	n := a.n
	if a.applied == 0 || (a.sinceEntries < n.cfg.SnapshotEntries && a.sinceBytes < n.cfg.SnapshotBytes) {
		return
	}
	if !n.snapInFlight.CompareAndSwap(false, true) {
		return
	}
	a.sinceEntries, a.sinceBytes = 0, 0
	var buf bytes.Buffer
	buf.Write(encodeSnapshotHeader(a.sessions, a.book))
	if err := a.sm.Snapshot(&buf); err != nil {
		n.log.Error("state machine snapshot failed", "index", a.applied, "err", err)
		n.snapInFlight.Store(false)
		return
	}
	j := &snapJob{meta: consensus.SnapshotMeta{Index: a.applied, Epoch: a.appliedEpoch}, data: buf.Bytes()}
	select {
	case n.snapTaken <- j:
	case <-n.stopc:
	}
}
