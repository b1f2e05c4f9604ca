package sim

import (
	"fmt"
	"slices"

	"github.com/ballotdb/ballot/consensus"
)

// image is one view of a node's stable storage: the latest snapshot, the log
// entries after it, and the HardState. It follows the WAL's replay rules: a
// snapshot drops the entries it covers, a truncation drops a suffix, an
// entry replaces its index.
type image struct {
	hs   consensus.HardState
	snap consensus.Snapshot
	ents []consensus.Entry // contiguous, first index snap.Meta.Index+1
	// keepSuffix makes a snapshot install drop only the entries it
	// covers (consensus.Ready's contract, the WAL's replay rule), not the
	// whole log.
	keepSuffix bool
}

func (im *image) clone() image {
	return image{hs: im.hs, snap: im.snap, ents: slices.Clone(im.ents), keepSuffix: im.keepSuffix}
}

func (im *image) lastIndex() uint64 { return im.snap.Meta.Index + uint64(len(im.ents)) }

// epochAt returns the epoch of the entry at i, and whether the image knows it.
func (im *image) epochAt(i uint64) (uint64, bool) {
	switch {
	case i == im.snap.Meta.Index:
		return im.snap.Meta.Epoch, true
	case i < im.snap.Meta.Index || i > im.lastIndex():
		return 0, false
	}
	return im.ents[i-im.snap.Meta.Index-1].Epoch, true
}

func (im *image) entryAt(i uint64) (consensus.Entry, bool) {
	if i <= im.snap.Meta.Index || i > im.lastIndex() {
		return consensus.Entry{}, false
	}
	return im.ents[i-im.snap.Meta.Index-1], true
}

type opKind uint8

const (
	opInstall opKind = iota // a snapshot received from the leader (drops the whole log)
	opCompact               // the application's own snapshot (drops the covered prefix)
	opTruncate
	opEntry
	opHardState
)

// diskOp is one write, in the order the runtime issues them.
type diskOp struct {
	kind  opKind
	snap  consensus.Snapshot
	after uint64
	ent   consensus.Entry
	hs    consensus.HardState
}

func (op diskOp) String() string {
	switch op.kind {
	case opInstall:
		return fmt.Sprintf("install-snap %d/%d", op.snap.Meta.Index, op.snap.Meta.Epoch)
	case opCompact:
		return fmt.Sprintf("compact-snap %d/%d", op.snap.Meta.Index, op.snap.Meta.Epoch)
	case opTruncate:
		return fmt.Sprintf("truncate-after %d", op.after)
	case opEntry:
		return "entry " + op.ent.String()
	}
	return fmt.Sprintf("hardstate %+v", op.hs)
}

// apply performs op on the image. A write that would leave a hole in the log
// is an engine bug (entries must arrive in order) and is reported.
func (im *image) apply(op diskOp) error {
	switch op.kind {
	case opInstall:
		if im.keepSuffix && op.snap.Meta.Index >= im.snap.Meta.Index && op.snap.Meta.Index < im.lastIndex() {
			// Drop only what the snapshot covers.
			im.ents = slices.Clone(im.ents[op.snap.Meta.Index-im.snap.Meta.Index:])
		} else {
			im.ents = nil
		}
		im.snap = op.snap
	case opCompact:
		if op.snap.Meta.Index <= im.snap.Meta.Index {
			return nil
		}
		drop := min(op.snap.Meta.Index-im.snap.Meta.Index, uint64(len(im.ents)))
		im.ents = slices.Clone(im.ents[drop:])
		im.snap = op.snap
		if len(im.ents) > 0 && im.ents[0].Index != im.snap.Meta.Index+1 {
			im.ents = nil
		}
	case opTruncate:
		if op.after < im.snap.Meta.Index {
			return fmt.Errorf("truncation after %d is below the snapshot at %d", op.after, im.snap.Meta.Index)
		}
		if op.after < im.lastIndex() {
			im.ents = im.ents[:op.after-im.snap.Meta.Index]
		}
	case opEntry:
		e := op.ent
		first := im.snap.Meta.Index + 1
		switch {
		case e.Index < first:
			// Covered by the snapshot already.
		case e.Index-first < uint64(len(im.ents)):
			im.ents[e.Index-first] = e
		case e.Index-first == uint64(len(im.ents)):
			im.ents = append(im.ents, e)
		default:
			return fmt.Errorf("entry %d written with the log ending at %d: a hole", e.Index, im.lastIndex())
		}
	case opHardState:
		im.hs = op.hs
	}
	return nil
}

