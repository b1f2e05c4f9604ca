package server

import (
	"context"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/ballotdb/ballot/consensus"
	"github.com/ballotdb/ballot/kv"
)

// Quota and alarms.
//
// Size. A member's data size is what its store's history holds, counted
// by a kv.ByteCounter (keys, values and a fixed cost per kept entry): the
// count is kept up to date incrementally, so Status and the quota check
// never walk the store or the data directory. Like the size of etcd's bolt
// file, the size the quota is compared with (Status's DbSize) is a high
// water mark: compaction lowers the bytes in use (DbSizeInUse) at once,
// and only Defragment brings the size down to them. So the operator's
// procedure is etcd's: compact, defragment every member, disarm.
//
// NOSPACE. When the size passes Config.QuotaBackendBytes the leader raises
// NOSPACE for itself through the log. Each member also refuses a growing
// write at the API while its own size is over the quota, as etcd's quota
// check does.
//
// Refusals. While an alarm is active, writes are refused with etcd's
// errors twice: at the API (refuseWrite, before anything is proposed), and
// at apply time (applyGuard), from the replicated alarm state in the
// store's meta, so every member refuses the same entries and the state
// stays the same everywhere. NOSPACE refuses what makes the data grow: Put,
// a Txn with a put in it, LeaseGrant (ErrGRPCNoSpace). CORRUPT refuses
// every write that changes the keyspace: Put, DeleteRange, a Txn that
// writes, Compaction and LeaseGrant (ErrGRPCCorrupt); lease revocation
// goes on, so that leases keep expiring. Reads, alarm requests and, under
// NOSPACE alone, DeleteRange, Compaction and LeaseRevoke always work.

// DefaultQuotaBackendBytes is the default data quota, etcd's: 2 GiB.
const DefaultQuotaBackendBytes = 2 << 30

// sizeCheckInterval is how often a member brings its data size up to date
// and, on the leader, compares it with the quota.
const sizeCheckInterval = 100 * time.Millisecond

// maintState is a member's view of its data size and the state of its
// consistency check.
type maintState struct {
	mu      sync.Mutex
	counter kv.ByteCounter // guarded by mu

	inUse atomic.Int64 // bytes the store holds now
	size  atomic.Int64 // high water mark of inUse since the last Defragment

	// corruptRounds counts finished consistency checks (tests wait on it).
	corruptRounds atomic.Uint64
}

// quotaBytes is the quota in force; negative means none.
func (s *Server) quotaBytes() int64 {
	switch q := s.cfg.QuotaBackendBytes; {
	case q == 0:
		return DefaultQuotaBackendBytes
	case q < 0:
		return -1
	default:
		return q
	}
}

// updateSize brings the data size up to date and returns the bytes in use
// and the size (their high water mark).
func (s *Server) updateSize() (inUse, size int64) {
	m := &s.maint
	m.mu.Lock()
	defer m.mu.Unlock()
	b := s.store.CountBytes(&m.counter)
	m.inUse.Store(b)
	if b > m.size.Load() {
		m.size.Store(b)
	}
	return b, m.size.Load()
}

// defragment is ballot's Defragment: the store lives in memory, so there
// is no file to rewrite. It recounts the data, lowers the size to the bytes
// in use, and hands the memory freed by compaction back to the operating
// system.
func (s *Server) defragment() {
	m := &s.maint
	m.mu.Lock()
	m.counter = kv.ByteCounter{}
	b := s.store.CountBytes(&m.counter)
	m.inUse.Store(b)
	m.size.Store(b)
	m.mu.Unlock()
	debug.FreeOSMemory()
	s.log.Info("defragmented", "db_size", b)
}

// overQuota reports whether this member's size is beyond the quota.
func (s *Server) overQuota() bool {
	q := s.quotaBytes()
	return q >= 0 && s.maint.size.Load() > q
}

// maintain runs a member's periodic maintenance until the server stops:
// the data size and quota, and on the leader the consistency check.
func (s *Server) maintain() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-s.stopc:
		case <-s.node.Done():
		case <-ctx.Done():
		}
		cancel()
	}()
	t := time.NewTicker(sizeCheckInterval)
	defer t.Stop()
	var corruptC <-chan time.Time
	if d := s.corruptCheckTime(); d > 0 {
		ct := time.NewTicker(d)
		defer ct.Stop()
		corruptC = ct.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.checkQuota(ctx)
		case <-corruptC:
			s.checkCorruption(ctx)
		}
	}
}

