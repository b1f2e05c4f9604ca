package kv

import (
	"bytes"
	"fmt"
	"math/rand"
	"slices"
	"sort"
	"testing"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/protobuf/proto"
)

// The model: an obviously-correct, slow reference. Each key maps to the
// full list of its versions (never physically compacted: compaction only
// makes reads below it fail). Reads scan everything.

type mVersion struct {
	rev  int64
	tomb bool
	kv   *mvccpb.KeyValue // for a put
}

type model struct {
	hist    map[string][]mVersion
	rev     int64
	compact int64
	leases  map[int64]int64 // id -> ttl
}

func newModel() *model {
	return &model{hist: map[string][]mVersion{}, rev: 1, compact: -1, leases: map[int64]int64{}}
}

func (m *model) at(k string, rev int64) *mvccpb.KeyValue {
	var cur *mvccpb.KeyValue
	for i := range m.hist[k] {
		v := &m.hist[k][i]
		if v.rev > rev {
			break
		}
		if v.tomb {
			cur = nil
		} else {
			cur = v.kv
		}
	}
	if cur == nil {
		return nil
	}
	c := proto.Clone(cur).(*mvccpb.KeyValue)
	return c
}

func (m *model) sortedKeys() []string {
	ks := make([]string, 0, len(m.hist))
	for k := range m.hist {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func inRange(k, key, end string) bool {
	switch {
	case end == "":
		return k == key
	case end == "\x00":
		return k >= key
	default:
		return k >= key && k < end
	}
}

func (m *model) liveIn(key, end string, rev int64) []*mvccpb.KeyValue {
	var out []*mvccpb.KeyValue
	for _, k := range m.sortedKeys() {
		if inRange(k, key, end) {
			if kv := m.at(k, rev); kv != nil {
				out = append(out, kv)
			}
		}
	}
	return out
}

// mtxn is a write request in progress in the model.
type mtxn struct {
	m       *model
	changes int
	events  []*mvccpb.Event
}

func (w *mtxn) view() int64 {
	if w.changes > 0 {
		return w.m.rev + 1
	}
	return w.m.rev
}

func (w *mtxn) put(k string, val []byte, lease int64) {
	cur := w.m.at(k, w.view())
	kv := &mvccpb.KeyValue{Key: []byte(k), Value: val, ModRevision: w.m.rev + 1, CreateRevision: w.m.rev + 1, Version: 1, Lease: lease}
	if len(val) == 0 {
		kv.Value = nil
	}
	if cur != nil {
		kv.CreateRevision, kv.Version = cur.CreateRevision, cur.Version+1
	}
	w.m.hist[k] = append(w.m.hist[k], mVersion{rev: w.m.rev + 1, kv: kv})
	w.changes++
	ev := &mvccpb.Event{Type: mvccpb.PUT, Kv: proto.Clone(kv).(*mvccpb.KeyValue), PrevKv: w.m.at(k, w.m.rev)}
	w.events = append(w.events, ev)
}

func (w *mtxn) del(k string) {
	w.m.hist[k] = append(w.m.hist[k], mVersion{rev: w.m.rev + 1, tomb: true})
	w.changes++
	w.events = append(w.events, &mvccpb.Event{Type: mvccpb.DELETE, Kv: &mvccpb.KeyValue{Key: []byte(k), ModRevision: w.m.rev + 1}, PrevKv: w.m.at(k, w.m.rev)})
}

func (w *mtxn) end() int64 {
	if w.changes > 0 {
		w.m.rev++
	}
	return w.m.rev
}

func (w *mtxn) hdrRev() int64 { return w.view() }

func (m *model) rangeAt(r *pb.RangeRequest, cur int64) (*pb.RangeResponse, error) {
	if len(r.Key) == 0 {
		return nil, rpctypes.ErrGRPCEmptyKey
	}
	rev := r.Revision
	if rev > cur {
		return nil, rpctypes.ErrGRPCFutureRev
	}
	if rev <= 0 {
		rev = cur
	}
	if rev < m.compact {
		return nil, rpctypes.ErrGRPCCompacted
	}
	kvs := m.liveIn(string(r.Key), string(r.RangeEnd), rev)
	resp := &pb.RangeResponse{Header: &pb.ResponseHeader{Revision: cur}, Count: int64(len(kvs))}
	if r.CountOnly {
		resp.Kvs = nil
		return resp, nil
	}
	var keep []*mvccpb.KeyValue
	for _, kv := range kvs {
		if (r.MinModRevision != 0 && kv.ModRevision < r.MinModRevision) ||
			(r.MaxModRevision != 0 && kv.ModRevision > r.MaxModRevision) ||
			(r.MinCreateRevision != 0 && kv.CreateRevision < r.MinCreateRevision) ||
			(r.MaxCreateRevision != 0 && kv.CreateRevision > r.MaxCreateRevision) {
			continue
		}
		keep = append(keep, kv)
	}
	field := func(kv *mvccpb.KeyValue) any {
		switch r.SortTarget {
		case pb.RangeRequest_VERSION:
			return kv.Version
		case pb.RangeRequest_CREATE:
			return kv.CreateRevision
		case pb.RangeRequest_MOD:
			return kv.ModRevision
		case pb.RangeRequest_VALUE:
			return string(kv.Value)
		}
		return string(kv.Key)
	}
	less := func(a, b any) bool {
		switch x := a.(type) {
		case int64:
			return x < b.(int64)
		default:
			return x.(string) < b.(string)
		}
	}
	// etcd fetches only limit+1 keys (in key order) when the order as
	// given is NONE (or KEY ASCEND) and no revision filter is set, then
	// sorts those.
	if r.Limit > 0 && (r.SortOrder == pb.RangeRequest_NONE || (r.SortTarget == pb.RangeRequest_KEY && r.SortOrder == pb.RangeRequest_ASCEND)) &&
		r.MinModRevision == 0 && r.MaxModRevision == 0 && r.MinCreateRevision == 0 && r.MaxCreateRevision == 0 &&
		int64(len(keep)) > r.Limit+1 {
		keep = keep[:r.Limit+1]
	}
	// etcd sorts with sort.Sort (not stable): ties come out in its order.
	asc := func(i, j int) bool { return less(field(keep[i]), field(keep[j])) }
	switch {
	case r.SortOrder == pb.RangeRequest_DESCEND && r.SortTarget == pb.RangeRequest_KEY:
		slices.Reverse(keep)
	case r.SortOrder == pb.RangeRequest_DESCEND:
		sort.Sort(sort.Reverse(lessSorter{keep, asc}))
	case r.SortOrder == pb.RangeRequest_ASCEND || r.SortTarget != pb.RangeRequest_KEY:
		sort.Sort(lessSorter{keep, asc})
	}
	if r.Limit > 0 && int64(len(keep)) > r.Limit {
		keep = keep[:r.Limit]
		resp.More = true
	}
	for _, kv := range keep {
		if r.KeysOnly {
			kv.Value = nil
			if r.SortTarget != pb.RangeRequest_VALUE {
				kv.Lease = 0 // etcd serves these from its index
			}
		}
	}
	resp.Kvs = keep
	return resp, nil
}

func (m *model) putReq(w *mtxn, p *pb.PutRequest) (*pb.PutResponse, error) {
	cur := m.at(string(p.Key), w.view())
	if (p.IgnoreValue || p.IgnoreLease) && cur == nil {
		return nil, rpctypes.ErrGRPCKeyNotFound
	}
	val, lease := p.Value, p.Lease
	if p.IgnoreValue {
		val = cur.Value
	}
	if p.IgnoreLease {
		lease = cur.Lease
	}
	resp := &pb.PutResponse{Header: &pb.ResponseHeader{}}
	if p.PrevKv {
		resp.PrevKv = cur
	}
	w.put(string(p.Key), val, lease)
	resp.Header.Revision = m.rev + 1
	return resp, nil
}

func (m *model) delReq(w *mtxn, d *pb.DeleteRangeRequest) *pb.DeleteRangeResponse {
	kvs := m.liveIn(string(d.Key), string(d.RangeEnd), w.view())
	resp := &pb.DeleteRangeResponse{Header: &pb.ResponseHeader{}, Deleted: int64(len(kvs))}
	if d.PrevKv {
		resp.PrevKvs = kvs
	}
	for _, kv := range kvs {
		w.del(string(kv.Key))
	}
	resp.Header.Revision = w.hdrRev()
	return resp
}

func (m *model) compareHolds(c *pb.Compare) bool {
	kvs := m.liveIn(string(c.Key), string(c.RangeEnd), m.rev)
	if len(kvs) == 0 {
		if c.Target == pb.Compare_VALUE {
			return false
		}
		kvs = []*mvccpb.KeyValue{{}}
	}
	for _, kv := range kvs {
		var a, b int64
		var res int
		switch c.Target {
		case pb.Compare_VALUE:
			res = bytes.Compare(kv.Value, c.GetValue())
		case pb.Compare_VERSION:
			a, b = kv.Version, c.GetVersion()
		case pb.Compare_MOD:
			a, b = kv.ModRevision, c.GetModRevision()
		case pb.Compare_CREATE:
			a, b = kv.CreateRevision, c.GetCreateRevision()
		case pb.Compare_LEASE:
			a, b = kv.Lease, c.GetLease()
		}
		if c.Target != pb.Compare_VALUE {
			res = map[bool]int{true: -1, false: 0}[a < b] + map[bool]int{true: 1, false: 0}[a > b]
		}
		ok := map[pb.Compare_CompareResult]bool{
			pb.Compare_EQUAL: res == 0, pb.Compare_NOT_EQUAL: res != 0,
			pb.Compare_GREATER: res > 0, pb.Compare_LESS: res < 0,
		}[c.Result]
		if !ok {
			return false
		}
	}
	return true
}

// txnPreflight evaluates the branch choices and the pre-txn checks
// against the state before the txn.
func (m *model) txnPreflight(r *pb.TxnRequest) error {
	ok := true
	for _, c := range r.Compare {
		ok = ok && m.compareHolds(c)
	}
	ops := r.Success
	if !ok {
		ops = r.Failure
	}
	for _, op := range ops {
		switch v := op.Request.(type) {
		case *pb.RequestOp_RequestPut: // etcd checks the lease first
			if l := v.RequestPut.Lease; l != 0 {
				if _, ok := m.leases[l]; !ok {
					return rpctypes.ErrGRPCLeaseNotFound
				}
			}
			if (v.RequestPut.IgnoreValue || v.RequestPut.IgnoreLease) && m.at(string(v.RequestPut.Key), m.rev) == nil {
				return rpctypes.ErrGRPCKeyNotFound
			}
		case *pb.RequestOp_RequestRange:
			rv := v.RequestRange.Revision
			if rv > m.rev {
				return rpctypes.ErrGRPCFutureRev
			}
			if rv != 0 && rv < m.compact {
				return rpctypes.ErrGRPCCompacted
			}
		case *pb.RequestOp_RequestTxn:
			if err := m.txnPreflight(v.RequestTxn); err != nil {
				return err
			}
		}
	}
	return nil
}

// txnRun decides branches against the pre-txn state (pre) and runs ops.
// A put that fails (see gen.branch) fails the whole txn.
func (m *model) txnRun(w *mtxn, r *pb.TxnRequest, pre *model) (*pb.TxnResponse, error) {
	ok := true
	for _, c := range r.Compare {
		ok = ok && pre.compareHolds(c)
	}
	ops := r.Success
	if !ok {
		ops = r.Failure
	}
	resp := &pb.TxnResponse{Header: &pb.ResponseHeader{}, Succeeded: ok}
	for _, op := range ops {
		var ro *pb.ResponseOp
		switch v := op.Request.(type) {
		case *pb.RequestOp_RequestPut:
			pr, err := m.putReq(w, v.RequestPut)
			if err != nil {
				return nil, err
			}
			ro = &pb.ResponseOp{Response: &pb.ResponseOp_ResponsePut{ResponsePut: pr}}
		case *pb.RequestOp_RequestDeleteRange:
			ro = &pb.ResponseOp{Response: &pb.ResponseOp_ResponseDeleteRange{ResponseDeleteRange: m.delReq(w, v.RequestDeleteRange)}}
		case *pb.RequestOp_RequestRange:
			rr, _ := m.rangeAt(v.RequestRange, w.view())
			ro = &pb.ResponseOp{Response: &pb.ResponseOp_ResponseRange{ResponseRange: rr}}
		case *pb.RequestOp_RequestTxn:
			tr, err := m.txnRun(w, v.RequestTxn, pre)
			if err != nil {
				return nil, err
			}
			ro = &pb.ResponseOp{Response: &pb.ResponseOp_ResponseTxn{ResponseTxn: tr}}
		}
		resp.Responses = append(resp.Responses, ro)
	}
	return resp, nil
}

// snapshotModel freezes the pre-txn state for compares (only reads at
// m.rev are made through it, and the txn's writes are at m.rev+1, so the
// model itself serves).
func (m *model) frozen() *model { return m }

type gen struct {
	r    *rand.Rand
	keys []string
}

func (g *gen) key() string { return g.keys[g.r.Intn(len(g.keys))] }

func (g *gen) val() []byte {
	if g.r.Intn(8) == 0 {
		return nil
	}
	return []byte(fmt.Sprint("v", g.r.Intn(5)))
}

func (g *gen) end(key string) string {
	switch g.r.Intn(4) {
	case 0:
		return "\x00"
	case 1:
		return g.key()
	default:
		return ""
	}
}

func (g *gen) lease(m *model) int64 {
	if g.r.Intn(3) != 0 {
		return 0
	}
	return int64(g.r.Intn(4) + 1) // 1..4; some may not exist
}

func (g *gen) rev(m *model) int64 {
	switch g.r.Intn(3) {
	case 0:
		return 0
	default:
		return int64(g.r.Intn(int(m.rev)+2)) - 0
	}
}

func (g *gen) rangeReq(m *model) *pb.RangeRequest {
	k := g.key()
	r := &pb.RangeRequest{Key: []byte(k), RangeEnd: bs(g.end(k)), Revision: g.rev(m)}
	if g.r.Intn(3) == 0 {
		r.Limit = int64(g.r.Intn(4))
	}
	if g.r.Intn(3) == 0 {
		r.SortTarget = pb.RangeRequest_SortTarget(g.r.Intn(5))
		r.SortOrder = pb.RangeRequest_SortOrder(g.r.Intn(3))
	}
	switch g.r.Intn(8) {
	case 0:
		r.CountOnly = true
	case 1:
		r.KeysOnly = true
	case 2:
		r.MinModRevision = int64(g.r.Intn(int(m.rev) + 1))
	case 3:
		r.MaxCreateRevision = int64(g.r.Intn(int(m.rev) + 1))
	}
	return r
}

func (g *gen) putReq(m *model) *pb.PutRequest {
	p := &pb.PutRequest{Key: []byte(g.key()), PrevKv: g.r.Intn(2) == 0}
	switch g.r.Intn(8) {
	case 0:
		p.IgnoreValue = true
		p.Lease = g.lease(m)
	case 1:
		p.IgnoreLease = true
		p.Value = g.val()
	default:
		p.Value = g.val()
		p.Lease = g.lease(m)
	}
	return p
}

func (g *gen) compare(m *model) *pb.Compare {
	c := &pb.Compare{Key: []byte(g.key()), Result: pb.Compare_CompareResult(g.r.Intn(4)), Target: pb.Compare_CompareTarget(g.r.Intn(5))}
	if g.r.Intn(5) == 0 {
		c.RangeEnd = bs(g.end(string(c.Key)))
	}
	n := int64(g.r.Intn(int(m.rev) + 2))
	switch c.Target {
	case pb.Compare_VALUE:
		c.TargetUnion = &pb.Compare_Value{Value: g.val()}
	case pb.Compare_VERSION:
		c.TargetUnion = &pb.Compare_Version{Version: n % 4}
	case pb.Compare_CREATE:
		c.TargetUnion = &pb.Compare_CreateRevision{CreateRevision: n}
	case pb.Compare_MOD:
		c.TargetUnion = &pb.Compare_ModRevision{ModRevision: n}
	case pb.Compare_LEASE:
		c.TargetUnion = &pb.Compare_Lease{Lease: n % 3}
	}
	return c
}

// branch makes ops with no duplicate-key conflicts: puts use distinct
// keys that no delete of the txn covers (used tracks keys already
// claimed by puts; deletes are single keys not in used and never put).
func (g *gen) branch(m *model, used map[string]bool, depth int) []*pb.RequestOp {
	var ops []*pb.RequestOp
	for n := g.r.Intn(4); n > 0; n-- {
		k := g.key()
		switch g.r.Intn(6) {
		case 5:
			// etcd's checkIntervals does not see a "\x00" range_end as
			// covering anything, so this may delete keys the txn puts
			// (before or after), or make a later ignore_value put fail.
			ops = append(ops, opDel(k, "\x00"))
		case 0, 1:
			if used[k] {
				continue
			}
			used[k] = true
			p := g.putReq(m)
			p.Key = []byte(k)
			ops = append(ops, &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: p}})
		case 2:
			if used[k] {
				continue
			}
			used[k] = true
			ops = append(ops, &pb.RequestOp{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: &pb.DeleteRangeRequest{Key: []byte(k), PrevKv: g.r.Intn(2) == 0}}})
		case 3:
			ops = append(ops, &pb.RequestOp{Request: &pb.RequestOp_RequestRange{RequestRange: g.rangeReq(m)}})
		case 4:
			if depth > 0 {
				continue
			}
			// Both branches of a nested txn draw from one used set, so
			// they never conflict with each other or the outer txn.
			inner := &pb.TxnRequest{Compare: []*pb.Compare{g.compare(m)}}
			inner.Success = g.branch(m, used, depth+1)
			inner.Failure = g.branch(m, used, depth+1)
			ops = append(ops, opTxn(inner))
		}
	}
	return ops
}

