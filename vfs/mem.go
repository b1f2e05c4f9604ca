package vfs

import (
	"fmt"
	"io"
	"io/fs"
	"path/filepath"
	"slices"
	"sync"
)

// Mem is an in-memory file system that models durability. Every file has
// the bytes written to it and the bytes made durable by its last Sync; every
// directory has the entries made durable by its last SyncDir. Crash returns
// the file system as a power loss at this moment would leave it.
//
// Mem is safe for concurrent use.
type Mem struct {
	mu sync.Mutex
	// cur is the namespace as processes see it; durable is the namespace
	// as of the last SyncDir of each directory.
	cur     map[string]*memNode
	durable map[string]*memNode
	dirs    map[string]bool
}

type memNode struct {
	data   []byte // as written
	synced []byte // as of the last Sync
}

// NewMem returns an empty in-memory file system.
func NewMem() *Mem {
	return &Mem{cur: map[string]*memNode{}, durable: map[string]*memNode{}, dirs: map[string]bool{"/": true, ".": true}}
}

func clean(name string) string { return filepath.Clean(name) }

// Crash returns a new file system holding only what was durable: synced file
// bytes, in directory entries that were synced. keepTail, when non-nil,
// models a write torn by the power loss: for each file with unsynced
// changes it is told how many bytes follow the first unsynced byte and
// returns how many of them reached the disk, in order from that byte; the
// rest read back as they were at the last sync. Returning more than there
// are appends zeros, as a partially persisted or preallocated block would
// read back.
func (m *Mem) Crash(keepTail func(name string, unsynced int) int) *Mem {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := NewMem()
	for d := range m.dirs {
		out.dirs[d] = true
	}
	names := make([]string, 0, len(m.durable))
	for name := range m.durable {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		n := m.durable[name]
		data := slices.Clone(n.synced)
		if keepTail != nil {
			data = tornImage(n.data, n.synced, func(unsynced int) int { return keepTail(name, unsynced) })
		}
		nn := &memNode{data: data, synced: slices.Clone(data)}
		out.cur[name] = nn
		out.durable[name] = nn
	}
	return out
}

// tornImage returns synced with the first k bytes of the unsynced change
// (from the first byte where data and synced differ) persisted.
func tornImage(data, synced []byte, keep func(unsynced int) int) []byte {
	d := 0
	for d < len(data) && d < len(synced) && data[d] == synced[d] {
		d++
	}
	unsynced := max(len(data), len(synced)) - d
	if unsynced == 0 {
		return slices.Clone(synced)
	}
	k := max(keep(unsynced), 0)
	var out []byte
	if d+k <= len(data) {
		out = slices.Clone(data[:d+k])
	} else {
		out = append(slices.Clone(data), make([]byte, d+k-len(data))...)
	}
	if len(synced) > len(out) && len(data) >= len(synced) {
		// An overwrite inside the old length: the rest is still old.
		out = append(out, synced[len(out):]...)
	}
	return out
}

func (m *Mem) Create(name string) (File, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	name = clean(name)
	if !m.dirs[filepath.Dir(name)] {
		return nil, &fs.PathError{Op: "create", Path: name, Err: fs.ErrNotExist}
	}
	n := &memNode{}
	if old, ok := m.cur[name]; ok && m.durable[name] == old {
		// Truncating an existing file in place: the durable entry now
		// points at a file whose durable content is empty once synced.
		old.data = nil
		n = old
	}
	m.cur[name] = n
	return &memFile{fs: m, node: n, name: name}, nil
}

func (m *Mem) open(name string, rw bool) (File, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	name = clean(name)
	n, ok := m.cur[name]
	if !ok {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	}
	f := &memFile{fs: m, node: n, name: name, readOnly: !rw}
	if rw {
		f.off = int64(len(n.data))
	}
	return f, nil
}

func (m *Mem) Open(name string) (File, error)   { return m.open(name, false) }
func (m *Mem) OpenRW(name string) (File, error) { return m.open(name, true) }

func (m *Mem) Remove(name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	name = clean(name)
	if _, ok := m.cur[name]; ok {
		delete(m.cur, name)
		return nil
	}
	if m.dirs[name] {
		for p := range m.cur {
			if filepath.Dir(p) == name {
				return &fs.PathError{Op: "remove", Path: name, Err: fmt.Errorf("directory not empty")}
			}
		}
		delete(m.dirs, name)
		return nil
	}
	return &fs.PathError{Op: "remove", Path: name, Err: fs.ErrNotExist}
}

