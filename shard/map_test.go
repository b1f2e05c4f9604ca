package shard

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
)

func TestInitialCoversTheKeyspace(t *testing.T) {
	for _, n := range []int{1, 2, 3, 4, 7, 256} {
		m, err := Initial(n, []string{"b", "a"}, 3)
		if err != nil {
			t.Fatalf("Initial(%d): %v", n, err)
		}
		if len(m.Shards) != n || m.Version != 1 {
			t.Fatalf("Initial(%d): %d shards, version %d", n, len(m.Shards), m.Version)
		}
		// Every first byte lands in exactly the shard Lookup names.
		for b := 0; b < 256; b++ {
			key := []byte{byte(b), 'x'}
			s := m.Lookup(key)
			if !s.Contains(key) {
				t.Fatalf("Initial(%d): key %q looked up in shard %d [%q, %q)", n, key, s.ID, s.Start, s.End)
			}
		}
		if got := m.Lookup(nil).ID; got != 1 {
			t.Fatalf("Initial(%d): the empty key is in shard %d, want 1", n, got)
		}
	}
	for _, n := range []int{0, -1, 257} {
		if _, err := Initial(n, []string{"a"}, 3); err == nil {
			t.Fatalf("Initial(%d) accepted", n)
		}
	}
}

func TestInitialPlacesReplicasRoundRobin(t *testing.T) {
	m, err := Initial(4, []string{"h3", "h1", "h4", "h2"}, 3)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"h1,h2,h3", "h2,h3,h4", "h1,h3,h4", "h1,h2,h4"}
	count := map[string]int{}
	for i, s := range m.Shards {
		if got := fmt.Sprint(strings.Join(s.Members, ",")); got != want[i] {
			t.Fatalf("shard %d members %s, want %s", s.ID, got, want[i])
		}
		for _, h := range s.Members {
			count[h]++
		}
	}
	for h, n := range count {
		if n != 3 {
			t.Fatalf("host %s keeps %d shards, want 3 each", h, n)
		}
	}
}

func TestValidateRefusesGapsAndOverlaps(t *testing.T) {
	good, _ := Initial(3, []string{"a"}, 3)
	bad := func(name string, f func(m *Map)) {
		m := Map{Version: good.Version, Shards: append([]Shard(nil), good.Shards...)}
		f(&m)
		if err := m.Validate(); err == nil {
			t.Errorf("%s: Validate accepted %+v", name, m.Shards)
		}
	}
	bad("gap", func(m *Map) { m.Shards[1].Start = []byte{0x60} })
	bad("overlap", func(m *Map) { m.Shards[1].Start = []byte{0x10} })
	bad("duplicate ID", func(m *Map) { m.Shards[2].ID = m.Shards[0].ID })
	bad("zero ID", func(m *Map) { m.Shards[0].ID = 0 })
	bad("open end in the middle", func(m *Map) { m.Shards[1].End = nil })
	bad("closed last end", func(m *Map) { m.Shards[2].End = []byte{0xff} })
	bad("empty", func(m *Map) { m.Shards = nil })
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	if _, err := DecodeMap([]byte(`{"version":1,"shards":[]}`)); err == nil {
		t.Fatal("DecodeMap accepted an empty map")
	}
	back, err := DecodeMap(good.Encode())
	if err != nil || fmt.Sprint(back) != fmt.Sprint(good) {
		t.Fatalf("round trip: %v %v", back, err)
	}
}

// TestSplitPartsAreExact checks Split against a brute-force answer: for
// every request range, the parts are in key order, each within its shard,
// and together they hold exactly the keys of the request.
func TestSplitPartsAreExact(t *testing.T) {
	m, _ := Initial(4, []string{"a"}, 3)
	keys := [][]byte{nil, {0}, {0x3f}, {0x40}, {0x40, 1}, {0x7f, 0xff}, {0x80}, {0xbf}, {0xc0}, {0xff}, {0xff, 0xff}}
	inReq := func(k, key, end []byte) bool {
		switch {
		case len(end) == 0:
			return bytes.Equal(k, key)
		case len(end) == 1 && end[0] == 0:
			return bytes.Compare(k, key) >= 0
		}
		return bytes.Compare(k, key) >= 0 && bytes.Compare(k, end) < 0
	}
	ends := append([][]byte{{0}}, keys...)
	for _, key := range keys {
		for _, end := range ends {
			parts := m.Split(key, end)
			for i, p := range parts {
				if i > 0 && parts[i-1].Shard.ID >= p.Shard.ID {
					t.Fatalf("Split(%q, %q): parts out of order", key, end)
				}
			}
			for _, k := range keys {
				n := 0
				for _, p := range parts {
					if inReq(k, p.Key, p.End) {
						n++
						if !p.Shard.Contains(k) {
							t.Fatalf("Split(%q, %q): key %q in part of shard %d that does not hold it", key, end, k, p.Shard.ID)
						}
					}
				}
				want := 0
				if inReq(k, key, end) {
					want = 1
				}
				if n != want {
					t.Fatalf("Split(%q, %q): key %q is in %d parts, want %d", key, end, k, n, want)
				}
			}
		}
	}
}
