package wal

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math/bits"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/ballotdb/ballot/consensus"
	"github.com/ballotdb/ballot/vfs"
)

// Errors callers branch on with errors.Is.
var (
	// ErrCorrupt: a record before the tail fails its checksum or does not
	// decode. The error names the file and offset.
	ErrCorrupt = errors.New("wal: corrupt")
	// ErrMismatch: the directory holds the log of another cluster or node.
	ErrMismatch = errors.New("wal: log belongs to another cluster or node")
	// ErrBroken: an earlier write or fsync failed; the WAL accepts nothing
	// more and the node must restart from disk.
	ErrBroken = errors.New("wal: broken by an earlier I/O failure")
	// ErrTooLarge: one batch is larger than a segment can hold.
	ErrTooLarge = errors.New("wal: batch too large")
	// ErrClosed: the WAL was closed.
	ErrClosed = errors.New("wal: closed")
)

const (
	formatVersion = 1
	frameHeader   = 8
	frameAlign    = 8
	// DefaultSegmentBytes is the default preallocated segment size.
	DefaultSegmentBytes = 64 << 20

	recHeader    = 1
	recEntry     = 2
	recHardState = 3
	recTruncate  = 4
	recSnapshot  = 5
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// Metadata identifies whose log this is; it is written into every segment.
type Metadata struct {
	ClusterID uint64
	NodeID    uint64
}

// Options configures a WAL.
type Options struct {
	// Meta is checked against the log on Open (a zero field is not
	// checked) and written into new segments.
	Meta Metadata
	// SegmentBytes is the preallocated size of each segment.
	// Default DefaultSegmentBytes.
	SegmentBytes int64
}

// Batch is what one Ready asks to make durable, applied in this order on
// replay: snapshot, truncation, entries (each replacing its index), hard
// state.
type Batch struct {
	Snapshot      *consensus.SnapshotMeta
	Truncate      bool
	TruncateAfter uint64
	Entries       []consensus.Entry
	HardState     consensus.HardState
}

// Empty reports whether b holds nothing to write.
func (b *Batch) Empty() bool {
	return b.Snapshot == nil && !b.Truncate && len(b.Entries) == 0 && b.HardState.IsEmpty()
}

// State is what recovery found.
type State struct {
	Meta      Metadata
	HardState consensus.HardState
	Snapshot  consensus.SnapshotMeta
	// Entries after Snapshot.Index, in index order. Contiguous for a Raft
	// log; a Paxos log may have holes.
	Entries []consensus.Entry
	// TornTailRepaired says recovery cut a torn tail, and where.
	TornTailRepaired string
}

type segment struct {
	seq      uint64
	name     string
	maxIndex uint64 // highest entry index written into it
	snapIdx  uint64 // highest snapshot index recorded in it (or restated)
}

// WAL is an open write-ahead log. Its methods are safe for concurrent use.
type WAL struct {
	fs   vfs.FS
	dir  string
	opts Options

	mu sync.Mutex
	// group holds the batches saved since the last flush began, encoded,
	// waiting for the next flush; nil when there are none.
	group     *flushGroup
	flushing  bool
	flushDone chan struct{}
	broken    error
	// dirtyTo is the end of bytes a failed write may have left after
	// offset in the current segment; the next write zeroes them.
	dirtyTo      int64
	closed       bool
	durableHS    consensus.HardState
	durableSnap  consensus.SnapshotMeta
	segs         []segment
	file         vfs.File // the last segment, open for writing
	fileName     string   // its name now (a file keeps the name it was created under)
	offset       int64    // next write offset in file
	fsyncs       uint64
	batchesSaved uint64
	// spare is the buffer of the last finished flush group, empty, for
	// the next group to encode into (nil when none).
	spare []byte
}

// spareBytesMax bounds the group buffer kept for reuse between flushes.
const spareBytesMax = 4 << 20

// Open opens the log in dir, creating it if empty, and recovers its state.
func Open(fsys vfs.FS, dir string, opts Options) (*WAL, *State, error) {
	if opts.SegmentBytes == 0 {
		opts.SegmentBytes = DefaultSegmentBytes
	}
	if opts.SegmentBytes < 4096 {
		return nil, nil, fmt.Errorf("wal: Options.SegmentBytes %d is below 4096", opts.SegmentBytes)
	}
	if err := fsys.MkdirAll(dir); err != nil {
		return nil, nil, fmt.Errorf("wal: create %s: %w", dir, err)
	}
	w := &WAL{fs: fsys, dir: dir, opts: opts, flushDone: make(chan struct{})}
	names, err := fsys.List(dir)
	if err != nil {
		return nil, nil, fmt.Errorf("wal: list %s: %w", dir, err)
	}
	var segNames []string
	for _, n := range names {
		switch {
		case strings.HasSuffix(n, ".wal.tmp"):
			// A segment whose creation did not finish: never used.
			if err := fsys.Remove(filepath.Join(dir, n)); err != nil {
				return nil, nil, fmt.Errorf("wal: remove %s: %w", n, err)
			}
		case strings.HasSuffix(n, ".wal"):
			segNames = append(segNames, n)
		}
	}
	slices.Sort(segNames)
	st := &State{Meta: opts.Meta}
	rp := newReplay()
	for i, n := range segNames {
		seq, err := strconv.ParseUint(strings.TrimSuffix(n, ".wal"), 16, 64)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: unexpected segment name %s", ErrCorrupt, filepath.Join(dir, n))
		}
		last := i == len(segNames)-1
		seg, end, torn, err := w.readSegment(filepath.Join(dir, n), seq, rp, last)
		if err != nil {
			return nil, nil, err
		}
		if rp.meta != (Metadata{}) {
			if (opts.Meta.ClusterID != 0 && rp.meta.ClusterID != opts.Meta.ClusterID) ||
				(opts.Meta.NodeID != 0 && rp.meta.NodeID != opts.Meta.NodeID) {
				return nil, nil, fmt.Errorf("%w: %s holds cluster %x node %d, expected cluster %x node %d",
					ErrMismatch, dir, rp.meta.ClusterID, rp.meta.NodeID, opts.Meta.ClusterID, opts.Meta.NodeID)
			}
			st.Meta = rp.meta
		}
		w.segs = append(w.segs, seg)
		if last {
			w.durableHS, w.durableSnap = rp.hs, rp.snap
			if torn != "" {
				st.TornTailRepaired = torn
			}
			if err := w.openTail(seg.name, end, torn != ""); err != nil {
				return nil, nil, err
			}
		}
	}
	if w.opts.Meta == (Metadata{}) {
		w.opts.Meta = st.Meta
	}
	st.HardState, st.Snapshot, st.Entries = rp.hs, rp.snap, rp.entries()
	w.durableHS, w.durableSnap = rp.hs, rp.snap
	if len(w.segs) == 0 {
		if err := w.roll(); err != nil {
			return nil, nil, err
		}
	}
	return w, st, nil
}

