package kv

import (
	"bytes"
	"sort"
	"sync"

	"github.com/tidwall/btree"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

// Default limits, the same as etcd's defaults.
const (
	// DefaultMaxTxnOps is the largest number of operations in one branch
	// (or of compares) of a Txn, like etcd's --max-txn-ops.
	DefaultMaxTxnOps = 128
	// DefaultMaxRequestBytes is the largest encoded command Apply accepts,
	// like etcd's --max-request-bytes (1.5 MiB).
	DefaultMaxRequestBytes = 3 * 1024 * 1024 / 2
	// MaxLeaseTTL is the largest lease TTL in seconds, as in etcd.
	MaxLeaseTTL = 9000000000
)

// Options configures a Store. Every member of a cluster must use the same
// options: they decide which requests fail, so they are part of the
// determinism contract.
type Options struct {
	// MaxTxnOps limits len(Compare), len(Success) and len(Failure) of a
	// Txn; 0 means DefaultMaxTxnOps.
	MaxTxnOps int
	// MaxRequestBytes limits the size of a command given to Apply; 0 means
	// DefaultMaxRequestBytes.
	MaxRequestBytes int
}

// version is one entry of a key's history: a put (live value) or a
// deletion (tombstone), written at revision {main, sub}.
type version struct {
	main, sub int64
	tomb      bool
	create    int64 // create_revision of the generation (0 for a tombstone)
	ver       int64 // version within the generation (0 for a tombstone)
	lease     int64
	value     []byte
}

// keyHist is the kept history of one key, sorted by (main, sub).
type keyHist struct {
	key  []byte
	vers []version
}

// at returns the index of the last entry with main <= rev, or -1.
func (h *keyHist) at(rev int64) int {
	i := sort.Search(len(h.vers), func(i int) bool { return h.vers[i].main > rev })
	return i - 1
}

// live returns the key's live version as of revision rev, or nil.
func (h *keyHist) live(rev int64) *version {
	i := h.at(rev)
	if i < 0 || h.vers[i].tomb {
		return nil
	}
	return &h.vers[i]
}

// find returns the entry written at exactly {main, sub}, or nil.
func (h *keyHist) find(main, sub int64) *version {
	i := sort.Search(len(h.vers), func(i int) bool {
		v := &h.vers[i]
		return v.main > main || (v.main == main && v.sub >= sub)
	})
	if i < len(h.vers) && h.vers[i].main == main && h.vers[i].sub == sub {
		return &h.vers[i]
	}
	return nil
}

// revEntry indexes history by revision: key was written at {main, sub}.
type revEntry struct {
	main, sub int64
	key       []byte
}

type leaseRec struct {
	id        int64
	ttl       int64 // granted TTL
	remaining int64 // last checkpointed remaining TTL (0: none)
	keys      map[string]struct{}
}

// Store is ballot's deterministic MVCC key-value state machine with etcd
// v3 semantics. Its write methods (and Apply) must be called from one
// goroutine; Range, EventsSince and the other read methods may be called
// concurrently with them.
type Store struct {
	mu sync.RWMutex

	opts Options

	rev        int64 // current revision, starts at 1
	compactRev int64 // last compaction revision; -1 if never compacted, as etcd
	applied    uint64

	keys *btree.BTreeG[*keyHist] // by key
	revs *btree.BTreeG[revEntry] // by (main, sub)

	leases map[int64]*leaseRec
	meta   map[string][]byte // see meta.go

	hook     ApplyHook
	observer func(rev int64, events []*mvccpb.Event)
}

// New returns an empty store at revision 1 with the default options.
func New() *Store { return NewWithOptions(Options{}) }

// NewWithOptions returns an empty store at revision 1.
func NewWithOptions(o Options) *Store {
	if o.MaxTxnOps <= 0 {
		o.MaxTxnOps = DefaultMaxTxnOps
	}
	if o.MaxRequestBytes <= 0 {
		o.MaxRequestBytes = DefaultMaxRequestBytes
	}
	s := &Store{opts: o}
	s.reset()
	return s
}

func (s *Store) reset() {
	s.rev = 1
	s.compactRev = -1
	s.applied = 0
	s.keys = newKeyTree()
	s.revs = newRevTree()
	s.leases = make(map[int64]*leaseRec)
	s.meta = make(map[string][]byte)
}

func newKeyTree() *btree.BTreeG[*keyHist] {
	return btree.NewBTreeGOptions(func(a, b *keyHist) bool {
		return bytes.Compare(a.key, b.key) < 0
	}, btree.Options{NoLocks: true})
}

func newRevTree() *btree.BTreeG[revEntry] {
	return btree.NewBTreeGOptions(func(a, b revEntry) bool {
		if a.main != b.main {
			return a.main < b.main
		}
		return a.sub < b.sub
	}, btree.Options{NoLocks: true})
}

// Rev returns the current revision.
func (s *Store) Rev() int64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.rev
}

