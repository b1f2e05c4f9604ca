package nodes

import (
	"sync/atomic"

	"github.com/ballotdb/ballot/vfs"
)

// countFS is a vfs.FS that counts the Syncs and bytes written of the files
// it opens, so that the benchmark can report how many fsyncs a proposal
// costs (below 1: proposals share them).
type countFS struct {
	vfs.FS
	syncs, bytes atomic.Int64
}

func (c *countFS) Create(name string) (vfs.File, error) { return c.wrap(c.FS.Create(name)) }
func (c *countFS) OpenRW(name string) (vfs.File, error) { return c.wrap(c.FS.OpenRW(name)) }

func (c *countFS) wrap(f vfs.File, err error) (vfs.File, error) {
	if err != nil {
		return nil, err
	}
	return &countFile{File: f, fs: c}, nil
}

type countFile struct {
	vfs.File
	fs *countFS
}

func (f *countFile) Sync() error { f.fs.syncs.Add(1); return f.File.Sync() }

func (f *countFile) Write(p []byte) (int, error) {
	n, err := f.File.Write(p)
	f.fs.bytes.Add(int64(n))
	return n, err
}

func (f *countFile) WriteAt(p []byte, off int64) (int, error) {
	n, err := f.File.WriteAt(p, off)
	f.fs.bytes.Add(int64(n))
	return n, err
}