func errsEqual(a, b error) bool { return a == b }

func TestModelRandomized(t *testing.T) {
	seeds := []int64{1, 2, 3, 4, 5, 6}
	steps := 2500
	if testing.Short() {
		seeds, steps = seeds[:2], 800
	}
	for _, seed := range seeds {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) { runModel(t, seed, steps) })
	}
}

func runModel(t *testing.T, seed int64, steps int) {
	g := &gen{r: rand.New(rand.NewSource(seed)), keys: []string{"a", "b", "c", "d", "e", "f", "g", "h"}}
	s := New()
	m := newModel()
	var observed []*mvccpb.Event
	obs := func(rev int64, evs []*mvccpb.Event) {
		for _, e := range evs {
			if e.Kv.ModRevision != rev {
				t.Fatalf("event rev %d in batch %d", e.Kv.ModRevision, rev)
			}
		}
		observed = append(observed, evs...)
	}
	s.SetObserver(obs)
	var modelEvents []*mvccpb.Event
	checked := 0
	midway := 0
	fail := func(step int, what string, got, want any) {
		t.Helper()
		t.Fatalf("seed %d step %d %s:\n got  %v\n want %v", seed, step, what, got, want)
	}
	check := func(step int, what string, gotResp proto.Message, gotErr error, wantResp proto.Message, wantErr error) {
		t.Helper()
		if !errsEqual(gotErr, wantErr) {
			fail(step, what+" error", gotErr, wantErr)
		}
		if wantErr == nil && !proto.Equal(gotResp, wantResp) {
			fail(step, what, gotResp, wantResp)
		}
	}
	for step := 0; step < steps; step++ {
		switch op := g.r.Intn(100); {
		case op < 30: // put
			p := g.putReq(m)
			resp, err := s.Put(p)
			var want *pb.PutResponse
			var werr error
			if p.IgnoreValue && len(p.Value) != 0 {
				werr = rpctypes.ErrGRPCValueProvided
			} else if p.IgnoreLease && p.Lease != 0 {
				werr = rpctypes.ErrGRPCLeaseProvided
			} else if _, ok := m.leases[p.Lease]; p.Lease != 0 && !ok {
				werr = rpctypes.ErrGRPCLeaseNotFound
			} else {
				w := &mtxn{m: m}
				want, werr = m.putReq(w, p)
				w.end()
				modelEvents = append(modelEvents, w.events...)
			}
			check(step, "put", resp, err, want, werr)
		case op < 42: // delete
			k := g.key()
			d := &pb.DeleteRangeRequest{Key: []byte(k), RangeEnd: bs(g.end(k)), PrevKv: g.r.Intn(2) == 0}
			resp, err := s.DeleteRange(d)
			w := &mtxn{m: m}
			want := m.delReq(w, d)
			w.end()
			modelEvents = append(modelEvents, w.events...)
			check(step, "delete", resp, err, want, nil)
		case op < 60: // txn
			req := &pb.TxnRequest{}
			for n := g.r.Intn(3); n > 0; n-- {
				req.Compare = append(req.Compare, g.compare(m))
			}
			used := map[string]bool{}
			req.Success = g.branch(m, used, 0)
			req.Failure = g.branch(m, map[string]bool{}, 0)
			dup := false
			if g.r.Intn(15) == 0 {
				k := g.key()
				req.Success = append(req.Success, opPut(k, "1"), opPut(k, "2"))
				dup = true
			}
			resp, err := s.Txn(req)
			if dup {
				check(step, "dup txn", resp, err, nil, rpctypes.ErrGRPCDuplicateKey)
				continue
			}
			if perr := m.txnPreflight(req); perr != nil {
				check(step, "txn", resp, err, nil, perr)
				continue
			}
			saved := map[string]int{}
			for k, h := range m.hist {
				saved[k] = len(h)
			}
			w := &mtxn{m: m}
			want, werr := m.txnRun(w, req, m.frozen())
			if werr != nil {
				for k := range m.hist {
					m.hist[k] = m.hist[k][:saved[k]]
				}
				check(step, "txn failing midway", resp, err, nil, werr)
				midway++
				continue
			}
			want.Header.Revision = w.end()
			modelEvents = append(modelEvents, w.events...)
			check(step, "txn", resp, err, want, nil)
		case op < 75: // range
			r := g.rangeReq(m)
			resp, err := s.Range(r)
			want, werr := m.rangeAt(r, m.rev)
			check(step, fmt.Sprint("range ", r), resp, err, want, werr)
		case op < 80: // compact
			rev := m.compact + int64(g.r.Intn(int(m.rev-m.compact)+3)) - 1
			resp, err := s.Compact(&pb.CompactionRequest{Revision: rev})
			var werr error
			switch {
			case rev <= m.compact:
				werr = rpctypes.ErrGRPCCompacted
			case rev > m.rev:
				werr = rpctypes.ErrGRPCFutureRev
			default:
				m.compact = rev
			}
			check(step, "compact", resp, err, &pb.CompactionResponse{Header: &pb.ResponseHeader{Revision: m.rev}}, werr)
		case op < 86: // lease grant
			id := int64(g.r.Intn(5)) // 0 is invalid
			resp, err := s.LeaseGrant(&pb.LeaseGrantRequest{ID: id, TTL: 10 + id})
			var werr error
			if id == 0 {
				werr = rpctypes.ErrGRPCLeaseNotFound
			} else if _, ok := m.leases[id]; ok {
				werr = rpctypes.ErrGRPCLeaseExist
			} else {
				m.leases[id] = 10 + id
			}
			check(step, "grant", resp, err, &pb.LeaseGrantResponse{Header: &pb.ResponseHeader{Revision: m.rev}, ID: id, TTL: 10 + id}, werr)
		case op < 90: // lease revoke
			id := int64(g.r.Intn(4) + 1)
			resp, err := s.LeaseRevoke(&pb.LeaseRevokeRequest{ID: id})
			var werr error
			if _, ok := m.leases[id]; !ok {
				werr = rpctypes.ErrGRPCLeaseNotFound
			} else {
				w := &mtxn{m: m}
				for _, kv := range m.liveIn("\x00", "\x00", m.rev) {
					if kv.Lease == id {
						w.del(string(kv.Key))
					}
				}
				delete(m.leases, id)
				w.end()
				modelEvents = append(modelEvents, w.events...)
			}
			check(step, "revoke", resp, err, &pb.LeaseRevokeResponse{Header: &pb.ResponseHeader{Revision: m.rev}}, werr)
		case op < 93: // snapshot, restore into a fresh store, continue there
			var b bytes.Buffer
			if err := s.Snapshot(&b); err != nil {
				t.Fatal(err)
			}
			ns := New()
			if err := ns.Restore(bytes.NewReader(b.Bytes())); err != nil {
				t.Fatalf("seed %d step %d restore: %v", seed, step, err)
			}
			ns.SetObserver(obs)
			s = ns
		default: // full comparison
			compareFull(t, seed, step, s, m, modelEvents, observed, &checked)
		}
		if s.Rev() != m.rev || s.CompactRev() != m.compact {
			fail(step, "revisions", []int64{s.Rev(), s.CompactRev()}, []int64{m.rev, m.compact})
		}
	}
	compareFull(t, seed, steps, s, m, modelEvents, observed, &checked)
	t.Logf("seed %d: rev %d, %d txns failed midway and were undone", seed, m.rev, midway)
}

