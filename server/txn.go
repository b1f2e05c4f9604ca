package server

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/ballotdb/ballot/kv"
)

// A shard's part in cross-shard transactions (the coordinator is the
// router's, shard/txn.go; docs/transactions.md explains the protocol).
//
// Everything here is replicated state, written only at apply: the locks a
// prepared transaction holds on this shard's keys, the writes it will make
// in either branch, and — in the shard of the transaction's anchor key —
// its record (pending, committed or aborted). It lives in the store's
// metadata (so it travels in snapshots) and, indexed, in memory.
//
// Locks are strict two-phase: a read lock on every key or range a
// transaction compares or reads here, a write lock on every key or range
// it may write in either branch, all taken at once at prepare (all or none:
// a conflict takes nothing) and released at resolve. Plain requests respect
// them: a write meeting any lock of a transaction, or a read meeting a
// write lock, is refused with ErrTxnLocked naming the holder, and the
// router pushes (resolves the holder from its record, or aborts it once it
// is past its deadline) and retries — never a local decision.

const (
	internalBegin   = 'B' // create a pending record (anchor shard)
	internalPrepare = 'P' // take locks, evaluate compares, read (participant)
	internalResolve = 'R' // apply a branch's writes or drop them, release (participant)
	internalDecide  = 'D' // compare-and-swap the record from pending (anchor shard)
	internalExpire  = 'A' // abort the record if pending past its deadline (anchor shard)
	internalForget  = 'X' // delete a decided record (anchor shard)

	metaTxnRecord = "txn/r/" // + ID: a TxnRecord
	metaTxnPart   = "txn/p/" // + ID: a txnPart
)

// Record states.
const (
	TxnPending   = "pending"
	TxnCommitted = "committed"
	TxnAborted   = "aborted"
)

// TxnRecord is a transaction's record, kept in its anchor key's shard.
type TxnRecord struct {
	ID     uint64 `json:"id"`
	TS     int64  `json:"ts"` // priority for wait-die: smaller is older
	Anchor []byte `json:"anchor"`
	// Deadline (unix nanoseconds, from the coordinator's clock): a pending
	// record past it may be aborted by anyone who meets its locks.
	Deadline int64  `json:"deadline"`
	State    string `json:"state"`
	// Succeeded is the branch a committed transaction took.
	Succeeded bool `json:"succeeded,omitempty"`
	// Parts are the shards taking part, so that whoever finishes a
	// transaction its coordinator left can resolve every part.
	Parts []uint64 `json:"parts,omitempty"`
}

// TxnCall is the body of every internal transaction entry.
type TxnCall struct {
	Record TxnRecord `json:"record"`
	// Part is this shard's part (prepare): its compares and both
	// branches' operations on its keys, as an encoded pb.TxnRequest.
	Part []byte `json:"part,omitempty"`
	// Commit and Succeeded say how to resolve (resolve, decide).
	Commit    bool  `json:"commit,omitempty"`
	Succeeded bool  `json:"succeeded,omitempty"`
	Now       int64 `json:"now,omitempty"` // expire: the caller's clock
}

// PrepareResult is a participant's vote.
type PrepareResult struct {
	// CompareOK: every compare of this shard's part held.
	CompareOK bool `json:"compare_ok"`
	// Reads are the range operations' answers in each branch, as encoded
	// pb.TxnResponses (index 0 success, 1 failure).
	Reads [2][]byte `json:"reads"`
}

// txnLock is one lock a prepared transaction holds on [Start, End).
type txnLock struct {
	Start, End []byte // End: exclusive, never empty
	Write      bool
}

// txnPart is a prepared transaction's state on a participant.
type txnPart struct {
	Record TxnRecord     `json:"record"` // ID, TS, Anchor, Deadline
	Part   []byte        `json:"part"`
	Locks  []txnLock     `json:"locks"`
	Result PrepareResult `json:"result"`
}

// txnIndex is the in-memory index of the replicated transaction state.
type txnIndex struct {
	mu      sync.Mutex
	parts   map[uint64]*txnPart
	records map[uint64]*TxnRecord
}

// ErrTxnLocked is the prefix of the error a request meets on a key a
// transaction holds; TxnLockHolder parses the rest.
const errTxnLockedMsg = "ballot: key locked by transaction "

// TxnLock names the transaction holding a lock a request met, and the
// shard where it met it.
type TxnLock struct {
	ID     uint64 `json:"id"`
	TS     int64  `json:"ts"`
	Anchor []byte `json:"anchor"`
	Shard  uint64 `json:"shard"`
}

