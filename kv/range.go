package kv

import (
	"bytes"
	"math"
	"slices"
	"sort"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

func checkRangeRequest(r *pb.RangeRequest) error {
	if len(r.GetKey()) == 0 {
		return rpctypes.ErrGRPCEmptyKey
	}
	if _, ok := pb.RangeRequest_SortOrder_name[int32(r.SortOrder)]; !ok {
		return rpctypes.ErrGRPCInvalidSortOption
	}
	if _, ok := pb.RangeRequest_SortTarget_name[int32(r.SortTarget)]; !ok {
		return rpctypes.ErrGRPCInvalidSortOption
	}
	return nil
}

// Range reads keys as etcd's Range does. It may run concurrently with
// writes. The returned byte slices are shared with the store and must not
// be modified.
func (s *Store) Range(req *pb.RangeRequest) (*pb.RangeResponse, error) {
	if err := checkRangeRequest(req); err != nil {
		return nil, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.execRange(req, s.rev)
}

// rangeResult is mvcc's RangeResult: the kvs (possibly limited), the
// total number of keys in the range at the revision, and the revision for
// the header.
type rangeResult struct {
	kvs   []*mvccpb.KeyValue
	count int64
	rev   int64
}

// rangeKeys is etcd's storeTxnCommon.rangeKeys with curRev the revision
// of the read view.
func (s *Store) rangeKeys(sp span, curRev, atRev int64, limit int64, countOnly bool) (rangeResult, error) {
	rev := atRev
	if rev > curRev {
		return rangeResult{rev: curRev}, rpctypes.ErrGRPCFutureRev
	}
	if rev <= 0 {
		rev = curRev
	}
	if rev < s.compactRev {
		return rangeResult{}, rpctypes.ErrGRPCCompacted
	}
	rr := rangeResult{rev: curRev}
	s.scan(sp, func(h *keyHist) bool {
		v := h.live(rev)
		if v == nil {
			return true
		}
		rr.count++
		if !countOnly && (limit <= 0 || int64(len(rr.kvs)) < limit) {
			rr.kvs = append(rr.kvs, toKV(h.key, v))
		}
		return true
	})
	return rr, nil
}

// execRange is etcd's executeRange against a view at curRev.
func (s *Store) execRange(r *pb.RangeRequest, curRev int64) (*pb.RangeResponse, error) {
	// As etcd: whether to fetch everything is decided from the order as
	// given, so with a non-KEY target, order NONE and a limit only the
	// first limit+1 keys (in key order) are fetched, then sorted.
	limit := r.Limit
	if !isDefaultOrdering(r.SortTarget, r.SortOrder) || hasRevisionFilters(r) {
		limit = 0
	}
	if limit > 0 && limit < math.MaxInt64 {
		limit++ // one extra for More
	}
	rr, err := s.rangeKeys(mkSpan(r.Key, r.RangeEnd), curRev, r.Revision, limit, r.CountOnly)
	if err != nil {
		return nil, err
	}
	kvs := rr.kvs
	prune := func(drop func(kv *mvccpb.KeyValue) bool) {
		kvs = slices.DeleteFunc(kvs, drop)
	}
	if r.MaxModRevision != 0 {
		prune(func(kv *mvccpb.KeyValue) bool { return kv.ModRevision > r.MaxModRevision })
	}
	if r.MinModRevision != 0 {
		prune(func(kv *mvccpb.KeyValue) bool { return kv.ModRevision < r.MinModRevision })
	}
	if r.MaxCreateRevision != 0 {
		prune(func(kv *mvccpb.KeyValue) bool { return kv.CreateRevision > r.MaxCreateRevision })
	}
	if r.MinCreateRevision != 0 {
		prune(func(kv *mvccpb.KeyValue) bool { return kv.CreateRevision < r.MinCreateRevision })
	}
	sortKVs(kvs, r.SortTarget, r.SortOrder)

	resp := &pb.RangeResponse{Header: &pb.ResponseHeader{Revision: rr.rev}, Count: rr.count}
	if r.Limit > 0 && int64(len(kvs)) > r.Limit {
		kvs = kvs[:r.Limit]
		resp.More = true
	}
	if r.KeysOnly {
		// As etcd: unless sorting by value, keys-only ranges are served
		// from its index, whose entries carry no value and no lease.
		fast := r.SortTarget != pb.RangeRequest_VALUE
		for _, kv := range kvs {
			kv.Value = nil
			if fast {
				kv.Lease = 0
			}
		}
	}
	resp.Kvs = kvs
	if resp.Kvs == nil {
		resp.Kvs = []*mvccpb.KeyValue{}
	}
	return resp, nil
}

// effectiveOrder is etcd's rule: order NONE with a target other than KEY
// means ASCEND.
func effectiveOrder(t pb.RangeRequest_SortTarget, o pb.RangeRequest_SortOrder) pb.RangeRequest_SortOrder {
	if t != pb.RangeRequest_KEY && o == pb.RangeRequest_NONE {
		return pb.RangeRequest_ASCEND
	}
	return o
}

func isDefaultOrdering(t pb.RangeRequest_SortTarget, o pb.RangeRequest_SortOrder) bool {
	return o == pb.RangeRequest_NONE || (t == pb.RangeRequest_KEY && o == pb.RangeRequest_ASCEND)
}

func hasRevisionFilters(r *pb.RangeRequest) bool {
	return r.MinModRevision != 0 || r.MaxModRevision != 0 ||
		r.MinCreateRevision != 0 || r.MaxCreateRevision != 0
}

// sortKVs applies etcd's sort rules to kvs, which arrive in ascending key
// order: order NONE with a target other than KEY means ASCEND; KEY with
// NONE or ASCEND keeps key order. It sorts exactly as etcd does (sort.Sort
// with etcd's comparisons), so ties come out in the same order as etcd's,
// and deterministically for a given Go version.
func sortKVs(kvs []*mvccpb.KeyValue, t pb.RangeRequest_SortTarget, o pb.RangeRequest_SortOrder) {
	o = effectiveOrder(t, o)
	if isDefaultOrdering(t, o) {
		return
	}
	var less func(a, b *mvccpb.KeyValue) bool
	switch t {
	case pb.RangeRequest_KEY:
		less = func(a, b *mvccpb.KeyValue) bool { return bytes.Compare(a.Key, b.Key) < 0 }
	case pb.RangeRequest_VERSION:
		less = func(a, b *mvccpb.KeyValue) bool { return a.Version-b.Version < 0 }
	case pb.RangeRequest_CREATE:
		less = func(a, b *mvccpb.KeyValue) bool { return a.CreateRevision-b.CreateRevision < 0 }
	case pb.RangeRequest_MOD:
		less = func(a, b *mvccpb.KeyValue) bool { return a.ModRevision-b.ModRevision < 0 }
	case pb.RangeRequest_VALUE:
		less = func(a, b *mvccpb.KeyValue) bool { return bytes.Compare(a.Value, b.Value) < 0 }
	default:
		return
	}
	var sorter sort.Interface = kvSorter{kvs, less}
	if o == pb.RangeRequest_DESCEND {
		sorter = sort.Reverse(sorter)
	}
	sort.Sort(sorter)
}

// kvSorter is etcd's kvSort with one of its comparisons.
type kvSorter struct {
	kvs  []*mvccpb.KeyValue
	less func(a, b *mvccpb.KeyValue) bool
}

func (s kvSorter) Len() int           { return len(s.kvs) }
func (s kvSorter) Swap(i, j int)      { s.kvs[i], s.kvs[j] = s.kvs[j], s.kvs[i] }
func (s kvSorter) Less(i, j int) bool { return s.less(s.kvs[i], s.kvs[j]) }