func compareFull(t *testing.T, seed int64, step int, s *Store, m *model, modelEvents, observed []*mvccpb.Event, checked *int) {
	t.Helper()
	// Every readable revision, whole keyspace.
	lo := max(m.compact, 1)
	stride := max((m.rev-lo)/16, 1)
	for rev := lo; rev <= m.rev; rev += stride {
		if rev+stride > m.rev {
			rev = m.rev // always check the current revision
		}
		r := &pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}, Revision: rev}
		got, err := s.Range(r)
		want, _ := m.rangeAt(r, m.rev)
		if err != nil || !proto.Equal(got, want) {
			t.Fatalf("seed %d step %d range at %d: %v %v\nwant %v", seed, step, rev, got, err, want)
		}
	}
	// Leases and attachments.
	var ids []int64
	for id := range m.leases {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	if got := s.Leases(); !slices.Equal(got, ids) {
		t.Fatalf("seed %d step %d leases %v, want %v", seed, step, got, ids)
	}
	for _, id := range ids {
		ttl, keys, err := s.LeaseTimeToLive(id, true)
		var want []string
		for _, kv := range m.liveIn("\x00", "\x00", m.rev) {
			if kv.Lease == id {
				want = append(want, string(kv.Key))
			}
		}
		var got []string
		for _, k := range keys {
			got = append(got, string(k))
		}
		if err != nil || ttl != m.leases[id] || !slices.Equal(got, want) {
			t.Fatalf("seed %d step %d lease %d: ttl %d keys %q err %v, want %d %q", seed, step, id, ttl, got, err, m.leases[id], want)
		}
	}
	// The observer saw exactly the model's events.
	if len(observed) != len(modelEvents) {
		t.Fatalf("seed %d step %d: %d observed events, want %d", seed, step, len(observed), len(modelEvents))
	}
	for i := *checked; i < len(observed); i++ {
		if !proto.Equal(observed[i], modelEvents[i]) {
			t.Fatalf("seed %d step %d observed event %d: %v, want %v", seed, step, i, observed[i], modelEvents[i])
		}
	}
	*checked = len(observed)
	// History from the compact revision on (or the last 300 revisions).
	from := max(m.compact, 1, m.rev-300)
	evs, next, err := s.EventsSince([]byte{0}, []byte{0}, from, 0)
	if err != nil || next != m.rev+1 {
		t.Fatalf("seed %d step %d events since %d: next %d err %v", seed, step, from, next, err)
	}
	var want []*mvccpb.Event
	for _, e := range modelEvents {
		if e.Kv.ModRevision >= from {
			e = proto.Clone(e).(*mvccpb.Event)
			if e.Kv.ModRevision == m.compact {
				e.PrevKv = nil // compacted away
			}
			want = append(want, e)
		}
	}
	if len(evs) != len(want) {
		t.Fatalf("seed %d step %d: %d history events, want %d", seed, step, len(evs), len(want))
	}
	for i := range evs {
		if !proto.Equal(evs[i], want[i]) {
			t.Fatalf("seed %d step %d history event %d: %v, want %v", seed, step, i, evs[i], want[i])
		}
	}
	if m.compact > 1 {
		if _, _, err := s.EventsSince([]byte{0}, []byte{0}, m.compact-1, 0); err != rpctypes.ErrGRPCCompacted {
			t.Fatalf("seed %d step %d: events below compaction: %v", seed, step, err)
		}
	}
}

// lessSorter sorts kvs with a less over their indices.
type lessSorter struct {
	kvs  []*mvccpb.KeyValue
	less func(i, j int) bool
}

func (s lessSorter) Len() int           { return len(s.kvs) }
func (s lessSorter) Swap(i, j int)      { s.kvs[i], s.kvs[j] = s.kvs[j], s.kvs[i] }
func (s lessSorter) Less(i, j int) bool { return s.less(i, j) }
