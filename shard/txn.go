package shard

import (
	"context"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/ballotdb/ballot/server"
)

// Cross-shard transactions: an etcd Txn whose keys are in several shards,
// run as two-phase commit in which every step is a consensus entry (see
// docs/transactions.md; the participants' side is server/txn.go).
//
//  1. begin: a pending record in the shard of the anchor (the smallest key
//     the transaction touches), naming every participant shard.
//  2. prepare: each participant takes its locks (all or none), evaluates
//     its compares and reads what either branch reads — its vote.
//  3. decide: compare-and-swap the record from pending to committed (with
//     the branch every compare chose) — the one commit point.
//  4. resolve: each participant applies the branch's writes as one
//     revision and releases its locks; the record is forgotten after.
//
// Nobody blocks on a dead coordinator: a request that meets a lock pushes
// its holder (push): it reads the record (aborting it if pending past its
// deadline), resolves the lock accordingly, and retries; each host also
// sweeps the records and prepared parts it keeps. Deadlock is prevented by
// wait-die on the transaction's start time: an older transaction that
// meets a younger one's lock waits, a younger one that meets an older
// one's dies (aborts) and starts again with its original time, so it
// eventually becomes the oldest. The coordinator lives here rather than in
// a package shard/txn of its own: it needs the router's connections and
// the host's map, and nothing else uses it.

// TxnTimeout is how long a transaction may stay pending before anyone
// who meets its locks may abort it.
var TxnTimeout = 5 * time.Second

// ErrGRPCTxnUnsupported refuses what cross-shard transactions do not do.
func errTxnUnsupported(what string) error {
	return status.Errorf(codes.InvalidArgument, "ballot: cross-shard transaction: %s is not supported (see docs/transactions.md)", what)
}

// errDie: wait-die says this transaction aborts and starts again.
var errDie = errors.New("shard: transaction dies (wait-die)")

// txnPlan is a transaction cut into its shards' parts.
type txnPlan struct {
	anchor []byte
	parts  map[uint64]*pb.TxnRequest
	// where[b][i] says where op i of branch b went: one place per shard
	// for a range or a delete over several shards.
	where [2][][]opPlace
}

type opPlace struct {
	shard uint64
	index int // among the part's reads (a range) or writes (the rest)
}

func planTxn(m Map, req *pb.TxnRequest) (*txnPlan, error) {
	p := &txnPlan{parts: map[uint64]*pb.TxnRequest{}}
	part := func(id uint64) *pb.TxnRequest {
		if p.parts[id] == nil {
			p.parts[id] = &pb.TxnRequest{}
		}
		return p.parts[id]
	}
	note := func(key []byte) {
		if p.anchor == nil || string(key) < string(p.anchor) {
			p.anchor = key
		}
	}
	split := func(key, end []byte) []Part {
		ps := m.Split(key, end)
		if len(ps) == 0 {
			ps = []Part{{Shard: m.Lookup(key), Key: key, End: end}}
		}
		return ps
	}
	for _, c := range req.Compare {
		note(c.Key)
		for _, sp := range split(c.Key, c.RangeEnd) {
			cc := proto.Clone(c).(*pb.Compare)
			cc.Key, cc.RangeEnd = sp.Key, sp.End
			part(sp.Shard.ID).Compare = append(part(sp.Shard.ID).Compare, cc)
		}
	}
	for b, ops := range [][]*pb.RequestOp{req.Success, req.Failure} {
		p.where[b] = make([][]opPlace, len(ops))
		for i, op := range ops {
			var key, end []byte
			write := true
			switch v := op.Request.(type) {
			case *pb.RequestOp_RequestRange:
				key, end, write = v.RequestRange.Key, v.RequestRange.RangeEnd, false
				if v.RequestRange.Revision != 0 {
					return nil, errTxnUnsupported("a range at a revision")
				}
			case *pb.RequestOp_RequestPut:
				key = v.RequestPut.Key
				if v.RequestPut.Lease != 0 {
					return nil, errTxnUnsupported("a put with a lease")
				}
			case *pb.RequestOp_RequestDeleteRange:
				key, end = v.RequestDeleteRange.Key, v.RequestDeleteRange.RangeEnd
			default:
				return nil, errTxnUnsupported("a nested txn")
			}
			note(key)
			for _, sp := range split(key, end) {
				sub := proto.Clone(op).(*pb.RequestOp)
				switch v := sub.Request.(type) {
				case *pb.RequestOp_RequestRange:
					v.RequestRange.Key, v.RequestRange.RangeEnd = sp.Key, sp.End
				case *pb.RequestOp_RequestDeleteRange:
					v.RequestDeleteRange.Key, v.RequestDeleteRange.RangeEnd = sp.Key, sp.End
				}
				pt := part(sp.Shard.ID)
				branch := &pt.Success
				if b == 1 {
					branch = &pt.Failure
				}
				n := 0
				for _, o := range *branch {
					if _, isRange := o.Request.(*pb.RequestOp_RequestRange); isRange != write {
						n++
					}
				}
				*branch = append(*branch, sub)
				p.where[b][i] = append(p.where[b][i], opPlace{shard: sp.Shard.ID, index: n})
			}
		}
	}
	return p, nil
}