// replay accumulates state while reading segments in order.
type replay struct {
	meta Metadata
	hs   consensus.HardState
	snap consensus.SnapshotMeta
	ents map[uint64]consensus.Entry
}

func newReplay() *replay { return &replay{ents: map[uint64]consensus.Entry{}} }

func (rp *replay) entries() []consensus.Entry {
	out := make([]consensus.Entry, 0, len(rp.ents))
	for _, e := range rp.ents {
		out = append(out, e)
	}
	slices.SortFunc(out, func(a, b consensus.Entry) int { return cmp.Compare(a.Index, b.Index) })
	return out
}

// readSegment replays one segment. It returns the offset where the next frame
// goes, and a description of a torn tail it found (only allowed when last).
func (w *WAL) readSegment(path string, seq uint64, rp *replay, last bool) (segment, int64, string, error) {
	seg := segment{seq: seq, name: path}
	data, err := vfs.ReadFile(w.fs, path)
	if err != nil {
		return seg, 0, "", fmt.Errorf("wal: read %s: %w", path, err)
	}
	off := int64(0)
	for {
		payload, next, ok := parseFrame(data, off)
		if !ok {
			break
		}
		if err := rp.apply(payload, &seg); err != nil {
			return seg, 0, "", fmt.Errorf("%w: %s at offset %d: %w", ErrCorrupt, path, off, err)
		}
		off = next
	}
	if off == 0 {
		// Not even the header frame: a segment whose first write did not
		// survive. Only acceptable as the last segment.
		if !last {
			return seg, 0, "", fmt.Errorf("%w: %s at offset 0: segment has no valid header", ErrCorrupt, path)
		}
	}
	if int(off) >= len(data) || allZero(data[off:]) {
		return seg, off, "", nil
	}
	// Something that is not a valid frame sits at off. A valid frame after
	// it means a frame the log had synced before writing later ones is now
	// damaged: corruption. Otherwise it is the torn last write.
	if bad := findValidFrame(data, off+frameAlign); bad >= 0 || !last {
		return seg, 0, "", fmt.Errorf("%w: %s at offset %d: frame fails its checksum", ErrCorrupt, path, off)
	}
	return seg, off, fmt.Sprintf("%s at offset %d", path, off), nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// parseFrame reads the frame at off; ok is false if there is none valid.
func parseFrame(data []byte, off int64) (payload []byte, next int64, ok bool) {
	if off+frameHeader > int64(len(data)) {
		return nil, 0, false
	}
	n := int64(binary.LittleEndian.Uint32(data[off:]))
	crc := binary.LittleEndian.Uint32(data[off+4:])
	if n == 0 || off+frameHeader+n > int64(len(data)) {
		return nil, 0, false
	}
	h := crc32.Update(0, crcTable, data[off:off+4])
	h = crc32.Update(h, crcTable, data[off+frameHeader:off+frameHeader+n])
	if h != crc {
		return nil, 0, false
	}
	return data[off+frameHeader : off+frameHeader+n], alignUp(off + frameHeader + n), true
}

// findValidFrame returns the offset of the first valid frame at or after
// from (on the frame alignment), or -1.
func findValidFrame(data []byte, from int64) int64 {
	for off := alignUp(from); off+frameHeader <= int64(len(data)); off += frameAlign {
		if binary.LittleEndian.Uint32(data[off:]) == 0 {
			continue
		}
		if _, _, ok := parseFrame(data, off); ok {
			return off
		}
	}
	return -1
}

func alignUp(x int64) int64 { return (x + frameAlign - 1) &^ (frameAlign - 1) }

// apply replays the records of one frame.
func (rp *replay) apply(payload []byte, seg *segment) error {
	off := 0
	for off < len(payload) {
		typ := payload[off]
		off++
		n, k := binary.Uvarint(payload[off:])
		if k <= 0 || n > uint64(len(payload)-off-k) {
			return fmt.Errorf("record length at payload offset %d", off)
		}
		off += k
		data := payload[off : off+int(n)]
		off += int(n)
		switch typ {
		case recHeader:
			d := data
			v, k1 := binary.Uvarint(d)
			if k1 <= 0 || v != formatVersion {
				return fmt.Errorf("unsupported format version %d", v)
			}
			d = d[k1:]
			var vals [3]uint64
			for i := range vals {
				x, k := binary.Uvarint(d)
				if k <= 0 {
					return fmt.Errorf("bad segment header")
				}
				vals[i], d = x, d[k:]
			}
			if vals[0] != seg.seq {
				return fmt.Errorf("segment header says sequence %d", vals[0])
			}
			rp.meta = Metadata{ClusterID: vals[1], NodeID: vals[2]}
		case recEntry:
			e, err := consensus.UnmarshalEntry(data)
			if err != nil {
				return err
			}
			if e.Index > rp.snap.Index {
				rp.ents[e.Index] = e
			}
			seg.maxIndex = max(seg.maxIndex, e.Index)
		case recHardState:
			hs, err := consensus.UnmarshalHardState(data)
			if err != nil {
				return err
			}
			rp.hs = hs
		case recTruncate:
			after, k := binary.Uvarint(data)
			if k <= 0 {
				return fmt.Errorf("bad truncate record")
			}
			for i := range rp.ents {
				if i > after {
					delete(rp.ents, i)
				}
			}
		case recSnapshot:
			m, err := consensus.UnmarshalSnapshotMeta(data)
			if err != nil {
				return err
			}
			if m.Index >= rp.snap.Index {
				rp.snap = m
			}
			seg.snapIdx = max(seg.snapIdx, m.Index)
			for i := range rp.ents {
				if i <= m.Index {
					delete(rp.ents, i)
				}
			}
		default:
			return fmt.Errorf("unknown record type %d", typ)
		}
	}
	return nil
}

// openTail opens the last segment for appending at end, re-zeroing a torn
// tail so that it cannot be mistaken for data later.
func (w *WAL) openTail(name string, end int64, repair bool) error {
	f, err := w.fs.OpenRW(name)
	if err != nil {
		return fmt.Errorf("wal: open %s: %w", name, err)
	}
	if repair {
		if err := f.Truncate(end); err != nil {
			f.Close()
			return fmt.Errorf("wal: cut torn tail of %s at %d: %w", name, end, err)
		}
		if err := f.Truncate(w.opts.SegmentBytes); err != nil {
			f.Close()
			return fmt.Errorf("wal: re-extend %s: %w", name, err)
		}
		if err := f.Sync(); err != nil {
			f.Close()
			return fmt.Errorf("wal: sync %s: %w", name, err)
		}
	}
	w.file, w.offset, w.fileName = f, end, name
	if end == 0 {
		// The segment lost even its header: write it again.
		seg := &w.segs[len(w.segs)-1]
		hdr := w.headerRecords(seg.seq)
		if err := w.writeFrame(hdr); err != nil {
			return err
		}
		if err := w.file.Sync(); err != nil {
			return fmt.Errorf("wal: sync %s: %w", name, err)
		}
	}
	return nil
}

func appendRecord(b []byte, typ byte, data []byte) []byte {
	b = append(b, typ)
	b = binary.AppendUvarint(b, uint64(len(data)))
	return append(b, data...)
}

// headerRecords is the first frame of a segment: the header, then the
// durable hard state and snapshot metadata restated.
func (w *WAL) headerRecords(seq uint64) []byte {
	var h []byte
	h = binary.AppendUvarint(h, formatVersion)
	h = binary.AppendUvarint(h, seq)
	h = binary.AppendUvarint(h, w.opts.Meta.ClusterID)
	h = binary.AppendUvarint(h, w.opts.Meta.NodeID)
	b := appendRecord(nil, recHeader, h)
	if w.durableSnap.Index > 0 {
		b = appendRecord(b, recSnapshot, w.durableSnap.Marshal())
	}
	if !w.durableHS.IsEmpty() {
		b = appendRecord(b, recHardState, w.durableHS.Marshal())
	}
	return b
}

// roll starts a new segment: created under a temporary name, preallocated,
// its header frame written and synced, renamed into place, directory synced.
// Only the flusher (or Open) calls it; it takes w.mu for the shared fields.
func (w *WAL) roll() error {
	w.mu.Lock()
	var seq uint64 = 1
	if n := len(w.segs); n > 0 {
		seq = w.segs[n-1].seq + 1
	}
	header := w.headerRecords(seq)
	snapIdx := w.durableSnap.Index
	w.mu.Unlock()
	name := filepath.Join(w.dir, fmt.Sprintf("%016x.wal", seq))
	tmp := name + ".tmp"
	f, err := w.fs.Create(tmp)
	if err != nil {
		return fmt.Errorf("wal: create %s: %w", tmp, err)
	}
	if err := f.Truncate(w.opts.SegmentBytes); err != nil {
		f.Close()
		return fmt.Errorf("wal: preallocate %s: %w", tmp, err)
	}
	old, oldOff, oldName := w.file, w.offset, w.fileName
	w.file, w.offset, w.fileName = f, 0, tmp
	if err := w.writeFrame(header); err != nil {
		f.Close()
		w.file, w.offset, w.fileName = old, oldOff, oldName
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		w.file, w.offset, w.fileName = old, oldOff, oldName
		return fmt.Errorf("wal: sync %s: %w", tmp, err)
	}
	if err := w.fs.Rename(tmp, name); err != nil {
		f.Close()
		w.file, w.offset, w.fileName = old, oldOff, oldName
		return fmt.Errorf("wal: rename %s: %w", tmp, err)
	}
	if err := w.fs.SyncDir(w.dir); err != nil {
		f.Close()
		w.file, w.offset, w.fileName = old, oldOff, oldName
		return fmt.Errorf("wal: sync dir %s: %w", w.dir, err)
	}
	w.fileName = name
	if old != nil {
		old.Close()
	}
	w.mu.Lock()
	w.segs = append(w.segs, segment{seq: seq, name: name, snapIdx: snapIdx})
	w.mu.Unlock()
	return nil
}

// writeFrame writes one frame at the current offset (no sync).
func (w *WAL) writeFrame(payload []byte) error {
	frame := make([]byte, frameHeader, frameHeader+len(payload)+frameAlign)
	return w.writeFrameBuf(append(frame, payload...))
}

// writeFrameBuf writes frame at the current offset (no sync). frame holds
// frameHeader bytes of room, then the payload; the header is filled in and
// the zero padding appended in place, so the caller's buffer changes.
func (w *WAL) writeFrameBuf(frame []byte) error {
	payload := frame[frameHeader:]
	n := alignUp(int64(len(frame)))
	// Pad to the alignment, and cover what an earlier failed write may
	// have left after this frame.
	buf := frame
	if pad := max(n, w.dirtyTo-w.offset) - int64(len(frame)); pad > 0 {
		buf = append(buf, make([]byte, pad)...)
	}
	binary.LittleEndian.PutUint32(buf, uint32(len(payload)))
	h := crc32.Update(0, crcTable, buf[:4])
	h = crc32.Update(h, crcTable, payload)
	binary.LittleEndian.PutUint32(buf[4:], h)
	if _, err := w.file.WriteAt(buf, w.offset); err != nil {
		return fmt.Errorf("wal: write %s at %d: %w", w.fileName, w.offset, err)
	}
	if w.dirtyTo <= w.offset+int64(len(buf)) {
		w.dirtyTo = 0
	}
	w.offset += n
	return nil
}

// recordLen is the length of a record whose data is n bytes long.
func recordLen(n int) int { return 1 + uvarintLen(uint64(n)) + n }

// uvarintLen is the number of bytes binary.AppendUvarint writes for x.
func uvarintLen(x uint64) int { return (bits.Len64(x|1) + 6) / 7 }

// batchLen is the length of b's records, exactly what encodeBatch appends.
func batchLen(b *Batch) int {
	n := 0
	if b.Snapshot != nil {
		n += recordLen(len(b.Snapshot.Marshal()))
	}
	if b.Truncate {
		n += recordLen(uvarintLen(b.TruncateAfter))
	}
	for i := range b.Entries {
		n += recordLen(consensus.EntryLen(&b.Entries[i]))
	}
	if !b.HardState.IsEmpty() {
		n += recordLen(consensus.HardStateLen(&b.HardState))
	}
	return n
}

// encodeBatch appends b's records to dst in one pass: dst grows at most
// once, and entries and the hard state are encoded straight into it (no
// per-record temporary). The bytes are those of appendRecord(…, Marshal())
// record by record.
func encodeBatch(dst []byte, b *Batch) []byte {
	if need := batchLen(b); cap(dst)-len(dst) < need {
		dst = slices.Grow(dst, need)
	}
	if b.Snapshot != nil {
		// Rare (one per snapshot): the plain way.
		dst = appendRecord(dst, recSnapshot, b.Snapshot.Marshal())
	}
	if b.Truncate {
		dst = append(dst, recTruncate)
		dst = binary.AppendUvarint(dst, uint64(uvarintLen(b.TruncateAfter)))
		dst = binary.AppendUvarint(dst, b.TruncateAfter)
	}
	for i := range b.Entries {
		e := &b.Entries[i]
		dst = append(dst, recEntry)
		dst = binary.AppendUvarint(dst, uint64(consensus.EntryLen(e)))
		dst = consensus.AppendEntry(dst, e)
	}
	if !b.HardState.IsEmpty() {
		dst = append(dst, recHardState)
		dst = binary.AppendUvarint(dst, uint64(consensus.HardStateLen(&b.HardState)))
		dst = consensus.AppendHardState(dst, &b.HardState)
	}
	return dst
}

// Save makes b durable, sharing the fsync with concurrent callers. It
// returns nil only once b (and every batch saved before it) is on stable
// storage. If ctx ends first it returns an error wrapping ctx.Err(); the
// batch may still become durable.
func (w *WAL) Save(ctx context.Context, b Batch) error {
	if b.Empty() {
		return nil
	}
	if n := int64(batchLen(&b)); n+frameHeader+frameAlign > w.opts.SegmentBytes/2 {
		return fmt.Errorf("%w: %d bytes (segments are %d)", ErrTooLarge, n, w.opts.SegmentBytes)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return ErrClosed
	}
	if w.broken != nil {
		return w.broken
	}
	g := w.group
	if g == nil {
		// The group's frame is built in place: its header is filled in
		// by writeFrameBuf. The buffer is the one the last flush
		// finished with, if any (see spare).
		g = &flushGroup{buf: append(w.spare[:0], make([]byte, frameHeader)...)}
		w.spare = nil
		w.group = g
	}
	// Encoded straight into the group's buffer, under w.mu: the flusher
	// takes the group (and its buffer) only under w.mu too.
	g.buf = encodeBatch(g.buf, &b)
	g.batches++
	for _, e := range b.Entries {
		g.maxIndex = max(g.maxIndex, e.Index)
	}
	if b.Snapshot != nil && b.Snapshot.Index >= g.snap.Index {
		g.snap = *b.Snapshot
	}
	if !b.HardState.IsEmpty() {
		g.hs = b.HardState
	}
	for !g.finished {
		if w.closed {
			return ErrClosed
		}
		if !w.flushing {
			w.flushLocked()
			continue
		}
		ch := w.flushDone
		w.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			w.mu.Lock()
			return fmt.Errorf("wal: save outcome unknown: %w", ctx.Err())
		}
		w.mu.Lock()
	}
	return g.err
}

