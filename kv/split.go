package kv

import "bytes"

// SplitOff moves every key in [start, end) — an empty end meaning "to the
// end of the keyspace" — out of the store into a new one, as a shard split
// needs (see package shard): the new store holds those keys with their
// whole history, every lease of this store (same ID, TTL and checkpointed
// remaining time, attached to the moved keys that were attached to it),
// and the same revision and compaction revision, so a watcher of the moved
// range can resume in the new store from the revision it had reached. This
// store keeps the rest: the moved keys, their history and their lease
// attachments are gone from it, without a new revision and without events
// (nothing about the keys changed; they moved). Meta is not copied.
//
// It is deterministic, and must be called from Apply's goroutine.
func (s *Store) SplitOff(start, end []byte) *Store {
	s.mu.Lock()
	defer s.mu.Unlock()
	in := func(k []byte) bool {
		return bytes.Compare(k, start) >= 0 && (len(end) == 0 || bytes.Compare(k, end) < 0)
	}
	child := NewWithOptions(s.opts)
	child.rev, child.compactRev, child.applied = s.rev, s.compactRev, s.applied
	for id, l := range s.leases {
		child.leases[id] = &leaseRec{id: id, ttl: l.ttl, remaining: l.remaining, keys: map[string]struct{}{}}
	}
	var moved []*keyHist
	s.keys.Ascend(&keyHist{key: start}, func(h *keyHist) bool {
		if !in(h.key) {
			return false
		}
		moved = append(moved, h)
		return true
	})
	for _, h := range moved {
		s.keys.Delete(h)
		child.keys.Set(h)
		for _, v := range h.vers {
			e := revEntry{main: v.main, sub: v.sub, key: h.key}
			s.revs.Delete(e)
			child.revs.Set(e)
		}
		if live := h.live(s.rev); live != nil && live.lease != 0 {
			if l, ok := s.leases[live.lease]; ok {
				delete(l.keys, string(h.key))
				child.leases[live.lease].keys[string(h.key)] = struct{}{}
			}
		}
	}
	return child
}

// SetApplied records that the entry at index was applied without going
// through Apply (a request the service handles itself, such as a split).
func (s *Store) SetApplied(index uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.applied = index
}
