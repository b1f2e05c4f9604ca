package node

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"slices"
	"syscall"
	"time"

	"github.com/ballotdb/ballot/consensus"
	"github.com/ballotdb/ballot/snap"
	"github.com/ballotdb/ballot/wal"
)

// recovered is what Start found in the data directory.
type recovered struct {
	initial   consensus.InitialState
	app       *applier
	bootstrap bool // a new group, from Config.Peers
	join      bool // a new member, waiting to be added
}

// recover opens the WAL and the snapshot store, restores the state machine
// from the latest snapshot and builds the engine's initial state.
func (n *Node) recover(sm StateMachine) (*recovered, error) {
	cfg := n.cfg
	if err := cfg.FS.MkdirAll(cfg.DataDir); err != nil {
		return nil, fmt.Errorf("node: create data dir %s: %w", cfg.DataDir, err)
	}
	w, st, err := wal.Open(cfg.FS, n.walDir(), wal.Options{
		Meta:         wal.Metadata{ClusterID: cfg.ClusterID, NodeID: uint64(cfg.ID)},
		SegmentBytes: cfg.WALSegmentBytes,
	})
	if err != nil {
		if errors.Is(err, wal.ErrMismatch) {
			return nil, fmt.Errorf("node: data dir %s belongs to another cluster or node (want cluster %x node %d): %w",
				cfg.DataDir, cfg.ClusterID, cfg.ID, err)
		}
		return nil, fmt.Errorf("node: data dir %s: %w", cfg.DataDir, err)
	}
	n.wal = w
	if st.TornTailRepaired != "" {
		n.log.Warn("recovery cut a torn WAL tail", "where", st.TornTailRepaired)
	}
	fail := func(err error) (*recovered, error) {
		w.Close()
		return nil, err
	}
	if n.snaps, err = snap.Open(cfg.FS, n.snapDir()); err != nil {
		return fail(fmt.Errorf("node: data dir %s: %w", cfg.DataDir, err))
	}
	rec := &recovered{app: newApplier(n, sm)}
	if st.Snapshot.Index > 0 {
		_, data, err := n.snaps.Load(st.Snapshot.Index)
		if err != nil {
			return fail(fmt.Errorf("node: data dir %s: the log starts after snapshot %d: %w", cfg.DataDir, st.Snapshot.Index, err))
		}
		if err := rec.app.install(&consensus.Snapshot{Meta: st.Snapshot, Data: data}); err != nil {
			return fail(fmt.Errorf("node: data dir %s: %w", cfg.DataDir, err))
		}
		n.applied.Store(st.Snapshot.Index)
	}
	fresh := st.HardState.IsEmpty() && len(st.Entries) == 0 && st.Snapshot.Index == 0
	switch {
	case !fresh && cfg.ForceNewCluster:
		init, err := n.forceNewCluster(rec.app, st)
		if err != nil {
			return fail(err)
		}
		rec.initial = init
	case !fresh:
		rec.initial = consensus.InitialState{HardState: st.HardState, Snapshot: st.Snapshot,
			Entries: st.Entries, Applied: st.Snapshot.Index}
	case cfg.Join:
		rec.join = true
	default:
		if _, ok := cfg.Peers[cfg.ID]; !ok {
			return fail(fmt.Errorf("node: Config.Peers must include this node (%d) to bootstrap a new group in %s, or set Config.Join", cfg.ID, cfg.DataDir))
		}
		voters := slices.Sorted(maps.Keys(cfg.Peers))
		rec.initial = consensus.InitialState{Snapshot: consensus.SnapshotMeta{ConfState: consensus.ConfState{Voters: voters}}}
		rec.bootstrap = true
	}
	return rec, nil
}

// forceNewCluster turns this member's data into a one-member group, for
// disaster recovery when a majority is lost for good. It applies every
// entry in the local log, also those this member had not yet learned were
// committed (an entry acknowledged to a client was committed, and may be
// among them; keeping an unacknowledged one is harmless), then records a
// snapshot of the result whose membership is this node alone, and starts
// from it. Other members' addresses are forgotten.
func (n *Node) forceNewCluster(app *applier, st *wal.State) (consensus.InitialState, error) {
	for i := range st.Entries {
		app.apply(&st.Entries[i])
	}
	if n.cause() != nil {
		return consensus.InitialState{}, fmt.Errorf("node: force new cluster: this member applied its own removal from the group (%w)", ErrRemoved)
	}
	app.book = map[consensus.NodeID]string{n.id: n.cfg.Peers[n.id]}
	var buf bytes.Buffer
	buf.Write(encodeSnapshotHeader(app.sessions, app.book))
	if err := app.sm.Snapshot(&buf); err != nil {
		return consensus.InitialState{}, fmt.Errorf("node: force new cluster: snapshot: %w", err)
	}
	// The epoch (Raft's term, Paxos's promised ballot) stays: the engine
	// moves past it when it campaigns alone.
	epoch := max(st.HardState.Epoch, app.appliedEpoch)
	meta := consensus.SnapshotMeta{Index: app.applied, Epoch: app.appliedEpoch,
		ConfState: consensus.ConfState{Voters: []consensus.NodeID{n.id}}}
	if err := n.snaps.Save(meta, buf.Bytes()); err != nil {
		return consensus.InitialState{}, fmt.Errorf("node: force new cluster: %w", err)
	}
	hs := consensus.HardState{Epoch: epoch, Vote: st.HardState.Vote, Commit: app.applied}
	if err := n.wal.Save(n.ctx, wal.Batch{Snapshot: &meta, HardState: hs}); err != nil {
		return consensus.InitialState{}, fmt.Errorf("node: force new cluster: %w", err)
	}
	if err := n.wal.ReleaseTo(meta.Index); err != nil {
		n.log.Warn("releasing WAL segments failed", "index", meta.Index, "err", err)
	}
	n.applied.Store(meta.Index)
	n.log.Warn("forced a new one-member cluster from this member's data", "index", meta.Index, "epoch", epoch,
		"dropped_members", st.Snapshot.ConfState.String())
	return consensus.InitialState{HardState: hs, Snapshot: meta, Applied: meta.Index}, nil
}

