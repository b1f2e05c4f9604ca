package kv

import (
	"maps"
	"slices"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/proto"
)

// Meta is replicated state that is not part of the keyspace: the service
// keeps its member attributes and alarms here (see package server). It is
// invisible to Range, Watch and HashKV, but travels in snapshots, so a
// member restored from a snapshot knows it too.
//
// Meta is written only from inside Apply, through the ApplyHook, so every
// member writes the same values at the same log index.

// ApplyHook sees every decoded request before the store applies it. It may
// read and write meta; if it returns handled, its response (or error) is
// the request's result and the store does nothing more; otherwise the store
// applies the request itself. It runs on the apply goroutine and must be
// deterministic (see node.StateMachine).
type ApplyHook func(r *pb.InternalRaftRequest) (resp proto.Message, err error, handled bool)

// SetApplyHook installs h (nil removes it).
func (s *Store) SetApplyHook(h ApplyHook) { s.hook = h }

// Meta returns the meta value under key (nil if absent). The slice is
// shared with the store: treat it as read-only.
func (s *Store) Meta(key string) []byte {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.meta[key]
}

// MetaKeys returns the meta keys with the given prefix, sorted.
func (s *Store) MetaKeys(prefix string) []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []string
	for k := range s.meta {
		if len(k) >= len(prefix) && k[:len(prefix)] == prefix {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

// SetMeta sets (or, for a nil value, deletes) a meta value. Call it only
// from an ApplyHook.
func (s *Store) SetMeta(key string, value []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if value == nil {
		delete(s.meta, key)
		return
	}
	s.meta[key] = slices.Clone(value)
}

// metaSnapshot returns the meta keys in order, for the snapshot writer.
func (s *Store) metaSorted() []string { return slices.Sorted(maps.Keys(s.meta)) }
