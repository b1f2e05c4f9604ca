package kv

import (
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// EventsSince returns the events of keys in [key, end) (one key if end is
// empty, every key >= key if end is "\x00") written at revisions >=
// fromRev, in revision order, as a watcher catching up sees them. Events
// are built as for the observer (PrevKv is the value at the previous
// revision when history still holds it).
//
// limit > 0 caps the number of events, but never splits a revision: the
// call stops at the first revision boundary at or after limit events.
// nextRev is the revision to ask for next: one past the last revision
// returned, or Rev()+1 when everything up to the current revision was
// read (fromRev itself if fromRev is beyond that).
//
// As in etcd's watch, a fromRev older than the compaction revision
// (fromRev < CompactRev()) fails with ErrGRPCCompacted and nextRev set to
// CompactRev(), the revision a watcher may restart from. fromRev <= 0 means
// revision 1.
func (s *Store) EventsSince(key, end []byte, fromRev int64, limit int) ([]*mvccpb.Event, int64, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if fromRev <= 0 {
		fromRev = 1
	}
	if fromRev < s.compactRev {
		return nil, s.compactRev, rpctypes.ErrGRPCCompacted
	}
	next := max(fromRev, s.rev+1)
	sp := mkSpan(key, end)
	var evs []*mvccpb.Event
	lastMain := int64(0)
	s.revs.Ascend(revEntry{main: fromRev}, func(e revEntry) bool {
		if limit > 0 && len(evs) >= limit && e.main > lastMain {
			next = lastMain + 1
			return false
		}
		if !sp.contains(e.key) {
			return true
		}
		h, ok := s.keys.Get(&keyHist{key: e.key})
		if !ok {
			return true
		}
		evs = append(evs, eventAt(h, e.main, e.sub))
		lastMain = e.main
		return true
	})
	return evs, next, nil
}

// eventAt builds the event for the entry of h at {main, sub}.
func eventAt(h *keyHist, main, sub int64) *mvccpb.Event {
	v := h.find(main, sub)
	ev := &mvccpb.Event{}
	if v == nil {
		return ev
	}
	if v.tomb {
		ev.Type = mvccpb.DELETE
		ev.Kv = &mvccpb.KeyValue{Key: h.key, ModRevision: main}
	} else {
		ev.Type = mvccpb.PUT
		ev.Kv = toKV(h.key, v)
	}
	if p := h.live(main - 1); p != nil {
		ev.PrevKv = toKV(h.key, p)
	}
	return ev
}