// persistJob is one Ready's durable part, handed to the persister. A job
// that failed for lack of space is handed again later and resumes where it
// stopped (the WAL stays usable after ENOSPC).
type persistJob struct {
	snap      *consensus.Snapshot // from the leader: into the snap store first
	snapSaved bool
	batches   []wal.Batch
	next      int // batches[:next] are durable
	hs        consensus.HardState
	err       error
}

func (n *Node) runPersister() {
	for {
		select {
		case <-n.stopc:
			return
		case j := <-n.persist:
			j.err = n.doPersist(j)
			select {
			case n.persisted <- j:
			case <-n.stopc:
				return
			}
		}
	}
}

func (n *Node) doPersist(j *persistJob) error {
	if j.snap != nil && !j.snapSaved {
		start := time.Now()
		if err := n.snaps.Save(j.snap.Meta, j.snap.Data); err != nil {
			return err
		}
		j.snapSaved = true
		n.obs.SnapshotSaved(SnapshotSave{Index: j.snap.Meta.Index, Term: j.snap.Meta.Epoch, Bytes: len(j.snap.Data),
			Duration: time.Since(start), FromLeader: true})
	}
	for j.next < len(j.batches) {
		b := &j.batches[j.next]
		start := time.Now()
		err := n.wal.Save(n.ctx, *b)
		n.obs.WALWritten(WALWrite{Duration: time.Since(start), Bytes: entriesBytes(b.Entries), Entries: b.Entries,
			Truncate: b.Truncate, TruncateAfter: b.TruncateAfter, Err: err})
		if err != nil {
			return err
		}
		j.next++
	}
	if j.snap != nil {
		if err := n.snaps.Prune(); err != nil {
			n.log.Warn("pruning snapshots failed", "err", err)
		}
	}
	return nil
}

// isNoSpace reports whether err is a full disk that left the WAL usable.
func isNoSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC) && !errors.Is(err, wal.ErrBroken)
}

// snapJob is a local snapshot: taken by the apply goroutine, completed with
// its membership by the engine goroutine, saved by the snapshotter.
type snapJob struct {
	meta consensus.SnapshotMeta
	data []byte
	err  error
}

// runSnapshotter saves local snapshots and attaches snapshot data to the
// engine's MsgSnap before sending it, off the engine goroutine.
func (n *Node) runSnapshotter() {
	for {
		select {
		case <-n.stopc:
			return
		case j := <-n.snapSave:
			j.err = n.saveSnapshot(j)
			select {
			case n.snapSaved <- j:
			case <-n.stopc:
				return
			}
		case m := <-n.snapSend:
			n.sendSnapshot(m)
		}
	}
}

// saveSnapshot makes a local snapshot durable, records it in the WAL and
// releases what it covers: the file first, so the WAL never points at a
// snapshot that is not there.
func (n *Node) saveSnapshot(j *snapJob) error {
	start := time.Now()
	if err := n.snaps.Save(j.meta, j.data); err != nil {
		return err
	}
	if err := n.wal.Save(n.ctx, wal.Batch{Snapshot: &j.meta}); err != nil {
		return err
	}
	n.obs.SnapshotSaved(SnapshotSave{Index: j.meta.Index, Term: j.meta.Epoch, Bytes: len(j.data), Duration: time.Since(start)})
	if err := n.wal.ReleaseTo(j.meta.Index); err != nil {
		n.log.Warn("releasing WAL segments failed", "index", j.meta.Index, "err", err)
	}
	if err := n.snaps.Prune(); err != nil {
		n.log.Warn("pruning snapshots failed", "err", err)
	}
	return nil
}

// sendSnapshot attaches the data of the snapshot the engine names to its
// MsgSnap and sends it.
func (n *Node) sendSnapshot(m consensus.Message) {
	_, data, err := n.snaps.Load(m.Snapshot.Meta.Index)
	if err != nil {
		n.log.Error("snapshot for a lagging peer not found", "peer", m.To, "index", m.Snapshot.Meta.Index, "err", err)
		n.reports.snapshot(m.To, false)
		return
	}
	m.Snapshot = &consensus.Snapshot{Meta: m.Snapshot.Meta, Data: data}
	n.log.Info("sending snapshot", "peer", m.To, "index", m.Snapshot.Meta.Index, "bytes", len(data))
	n.obs.MessageSent(m)
	n.tr.Send([]consensus.Message{m})
}