// sharedLog is one virtual node's write-ahead log. Every group hosted on the
// node writes its records through it, each record tagged with the group's
// disk, in the order they were issued: one sync makes every group's writes
// durable together, and a crash keeps a prefix of the records of all groups
// together (the torn tail a WAL repairs) and loses the rest. In a
// single-group run the log carries one disk and this is a node's own log.
//
//	unsynced: | g1 entry 7 | g3 hardstate | g1 hardstate | g2 entry 12 | ...
//	            ^ a crash keeps a prefix of this, whatever the groups
type sharedLog struct {
	disks    []*disk // every group's storage on this node, in the order attached
	unsynced []logRecord
}

// logRecord is one write in the shared log, addressed to one group's disk.
type logRecord struct {
	d  *disk
	op diskOp
}

// recordError is a record that could not be replayed into its group's
// durable image: an engine bug, reported against that group.
type recordError struct {
	group int // the disk's group number (0 outside a multi-group run)
	err   error
}

func (e *recordError) Error() string { return e.err.Error() }
func (e *recordError) Unwrap() error { return e.err }

// attach adds a group's disk to the log, starting from the bootstrap
// configuration cs.
func (l *sharedLog) attach(cs consensus.ConfState, group int) *disk {
	d := &disk{log: l, group: group}
	d.durable.snap.Meta.ConfState = cs
	d.view = d.durable.clone()
	l.disks = append(l.disks, d)
	return d
}

// sync makes every record durable, whatever its group (one fsync).
func (l *sharedLog) sync() error {
	for _, r := range l.unsynced {
		if err := r.d.durable.apply(r.op); err != nil {
			return &recordError{group: r.d.group, err: err}
		}
	}
	l.unsynced = nil
	return nil
}

// crash loses every unsynced record after the first keep of them, of every
// group, and resets each group's view to what is durable.
func (l *sharedLog) crash(keep int) error {
	keep = min(keep, len(l.unsynced))
	for _, r := range l.unsynced[:keep] {
		if err := r.d.durable.apply(r.op); err != nil {
			return &recordError{group: r.d.group, err: err}
		}
	}
	l.unsynced = nil
	for _, d := range l.disks {
		d.view = d.durable.clone()
		d.recent = []consensus.Snapshot{d.durable.snap}
	}
	return nil
}

// disk is one group's stable storage on a node: what survives a crash
// (durable), and what the group has written so far (view = durable +
// its unsynced records, in order). Its writes go through the node's shared
// log, which decides when they become durable.
type disk struct {
	log   *sharedLog
	group int // the group's number, for reports (0 outside a multi-group run)
	// installKeepsSuffix: see image.keepSuffix. Set before the first write.
	installKeepsSuffix bool
	durable            image
	view               image
	// recent are the last few snapshots taken or installed, newest last,
	// kept as a snapshot store keeps its files.
	recent []consensus.Snapshot
}

const keepSnapshots = 4

// snapAt returns a kept snapshot with meta's index.
func (d *disk) snapAt(meta *consensus.Snapshot) (consensus.Snapshot, bool) {
	if meta == nil {
		return consensus.Snapshot{}, false
	}
	for _, s := range d.recent {
		if s.Meta.Index == meta.Meta.Index && s.Meta.Epoch == meta.Meta.Epoch {
			return s, true
		}
	}
	return consensus.Snapshot{}, false
}

// newDisk returns a disk alone on a log of its own.
func newDisk(cs consensus.ConfState) *disk {
	return (&sharedLog{}).attach(cs, 0)
}

func (d *disk) write(op diskOp) error {
	d.durable.keepSuffix, d.view.keepSuffix = d.installKeepsSuffix, d.installKeepsSuffix
	if err := d.view.apply(op); err != nil {
		return err
	}
	if op.kind == opInstall || op.kind == opCompact {
		d.recent = append(d.recent, op.snap)
		if len(d.recent) > keepSnapshots {
			d.recent = slices.Delete(d.recent, 0, len(d.recent)-keepSnapshots)
		}
	}
	d.log.unsynced = append(d.log.unsynced, logRecord{d: d, op: op})
	return nil
}

// writeSynced writes op and makes it durable at once (an atomic snapshot file
// followed by an fsync), after syncing what was written before it: the
// fsync of the shared log, which makes every group's earlier writes on the
// node durable too.
func (d *disk) writeSynced(op diskOp) error {
	if err := d.write(op); err != nil {
		return err
	}
	return d.log.sync()
}

// initial is what a restarting engine is given.
func (d *disk) initial() consensus.InitialState {
	im := d.durable
	return consensus.InitialState{
		HardState: im.hs,
		Snapshot:  im.snap.Meta,
		Entries:   slices.Clone(im.ents),
		Applied:   im.snap.Meta.Index,
	}
}
