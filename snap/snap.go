// Package snap stores state-machine snapshots as files: written atomically
// (temporary file, fsync, rename, fsync of the directory), checksummed,
// listed and pruned.
//
// # File format (version 1)
//
// A snapshot at index I written under epoch E is the file
// <dir>/<E as 16 hex>-<I as 16 hex>.snap:
//
//	| magic "BSNP" (4B) | version (1B) | meta length (4B LE) | meta (consensus.SnapshotMeta encoding) |
//	| data length (8B LE) | CRC32C of meta and data (4B LE) | data |
//
// Load verifies the checksum; a file that fails is refused with an error
// naming it (errors.Is(err, ErrCorrupt)) and never used.
package snap

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"path/filepath"
	"strings"

	"github.com/ballotdb/ballot/consensus"
	"github.com/ballotdb/ballot/vfs"
)

// Errors.
var (
	ErrCorrupt  = errors.New("snap: corrupt snapshot file")
	ErrNotFound = errors.New("snap: no snapshot")
)

const (
	magic      = "BSNP"
	version    = 1
	headerSize = 4 + 1 + 4
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// Store is a directory of snapshot files.
type Store struct {
	fs  vfs.FS
	dir string
	// Keep is how many snapshots Prune keeps. Default 2.
	Keep int
}

// Open returns the store in dir, creating the directory.
func Open(fsys vfs.FS, dir string) (*Store, error) {
	if err := fsys.MkdirAll(dir); err != nil {
		return nil, fmt.Errorf("snap: create %s: %w", dir, err)
	}
	return &Store{fs: fsys, dir: dir, Keep: 2}, nil
}

func (s *Store) name(meta consensus.SnapshotMeta) string {
	return filepath.Join(s.dir, fmt.Sprintf("%016x-%016x.snap", meta.Epoch, meta.Index))
}

// Save writes a snapshot durably and atomically.
func (s *Store) Save(meta consensus.SnapshotMeta, data []byte) error {
	m := meta.Marshal()
	buf := make([]byte, 0, headerSize+len(m)+12+len(data))
	buf = append(buf, magic...)
	buf = append(buf, version)
	buf = binary.LittleEndian.AppendUint32(buf, uint32(len(m)))
	buf = append(buf, m...)
	buf = binary.LittleEndian.AppendUint64(buf, uint64(len(data)))
	h := crc32.Update(0, crcTable, m)
	h = crc32.Update(h, crcTable, data)
	buf = binary.LittleEndian.AppendUint32(buf, h)
	buf = append(buf, data...)
	if err := vfs.WriteFileAtomic(s.fs, s.name(meta), buf); err != nil {
		return fmt.Errorf("snap: save %s: %w", s.name(meta), err)
	}
	return nil
}

// Load reads the snapshot at index.
func (s *Store) Load(index uint64) (consensus.SnapshotMeta, []byte, error) {
	names, err := s.list()
	if err != nil {
		return consensus.SnapshotMeta{}, nil, err
	}
	for i := len(names) - 1; i >= 0; i-- {
		if strings.HasSuffix(names[i], fmt.Sprintf("-%016x.snap", index)) {
			return s.read(filepath.Join(s.dir, names[i]))
		}
	}
	return consensus.SnapshotMeta{}, nil, fmt.Errorf("%w at index %d in %s", ErrNotFound, index, s.dir)
}

// Latest returns the newest snapshot, or ErrNotFound.
func (s *Store) Latest() (consensus.SnapshotMeta, []byte, error) {
	names, err := s.list()
	if err != nil {
		return consensus.SnapshotMeta{}, nil, err
	}
	var best string
	var bestIdx uint64
	for _, n := range names {
		var e, i uint64
		if _, err := fmt.Sscanf(n, "%016x-%016x.snap", &e, &i); err == nil && (best == "" || i > bestIdx) {
			best, bestIdx = n, i
		}
	}
	if best == "" {
		return consensus.SnapshotMeta{}, nil, fmt.Errorf("%w in %s", ErrNotFound, s.dir)
	}
	return s.read(filepath.Join(s.dir, best))
}

func (s *Store) list() ([]string, error) {
	names, err := s.fs.List(s.dir)
	if err != nil {
		return nil, fmt.Errorf("snap: list %s: %w", s.dir, err)
	}
	var out []string
	for _, n := range names {
		if strings.HasSuffix(n, ".snap") {
			out = append(out, n)
		}
	}
	return out, nil
}

func (s *Store) read(path string) (consensus.SnapshotMeta, []byte, error) {
	b, err := vfs.ReadFile(s.fs, path)
	if err != nil {
		return consensus.SnapshotMeta{}, nil, fmt.Errorf("snap: read %s: %w", path, err)
	}
	bad := func(off int, what string) error {
		return fmt.Errorf("%w: %s at offset %d: %s", ErrCorrupt, path, off, what)
	}
	if len(b) < headerSize || string(b[:4]) != magic {
		return consensus.SnapshotMeta{}, nil, bad(0, "bad magic")
	}
	if b[4] != version {
		return consensus.SnapshotMeta{}, nil, bad(4, fmt.Sprintf("unsupported version %d", b[4]))
	}
	ml := int(binary.LittleEndian.Uint32(b[5:]))
	off := headerSize
	if ml > len(b)-off-12 {
		return consensus.SnapshotMeta{}, nil, bad(5, "meta length beyond the file")
	}
	m := b[off : off+ml]
	off += ml
	dl := binary.LittleEndian.Uint64(b[off:])
	crc := binary.LittleEndian.Uint32(b[off+8:])
	off += 12
	if dl != uint64(len(b)-off) {
		return consensus.SnapshotMeta{}, nil, bad(off-12, fmt.Sprintf("data length %d but %d bytes follow", dl, len(b)-off))
	}
	data := b[off:]
	h := crc32.Update(0, crcTable, m)
	if crc32.Update(h, crcTable, data) != crc {
		return consensus.SnapshotMeta{}, nil, bad(off-4, "checksum mismatch")
	}
	meta, err := consensus.UnmarshalSnapshotMeta(m)
	if err != nil {
		return consensus.SnapshotMeta{}, nil, bad(headerSize, err.Error())
	}
	return meta, data, nil
}

// Prune removes all but the newest Keep snapshots.
func (s *Store) Prune() error {
	names, err := s.list()
	if err != nil {
		return err
	}
	type f struct {
		name string
		idx  uint64
	}
	var fs []f
	for _, n := range names {
		var e, i uint64
		if _, err := fmt.Sscanf(n, "%016x-%016x.snap", &e, &i); err == nil {
			fs = append(fs, f{n, i})
		}
	}
	for i := 0; i < len(fs); i++ {
		for j := i + 1; j < len(fs); j++ {
			if fs[j].idx < fs[i].idx {
				fs[i], fs[j] = fs[j], fs[i]
			}
		}
	}
	keep := max(s.Keep, 1)
	removed := false
	for len(fs) > keep {
		if err := s.fs.Remove(filepath.Join(s.dir, fs[0].name)); err != nil {
			return fmt.Errorf("snap: prune: %w", err)
		}
		fs = fs[1:]
		removed = true
	}
	if removed {
		return s.fs.SyncDir(s.dir)
	}
	return nil
}
