package vfs

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// TestSharedSyncCoversConcurrentSyncs: many files synced at once are
// served by fewer flushes than syncs, every Sync returns nil, and the data
// is there.
func TestSharedSyncCoversConcurrentSyncs(t *testing.T) {
	dir := t.TempDir()
	s := NewSharedSync()
	const files, rounds = 16, 20
	var wg sync.WaitGroup
	for i := 0; i < files; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f, err := s.Create(filepath.Join(dir, fmt.Sprint(i)))
			if err != nil {
				t.Error(err)
				return
			}
			defer f.Close()
			for r := 0; r < rounds; r++ {
				if _, err := f.Write([]byte("x")); err != nil {
					t.Error(err)
					return
				}
				if err := f.Sync(); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	syncs, flushes := s.Stats()
	if syncs != files*rounds {
		t.Fatalf("%d syncs counted, want %d", syncs, files*rounds)
	}
	if flushes == 0 || flushes > syncs {
		t.Fatalf("%d flushes for %d syncs", flushes, syncs)
	}
	t.Logf("%d syncs served by %d flushes", syncs, flushes)
	for i := 0; i < files; i++ {
		b, err := os.ReadFile(filepath.Join(dir, fmt.Sprint(i)))
		if err != nil || len(b) != rounds {
			t.Fatalf("file %d: %d bytes, %v", i, len(b), err)
		}
	}
}

// TestSharedSyncReportsAFailedFlush: a flush that fails fails the Syncs it
// covered (a closed file's descriptor makes syncfs fail).
func TestSharedSyncReportsAFailedFlush(t *testing.T) {
	s := NewSharedSync()
	f, err := s.Create(filepath.Join(t.TempDir(), "f"))
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := f.Sync(); err == nil {
		t.Fatal("a Sync whose flush failed returned nil")
	}
}
