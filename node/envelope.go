package node

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/ballotdb/ballot/consensus"
)

// Envelopes. Every normal entry the node proposes is wrapped so that a
// retried proposal is applied once:
//
//	| 0xB1 | origin (uvarint) | incarnation (8B LE) | seq (uvarint) | floor (uvarint) | command |
//
// origin is the proposing member, incarnation a random number drawn at each
// Start (so sequences restart safely), seq numbers the proposals of one
// incarnation from 1, and floor is the smallest seq the proposer still
// waits on: every seq below it is settled (applied, or abandoned by its
// caller), so the appliers may forget them — and must then never apply them.
//
// A membership change carries its own envelope in ConfChange.Context:
//
//	| 0xB1 | origin (uvarint) | incarnation (8B LE) | seq (uvarint) | peer address |
const envelopeMagic = 0xB1

var errBadEnvelope = errors.New("node: malformed envelope")

type envelope struct {
	origin      consensus.NodeID
	incarnation uint64
	seq         uint64
	floor       uint64 // normal entries only
	payload     []byte // the command, or the peer address of a conf change
}

func appendEnvelopeHeader(b []byte, origin consensus.NodeID, inc, seq uint64) []byte {
	b = append(b, envelopeMagic)
	b = binary.AppendUvarint(b, uint64(origin))
	b = binary.LittleEndian.AppendUint64(b, inc)
	return binary.AppendUvarint(b, seq)
}

func encodeEnvelope(e envelope) []byte {
	b := make([]byte, 0, 1+10+8+10+10+len(e.payload))
	b = appendEnvelopeHeader(b, e.origin, e.incarnation, e.seq)
	b = binary.AppendUvarint(b, e.floor)
	return append(b, e.payload...)
}

func encodeConfContext(origin consensus.NodeID, inc, seq uint64, addr string) []byte {
	b := appendEnvelopeHeader(nil, origin, inc, seq)
	return append(b, addr...)
}

func decodeEnvelopeHeader(b []byte) (envelope, []byte, error) {
	var e envelope
	if len(b) < 1 || b[0] != envelopeMagic {
		return e, nil, errBadEnvelope
	}
	b = b[1:]
	o, k := binary.Uvarint(b)
	if k <= 0 || len(b[k:]) < 8 {
		return e, nil, errBadEnvelope
	}
	b = b[k:]
	e.origin = consensus.NodeID(o)
	e.incarnation = binary.LittleEndian.Uint64(b)
	b = b[8:]
	s, k := binary.Uvarint(b)
	if k <= 0 {
		return e, nil, errBadEnvelope
	}
	e.seq = s
	return e, b[k:], nil
}

func decodeEnvelope(b []byte) (envelope, error) {
	e, rest, err := decodeEnvelopeHeader(b)
	if err != nil {
		return e, err
	}
	f, k := binary.Uvarint(rest)
	if k <= 0 {
		return e, errBadEnvelope
	}
	e.floor, e.payload = f, rest[k:]
	return e, nil
}

// decodeConfContext reads a membership change's envelope; ok is false for a
// change the node did not propose (the engine's own, or the bootstrap ones).
func decodeConfContext(b []byte) (e envelope, ok bool) {
	e, rest, err := decodeEnvelopeHeader(b)
	if err != nil {
		return e, false
	}
	e.payload = rest
	return e, true
}

// Sessions: the replicated memory of which proposals were applied, kept by
// every member's apply goroutine in the same way (so it is part of the
// snapshot). Bounded: at most maxSessionsPerOrigin incarnations per origin
// and maxSessions in all (the least recently used go first, by log index,
// which is the same on every member), and at most maxSeenPerSession
// remembered sequences above a session's floor.
const (
	maxSessions          = 4096
	maxSessionsPerOrigin = 4
	maxSeenPerSession    = 1 << 14
)

type sessionKey struct {
	origin      consensus.NodeID
	incarnation uint64
}

type session struct {
	floor uint64              // every seq below it is settled
	seen  map[uint64]struct{} // applied seqs at or above floor
	last  uint64              // log index of the last entry of this session
}

type sessions map[sessionKey]*session

// admit reports whether the envelope at log index should be applied, and
// records it. It is the whole of duplicate suppression.
func (ss sessions) admit(e envelope, index uint64) bool {
	k := sessionKey{e.origin, e.incarnation}
	s := ss[k]
	if s == nil {
		s = &session{seen: map[uint64]struct{}{}}
		ss[k] = s
		ss.evict(k)
	}
	s.last = index
	if e.floor > s.floor {
		s.floor = e.floor
		for q := range s.seen {
			if q < s.floor {
				delete(s.seen, q)
			}
		}
	}
	if e.seq < s.floor {
		return false
	}
	if _, dup := s.seen[e.seq]; dup {
		return false
	}
	s.seen[e.seq] = struct{}{}
	if len(s.seen) > maxSeenPerSession {
		// Forget the oldest: raise the floor past it.
		low := slices.Min(slices.Collect(maps.Keys(s.seen)))
		delete(s.seen, low)
		s.floor = low + 1
	}
	return true
}

// applied reports whether seq of session k is known settled or applied.
func (ss sessions) applied(k sessionKey, seq uint64) bool {
	s := ss[k]
	if s == nil {
		return false
	}
	_, ok := s.seen[seq]
	return ok || seq < s.floor
}

