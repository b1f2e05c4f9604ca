package vfs

import (
	"errors"
	"fmt"
	"sync"
	"syscall"
)

// Op names a file-system operation for fault injection.
type Op uint8

const (
	OpCreate Op = iota
	OpOpen
	OpWrite
	OpSync
	OpRename
	OpRemove
	OpSyncDir
	OpTruncate
	OpRead
)

func (o Op) String() string {
	return [...]string{"create", "open", "write", "sync", "rename", "remove", "syncdir", "truncate", "read"}[o]
}

// Injected errors. ErrNoSpace and ErrIO match syscall.ENOSPC and syscall.EIO
// with errors.Is, as the operating system's would.
var (
	ErrNoSpace  error = syscall.ENOSPC
	ErrIO       error = syscall.EIO
	ErrInjected       = errors.New("vfs: injected fault")
)

// Decision is what an Injector says about one operation.
type Decision struct {
	// Err, when set, fails the operation with it. For a write with
	// ShortBytes > 0, that many bytes are written first.
	Err error
	// ShortBytes writes only this many bytes of a write (with Err, or with
	// io.ErrShortWrite when Err is nil).
	ShortBytes int
}

// Injector decides, for the n-th operation of its kind (counting from 1), on
// the named file, whether it fails.
type Injector func(op Op, n int, name string) Decision

// Fault wraps a file system and injects faults chosen by its Injector. It
// counts every operation by kind, so a test can first run a workload to
// count its sync points and then rerun it failing or crashing at each.
type Fault struct {
	inner FS
	mu    sync.Mutex
	inj   Injector
	count map[Op]int
	// OnOp, when set, is called before every operation (after counting);
	// tests use it to take a Mem.Crash image at an exact point.
	OnOp func(op Op, n int, name string)
}

// NewFault wraps inner; inj may be nil (no faults) and set later.
func NewFault(inner FS, inj Injector) *Fault {
	return &Fault{inner: inner, inj: inj, count: map[Op]int{}}
}

// SetInjector replaces the injector.
func (f *Fault) SetInjector(inj Injector) {
	f.mu.Lock()
	f.inj = inj
	f.mu.Unlock()
}

// Count returns how many operations of kind op were attempted.
func (f *Fault) Count(op Op) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.count[op]
}

func (f *Fault) decide(op Op, name string) Decision {
	f.mu.Lock()
	f.count[op]++
	n := f.count[op]
	inj, hook := f.inj, f.OnOp
	f.mu.Unlock()
	if hook != nil {
		hook(op, n, name)
	}
	if inj == nil {
		return Decision{}
	}
	d := inj(op, n, name)
	if d.Err != nil {
		d.Err = fmt.Errorf("%s %s: %w", op, name, d.Err)
	}
	return d
}

// FailNth returns an Injector failing the n-th operation of kind op with err.
func FailNth(op Op, n int, err error) Injector {
	return func(o Op, k int, _ string) Decision {
		if o == op && k == n {
			return Decision{Err: err}
		}
		return Decision{}
	}
}

// FailFrom returns an Injector failing every operation of kind op from the
// n-th on with err (a disk that stays full, say), until heal is called.
func FailFrom(op Op, n int, err error) (inj Injector, heal func()) {
	var mu sync.Mutex
	healed := false
	return func(o Op, k int, _ string) Decision {
			mu.Lock()
			defer mu.Unlock()
			if !healed && o == op && k >= n {
				return Decision{Err: err}
			}
			return Decision{}
		}, func() {
			mu.Lock()
			healed = true
			mu.Unlock()
		}
}

func (f *Fault) Create(name string) (File, error) {
	if d := f.decide(OpCreate, name); d.Err != nil {
		return nil, d.Err
	}
	file, err := f.inner.Create(name)
	if err != nil {
		return nil, err
	}
	return &faultFile{File: file, fs: f}, nil
}

func (f *Fault) open(name string, rw bool) (File, error) {
	if d := f.decide(OpOpen, name); d.Err != nil {
		return nil, d.Err
	}
	var file File
	var err error
	if rw {
		file, err = f.inner.OpenRW(name)
	} else {
		file, err = f.inner.Open(name)
	}
	if err != nil {
		return nil, err
	}
	return &faultFile{File: file, fs: f}, nil
}

func (f *Fault) Open(name string) (File, error)   { return f.open(name, false) }
func (f *Fault) OpenRW(name string) (File, error) { return f.open(name, true) }

func (f *Fault) Remove(name string) error {
	if d := f.decide(OpRemove, name); d.Err != nil {
		return d.Err
	}
	return f.inner.Remove(name)
}

func (f *Fault) Rename(oldname, newname string) error {
	if d := f.decide(OpRename, oldname); d.Err != nil {
		return d.Err
	}
	return f.inner.Rename(oldname, newname)
}

func (f *Fault) MkdirAll(dir string) error         { return f.inner.MkdirAll(dir) }
func (f *Fault) List(dir string) ([]string, error) { return f.inner.List(dir) }
func (f *Fault) Exists(name string) bool           { return f.inner.Exists(name) }

func (f *Fault) SyncDir(dir string) error {
	if d := f.decide(OpSyncDir, dir); d.Err != nil {
		return d.Err
	}
	return f.inner.SyncDir(dir)
}

type faultFile struct {
	File
	fs *Fault
}

func (f *faultFile) Write(p []byte) (int, error) {
	d := f.fs.decide(OpWrite, f.Name())
	if d.ShortBytes > 0 && d.ShortBytes < len(p) {
		n, err := f.File.Write(p[:d.ShortBytes])
		if err != nil {
			return n, err
		}
		if d.Err == nil {
			d.Err = fmt.Errorf("write %s: short write", f.Name())
		}
		return n, d.Err
	}
	if d.Err != nil {
		return 0, d.Err
	}
	return f.File.Write(p)
}

func (f *faultFile) WriteAt(p []byte, off int64) (int, error) {
	d := f.fs.decide(OpWrite, f.Name())
	if d.ShortBytes > 0 && d.ShortBytes < len(p) {
		n, err := f.File.WriteAt(p[:d.ShortBytes], off)
		if err != nil {
			return n, err
		}
		if d.Err == nil {
			d.Err = fmt.Errorf("write %s: short write", f.Name())
		}
		return n, d.Err
	}
	if d.Err != nil {
		return 0, d.Err
	}
	return f.File.WriteAt(p, off)
}

func (f *faultFile) Sync() error {
	if d := f.fs.decide(OpSync, f.Name()); d.Err != nil {
		return d.Err
	}
	return f.File.Sync()
}

func (f *faultFile) Truncate(size int64) error {
	if d := f.fs.decide(OpTruncate, f.Name()); d.Err != nil {
		return d.Err
	}
	return f.File.Truncate(size)
}

func (f *faultFile) Read(p []byte) (int, error) {
	if d := f.fs.decide(OpRead, f.Name()); d.Err != nil {
		return 0, d.Err
	}
	return f.File.Read(p)
}

func (f *faultFile) ReadAt(p []byte, off int64) (int, error) {
	if d := f.fs.decide(OpRead, f.Name()); d.Err != nil {
		return 0, d.Err
	}
	return f.File.ReadAt(p, off)
}