func (s *Server) errTxnLocked(r *TxnRecord) error {
	b, _ := json.Marshal(TxnLock{ID: r.ID, TS: r.TS, Anchor: r.Anchor, Shard: s.cfg.Shard.ID})
	return status.Errorf(codes.Aborted, "%s%s", errTxnLockedMsg, b)
}

// TxnLockHolder reports the lock an ErrTxnLocked names.
func TxnLockHolder(err error) (TxnLock, bool) {
	st, isStatus := status.FromError(err)
	if !isStatus || st.Code() != codes.Aborted || !strings.HasPrefix(st.Message(), errTxnLockedMsg) {
		return TxnLock{}, false
	}
	var l TxnLock
	if json.Unmarshal([]byte(strings.TrimPrefix(st.Message(), errTxnLockedMsg)), &l) != nil {
		return TxnLock{}, false
	}
	return l, true
}

// loadTxn rebuilds the index from the store's metadata (start, restore).
func (s *Server) loadTxn() {
	ix := &s.txn
	ix.mu.Lock()
	defer ix.mu.Unlock()
	ix.parts, ix.records = map[uint64]*txnPart{}, map[uint64]*TxnRecord{}
	for _, k := range s.store.MetaKeys(metaTxnPart) {
		var p txnPart
		if err := json.Unmarshal(s.store.Meta(k), &p); err != nil {
			panic(fmt.Sprintf("server: corrupt transaction state %q: %v", k, err))
		}
		ix.parts[p.Record.ID] = &p
	}
	for _, k := range s.store.MetaKeys(metaTxnRecord) {
		var r TxnRecord
		if err := json.Unmarshal(s.store.Meta(k), &r); err != nil {
			panic(fmt.Sprintf("server: corrupt transaction record %q: %v", k, err))
		}
		ix.records[r.ID] = &r
	}
}

// HasTxnState reports whether this shard holds any transaction state (a
// split waits until it holds none).
func (s *Server) HasTxnState() bool {
	s.txn.mu.Lock()
	defer s.txn.mu.Unlock()
	return len(s.txn.parts) > 0 || len(s.txn.records) > 0
}

// TxnRecords returns the transaction records this shard keeps, and the
// transactions prepared on it (for the host's sweeper).
func (s *Server) TxnRecords() (records []TxnRecord, prepared []TxnRecord) {
	s.txn.mu.Lock()
	defer s.txn.mu.Unlock()
	for _, r := range s.txn.records {
		records = append(records, *r)
	}
	for _, p := range s.txn.parts {
		prepared = append(prepared, p.Record)
	}
	return records, prepared
}

func idKey(prefix string, id uint64) string { return prefix + strconv.FormatUint(id, 16) }

// lockConflict returns the record of another transaction holding a lock
// that [start, end) conflicts with (a write conflicts with any lock, a
// read with write locks), or nil. REQUIRES: s.txn.mu held.
func (s *Server) lockConflict(start, end []byte, write bool, self uint64) *TxnRecord {
	for id, p := range s.txn.parts {
		if id == self {
			continue
		}
		for _, l := range p.Locks {
			if (write || l.Write) && bytes.Compare(start, l.End) < 0 && bytes.Compare(l.Start, end) < 0 {
				return &p.Record
			}
		}
	}
	return nil
}

// lockSpan turns etcd's [key, end) into an explicit half-open span.
func lockSpan(key, end []byte) (start, stop []byte) {
	switch {
	case len(end) == 0:
		return key, append(slices.Clone(key), 0)
	case len(end) == 1 && end[0] == 0:
		return key, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff} // beyond every real key's first bytes
	}
	return key, end
}

// txnSpans lists what a request reads and writes, for the lock check.
func txnSpans(r *pb.InternalRaftRequest) (reads, writes [][2][]byte) {
	add := func(dst *[][2][]byte, key, end []byte) {
		a, b := lockSpan(key, end)
		*dst = append(*dst, [2][]byte{a, b})
	}
	var ops func(t *pb.TxnRequest)
	ops = func(t *pb.TxnRequest) {
		for _, c := range t.Compare {
			add(&reads, c.Key, c.RangeEnd)
		}
		for _, branch := range [][]*pb.RequestOp{t.Success, t.Failure} {
			for _, op := range branch {
				switch v := op.Request.(type) {
				case *pb.RequestOp_RequestRange:
					add(&reads, v.RequestRange.Key, v.RequestRange.RangeEnd)
				case *pb.RequestOp_RequestPut:
					add(&writes, v.RequestPut.Key, nil)
				case *pb.RequestOp_RequestDeleteRange:
					add(&writes, v.RequestDeleteRange.Key, v.RequestDeleteRange.RangeEnd)
				case *pb.RequestOp_RequestTxn:
					ops(v.RequestTxn)
				}
			}
		}
	}
	switch {
	case r.Range != nil:
		add(&reads, r.Range.Key, r.Range.RangeEnd)
	case r.Put != nil:
		add(&writes, r.Put.Key, nil)
	case r.DeleteRange != nil:
		add(&writes, r.DeleteRange.Key, r.DeleteRange.RangeEnd)
	case r.Txn != nil:
		ops(r.Txn)
	}
	return reads, writes
}

