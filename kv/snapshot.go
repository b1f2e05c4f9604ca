package kv

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"slices"
)

// Snapshot format constants; the format is described in the package doc.
const (
	snapMagic   = "BALLOTKV"
	snapVersion = 2
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ErrCorruptSnapshot is wrapped by Restore's error when the stream is
// truncated, fails its checksum, or does not describe a valid state.
var ErrCorruptSnapshot = errors.New("kv: corrupt snapshot")

// ErrSnapshotVersion is wrapped by Restore's error when the stream is a kv
// snapshot of a format version this code does not know.
var ErrSnapshotVersion = errors.New("kv: unknown snapshot format version")

type snapWriter struct {
	w   *bufio.Writer
	crc hash.Hash32
	buf [binary.MaxVarintLen64]byte
}

func (sw *snapWriter) write(b []byte) {
	sw.w.Write(b) // errors are sticky in bufio.Writer and reported by Flush
	sw.crc.Write(b)
}

func (sw *snapWriter) uvarint(v uint64) { sw.write(sw.buf[:binary.PutUvarint(sw.buf[:], v)]) }
func (sw *snapWriter) varint(v int64)   { sw.write(sw.buf[:binary.PutVarint(sw.buf[:], v)]) }
func (sw *snapWriter) bytes(b []byte) {
	sw.uvarint(uint64(len(b)))
	sw.write(b)
}

// Snapshot writes the whole state (applied index, revisions, every kept
// history entry, leases) to w in the format described in the package doc.
// Two stores with the same state write byte-identical snapshots.
func (s *Store) Snapshot(w io.Writer) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	sw := &snapWriter{w: bufio.NewWriterSize(w, 64<<10), crc: crc32.New(castagnoli)}
	sw.write([]byte(snapMagic))
	var v [4]byte
	binary.BigEndian.PutUint32(v[:], snapVersion)
	sw.write(v[:])

	sw.uvarint(s.applied)
	sw.varint(s.rev)
	sw.varint(s.compactRev)
	sw.uvarint(uint64(s.keys.Len()))
	s.keys.Scan(func(h *keyHist) bool {
		sw.bytes(h.key)
		sw.uvarint(uint64(len(h.vers)))
		for i := range h.vers {
			e := &h.vers[i]
			sw.varint(e.main)
			sw.varint(e.sub)
			if e.tomb {
				sw.write([]byte{1})
				continue
			}
			sw.write([]byte{0})
			sw.varint(e.create)
			sw.varint(e.ver)
			sw.varint(e.lease)
			sw.bytes(e.value)
		}
		return true
	})
	ids := make([]int64, 0, len(s.leases))
	for id := range s.leases {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	sw.uvarint(uint64(len(ids)))
	for _, id := range ids {
		l := s.leases[id]
		sw.varint(l.id)
		sw.varint(l.ttl)
		sw.varint(l.remaining)
	}
	mk := s.metaSorted()
	sw.uvarint(uint64(len(mk)))
	for _, k := range mk {
		sw.bytes([]byte(k))
		sw.bytes(s.meta[k])
	}
	binary.BigEndian.PutUint32(v[:], sw.crc.Sum32())
	sw.w.Write(v[:])
	if err := sw.w.Flush(); err != nil {
		return fmt.Errorf("kv: write snapshot: %w", err)
	}
	return nil
}

type snapReader struct {
	b   []byte
	err error
}

func (r *snapReader) fail(format string, a ...any) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: %s", ErrCorruptSnapshot, fmt.Sprintf(format, a...))
	}
}

func (r *snapReader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.fail("bad or truncated integer")
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *snapReader) varint() int64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.fail("bad or truncated integer")
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *snapReader) byte() byte {
	if r.err != nil {
		return 0
	}
	if len(r.b) == 0 {
		r.fail("truncated")
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

func (r *snapReader) bytes() []byte {
	n := r.uvarint()
	if r.err != nil {
		return nil
	}
	if n > uint64(len(r.b)) {
		r.fail("truncated byte string")
		return nil
	}
	out := append([]byte(nil), r.b[:n]...)
	r.b = r.b[n:]
	return out
}

// count reads a element count and checks it against the bytes left (each
// element takes at least min bytes), so a corrupt count cannot make
// Restore allocate without bound.
func (r *snapReader) count(min int) int {
	n := r.uvarint()
	if r.err == nil && n > uint64(len(r.b)/min) {
		r.fail("count %d larger than the data", n)
		return 0
	}
	return int(n)
}

// Restore replaces the whole state with the one in r (written by
// Snapshot). It reads the entire stream and checks it before touching the
// store: on any error the store is unchanged. A stream of another format
// version fails with an error wrapping ErrSnapshotVersion; a truncated,
// checksum-failing or inconsistent one with an error wrapping
// ErrCorruptSnapshot. The observer (SetObserver) is kept.
func (s *Store) Restore(r io.Reader) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return fmt.Errorf("kv: read snapshot: %w", err)
	}
	if len(data) < len(snapMagic)+4+4 || !bytes.Equal(data[:len(snapMagic)], []byte(snapMagic)) {
		return fmt.Errorf("%w: not a kv snapshot (bad magic or too short)", ErrCorruptSnapshot)
	}
	v := binary.BigEndian.Uint32(data[len(snapMagic):])
	if v < 1 || v > snapVersion {
		return fmt.Errorf("%w: version %d (this code reads versions 1 to %d)", ErrSnapshotVersion, v, snapVersion)
	}
	body, sum := data[:len(data)-4], binary.BigEndian.Uint32(data[len(data)-4:])
	if got := crc32.Checksum(body, castagnoli); got != sum {
		return fmt.Errorf("%w: checksum mismatch (stored %08x, computed %08x)", ErrCorruptSnapshot, sum, got)
	}
	ns, err := decodeState(body[len(snapMagic)+4:], v)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rev, s.compactRev, s.applied = ns.rev, ns.compactRev, ns.applied
	s.keys, s.revs, s.leases, s.meta = ns.keys, ns.revs, ns.leases, ns.meta
	return nil
}

