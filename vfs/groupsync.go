package vfs

import (
	"os"
	"sync"
)

// SharedSync is the operating system's file system with group commit
// across files: a host keeping many consensus groups, each with its own
// write-ahead log, has every log's Sync covered by one file-system-wide
// flush (syncfs on Linux) instead of one fsync per log. Calls that arrive
// while a flush runs wait for the next one, which then covers all of them:
// under load many groups' writes share each flush; alone, a Sync costs one
// flush, as fsync does. Every file must live on one file system (a host's
// data directory).
//
// Durability is the same as fsync's: syncfs writes back every dirty page
// and inode of the file system and flushes the device, and reports
// write-back errors (Linux 5.8 and later; older kernels may not, so use
// the default FS there). Elsewhere than Linux it is plain fsync.
//
// Whether it pays is measured, not assumed: see docs/sharding.md.
type SharedSync struct {
	osFS

	mu      sync.Mutex
	cond    *sync.Cond
	started uint64 // flushes started
	done    uint64 // flushes finished
	running bool
	errs    [64]error // by flush number, mod 64
	flushes uint64    // for Stats
	syncs   uint64
}

// NewSharedSync returns a SharedSync file system.
func NewSharedSync() *SharedSync {
	s := &SharedSync{}
	s.cond = sync.NewCond(&s.mu)
	return s
}

// Stats reports how many Sync calls were made and how many flushes served
// them.
func (s *SharedSync) Stats() (syncs, flushes uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.syncs, s.flushes
}

type sharedFile struct {
	osFile
	s *SharedSync
}

func (f sharedFile) Sync() error { return f.s.sync(f.File) }

// sync returns once a flush that started after the call has finished.
func (s *SharedSync) sync(f *os.File) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.syncs++
	mine := s.started + 1 // a flush already running may miss this file's writes
	for s.done < mine {
		if s.running {
			s.cond.Wait()
			continue
		}
		s.running = true
		s.started++
		n := s.started
		s.flushes++
		s.mu.Unlock()
		err := flushFS(f)
		s.mu.Lock()
		s.errs[n%uint64(len(s.errs))] = err
		s.done = n
		s.running = false
		s.cond.Broadcast()
	}
	if s.done-mine >= uint64(len(s.errs)) {
		// So many flushes passed while this one slept that its outcome
		// is gone: say so rather than guess.
		return errFlushOutcomeLost
	}
	return s.errs[mine%uint64(len(s.errs))]
}

func (s *SharedSync) wrap(f File, err error) (File, error) {
	if err != nil {
		return nil, err
	}
	return sharedFile{osFile: f.(osFile), s: s}, nil
}

// Create, Open and OpenRW return files whose Sync is shared.
func (s *SharedSync) Create(name string) (File, error) { return s.wrap(s.osFS.Create(name)) }
func (s *SharedSync) Open(name string) (File, error)   { return s.wrap(s.osFS.Open(name)) }
func (s *SharedSync) OpenRW(name string) (File, error) { return s.wrap(s.osFS.OpenRW(name)) }
