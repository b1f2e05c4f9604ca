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

// disk is a node's stable storage: what survives a crash (durable), and what
// the node has written so far (view = durable + unsynced, in order). A crash
// keeps a prefix of the unsynced writes: the torn tail a WAL repairs.
type disk struct {
	// installKeepsSuffix: see image.keepSuffix. Set before the first write.
	installKeepsSuffix bool
	durable            image
	view               image
	unsynced           []diskOp
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

func newDisk(cs consensus.ConfState) *disk {
	d := &disk{}
	d.durable.snap.Meta.ConfState = cs
	d.view = d.durable.clone()
	return d
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
	d.unsynced = append(d.unsynced, op)
	return nil
}

// writeSynced writes op and makes it durable at once (an atomic snapshot file
// followed by an fsync), after syncing what was written before it.
func (d *disk) writeSynced(op diskOp) error {
	if err := d.write(op); err != nil {
		return err
	}
	return d.sync()
}

func (d *disk) sync() error {
	for _, op := range d.unsynced {
		if err := d.durable.apply(op); err != nil {
			return err
		}
	}
	d.unsynced = nil
	return nil
}

// crash loses every unsynced write after the first keep of them.
func (d *disk) crash(keep int) error {
	keep = min(keep, len(d.unsynced))
	for _, op := range d.unsynced[:keep] {
		if err := d.durable.apply(op); err != nil {
			return err
		}
	}
	d.unsynced = nil
	d.view = d.durable.clone()
	d.recent = []consensus.Snapshot{d.durable.snap}
	return nil
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