// CompactRev returns the revision of the last compaction, -1 if none (as
// etcd: a first compaction at revision 0 is accepted).
func (s *Store) CompactRev() int64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.compactRev
}

// AppliedIndex returns the log index of the last command given to Apply
// (or restored from a snapshot).
func (s *Store) AppliedIndex() uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.applied
}

// SetObserver installs fn, called synchronously by every write that
// advances the revision (from Apply or the direct write methods), after the
// write is visible to readers, with the new revision and its events in
// sub-revision order. Event.Kv is the full KeyValue written (for a DELETE,
// only Key and ModRevision are set, as in etcd); Event.PrevKv is the key's
// value as of the previous revision, or nil. fn may call the Store's read
// methods but not its write methods. The events are fresh and owned by fn;
// their byte slices must not be modified.
func (s *Store) SetObserver(fn func(rev int64, events []*mvccpb.Event)) {
	s.mu.Lock()
	s.observer = fn
	s.mu.Unlock()
}

// span is a key range as etcd's key/range_end pair gives it: an empty
// range_end means the single key, "\x00" every key >= key, anything else
// [key, range_end).
type span struct {
	key, end []byte
	single   bool
	toEnd    bool
}

func mkSpan(key, end []byte) span {
	switch {
	case len(end) == 0:
		return span{key: key, single: true}
	case len(end) == 1 && end[0] == 0:
		return span{key: key, toEnd: true}
	default:
		return span{key: key, end: end}
	}
}

// contains reports whether k lies in the span.
func (sp span) contains(k []byte) bool {
	if sp.single {
		return bytes.Equal(k, sp.key)
	}
	if bytes.Compare(k, sp.key) < 0 {
		return false
	}
	return sp.toEnd || bytes.Compare(k, sp.end) < 0
}

// scan calls fn for each key history in the span in key order, until fn
// returns false.
func (s *Store) scan(sp span, fn func(h *keyHist) bool) {
	if sp.single {
		if h, ok := s.keys.Get(&keyHist{key: sp.key}); ok {
			fn(h)
		}
		return
	}
	s.keys.Ascend(&keyHist{key: sp.key}, func(h *keyHist) bool {
		if !sp.toEnd && bytes.Compare(h.key, sp.end) >= 0 {
			return false
		}
		return fn(h)
	})
}

// get returns the live version of key as of rev, or nil.
func (s *Store) get(key []byte, rev int64) *version {
	h, ok := s.keys.Get(&keyHist{key: key})
	if !ok {
		return nil
	}
	return h.live(rev)
}

// toKV builds a fresh KeyValue for a live version of key.
func toKV(key []byte, v *version) *mvccpb.KeyValue {
	return &mvccpb.KeyValue{
		Key:            key,
		CreateRevision: v.create,
		ModRevision:    v.main,
		Version:        v.ver,
		Value:          v.value,
		Lease:          v.lease,
	}
}

func cloneBytes(b []byte) []byte {
	if b == nil {
		return nil
	}
	return append([]byte{}, b...)
}
