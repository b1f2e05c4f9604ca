package kv

import (
	"bytes"
	"cmp"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// checkTxnRequest is etcd's v3rpc checkTxnRequest: op-count limit, empty
// compare keys, and every op's own checks (nested txns get the remaining
// op budget).
func checkTxnRequest(r *pb.TxnRequest, maxTxnOps int) error {
	opc := max(len(r.GetCompare()), len(r.GetSuccess()), len(r.GetFailure()))
	if opc > maxTxnOps {
		return rpctypes.ErrGRPCTooManyOps
	}
	for _, c := range r.GetCompare() {
		if len(c.GetKey()) == 0 {
			return rpctypes.ErrGRPCEmptyKey
		}
	}
	for _, u := range r.GetSuccess() {
		if err := checkRequestOp(u, maxTxnOps-opc); err != nil {
			return err
		}
	}
	for _, u := range r.GetFailure() {
		if err := checkRequestOp(u, maxTxnOps-opc); err != nil {
			return err
		}
	}
	return nil
}

func checkRequestOp(u *pb.RequestOp, maxTxnOps int) error {
	switch uv := u.GetRequest().(type) {
	case *pb.RequestOp_RequestRange:
		return checkRangeRequest(uv.RequestRange)
	case *pb.RequestOp_RequestPut:
		return checkPutRequest(uv.RequestPut)
	case *pb.RequestOp_RequestDeleteRange:
		return checkDeleteRequest(uv.RequestDeleteRange)
	case *pb.RequestOp_RequestTxn:
		if uv.RequestTxn == nil {
			return rpctypes.ErrGRPCKeyNotFound
		}
		return checkTxnRequest(uv.RequestTxn, maxTxnOps)
	default:
		// empty op, as etcd
		return rpctypes.ErrGRPCKeyNotFound
	}
}

// interval is etcd's adt string-affine interval [begin, end): an empty
// end is +infinity. A single key k is [k, k+"\x00").
type interval struct{ begin, end string }

func affineCmp(a, b string) int {
	switch {
	case a == "" && b == "":
		return 0
	case a == "":
		return 1
	case b == "":
		return -1
	}
	return cmpStrings(a, b)
}

func cmpStrings(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func (iv interval) overlaps(o interval) bool {
	return affineCmp(iv.begin, o.end) < 0 && affineCmp(o.begin, iv.end) < 0
}

func point(k string) interval { return interval{k, k + "\x00"} }

type intervals []interval

func (ivs intervals) hit(k string) bool {
	p := point(k)
	for _, iv := range ivs {
		if iv.overlaps(p) {
			return true
		}
	}
	return false
}

// checkIntervals is etcd's v3rpc checkIntervals: a txn must not put the
// same key twice, nor put a key that one of its deletes covers (in the
// same branch or an enclosing one). As in etcd, a delete's range_end is
// taken literally here, so a "\x00" (to the end) range_end covers no key,
// and puts in then/else of one nested txn may repeat a key.
func checkIntervals(reqs []*pb.RequestOp) (map[string]struct{}, intervals, error) {
	var dels intervals
	for _, req := range reqs {
		tv, ok := req.GetRequest().(*pb.RequestOp_RequestDeleteRange)
		if !ok || tv.RequestDeleteRange == nil {
			continue
		}
		d := tv.RequestDeleteRange
		if len(d.RangeEnd) != 0 {
			dels = append(dels, interval{string(d.Key), string(d.RangeEnd)})
		} else {
			dels = append(dels, point(string(d.Key)))
		}
	}
	puts := make(map[string]struct{})
	for _, req := range reqs {
		tv, ok := req.GetRequest().(*pb.RequestOp_RequestTxn)
		if !ok || tv.RequestTxn == nil {
			continue
		}
		putsThen, delsThen, err := checkIntervals(tv.RequestTxn.Success)
		if err != nil {
			return nil, nil, err
		}
		putsElse, delsElse, err := checkIntervals(tv.RequestTxn.Failure)
		if err != nil {
			return nil, nil, err
		}
		// Go map order does not matter here: any duplicate fails the
		// request with the same error.
		for k := range putsThen {
			if _, ok := puts[k]; ok || dels.hit(k) {
				return nil, nil, rpctypes.ErrGRPCDuplicateKey
			}
			puts[k] = struct{}{}
		}
		for k := range putsElse {
			if _, ok := puts[k]; ok {
				if _, safe := putsThen[k]; !safe {
					return nil, nil, rpctypes.ErrGRPCDuplicateKey
				}
			}
			if dels.hit(k) {
				return nil, nil, rpctypes.ErrGRPCDuplicateKey
			}
			puts[k] = struct{}{}
		}
		dels = append(dels, delsThen...)
		dels = append(dels, delsElse...)
	}
	for _, req := range reqs {
		tv, ok := req.GetRequest().(*pb.RequestOp_RequestPut)
		if !ok || tv.RequestPut == nil {
			continue
		}
		k := string(tv.RequestPut.Key)
		if _, ok := puts[k]; ok || dels.hit(k) {
			return nil, nil, rpctypes.ErrGRPCDuplicateKey
		}
		puts[k] = struct{}{}
	}
	return puts, dels, nil
}

// applyCompare is etcd's applyCompare: every key in the compare's range
// must satisfy it; a VALUE compare on no key fails; any other compare on
// no key compares against a zero KeyValue.
func (s *Store) applyCompare(rev int64, c *pb.Compare) bool {
	var kvs []*mvccpb.KeyValue
	s.scan(mkSpan(c.Key, c.RangeEnd), func(h *keyHist) bool {
		if v := h.live(rev); v != nil {
			kvs = append(kvs, toKV(h.key, v))
		}
		return true
	})
	if len(kvs) == 0 {
		if c.Target == pb.Compare_VALUE {
			return false
		}
		return compareKV(c, &mvccpb.KeyValue{})
	}
	for _, kv := range kvs {
		if !compareKV(c, kv) {
			return false
		}
	}
	return true
}

func compareKV(c *pb.Compare, kv *mvccpb.KeyValue) bool {
	var result int
	switch c.Target {
	case pb.Compare_VALUE:
		result = bytes.Compare(kv.Value, c.GetValue())
	case pb.Compare_CREATE:
		result = cmp.Compare(kv.CreateRevision, c.GetCreateRevision())
	case pb.Compare_MOD:
		result = cmp.Compare(kv.ModRevision, c.GetModRevision())
	case pb.Compare_VERSION:
		result = cmp.Compare(kv.Version, c.GetVersion())
	case pb.Compare_LEASE:
		result = cmp.Compare(kv.Lease, c.GetLease())
	}
	switch c.Result {
	case pb.Compare_EQUAL:
		return result == 0
	case pb.Compare_NOT_EQUAL:
		return result != 0
	case pb.Compare_GREATER:
		return result > 0
	case pb.Compare_LESS:
		return result < 0
	}
	return true
}

// compareToPath evaluates the compares of the txn and of every nested txn
// on the taken branches, all against the state before the txn (as etcd
// does), and returns the branch taken at each txn in pre-order.
func (s *Store) compareToPath(rev int64, rt *pb.TxnRequest) []bool {
	ok := true
	for _, c := range rt.Compare {
		if !s.applyCompare(rev, c) {
			ok = false
			break
		}
	}
	path := []bool{ok}
	ops := rt.Success
	if !ok {
		ops = rt.Failure
	}
	for _, op := range ops {
		if tv, isTxn := op.GetRequest().(*pb.RequestOp_RequestTxn); isTxn && tv.RequestTxn != nil {
			path = append(path, s.compareToPath(rev, tv.RequestTxn)...)
		}
	}
	return path
}

// checkTxn is etcd's checkTxn: before anything is written, the ops on the
// taken path are checked against the state before the txn (range
// revisions, ignore_value/ignore_lease keys, leases), so that execution
// cannot fail half way.
func (s *Store) checkTxn(rev int64, rt *pb.TxnRequest, path []bool) (int, error) {
	count := 0
	reqs := rt.Success
	if !path[0] {
		reqs = rt.Failure
	}
	for _, req := range reqs {
		switch tv := req.GetRequest().(type) {
		case *pb.RequestOp_RequestRange:
			r := tv.RequestRange
			switch {
			case r.Revision == 0:
			case r.Revision > rev:
				return 0, rpctypes.ErrGRPCFutureRev
			case r.Revision < s.compactRev:
				return 0, rpctypes.ErrGRPCCompacted
			}
		case *pb.RequestOp_RequestPut:
			// etcd checks the lease before the key.
			p := tv.RequestPut
			if p.Lease != 0 {
				if _, ok := s.leases[p.Lease]; !ok {
					return 0, rpctypes.ErrGRPCLeaseNotFound
				}
			}
			if (p.IgnoreValue || p.IgnoreLease) && s.get(p.Key, rev) == nil {
				return 0, rpctypes.ErrGRPCKeyNotFound
			}
		case *pb.RequestOp_RequestTxn:
			n, err := s.checkTxn(rev, tv.RequestTxn, path[1:])
			if err != nil {
				return 0, err
			}
			count += n + 1
			path = path[n+1:]
		}
	}
	return count, nil
}

// Txn runs a transaction as etcd does: compares (of this txn and nested
// ones) are evaluated against the state before the txn; the ops of the
// taken branch run in order, each seeing the earlier ones' writes; all
// writes share one new main revision with increasing sub-revisions; a txn
// that writes nothing does not advance the revision.
func (s *Store) Txn(req *pb.TxnRequest) (*pb.TxnResponse, error) {
	if req == nil {
		req = &pb.TxnRequest{}
	}
	if err := checkTxnRequest(req, s.opts.MaxTxnOps); err != nil {
		return nil, err
	}
	if _, _, err := checkIntervals(req.Success); err != nil {
		return nil, err
	}
	if _, _, err := checkIntervals(req.Failure); err != nil {
		return nil, err
	}
	s.mu.Lock()
	path := s.compareToPath(s.rev, req)
	if _, err := s.checkTxn(s.rev, req, path); err != nil {
		s.mu.Unlock()
		return nil, err
	}
	w := s.beginWrite()
	resp, _, err := w.execTxn(req, path)
	if err != nil {
		// checkTxn rules out every failure but one that etcd also misses
		// (and panics on): a put with ignore_value/ignore_lease of a key
		// that an earlier delete with range_end "\x00" removed in this
		// txn. Undo the txn's writes and fail it as a whole instead.
		w.abort()
		s.mu.Unlock()
		return nil, err
	}
	rev, evs := w.end()
	obs := s.observer
	s.mu.Unlock()
	resp.Header.Revision = rev
	s.notify(obs, rev, evs)
	return resp, nil
}

// execTxn runs the taken branch of rt and returns its response and the
// number of nested txns on the path it consumed.
func (w *writeTxn) execTxn(rt *pb.TxnRequest, path []bool) (*pb.TxnResponse, int, error) {
	reqs := rt.Success
	if !path[0] {
		reqs = rt.Failure
	}
	resp := &pb.TxnResponse{
		Header:    &pb.ResponseHeader{},
		Succeeded: path[0],
		Responses: make([]*pb.ResponseOp, 0, len(reqs)),
	}
	txns := 0
	for _, req := range reqs {
		switch tv := req.GetRequest().(type) {
		case *pb.RequestOp_RequestRange:
			r, err := w.s.execRange(tv.RequestRange, w.viewRev())
			if err != nil {
				return nil, 0, err
			}
			resp.Responses = append(resp.Responses, &pb.ResponseOp{Response: &pb.ResponseOp_ResponseRange{ResponseRange: r}})
		case *pb.RequestOp_RequestPut:
			r, err := w.execPut(tv.RequestPut)
			if err != nil {
				return nil, 0, err
			}
			resp.Responses = append(resp.Responses, &pb.ResponseOp{Response: &pb.ResponseOp_ResponsePut{ResponsePut: r}})
		case *pb.RequestOp_RequestDeleteRange:
			r := w.execDeleteRange(tv.RequestDeleteRange)
			resp.Responses = append(resp.Responses, &pb.ResponseOp{Response: &pb.ResponseOp_ResponseDeleteRange{ResponseDeleteRange: r}})
		case *pb.RequestOp_RequestTxn:
			r, n, err := w.execTxn(tv.RequestTxn, path[1:])
			if err != nil {
				return nil, 0, err
			}
			// As in etcd, a nested txn's header stays empty.
			resp.Responses = append(resp.Responses, &pb.ResponseOp{Response: &pb.ResponseOp_ResponseTxn{ResponseTxn: r}})
			txns += n + 1
			path = path[n+1:]
		}
	}
	return resp, txns, nil
}

// ValidateTxn runs the checks etcd's API layer runs on a Txn before it is
// proposed, in etcd's order: the op-count limit and every op's own checks
// over the whole tree, then the duplicate-key check of each branch.
func ValidateTxn(r *pb.TxnRequest, maxTxnOps int) error {
	if err := checkTxnRequest(r, maxTxnOps); err != nil {
		return err
	}
	if _, _, err := checkIntervals(r.GetSuccess()); err != nil {
		return err
	}
	_, _, err := checkIntervals(r.GetFailure())
	return err
}

// ValidateRange, ValidatePut and ValidateDeleteRange run etcd's API-layer
// checks on one request.
func ValidateRange(r *pb.RangeRequest) error             { return checkRangeRequest(r) }
func ValidatePut(r *pb.PutRequest) error                 { return checkPutRequest(r) }
func ValidateDeleteRange(r *pb.DeleteRangeRequest) error { return checkDeleteRequest(r) }