// flushGroup is the batches one flush writes with one write and one fsync,
// and its outcome, shared by their callers.
type flushGroup struct {
	// buf is the frame: frameHeader bytes for the header, then the
	// records of every batch in the group.
	buf      []byte
	batches  uint64
	maxIndex uint64 // highest entry index in buf
	hs       consensus.HardState
	snap     consensus.SnapshotMeta
	finished bool
	err      error
}

// flushLocked writes and syncs the pending group as one frame.
// REQUIRES: w.mu is held; it is released during I/O.
func (w *WAL) flushLocked() {
	w.flushing = true
	g := w.group
	w.group = nil
	w.mu.Unlock()
	err, fatal := w.writeAndSync(g.buf, g.maxIndex, g.snap)
	w.mu.Lock()
	w.flushing = false
	switch {
	case err == nil:
		if !g.hs.IsEmpty() {
			w.durableHS = g.hs
		}
		if g.snap.Index >= w.durableSnap.Index {
			w.durableSnap = g.snap
		}
		w.fsyncs++
		w.batchesSaved += g.batches
	case fatal:
		w.broken = fmt.Errorf("%w: %w", ErrBroken, err)
		g.err = w.broken
	default:
		// Nothing was made durable and nothing reached the disk that a
		// later write will not overwrite: the group's callers get the
		// error and may save again; the log stays usable.
		g.err = err
	}
	g.finished = true
	// The frame is on disk (or failed): nothing reads g.buf any more —
	// the group's callers look only at finished and err — so the next
	// group reuses it, up to a bound so one huge batch does not pin its
	// buffer for good.
	if cap(g.buf) <= spareBytesMax {
		w.spare = g.buf[:0]
	}
	g.buf = nil
	close(w.flushDone)
	w.flushDone = make(chan struct{})
}