func (p *txnPlan) shards() []uint64 {
	ids := make([]uint64, 0, len(p.parts))
	for id := range p.parts {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// txnCall runs one internal transaction entry on a shard: through this
// host's member, or the shard service of a host that keeps one.
func (h *Host) txnCall(ctx context.Context, shard uint64, op byte, call server.TxnCall) ([]byte, error) {
	if g := h.group(shard); g != nil {
		return g.srv.TxnCall(ctx, op, call)
	}
	if md, ok := metadata.FromIncomingContext(ctx); ok && len(md.Get(hopHeader)) > 0 {
		return nil, errNotHere
	}
	s, ok := h.Map().ByID(shard)
	if !ok {
		return nil, server.ErrGRPCWrongShard
	}
	var last error = errNotHere
	for _, name := range s.Members {
		c, err := h.hostConn(ctx, name)
		if err != nil {
			last = err
			continue
		}
		var out txnCallResponse
		err = c.Invoke(ctx, txnCallMethod, &txnCallRequest{Shard: shard, Op: op, Call: call}, &out, grpc.CallContentSubtype("ballotjson"))
		if err == nil {
			return out.Result, nil
		}
		if status.Code(err) != codes.Unavailable {
			return nil, err
		}
		last = err
	}
	return nil, last
}

type txnCallRequest struct {
	Shard uint64         `json:"shard"`
	Op    byte           `json:"op"`
	Call  server.TxnCall `json:"call"`
}

type txnCallResponse struct {
	Result []byte `json:"result"`
}

func (h *Host) record(ctx context.Context, shard uint64, op byte, call server.TxnCall) (server.TxnRecord, error) {
	out, err := h.txnCall(ctx, shard, op, call)
	if err != nil {
		return server.TxnRecord{}, err
	}
	var r server.TxnRecord
	return r, json.Unmarshal(out, &r)
}

// txn runs a cross-shard transaction, starting again (with its original
// start time) when wait-die, a moved shard or a split's drain says so.
func (h *Host) txn(ctx context.Context, req *pb.TxnRequest) (*pb.TxnResponse, error) {
	ts := time.Now().UnixNano()
	backoff := 5 * time.Millisecond
	for {
		resp, again, err := h.txnAttempt(ctx, req, ts)
		if !again {
			return resp, err
		}
		if err := sleepCtx(ctx, backoff+time.Duration(rand.Int64N(int64(backoff)))); err != nil {
			return nil, status.FromContextError(err).Err()
		}
		backoff = min(2*backoff, 200*time.Millisecond)
		if err := h.mapStale(ctx); err != nil {
			return nil, err
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// txnAttempt is one try; again says to start over.
func (h *Host) txnAttempt(ctx context.Context, req *pb.TxnRequest, ts int64) (_ *pb.TxnResponse, again bool, _ error) {
	m := h.Map()
	plan, err := planTxn(m, req)
	if err != nil {
		return nil, false, err
	}
	anchorShard := m.Lookup(plan.anchor).ID
	rec := server.TxnRecord{ID: rand.Uint64() | 1, TS: ts, Anchor: plan.anchor,
		Deadline: time.Now().Add(TxnTimeout).UnixNano(), Parts: plan.shards()}
	if _, err := h.record(ctx, anchorShard, 'B', server.TxnCall{Record: rec}); err != nil {
		return nil, server.IsWrongShard(err) || server.IsSplitDraining(err), err
	}
	if h.failpoint("after-begin") {
		return nil, false, errCoordinatorDied
	}

	// Prepare every part; a lock conflict is pushed, waited out or died of.
	results := map[uint64]server.PrepareResult{}
	var mu sync.Mutex
	err = fanOutIDs(plan.shards(), func(id uint64) error {
		body, err := proto.Marshal(plan.parts[id])
		if err != nil {
			return err
		}
		for {
			out, err := h.txnCall(ctx, id, 'P', server.TxnCall{Record: rec, Part: body})
			if err == nil {
				var r server.PrepareResult
				if err := json.Unmarshal(out, &r); err != nil {
					return err
				}
				mu.Lock()
				results[id] = r
				mu.Unlock()
				return nil
			}
			l, locked := server.TxnLockHolder(err)
			if !locked {
				return err
			}
			done, perr := h.push(ctx, l)
			switch {
			case perr != nil:
				return perr
			case done:
				continue // the holder is finished: try again at once
			case ts > l.TS || (ts == l.TS && rec.ID > l.ID):
				return errDie // younger than the holder
			}
			if time.Now().UnixNano() > rec.Deadline {
				return errDie
			}
			if err := sleepCtx(ctx, 2*time.Millisecond); err != nil {
				return err
			}
		}
	})
	if err != nil {
		h.abortTxn(ctx, rec, anchorShard)
		again := errors.Is(err, errDie) || server.IsWrongShard(err) || server.IsSplitDraining(err)
		if again {
			return nil, true, err
		}
		return nil, false, err
	}
	if h.failpoint("after-prepare") {
		return nil, false, errCoordinatorDied
	}

	succeeded := true
	for _, r := range results {
		succeeded = succeeded && r.CompareOK
	}
	final, err := h.decide(ctx, anchorShard, rec, succeeded)
	if err != nil {
		return nil, false, err // the outcome is unknown: the sweepers finish it
	}
	if final.State != server.TxnCommitted {
		// Aborted meanwhile by someone who found it past its deadline.
		h.abortTxn(ctx, rec, anchorShard)
		return nil, true, errors.New("shard: transaction aborted before it committed")
	}
	if h.failpoint("after-decide") {
		return nil, false, errCoordinatorDied
	}

	writes := map[uint64]*pb.TxnResponse{}
	_ = fanOutIDs(plan.shards(), func(id uint64) error {
		out, err := h.txnCall(ctx, id, 'R', server.TxnCall{Record: rec, Commit: true, Succeeded: succeeded})
		if err != nil {
			return err // committed all the same: a sweeper or a reader resolves it
		}
		var r pb.TxnResponse
		if err := proto.Unmarshal(out, &r); err != nil {
			return err
		}
		mu.Lock()
		writes[id] = &r
		mu.Unlock()
		return nil
	})
	if h.failpoint("after-resolve") {
		return nil, false, errCoordinatorDied
	}
	if len(writes) == len(plan.parts) {
		// Forgetting the record is housekeeping: not on the client's time.
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			fctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, _ = h.txnCall(fctx, anchorShard, 'X', server.TxnCall{Record: rec})
		}()
	}
	return assemble(req, plan, succeeded, results, writes), false, nil
}

// decide commits the record, retrying while the answer is lost: the entry
// is idempotent, and its answer is the record's final state.
func (h *Host) decide(ctx context.Context, shard uint64, rec server.TxnRecord, succeeded bool) (server.TxnRecord, error) {
	for {
		r, err := h.record(ctx, shard, 'D', server.TxnCall{Record: rec, Commit: true, Succeeded: succeeded})
		if err == nil {
			return r, nil
		}
		if server.IsWrongShard(err) {
			// The record was begun in that shard, which no longer holds
			// the anchor: it split since, which it does only without
			// transaction state, so the record was aborted by a pusher
			// and forgotten (only this coordinator commits it).
			return server.TxnRecord{ID: rec.ID, State: server.TxnAborted}, nil
		}
		if ctx.Err() != nil {
			return r, err
		}
		if err := sleepCtx(ctx, 20*time.Millisecond); err != nil {
			return r, err
		}
	}
}

// abortTxn aborts a transaction that has not committed, releasing every
// part it may have prepared, and forgets its record. Best effort: what it
// leaves, pushes and sweeps finish.
func (h *Host) abortTxn(ctx context.Context, rec server.TxnRecord, anchorShard uint64) {
	final, err := h.record(ctx, anchorShard, 'D', server.TxnCall{Record: rec})
	if err != nil || final.State == server.TxnPending {
		return
	}
	h.finish(ctx, final, rec.Parts, anchorShard)
}

// finish resolves every part of a decided transaction and, if all went
// through, forgets its record.
func (h *Host) finish(ctx context.Context, final server.TxnRecord, parts []uint64, anchorShard uint64) {
	ok := true
	for _, id := range parts {
		if _, err := h.txnCall(ctx, id, 'R', server.TxnCall{Record: final, Commit: final.State == server.TxnCommitted, Succeeded: final.Succeeded}); err != nil {
			ok = false
		}
	}
	if ok {
		_, _ = h.txnCall(ctx, anchorShard, 'X', server.TxnCall{Record: final})
	}
}

// push finishes, if it can, the transaction holding a lock a request met:
// it reads its record (aborting it if pending past its deadline) and, if
// the transaction is decided, resolves the part where the lock is. It
// reports whether the holder is finished there.
func (h *Host) push(ctx context.Context, l server.TxnLock) (bool, error) {
	var r server.TxnRecord
	for try := 0; ; try++ {
		// The record lives in the shard that holds the anchor; a shard
		// that does not (this host's map predates a split) says so, and
		// the map is read again.
		anchorShard := h.Map().Lookup(l.Anchor).ID
		var err error
		r, err = h.record(ctx, anchorShard, 'A', server.TxnCall{Record: server.TxnRecord{ID: l.ID, Anchor: l.Anchor}, Now: time.Now().UnixNano()})
		if err == nil {
			break
		}
		if !server.IsWrongShard(err) || try == 4 {
			return false, err
		}
		if err := h.mapStale(ctx); err != nil {
			return false, err
		}
	}
	if r.State == server.TxnPending {
		return false, nil
	}
	_, err := h.txnCall(ctx, l.Shard, 'R', server.TxnCall{Record: r, Commit: r.State == server.TxnCommitted, Succeeded: r.Succeeded})
	return err == nil, err
}

// pushed runs a plain request, pushing the transactions whose locks it
// meets and waiting (up to the request's deadline) for those it cannot.
func pushed[T any](ctx context.Context, h *Host, f func() (T, error)) (T, error) {
	for {
		out, err := f()
		l, locked := server.TxnLockHolder(err)
		if !locked {
			return out, err
		}
		done, perr := h.push(ctx, l)
		if perr != nil {
			return out, err
		}
		if !done {
			if serr := sleepCtx(ctx, 5*time.Millisecond); serr != nil {
				return out, err
			}
		}
	}
}

// sweepTxns finishes what dead coordinators left: records in shards this
// host leads that are past their deadline, and parts prepared here whose
// deadline passed.
func (h *Host) sweepTxns(ctx context.Context) {
	now := time.Now().UnixNano()
	for _, g := range h.groups() {
		if g.id == MetaGroup || uint64(g.srv.Node().Leader()) != h.MemberID() {
			continue
		}
		records, prepared := g.srv.TxnRecords()
		for _, r := range records {
			if now <= r.Deadline {
				continue // its coordinator may still be at work
			}
			final, err := h.record(ctx, g.id, 'A', server.TxnCall{Record: r, Now: now})
			if err != nil || final.State == server.TxnPending {
				continue
			}
			h.finish(ctx, final, final.Parts, g.id)
		}
		for _, r := range prepared {
			if now > r.Deadline {
				_, _ = h.push(ctx, server.TxnLock{ID: r.ID, TS: r.TS, Anchor: r.Anchor, Shard: g.id})
			}
		}
	}
}

// failpoint lets tests stop a coordinator at a step, as if it crashed
// there: it gives up without another word to anyone.
func (h *Host) failpoint(step string) bool {
	return h.cfg.TxnFailpoint != nil && h.cfg.TxnFailpoint(step)
}

// errCoordinatorDied is what a client of a coordinator stopped by a
// failpoint is told (the outcome is unknown to it).
var errCoordinatorDied = status.Error(codes.Unavailable, "ballot: transaction coordinator stopped (test failpoint)")

func fanOutIDs(ids []uint64, f func(id uint64) error) error {
	return fanOut(len(ids), func(i int) error { return f(ids[i]) })
}

// assemble builds the client's answer: each operation of the branch taken,
// its reads from the prepares, its writes from the resolves.
func assemble(req *pb.TxnRequest, plan *txnPlan, succeeded bool, results map[uint64]server.PrepareResult, writes map[uint64]*pb.TxnResponse) *pb.TxnResponse {
	b := 0
	ops := req.Success
	if !succeeded {
		b, ops = 1, req.Failure
	}
	reads := map[uint64]*pb.TxnResponse{}
	out := &pb.TxnResponse{Succeeded: succeeded, Header: &pb.ResponseHeader{}}
	for id, r := range results {
		var tr pb.TxnResponse
		if proto.Unmarshal(r.Reads[b], &tr) == nil {
			reads[id] = &tr
			if tr.Header.GetRevision() > out.Header.Revision {
				out.Header = tr.Header
			}
		}
	}
	for _, w := range writes {
		if w.Header.GetRevision() > out.Header.Revision {
			out.Header = w.Header
		}
	}
	for i, op := range ops {
		places := plan.where[b][i]
		switch v := op.Request.(type) {
		case *pb.RequestOp_RequestRange:
			var rs []*pb.RangeResponse
			for _, pl := range places {
				if r := reads[pl.shard]; r != nil && pl.index < len(r.Responses) {
					rs = append(rs, r.Responses[pl.index].GetResponseRange())
				}
			}
			out.Responses = append(out.Responses, &pb.ResponseOp{Response: &pb.ResponseOp_ResponseRange{
				ResponseRange: mergeParts(v.RequestRange, rs)}})
		case *pb.RequestOp_RequestPut:
			pr := &pb.PutResponse{Header: out.Header}
			if w := writes[places[0].shard]; w != nil && places[0].index < len(w.Responses) {
				pr = w.Responses[places[0].index].GetResponsePut()
			}
			out.Responses = append(out.Responses, &pb.ResponseOp{Response: &pb.ResponseOp_ResponsePut{ResponsePut: pr}})
		case *pb.RequestOp_RequestDeleteRange:
			dr := &pb.DeleteRangeResponse{Header: out.Header}
			for _, pl := range places {
				if w := writes[pl.shard]; w != nil && pl.index < len(w.Responses) {
					d := w.Responses[pl.index].GetResponseDeleteRange()
					dr.Deleted += d.GetDeleted()
					dr.PrevKvs = append(dr.PrevKvs, d.GetPrevKvs()...)
				}
			}
			out.Responses = append(out.Responses, &pb.ResponseOp{Response: &pb.ResponseOp_ResponseDeleteRange{ResponseDeleteRange: dr}})
		}
	}
	return out
}

// mergeParts merges a range's answers from its shards (nil ones skipped).
func mergeParts(req *pb.RangeRequest, rs []*pb.RangeResponse) *pb.RangeResponse {
	var ok []*pb.RangeResponse
	for _, r := range rs {
		if r != nil {
			ok = append(ok, r)
		}
	}
	switch len(ok) {
	case 0:
		return &pb.RangeResponse{Header: &pb.ResponseHeader{}}
	case 1:
		return ok[0]
	}
	return mergeRanges(req, ok)
}
