package kv

import (
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// writeTxn is one write request in progress: every change it makes is at
// main revision beginRev+1, with sub-revisions 0, 1, 2, ... in order. The
// store's lock is held throughout, so readers never see a partial write.
// Changes go straight into the history; reads inside the request see them
// because they read at viewRev, which is beginRev+1 once something changed
// (as etcd's storeTxnWrite does).
type writeTxn struct {
	s        *Store
	beginRev int64
	changes  int64
	events   []*mvccpb.Event
	undo     []undoRec
}

// undoRec reverses one change: the key's last history entry is removed
// and its lease attachment moves back from leaseTo to leaseFrom.
type undoRec struct {
	key                []byte
	leaseFrom, leaseTo int64
}

// abort removes every change the request made, in reverse order, leaving
// the store as it was when the request began.
func (w *writeTxn) abort() {
	for i := len(w.undo) - 1; i >= 0; i-- {
		u := w.undo[i]
		h, _ := w.s.keys.Get(&keyHist{key: u.key})
		last := h.vers[len(h.vers)-1]
		w.s.revs.Delete(revEntry{main: last.main, sub: last.sub})
		h.vers = h.vers[:len(h.vers)-1]
		if len(h.vers) == 0 {
			w.s.keys.Delete(h)
		}
		if u.leaseFrom != u.leaseTo {
			w.s.detach(u.leaseTo, h.key)
			w.s.attach(u.leaseFrom, h.key)
		}
	}
	w.undo, w.events, w.changes = nil, nil, 0
}

func (s *Store) beginWrite() *writeTxn {
	return &writeTxn{s: s, beginRev: s.rev}
}

// viewRev is the revision reads inside the request are made at.
func (w *writeTxn) viewRev() int64 {
	if w.changes > 0 {
		return w.beginRev + 1
	}
	return w.beginRev
}

// end finishes the write: if anything changed the store moves to the new
// revision. It returns the revision and the events for the observer.
func (w *writeTxn) end() (int64, []*mvccpb.Event) {
	if w.changes == 0 {
		return w.s.rev, nil
	}
	w.s.rev = w.beginRev + 1
	return w.s.rev, w.events
}

// prevKV returns the key's value before this request (at beginRev), as
// etcd's watch reports prev_kv (the state at mod_revision-1).
func (w *writeTxn) prevKV(key []byte) *mvccpb.KeyValue {
	if v := w.s.get(key, w.beginRev); v != nil {
		return toKV(key, v)
	}
	return nil
}

func (w *writeTxn) appendVersion(key []byte, v version) []byte {
	h, ok := w.s.keys.Get(&keyHist{key: key})
	if !ok {
		h = &keyHist{key: cloneBytes(key)}
		w.s.keys.Set(h)
	}
	h.vers = append(h.vers, v)
	w.s.revs.Set(revEntry{main: v.main, sub: v.sub, key: h.key})
	w.changes++
	return h.key
}

// put writes key=value with the given lease at the request's revision and
// moves the key's lease attachment, like etcd's storeTxnWrite.put.
func (w *writeTxn) put(key, value []byte, lease int64) int64 {
	main := w.beginRev + 1
	prev := w.prevKV(key)
	v := version{main: main, sub: w.changes, create: main, ver: 1, lease: lease}
	oldLease := int64(0)
	if cur := w.s.get(key, w.viewRev()); cur != nil {
		v.create = cur.create
		v.ver = cur.ver + 1
		oldLease = cur.lease
	}
	if len(value) > 0 {
		v.value = cloneBytes(value)
	}
	k := w.appendVersion(key, v)
	if oldLease != lease {
		w.s.detach(oldLease, k)
		w.s.attach(lease, k)
	}
	w.undo = append(w.undo, undoRec{key: k, leaseFrom: oldLease, leaseTo: lease})
	w.events = append(w.events, &mvccpb.Event{Type: mvccpb.PUT, Kv: toKV(k, &v), PrevKv: prev})
	return main
}

// del writes a tombstone for a key that is live at viewRev.
func (w *writeTxn) del(key []byte) {
	main := w.beginRev + 1
	prev := w.prevKV(key)
	var oldLease int64
	if cur := w.s.get(key, w.viewRev()); cur != nil {
		oldLease = cur.lease
	}
	k := w.appendVersion(key, version{main: main, sub: w.changes, tomb: true})
	w.s.detach(oldLease, k)
	w.undo = append(w.undo, undoRec{key: k, leaseFrom: oldLease})
	w.events = append(w.events, &mvccpb.Event{
		Type:   mvccpb.DELETE,
		Kv:     &mvccpb.KeyValue{Key: k, ModRevision: main},
		PrevKv: prev,
	})
}

// deleteRange deletes the keys of sp live at viewRev and returns how many
// it deleted and the revision for the response header, like etcd's
// storeTxnWrite.DeleteRange.
func (w *writeTxn) deleteRange(sp span) (int64, int64) {
	var keys [][]byte
	rv := w.viewRev()
	w.s.scan(sp, func(h *keyHist) bool {
		if h.live(rv) != nil {
			keys = append(keys, h.key)
		}
		return true
	})
	for _, k := range keys {
		w.del(k)
	}
	if len(keys) != 0 || w.changes > 0 {
		return int64(len(keys)), w.beginRev + 1
	}
	return 0, w.beginRev
}

// notify hands a finished write's events to the observer. It is called
// after the lock is released.
func (s *Store) notify(obs func(int64, []*mvccpb.Event), rev int64, evs []*mvccpb.Event) {
	if obs != nil && len(evs) > 0 {
		obs(rev, evs)
	}
}

func checkPutRequest(r *pb.PutRequest) error {
	if len(r.GetKey()) == 0 {
		return rpctypes.ErrGRPCEmptyKey
	}
	if r.IgnoreValue && len(r.Value) != 0 {
		return rpctypes.ErrGRPCValueProvided
	}
	if r.IgnoreLease && r.Lease != 0 {
		return rpctypes.ErrGRPCLeaseProvided
	}
	return nil
}

func checkDeleteRequest(r *pb.DeleteRangeRequest) error {
	if len(r.GetKey()) == 0 {
		return rpctypes.ErrGRPCEmptyKey
	}
	return nil
}

// Put writes one key, as etcd's Put: a new main revision; the key's
// version goes up by one (to 1 with a fresh create_revision if the key was
// absent); prev_kv returns the old value; ignore_value/ignore_lease keep
// the old value/lease (the key must exist); a lease must exist.
func (s *Store) Put(req *pb.PutRequest) (*pb.PutResponse, error) {
	if err := checkPutRequest(req); err != nil {
		return nil, err
	}
	s.mu.Lock()
	if req.Lease != 0 {
		if _, ok := s.leases[req.Lease]; !ok {
			s.mu.Unlock()
			return nil, rpctypes.ErrGRPCLeaseNotFound
		}
	}
	w := s.beginWrite()
	resp, err := w.execPut(req)
	if err != nil {
		w.abort()
	}
	rev, evs := w.end()
	obs := s.observer
	s.mu.Unlock()
	if err != nil {
		return nil, err
	}
	s.notify(obs, rev, evs)
	return resp, nil
}

// execPut is etcd's put() inside a write request. Its only failure
// (ErrGRPCKeyNotFound) happens before it writes anything.
func (w *writeTxn) execPut(p *pb.PutRequest) (*pb.PutResponse, error) {
	resp := &pb.PutResponse{Header: &pb.ResponseHeader{}}
	val, lease := p.Value, p.Lease
	var cur *version
	if p.IgnoreValue || p.IgnoreLease || p.PrevKv {
		cur = w.s.get(p.Key, w.viewRev())
	}
	if (p.IgnoreValue || p.IgnoreLease) && cur == nil {
		return nil, rpctypes.ErrGRPCKeyNotFound
	}
	if p.IgnoreValue {
		val = cur.value
	}
	if p.IgnoreLease {
		lease = cur.lease
	}
	if p.PrevKv && cur != nil {
		resp.PrevKv = toKV(p.Key, cur)
	}
	resp.Header.Revision = w.put(p.Key, val, lease)
	return resp, nil
}

// DeleteRange deletes the keys in [key, range_end) (one key if range_end
// is empty, every key >= key if it is "\x00"), all in one new revision.
// Deleting nothing does not advance the revision.
func (s *Store) DeleteRange(req *pb.DeleteRangeRequest) (*pb.DeleteRangeResponse, error) {
	if err := checkDeleteRequest(req); err != nil {
		return nil, err
	}
	s.mu.Lock()
	w := s.beginWrite()
	resp := w.execDeleteRange(req)
	rev, evs := w.end()
	obs := s.observer
	s.mu.Unlock()
	s.notify(obs, rev, evs)
	return resp, nil
}

func (w *writeTxn) execDeleteRange(dr *pb.DeleteRangeRequest) *pb.DeleteRangeResponse {
	resp := &pb.DeleteRangeResponse{Header: &pb.ResponseHeader{}}
	sp := mkSpan(dr.Key, dr.RangeEnd)
	if dr.PrevKv {
		rv := w.viewRev()
		resp.PrevKvs = []*mvccpb.KeyValue{}
		w.s.scan(sp, func(h *keyHist) bool {
			if v := h.live(rv); v != nil {
				resp.PrevKvs = append(resp.PrevKvs, toKV(h.key, v))
			}
			return true
		})
	}
	resp.Deleted, resp.Header.Revision = w.deleteRange(sp)
	return resp
}
