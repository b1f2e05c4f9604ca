package kv

// EntryOverheadBytes is what one kept history entry costs in ByteCounter's
// count on top of its key and value: its revision, create revision,
// version and lease, and its place in the two indexes. An estimate, the
// same on every member.
const EntryOverheadBytes = 64

// ByteCounter keeps a running count of the bytes the store's history
// holds (each kept entry: key, value and EntryOverheadBytes), cheaply:
// Store.CountBytes adds only the entries written since the last count, and
// counts everything again only when the history may have shrunk (a
// compaction, or a restore to another revision). The zero value is ready;
// one counter serves one store, from one goroutine.
type ByteCounter struct {
	valid      bool
	rev        int64 // revision counted up to
	compactRev int64 // compact revision when counted
	bytes      int64
	entries    int64
}

// CountBytes brings c up to date with the store and returns the bytes
// counted. It holds the read lock for O(new entries), or O(all entries)
// after a compaction.
func (s *Store) CountBytes(c *ByteCounter) int64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if !c.valid || c.compactRev != s.compactRev || s.rev < c.rev {
		*c = ByteCounter{valid: true, rev: s.rev, compactRev: s.compactRev}
		s.keys.Scan(func(h *keyHist) bool {
			for i := range h.vers {
				c.bytes += entryBytes(h.key, &h.vers[i])
			}
			c.entries += int64(len(h.vers))
			return true
		})
		return c.bytes
	}
	if s.rev == c.rev {
		return c.bytes
	}
	s.revs.Ascend(revEntry{main: c.rev + 1}, func(e revEntry) bool {
		h, ok := s.keys.Get(&keyHist{key: e.key})
		if !ok {
			return true
		}
		if v := h.find(e.main, e.sub); v != nil {
			c.bytes += entryBytes(h.key, v)
			c.entries++
		}
		return true
	})
	c.rev = s.rev
	return c.bytes
}

// Entries returns the history entries counted by the last CountBytes.
func (c *ByteCounter) Entries() int64 { return c.entries }

func entryBytes(key []byte, v *version) int64 {
	return int64(len(key)+len(v.value)) + EntryOverheadBytes
}

// Stats describe a store's contents, for operators (ballot snapshot
// status).
type Stats struct {
	Revision        int64
	CompactRevision int64
	Keys            int64 // live keys at the current revision
	Entries         int64 // kept history entries, tombstones included
	Bytes           int64 // as ByteCounter counts them
	Leases          int64
}

// Stats walks the store and returns its Stats.
func (s *Store) Stats() Stats {
	var c ByteCounter
	s.CountBytes(&c)
	s.mu.RLock()
	defer s.mu.RUnlock()
	st := Stats{Revision: s.rev, CompactRevision: s.compactRev, Entries: c.entries, Bytes: c.bytes, Leases: int64(len(s.leases))}
	s.keys.Scan(func(h *keyHist) bool {
		if h.live(s.rev) != nil {
			st.Keys++
		}
		return true
	})
	return st
}