// txnGuard refuses a plain request that meets a transaction's lock.
func (s *Server) txnGuard(r *pb.InternalRaftRequest) error {
	if s.cfg.Shard == nil {
		return nil
	}
	s.txn.mu.Lock()
	defer s.txn.mu.Unlock()
	if len(s.txn.parts) == 0 {
		return nil
	}
	reads, writes := txnSpans(r)
	for _, sp := range writes {
		if rec := s.lockConflict(sp[0], sp[1], true, 0); rec != nil {
			return s.errTxnLocked(rec)
		}
	}
	for _, sp := range reads {
		if rec := s.lockConflict(sp[0], sp[1], false, 0); rec != nil {
			return s.errTxnLocked(rec)
		}
	}
	return nil
}

// TxnCall proposes an internal transaction entry (op is one of the
// internal* letters) and returns its result (a PrepareResult, a TxnRecord
// or a TxnResponse, JSON or protobuf as the op says).
func (s *Server) TxnCall(ctx context.Context, op byte, call TxnCall) ([]byte, error) {
	if s.cfg.Shard == nil {
		return nil, status.Error(codes.FailedPrecondition, "ballot: not a shard")
	}
	body, err := json.Marshal(call)
	if err != nil {
		return nil, err
	}
	ctx, cancel := s.requestContext(ctx)
	defer cancel()
	out, err := s.proposeRetry(ctx, append([]byte{internalMarker, op}, body...))
	if err != nil {
		return nil, s.toGRPC(ctx, err)
	}
	res, err := kv.DecodeResult(out)
	if err != nil {
		return nil, err
	}
	if res.Err != nil {
		return nil, res.Err
	}
	raw, ok := res.Resp.(*pb.RangeResponse) // the carrier: see applyTxnCall
	if !ok || len(raw.Kvs) != 1 {
		return nil, fmt.Errorf("server: bad transaction result")
	}
	return raw.Kvs[0].Value, nil
}

// applyTxnCall applies an internal transaction entry. Its result travels
// as the value of a one-key RangeResponse, so that kv's result encoding
// carries it unchanged.
func (s *Server) applyTxnCall(op byte, body []byte) ([]byte, error) {
	var c TxnCall
	if err := json.Unmarshal(body, &c); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "server: bad transaction entry: %v", err)
	}
	s.txn.mu.Lock()
	defer s.txn.mu.Unlock()
	id := c.Record.ID
	switch op {
	case internalBegin:
		if !s.owns(c.Record.Anchor, nil) {
			return nil, ErrGRPCWrongShard
		}
		if _, ok := s.txn.records[id]; !ok {
			if s.Draining() {
				return nil, ErrGRPCSplitDraining
			}
			r := c.Record
			r.State = TxnPending
			s.putRecord(&r)
		}
		return json.Marshal(s.txn.records[id])
	case internalDecide, internalExpire:
		r, ok := s.txn.records[id]
		if !ok {
			if len(c.Record.Anchor) > 0 && !s.owns(c.Record.Anchor, nil) {
				// Asked of a shard that does not hold the anchor (the
				// asker's map predates a split): not knowing the record
				// here says nothing about it. Answering "aborted" let a
				// pusher release a committed transaction's locks as
				// aborted.
				return nil, ErrGRPCWrongShard
			}
			// Never begun here, or forgotten after it was decided and
			// resolved everywhere: either way it will never commit.
			return json.Marshal(TxnRecord{ID: id, State: TxnAborted})
		}
		if r.State == TxnPending {
			switch {
			case op == internalDecide && c.Commit:
				r.State, r.Succeeded = TxnCommitted, c.Succeeded
				s.putRecord(r)
			case op == internalDecide:
				r.State = TxnAborted
				s.putRecord(r)
			case c.Now > r.Deadline:
				r.State = TxnAborted
				s.putRecord(r)
			}
		}
		return json.Marshal(r)
	case internalForget:
		if r, ok := s.txn.records[id]; ok && r.State != TxnPending {
			delete(s.txn.records, id)
			s.store.SetMeta(idKey(metaTxnRecord, id), nil)
		}
		return []byte("{}"), nil
	case internalPrepare:
		return s.applyPrepare(c)
	case internalResolve:
		return s.applyResolve(c)
	}
	return nil, status.Errorf(codes.InvalidArgument, "server: unknown transaction entry %q", op)
}