// evict keeps the bounds after k was added, never evicting k itself.
func (ss sessions) evict(k sessionKey) {
	oldest := func(match func(sessionKey) bool) (sessionKey, bool) {
		var best sessionKey
		found := false
		for key, s := range ss {
			if key == k || !match(key) {
				continue
			}
			if !found || s.last < ss[best].last || (s.last == ss[best].last && lessKey(key, best)) {
				best, found = key, true
			}
		}
		return best, found
	}
	n := 0
	for key := range ss {
		if key.origin == k.origin {
			n++
		}
	}
	for ; n > maxSessionsPerOrigin; n-- {
		old, ok := oldest(func(key sessionKey) bool { return key.origin == k.origin })
		if !ok {
			break
		}
		delete(ss, old)
	}
	for len(ss) > maxSessions {
		old, ok := oldest(func(sessionKey) bool { return true })
		if !ok {
			break
		}
		delete(ss, old)
	}
}

func lessKey(a, b sessionKey) bool {
	if a.origin != b.origin {
		return a.origin < b.origin
	}
	return a.incarnation < b.incarnation
}

// Snapshot data. What the node stores in a snapshot file (and sends to a
// lagging follower) is its own header followed by the state machine's bytes:
//
//	| magic "BNS1" (4B) | sessions | address book | state machine snapshot ... |
//
//	sessions:     count (uvarint), then per session in (origin, incarnation)
//	              order: origin (uvarint), incarnation (8B LE), floor
//	              (uvarint), last (uvarint), seen count (uvarint), seen
//	              seqs ascending as deltas from floor (uvarint each)
//	address book: count (uvarint), then per member in ID order: ID
//	              (uvarint), address length (uvarint), address
//
// The address book holds only addresses learned from the log (membership
// changes carry them), so the header is the same on every member.
const snapshotMagic = "BNS1"

func encodeSnapshotHeader(ss sessions, book map[consensus.NodeID]string) []byte {
	b := []byte(snapshotMagic)
	keys := slices.SortedFunc(maps.Keys(ss), func(a, b sessionKey) int {
		switch {
		case lessKey(a, b):
			return -1
		case lessKey(b, a):
			return 1
		}
		return 0
	})
	b = binary.AppendUvarint(b, uint64(len(keys)))
	for _, k := range keys {
		s := ss[k]
		b = binary.AppendUvarint(b, uint64(k.origin))
		b = binary.LittleEndian.AppendUint64(b, k.incarnation)
		b = binary.AppendUvarint(b, s.floor)
		b = binary.AppendUvarint(b, s.last)
		seen := slices.Sorted(maps.Keys(s.seen))
		b = binary.AppendUvarint(b, uint64(len(seen)))
		prev := s.floor
		for _, q := range seen {
			b = binary.AppendUvarint(b, q-prev)
			prev = q
		}
	}
	ids := slices.Sorted(maps.Keys(book))
	b = binary.AppendUvarint(b, uint64(len(ids)))
	for _, id := range ids {
		b = binary.AppendUvarint(b, uint64(id))
		b = binary.AppendUvarint(b, uint64(len(book[id])))
		b = append(b, book[id]...)
	}
	return b
}

// decodeSnapshot splits snapshot data into the node's header and the state
// machine's bytes.
func decodeSnapshot(data []byte) (sessions, map[consensus.NodeID]string, []byte, error) {
	bad := func(what string) error { return fmt.Errorf("node: corrupt snapshot header: %s", what) }
	if len(data) < 4 || string(data[:4]) != snapshotMagic {
		return nil, nil, nil, bad("bad magic")
	}
	b := data[4:]
	uv := func(what string) (uint64, error) {
		v, k := binary.Uvarint(b)
		if k <= 0 {
			return 0, bad(what)
		}
		b = b[k:]
		return v, nil
	}
	n, err := uv("session count")
	if err != nil {
		return nil, nil, nil, err
	}
	if n > uint64(len(b)) {
		return nil, nil, nil, bad("session count beyond the data")
	}
	ss := make(sessions, n)
	for range n {
		o, err := uv("origin")
		if err != nil {
			return nil, nil, nil, err
		}
		if len(b) < 8 {
			return nil, nil, nil, bad("incarnation")
		}
		inc := binary.LittleEndian.Uint64(b)
		b = b[8:]
		s := &session{seen: map[uint64]struct{}{}}
		if s.floor, err = uv("floor"); err != nil {
			return nil, nil, nil, err
		}
		if s.last, err = uv("last"); err != nil {
			return nil, nil, nil, err
		}
		cnt, err := uv("seen count")
		if err != nil {
			return nil, nil, nil, err
		}
		if cnt > uint64(len(b)) {
			return nil, nil, nil, bad("seen count beyond the data")
		}
		prev := s.floor
		for range cnt {
			d, err := uv("seen seq")
			if err != nil {
				return nil, nil, nil, err
			}
			prev += d
			s.seen[prev] = struct{}{}
		}
		ss[sessionKey{consensus.NodeID(o), inc}] = s
	}
	n, err = uv("address count")
	if err != nil {
		return nil, nil, nil, err
	}
	if n > uint64(len(b)) {
		return nil, nil, nil, bad("address count beyond the data")
	}
	book := make(map[consensus.NodeID]string, n)
	for range n {
		id, err := uv("member ID")
		if err != nil {
			return nil, nil, nil, err
		}
		l, err := uv("address length")
		if err != nil {
			return nil, nil, nil, err
		}
		if l > uint64(len(b)) {
			return nil, nil, nil, bad("address beyond the data")
		}
		book[consensus.NodeID(id)] = string(b[:l])
		b = b[l:]
	}
	return ss, book, b, nil
}
