//go:build !linux

package vfs

import (
	"errors"
	"os"
)

var errFlushOutcomeLost = errors.New("vfs: shared sync: outcome of the covering flush no longer known")

// flushFS is fsync where syncfs is not available: no sharing.
func flushFS(f *os.File) error { return f.Sync() }
