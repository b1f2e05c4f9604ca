package shard

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
)

// MaxShards bounds how many shards a map may hold (and --shards).
const MaxShards = 1024

// Shard is one contiguous key range kept by its own consensus group.
type Shard struct {
	ID uint64 `json:"id"`
	// Start and End bound the keys: [Start, End); an empty End is "to the
	// end of the keyspace".
	Start []byte `json:"start"`
	End   []byte `json:"end"`
	// Members are the names of the hosts that keep the shard.
	Members []string `json:"members"`
	// Parent is the shard this one was split from (0: an initial shard).
	// A lease granted in a shard also lives in the shards split from it
	// later (see docs/sharding.md).
	Parent uint64 `json:"parent,omitempty"`
}

// Contains reports whether key is in the shard.
func (s Shard) Contains(key []byte) bool {
	return bytes.Compare(key, s.Start) >= 0 && (len(s.End) == 0 || bytes.Compare(key, s.End) < 0)
}

// Map is the shard map: shards in key order that together cover the whole
// keyspace with no gap and no overlap, and a version that grows with every
// change. It lives in the meta group (see host.go).
type Map struct {
	Version uint64  `json:"version"`
	Shards  []Shard `json:"shards"`
}

// Initial is the map a cluster starts with: n shards whose boundaries
// divide the first byte of the key evenly, each kept by replicas hosts
// (all of them if fewer), placed round-robin over the hosts in name order
// so that shards — and hence their leaders — spread evenly. It is
// deterministic, so every host agrees on it before the meta group has it.
func Initial(n int, hosts []string, replicas int) (Map, error) {
	if n < 1 || n > 256 {
		return Map{}, fmt.Errorf("shard: %d shards: want 1 to 256 at start (split for more)", n)
	}
	if len(hosts) == 0 {
		return Map{}, errors.New("shard: no hosts")
	}
	sorted := append([]string(nil), hosts...)
	sort.Strings(sorted)
	if replicas <= 0 || replicas > len(sorted) {
		replicas = len(sorted)
	}
	m := Map{Version: 1}
	for i := 0; i < n; i++ {
		var members []string
		for j := 0; j < replicas; j++ {
			members = append(members, sorted[(i+j)%len(sorted)])
		}
		sort.Strings(members)
		s := Shard{ID: uint64(i + 1), Members: members}
		if i > 0 {
			s.Start = []byte{byte(i * 256 / n)}
		}
		if i < n-1 {
			s.End = []byte{byte((i + 1) * 256 / n)}
		}
		m.Shards = append(m.Shards, s)
	}
	return m, m.Validate()
}

// Validate checks that the shards cover the keyspace in order without gap
// or overlap and that IDs are unique and non-zero.
func (m Map) Validate() error {
	if len(m.Shards) == 0 {
		return errors.New("shard: map has no shards")
	}
	if len(m.Shards) > MaxShards {
		return fmt.Errorf("shard: map has %d shards, more than %d", len(m.Shards), MaxShards)
	}
	ids := map[uint64]bool{}
	var prevEnd []byte
	for i, s := range m.Shards {
		if s.ID == 0 || ids[s.ID] {
			return fmt.Errorf("shard: shard %d: ID zero or repeated", s.ID)
		}
		ids[s.ID] = true
		if !bytes.Equal(s.Start, prevEnd) {
			return fmt.Errorf("shard: shard %d starts at %q, previous ends at %q", s.ID, s.Start, prevEnd)
		}
		last := i == len(m.Shards)-1
		if last != (len(s.End) == 0) {
			return fmt.Errorf("shard: shard %d: only the last shard may end at the end of the keyspace", s.ID)
		}
		if !last && bytes.Compare(s.End, s.Start) <= 0 {
			return fmt.Errorf("shard: shard %d: end %q not after start %q", s.ID, s.End, s.Start)
		}
		prevEnd = s.End
	}
	return nil
}

// Lookup returns the shard holding key.
func (m Map) Lookup(key []byte) Shard {
	i := sort.Search(len(m.Shards), func(i int) bool {
		e := m.Shards[i].End
		return len(e) == 0 || bytes.Compare(key, e) < 0
	})
	return m.Shards[i]
}

// ByID returns the shard with the ID.
func (m Map) ByID(id uint64) (Shard, bool) {
	for _, s := range m.Shards {
		if s.ID == id {
			return s, true
		}
	}
	return Shard{}, false
}

// Lineage reports whether shard id is anc or was split, directly or not,
// from anc.
func (m Map) Lineage(anc, id uint64) bool {
	for range len(m.Shards) + 1 {
		if id == anc {
			return true
		}
		s, ok := m.ByID(id)
		if !ok || s.Parent == 0 {
			return false
		}
		id = s.Parent
	}
	return false
}

// Descendants returns the shards split, directly or not, from anc.
func (m Map) Descendants(anc uint64) []uint64 {
	var out []uint64
	for _, s := range m.Shards {
		if s.ID != anc && m.Lineage(anc, s.ID) {
			out = append(out, s.ID)
		}
	}
	return out
}

// Part is the piece of a request range that falls in one shard.
type Part struct {
	Shard    Shard
	Key, End []byte // the request's range clipped to the shard, etcd conventions
}

// Split cuts a request range [key, end) — etcd's conventions: an empty end
// is the single key, "\x00" every key from key on — into the parts each
// shard holds, in key order.
func (m Map) Split(key, end []byte) []Part {
	if len(end) == 0 {
		return []Part{{Shard: m.Lookup(key), Key: key}}
	}
	toEnd := len(end) == 1 && end[0] == 0
	if !toEnd && bytes.Compare(end, key) <= 0 {
		return nil // an empty range (etcd answers it with nothing)
	}
	var parts []Part
	for _, s := range m.Shards {
		if len(s.End) != 0 && bytes.Compare(s.End, key) <= 0 {
			continue
		}
		if !toEnd && bytes.Compare(s.Start, end) >= 0 {
			break
		}
		p := Part{Shard: s, Key: key, End: end}
		if bytes.Compare(s.Start, key) > 0 {
			p.Key = s.Start
		}
		if len(s.End) != 0 && (toEnd || bytes.Compare(s.End, end) < 0) {
			p.End = s.End
		}
		parts = append(parts, p)
	}
	return parts
}

// Encode and DecodeMap are the map's stored form (JSON: small, rare, and
// readable with etcdctl against the meta group).
func (m Map) Encode() []byte {
	b, err := json.Marshal(m)
	if err != nil {
		panic(fmt.Sprintf("shard: encoding the map: %v", err))
	}
	return b
}

// DecodeMap decodes and validates a stored map.
func DecodeMap(b []byte) (Map, error) {
	var m Map
	if err := json.Unmarshal(b, &m); err != nil {
		return Map{}, fmt.Errorf("shard: decoding the map: %w", err)
	}
	if err := m.Validate(); err != nil {
		return Map{}, err
	}
	return m, nil
}