func (m *Mem) Rename(oldname, newname string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	oldname, newname = clean(oldname), clean(newname)
	n, ok := m.cur[oldname]
	if !ok {
		return &fs.PathError{Op: "rename", Path: oldname, Err: fs.ErrNotExist}
	}
	delete(m.cur, oldname)
	m.cur[newname] = n
	return nil
}

func (m *Mem) MkdirAll(dir string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for d := clean(dir); ; d = filepath.Dir(d) {
		m.dirs[d] = true
		if d == "/" || d == "." {
			return nil
		}
	}
}

func (m *Mem) List(dir string) ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	dir = clean(dir)
	if !m.dirs[dir] {
		return nil, &fs.PathError{Op: "list", Path: dir, Err: fs.ErrNotExist}
	}
	var out []string
	for p := range m.cur {
		if filepath.Dir(p) == dir {
			out = append(out, filepath.Base(p))
		}
	}
	for d := range m.dirs {
		if d != dir && filepath.Dir(d) == dir {
			out = append(out, filepath.Base(d))
		}
	}
	slices.Sort(out)
	return out, nil
}

func (m *Mem) Exists(name string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	name = clean(name)
	_, ok := m.cur[name]
	return ok || m.dirs[name]
}

// SyncDir makes the directory's current entries durable: files created or
// renamed into it survive a crash, files removed from it stay removed.
func (m *Mem) SyncDir(dir string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	dir = clean(dir)
	for p := range m.durable {
		if filepath.Dir(p) == dir {
			delete(m.durable, p)
		}
	}
	for p, n := range m.cur {
		if filepath.Dir(p) == dir {
			m.durable[p] = n
		}
	}
	return nil
}

// Files returns every current file path, sorted (for tests).
func (m *Mem) Files() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for p := range m.cur {
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}

// FlipBit flips one bit of a file's content, written and durable alike (for
// corruption tests).
func (m *Mem) FlipBit(name string, off int64, bit uint) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	n, ok := m.cur[clean(name)]
	if !ok || off >= int64(len(n.data)) {
		return fmt.Errorf("vfs: flip bit in %s at %d: out of range", name, off)
	}
	n.data[off] ^= 1 << (bit % 8)
	if off < int64(len(n.synced)) {
		n.synced[off] ^= 1 << (bit % 8)
	}
	return nil
}

type memFile struct {
	fs       *Mem
	node     *memNode
	name     string
	off      int64
	readOnly bool
	closed   bool
}

func (f *memFile) Name() string { return f.name }

func (f *memFile) Read(p []byte) (int, error) {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if f.closed {
		return 0, fs.ErrClosed
	}
	if f.off >= int64(len(f.node.data)) {
		return 0, io.EOF
	}
	n := copy(p, f.node.data[f.off:])
	f.off += int64(n)
	return n, nil
}

func (f *memFile) ReadAt(p []byte, off int64) (int, error) {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if f.closed {
		return 0, fs.ErrClosed
	}
	if off >= int64(len(f.node.data)) {
		return 0, io.EOF
	}
	n := copy(p, f.node.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (f *memFile) Write(p []byte) (int, error) {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	n, err := f.writeAtLocked(p, f.off)
	f.off += int64(n)
	return n, err
}

func (f *memFile) WriteAt(p []byte, off int64) (int, error) {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	return f.writeAtLocked(p, off)
}

// REQUIRES: f.fs.mu is held.
func (f *memFile) writeAtLocked(p []byte, off int64) (int, error) {
	if f.closed {
		return 0, fs.ErrClosed
	}
	if f.readOnly {
		return 0, &fs.PathError{Op: "write", Path: f.name, Err: fs.ErrPermission}
	}
	end := off + int64(len(p))
	if end > int64(len(f.node.data)) {
		f.node.data = append(f.node.data, make([]byte, end-int64(len(f.node.data)))...)
	}
	copy(f.node.data[off:], p)
	return len(p), nil
}

func (f *memFile) Sync() error {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if f.closed {
		return fs.ErrClosed
	}
	f.node.synced = slices.Clone(f.node.data)
	return nil
}

func (f *memFile) Truncate(size int64) error {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if f.readOnly {
		return &fs.PathError{Op: "truncate", Path: f.name, Err: fs.ErrPermission}
	}
	if size <= int64(len(f.node.data)) {
		f.node.data = f.node.data[:size]
	} else {
		f.node.data = append(f.node.data, make([]byte, size-int64(len(f.node.data)))...)
	}
	return nil
}

func (f *memFile) Size() (int64, error) {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	return int64(len(f.node.data)), nil
}

func (f *memFile) Close() error {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if f.closed {
		return fs.ErrClosed
	}
	f.closed = true
	return nil
}