// decodeState parses and validates a snapshot body into a fresh Store.
func decodeState(b []byte, format uint32) (*Store, error) {
	r := &snapReader{b: b}
	ns := &Store{}
	ns.reset()
	ns.applied = r.uvarint()
	ns.rev = r.varint()
	ns.compactRev = r.varint()
	if r.err == nil && (ns.rev < 1 || ns.compactRev < -1 || ns.compactRev > ns.rev) {
		r.fail("revision %d, compact revision %d", ns.rev, ns.compactRev)
	}
	nkeys := r.count(2)
	var prevKey []byte
	type attachment struct {
		key   []byte
		lease int64
	}
	var attached []attachment
	for i := 0; i < nkeys && r.err == nil; i++ {
		h := &keyHist{key: r.bytes()}
		if r.err == nil && (len(h.key) == 0 || (i > 0 && bytes.Compare(prevKey, h.key) >= 0)) {
			r.fail("keys out of order or empty")
		}
		prevKey = h.key
		n := r.count(3)
		if r.err == nil && n == 0 {
			r.fail("key %q has no history", h.key)
		}
		h.vers = make([]version, 0, n)
		for j := 0; j < n && r.err == nil; j++ {
			v := version{main: r.varint(), sub: r.varint()}
			switch r.byte() {
			case 0:
				v.create, v.ver, v.lease = r.varint(), r.varint(), r.varint()
				if val := r.bytes(); len(val) > 0 {
					v.value = val
				}
				if r.err == nil && (v.create < 1 || v.create > v.main || v.ver < 1) {
					r.fail("key %q: bad entry at revision %d", h.key, v.main)
				}
			case 1:
				v.tomb = true
			default:
				r.fail("key %q: bad entry kind", h.key)
			}
			if r.err != nil {
				break
			}
			if v.main < 2 || v.main > ns.rev || v.sub < 0 {
				r.fail("key %q: entry revision %d out of range", h.key, v.main)
			}
			if j > 0 {
				p := h.vers[j-1]
				if v.main < p.main || (v.main == p.main && v.sub <= p.sub) {
					r.fail("key %q: entries out of order", h.key)
				}
			}
			h.vers = append(h.vers, v)
		}
		if r.err != nil {
			break
		}
		ns.keys.Set(h)
		for _, v := range h.vers {
			if _, dup := ns.revs.Set(revEntry{main: v.main, sub: v.sub, key: h.key}); dup {
				r.fail("revision %d.%d written twice", v.main, v.sub)
			}
		}
		if cur := h.live(ns.rev); cur != nil && cur.lease != 0 {
			attached = append(attached, attachment{h.key, cur.lease})
		}
	}
	nleases := r.count(3)
	var prevID int64
	for i := 0; i < nleases && r.err == nil; i++ {
		l := &leaseRec{id: r.varint(), ttl: r.varint(), remaining: r.varint(), keys: make(map[string]struct{})}
		if r.err == nil && (l.id == 0 || (i > 0 && l.id <= prevID)) {
			r.fail("lease IDs out of order or zero")
		}
		prevID = l.id
		ns.leases[l.id] = l
	}
	if format >= 2 {
		nmeta := r.count(2)
		prev := ""
		for i := 0; i < nmeta && r.err == nil; i++ {
			k, val := string(r.bytes()), r.bytes()
			if r.err == nil && (k == "" || (i > 0 && k <= prev)) {
				r.fail("meta keys out of order or empty")
			}
			prev = k
			ns.meta[k] = val
		}
	}
	if r.err == nil && len(r.b) != 0 {
		r.fail("%d trailing bytes", len(r.b))
	}
	for _, a := range attached {
		if r.err != nil {
			break
		}
		l, ok := ns.leases[a.lease]
		if !ok {
			r.fail("key %q attached to missing lease %d", a.key, a.lease)
			break
		}
		l.keys[string(a.key)] = struct{}{}
	}
	if r.err != nil {
		return nil, r.err
	}
	return ns, nil
}
