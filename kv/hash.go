package kv

import (
	"encoding/binary"
	"hash"
	"hash/crc32"
	"slices"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// Hashes let replicas be compared (etcd's Hash and HashKV): two stores
// that applied the same log give the same hashes, and a store whose history
// differs in any kept entry gives a different one (up to CRC collisions).
//
// HashKV covers the keyspace history only, never meta or leases, so that
// members are compared on what clients read. Each kept entry with main
// revision <= rev is hashed in (key, main, sub) order as
//
//	key        uvarint length, bytes
//	count      uvarint: its entries at or below rev, each:
//	main, sub  varints
//	kind       byte: 0 put, 1 tombstone
//	put only:  create_revision, version, lease (varints), value (uvarint length, bytes)
//
// with CRC-32C (Castagnoli). The entries are those of (compactRev, rev]
// plus the ones compaction kept below it (the last live version of each key
// at the compaction revision), as etcd's HashKV includes the revisions its
// compaction kept: everything the store still holds at or below rev.
// Stores compare only at the same compact revision, which HashKV returns
// with the hash.

// HashKV hashes the key history up to rev (0: the current revision). It
// returns the hash, the compact revision (-1 if never compacted) and the
// revision hashed. rev beyond the current revision fails with
// ErrGRPCFutureRev; 0 < rev < CompactRev() with ErrGRPCCompacted, as etcd.
//
// It holds the read lock while it walks the whole history: O(entries).
func (s *Store) HashKV(rev int64) (hash uint32, compactRev, hashRev int64, err error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if rev > s.rev {
		return 0, s.compactRev, 0, rpctypes.ErrGRPCFutureRev
	}
	if rev > 0 && rev < s.compactRev {
		return 0, s.compactRev, 0, rpctypes.ErrGRPCCompacted
	}
	if rev <= 0 {
		rev = s.rev
	}
	h := crc32.New(castagnoli)
	s.hashHistory(h, rev)
	return h.Sum32(), s.compactRev, rev, nil
}

// Hash hashes the whole replicated state (etcd's Hash, which covers its
// whole database): the revision, the compact revision, the key history,
// the leases and meta. It returns the hash and the current revision. The
// applied index is left out, so two members agree whenever they hold the
// same state.
func (s *Store) Hash() (hash uint32, rev int64) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	h := crc32.New(castagnoli)
	var buf [binary.MaxVarintLen64]byte
	h.Write(buf[:binary.PutVarint(buf[:], s.rev)])
	h.Write(buf[:binary.PutVarint(buf[:], s.compactRev)])
	s.hashHistory(h, s.rev)
	ids := make([]int64, 0, len(s.leases))
	for id := range s.leases {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		l := s.leases[id]
		for _, v := range []int64{l.id, l.ttl, l.remaining} {
			h.Write(buf[:binary.PutVarint(buf[:], v)])
		}
	}
	for _, k := range s.metaSorted() {
		hashBytes(h, []byte(k))
		hashBytes(h, s.meta[k])
	}
	return h.Sum32(), s.rev
}

// hashHistory writes every kept entry with main <= rev into h, in the
// format described above.
// REQUIRES: s.mu is held.
func (s *Store) hashHistory(h hash.Hash32, rev int64) {
	var buf [binary.MaxVarintLen64]byte
	varint := func(v int64) { h.Write(buf[:binary.PutVarint(buf[:], v)]) }
	s.keys.Scan(func(kh *keyHist) bool {
		n := kh.at(rev) + 1 // entries with main <= rev
		if n == 0 {
			return true
		}
		hashBytes(h, kh.key)
		h.Write(buf[:binary.PutUvarint(buf[:], uint64(n))])
		for i := range kh.vers[:n] {
			e := &kh.vers[i]
			varint(e.main)
			varint(e.sub)
			if e.tomb {
				h.Write([]byte{1})
				continue
			}
			h.Write([]byte{0})
			varint(e.create)
			varint(e.ver)
			varint(e.lease)
			hashBytes(h, e.value)
		}
		return true
	})
}

func hashBytes(h hash.Hash32, b []byte) {
	var buf [binary.MaxVarintLen64]byte
	h.Write(buf[:binary.PutUvarint(buf[:], uint64(len(b)))])
	h.Write(b)
}
