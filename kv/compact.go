package kv

import (
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// Compact discards history below revision rev, as etcd's Compact: rev <=
// CompactRev() fails with ErrGRPCCompacted, rev > Rev() with
// ErrGRPCFutureRev. Afterwards a Range at any revision >= rev returns what
// it did before, and one below rev fails with ErrGRPCCompacted.
//
// For each key it keeps every entry written at or above rev, and, if the
// key has no entry at exactly rev, its latest entry below rev when that is
// a live value (a tombstone below rev is dropped). This is etcd's rule
// ("the latest version at or below rev, unless it is a tombstone") except
// that tombstones written exactly at rev are kept until a later
// compaction, so that EventsSince(rev) still returns every event of
// revision rev. Compaction does not advance the revision.
func (s *Store) Compact(req *pb.CompactionRequest) (*pb.CompactionResponse, error) {
	rev := req.GetRevision()
	s.mu.Lock()
	defer s.mu.Unlock()
	if rev <= s.compactRev {
		return nil, rpctypes.ErrGRPCCompacted
	}
	if rev > s.rev {
		return nil, rpctypes.ErrGRPCFutureRev
	}
	s.compactRev = rev
	// Only keys with history below rev can change: find them through the
	// revision index (entries below rev only), not by scanning every key.
	var touched []*keyHist
	seen := map[string]bool{}
	s.revs.Ascend(revEntry{}, func(e revEntry) bool {
		if e.main >= rev {
			return false
		}
		if !seen[string(e.key)] {
			seen[string(e.key)] = true
			if h, ok := s.keys.Get(&keyHist{key: e.key}); ok {
				touched = append(touched, h)
			}
		}
		return true
	})
	var empty []*keyHist
	for _, h := range touched {
		if len(h.vers) == 0 || h.vers[0].main >= rev {
			continue
		}
		// first: index of the first entry at or above rev.
		first := h.at(rev - 1)
		first++
		keepFrom := first
		if first == len(h.vers) || h.vers[first].main != rev {
			// No entry at exactly rev: the latest one below rev decides
			// the key's state at rev; keep it if it is live.
			if !h.vers[first-1].tomb {
				keepFrom = first - 1
			}
		}
		for _, v := range h.vers[:keepFrom] {
			s.revs.Delete(revEntry{main: v.main, sub: v.sub})
		}
		if keepFrom > 0 {
			h.vers = append([]version(nil), h.vers[keepFrom:]...)
		}
		if len(h.vers) == 0 {
			empty = append(empty, h)
		}
	}
	for _, h := range empty {
		s.keys.Delete(h)
	}
	return &pb.CompactionResponse{Header: &pb.ResponseHeader{Revision: s.rev}}, nil
}