// checkQuota updates the size and, on the leader, raises NOSPACE when it
// is over the quota and no NOSPACE alarm is active.
func (s *Server) checkQuota(ctx context.Context) {
	_, size := s.updateSize()
	if !s.overQuota() || s.node.Role() != consensus.Leader {
		return
	}
	if _, nospace := s.activeAlarms(); nospace {
		return
	}
	s.log.Warn("data size exceeds the quota: raising NOSPACE", "db_size", size, "quota", s.quotaBytes())
	if err := s.raiseAlarm(ctx, s.id, pb.AlarmType_NOSPACE); err != nil {
		s.log.Warn("raising NOSPACE failed; will retry", "err", err)
	}
}

// raiseAlarm activates an alarm through the log.
func (s *Server) raiseAlarm(ctx context.Context, member uint64, t pb.AlarmType) error {
	ctx, cancel := context.WithTimeout(ctx, s.requestTimeout())
	defer cancel()
	_, err := s.propose(ctx, &pb.InternalRaftRequest{Alarm: &pb.AlarmRequest{
		Action: pb.AlarmRequest_ACTIVATE, MemberID: member, Alarm: t}})
	return err
}

// activeAlarms reports whether any CORRUPT and any NOSPACE alarm is
// active, from the replicated meta (deterministic: it runs at apply).
func (s *Server) activeAlarms() (corrupt, nospace bool) {
	for _, k := range s.store.MetaKeys(alarmPrefix) {
		i := strings.LastIndexByte(k, '/')
		t, err := strconv.ParseInt(k[i+1:], 10, 32)
		if err != nil {
			continue
		}
		switch pb.AlarmType(t) {
		case pb.AlarmType_CORRUPT:
			corrupt = true
		case pb.AlarmType_NOSPACE:
			nospace = true
		}
	}
	return corrupt, nospace
}

// writeKind classifies a request for the alarms: growing writes add data,
// other writes change the keyspace without adding any.
type writeKind int

const (
	notWrite writeKind = iota
	shrinkingWrite
	growingWrite
)

func kindOfWrite(r *pb.InternalRaftRequest) writeKind {
	switch {
	case r.Put != nil, r.LeaseGrant != nil:
		return growingWrite
	case r.Txn != nil:
		switch {
		case txnPuts(r.Txn):
			return growingWrite
		case isReadOnlyTxn(r.Txn):
			return notWrite
		}
		return shrinkingWrite
	case r.DeleteRange != nil, r.Compaction != nil:
		return shrinkingWrite
	}
	return notWrite
}

// txnPuts reports whether a Txn, or one nested in it, holds a put in
// either branch (etcd's quota cost of a Txn is that of its puts).
func txnPuts(t *pb.TxnRequest) bool {
	for _, ops := range [][]*pb.RequestOp{t.Success, t.Failure} {
		for _, op := range ops {
			switch v := op.Request.(type) {
			case *pb.RequestOp_RequestPut:
				return true
			case *pb.RequestOp_RequestTxn:
				if txnPuts(v.RequestTxn) {
					return true
				}
			}
		}
	}
	return false
}

// alarmRefusal is the error an active alarm gives request r, or nil.
func (s *Server) alarmRefusal(r *pb.InternalRaftRequest) error {
	k := kindOfWrite(r)
	if k == notWrite {
		return nil
	}
	corrupt, nospace := s.activeAlarms()
	switch {
	case corrupt:
		return rpctypes.ErrGRPCCorrupt
	case nospace && k == growingWrite:
		return rpctypes.ErrGRPCNoSpace
	}
	return nil
}

// refuseWrite is the API's check of a write before it is proposed: the
// active alarms, and this member's own size against the quota. This
// member's copy of the alarms may lag the log (a disarm committed but not
// applied here yet), so an alarm found locally is checked again after a
// read barrier: a client that saw a disarm succeed is never refused for
// the alarm it disarmed. The barrier costs only while an alarm is active.
func (s *Server) refuseWrite(ctx context.Context, r *pb.InternalRaftRequest) error {
	if err := s.requestGuard(r); err != nil {
		return err
	}
	if err := s.txnGuard(r); err != nil {
		return err
	}
	if s.alarmRefusal(r) != nil {
		if err := s.readBarrier(ctx); err != nil {
			return err
		}
		if err := s.alarmRefusal(r); err != nil {
			return err
		}
	}
	if kindOfWrite(r) == growingWrite && s.overQuota() {
		return rpctypes.ErrGRPCNoSpace
	}
	return nil
}

// applyGuard runs at apply time before the request reaches the store: a
// write an active alarm forbids is refused with the alarm's error, on every
// member alike.
func (s *Server) applyGuard(r *pb.InternalRaftRequest) error {
	s.unsafeCorrupt(r)
	if err := s.shardGuard(r); err != nil {
		return err
	}
	if err := s.txnGuard(r); err != nil {
		return err
	}
	return s.alarmRefusal(r)
}