// writeAndSync writes buf as one frame and syncs it. A full disk
// (ENOSPC) while creating a segment or writing a frame is not fatal: the
// offset does not move, and the bytes a partial write may have left are
// zeroed by the next write. Any other failure, and any fsync failure, is.
//
// frame is frameHeader bytes of room for the header, then the payload;
// writeAndSync fills in the header and pads it in place.
func (w *WAL) writeAndSync(frame []byte, maxIx uint64, snap consensus.SnapshotMeta) (err error, fatal bool) {
	need := alignUp(int64(len(frame)))
	if w.offset+need > w.opts.SegmentBytes {
		if err := w.clearDirty(); err != nil {
			return err, !errors.Is(err, syscall.ENOSPC)
		}
		if err := w.roll(); err != nil {
			return err, !errors.Is(err, syscall.ENOSPC)
		}
	}
	if err := w.writeFrameBuf(frame); err != nil {
		w.dirtyTo = max(w.dirtyTo, w.offset+need)
		return err, !errors.Is(err, syscall.ENOSPC)
	}
	if err := w.file.Sync(); err != nil {
		return fmt.Errorf("wal: fsync %s: %w", w.fileName, err), true
	}
	w.mu.Lock()
	seg := &w.segs[len(w.segs)-1]
	seg.maxIndex = max(seg.maxIndex, maxIx)
	seg.snapIdx = max(seg.snapIdx, snap.Index)
	w.mu.Unlock()
	return nil, false
}

