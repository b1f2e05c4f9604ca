package vfs

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

var errFlushOutcomeLost = errors.New("vfs: shared sync: outcome of the covering flush no longer known")

// flushFS writes back and flushes the whole file system f lives on.
func flushFS(f *os.File) error {
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return &os.PathError{Op: "syncfs", Path: f.Name(), Err: err}
	}
	return nil
}