func (s *Server) putRecord(r *TxnRecord) {
	b, _ := json.Marshal(r)
	s.store.SetMeta(idKey(metaTxnRecord, r.ID), b)
	s.txn.records[r.ID] = r
}

// applyPrepare takes the part's locks (all or none), evaluates its
// compares and reads what either branch reads. REQUIRES: s.txn.mu held.
func (s *Server) applyPrepare(c TxnCall) ([]byte, error) {
	id := c.Record.ID
	if p, ok := s.txn.parts[id]; ok {
		return json.Marshal(p.Result) // prepared already: the same vote
	}
	if s.Draining() {
		return nil, ErrGRPCSplitDraining
	}
	var part pb.TxnRequest
	if err := proto.Unmarshal(c.Part, &part); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "server: bad transaction part: %v", err)
	}
	if !s.ownsTxn(&part) {
		return nil, ErrGRPCWrongShard
	}
	reads, writes := txnSpans(&pb.InternalRaftRequest{Txn: &part})
	var locks []txnLock
	for _, sp := range writes {
		if rec := s.lockConflict(sp[0], sp[1], true, id); rec != nil {
			return nil, s.errTxnLocked(rec)
		}
		locks = append(locks, txnLock{Start: sp[0], End: sp[1], Write: true})
	}
	for _, sp := range reads {
		if s.cfg.Unsafe.NoTxnReadLocks {
			break // BROKEN ON PURPOSE
		}
		if rec := s.lockConflict(sp[0], sp[1], false, id); rec != nil {
			return nil, s.errTxnLocked(rec)
		}
		locks = append(locks, txnLock{Start: sp[0], End: sp[1]})
	}
	// The compares, with the success branch's reads; then the failure
	// branch's reads. Nothing is written: both are read-only.
	succ, err := s.store.Txn(&pb.TxnRequest{Compare: part.Compare, Success: rangesOnly(part.Success)})
	if err != nil {
		return nil, err
	}
	fail, err := s.store.Txn(&pb.TxnRequest{Success: rangesOnly(part.Failure)})
	if err != nil {
		return nil, err
	}
	res := PrepareResult{CompareOK: succ.Succeeded}
	if res.Reads[0], err = proto.Marshal(succ); err != nil {
		return nil, err
	}
	if res.Reads[1], err = proto.Marshal(fail); err != nil {
		return nil, err
	}
	p := &txnPart{Record: c.Record, Part: c.Part, Locks: locks, Result: res}
	b, err := json.Marshal(p)
	if err != nil {
		return nil, err
	}
	s.store.SetMeta(idKey(metaTxnPart, id), b)
	s.txn.parts[id] = p
	return json.Marshal(res)
}

func rangesOnly(ops []*pb.RequestOp) []*pb.RequestOp {
	var out []*pb.RequestOp
	for _, op := range ops {
		if _, ok := op.Request.(*pb.RequestOp_RequestRange); ok {
			out = append(out, op)
		}
	}
	return out
}

func writesOnly(ops []*pb.RequestOp) []*pb.RequestOp {
	var out []*pb.RequestOp
	for _, op := range ops {
		if _, ok := op.Request.(*pb.RequestOp_RequestRange); !ok {
			out = append(out, op)
		}
	}
	return out
}

// applyResolve applies the decided branch's writes of this part as one
// revision (commit) or drops them (abort), and releases the locks. A part
// resolved already is a no-op. REQUIRES: s.txn.mu held.
func (s *Server) applyResolve(c TxnCall) ([]byte, error) {
	id := c.Record.ID
	p, ok := s.txn.parts[id]
	if !ok {
		return proto.Marshal(&pb.TxnResponse{Header: &pb.ResponseHeader{Revision: s.store.Rev()}})
	}
	delete(s.txn.parts, id)
	s.store.SetMeta(idKey(metaTxnPart, id), nil)
	if !c.Commit {
		return proto.Marshal(&pb.TxnResponse{Header: &pb.ResponseHeader{Revision: s.store.Rev()}})
	}
	var part pb.TxnRequest
	if err := proto.Unmarshal(p.Part, &part); err != nil {
		panic(fmt.Sprintf("server: corrupt prepared part of transaction %d: %v", id, err))
	}
	branch := part.Success
	if !c.Succeeded {
		branch = part.Failure
	}
	resp, err := s.store.Txn(&pb.TxnRequest{Success: writesOnly(branch)})
	if err != nil {
		// Writes were validated when the transaction arrived, and leases
		// are refused in cross-shard transactions: a decided commit that
		// cannot apply is a broken invariant.
		panic(fmt.Sprintf("server: applying committed transaction %d: %v", id, err))
	}
	return proto.Marshal(resp)
}