// clearDirty zeroes what a failed write left after offset, before the
// segment is closed for good: only the last segment may end in a torn
// frame.
func (w *WAL) clearDirty() error {
	if w.dirtyTo <= w.offset {
		return nil
	}
	if _, err := w.file.WriteAt(make([]byte, w.dirtyTo-w.offset), w.offset); err != nil {
		return fmt.Errorf("wal: zero %s at %d: %w", w.fileName, w.offset, err)
	}
	if err := w.file.Sync(); err != nil {
		return fmt.Errorf("wal: fsync %s: %w", w.fileName, err)
	}
	w.dirtyTo = 0
	return nil
}

// ReleaseTo deletes segments whose every entry is at or below index, a
// snapshot index already recorded durably in a later segment. The current
// segment is never deleted.
func (w *WAL) ReleaseTo(index uint64) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return ErrClosed
	}
	n := 0
	for n < len(w.segs)-1 {
		s := w.segs[n]
		if s.maxIndex > index {
			break
		}
		covered := false
		for _, later := range w.segs[n+1:] {
			if later.snapIdx >= s.maxIndex {
				covered = true
			}
		}
		if !covered {
			break
		}
		n++
	}
	for _, s := range w.segs[:n] {
		if err := w.fs.Remove(s.name); err != nil {
			return fmt.Errorf("wal: remove %s: %w", s.name, err)
		}
	}
	w.segs = w.segs[n:]
	if n > 0 {
		return w.fs.SyncDir(w.dir)
	}
	return nil
}

// Stats reports counters for benchmarks and metrics.
type Stats struct {
	Segments int
	Fsyncs   uint64
	Batches  uint64
}

// Stats returns the WAL's counters.
func (w *WAL) Stats() Stats {
	w.mu.Lock()
	defer w.mu.Unlock()
	return Stats{Segments: len(w.segs), Fsyncs: w.fsyncs, Batches: w.batchesSaved}
}

// Close closes the WAL. Pending Saves fail with ErrClosed.
func (w *WAL) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return nil
	}
	w.closed = true
	for w.flushing {
		ch := w.flushDone
		w.mu.Unlock()
		<-ch
		w.mu.Lock()
	}
	if w.file != nil {
		return w.file.Close()
	}
	return nil
}
