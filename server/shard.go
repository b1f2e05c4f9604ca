package server

import (
	"bytes"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ShardConfig makes a server one shard of a sharded keyspace (shard/ hosts
// many of them; docs/sharding.md says what that means for clients). The
// shard keeps only the keys in [Start, End) and refuses a request that
// touches any other key with ErrGRPCWrongShard, both before proposing it
// and again when applying it, so a request routed by a map that a split
// has since made stale is never applied to the wrong shard.
type ShardConfig struct {
	// ID names the shard (1, 2, …).
	ID uint64
	// Start and End bound the shard's keys at the start of its log (index
	// 1): an initial shard's range, whatever it has become since. An
	// empty End means "to the end of the keyspace". Once the shard has
	// split, the range in its replicated state (see split.go) wins.
	//
	// They must not be the shard's current range: a member that catches
	// up by replaying the log from its start (a move's new member, when
	// the leader has not compacted) applies the writes from before a
	// split with the range the shard had then, or it refuses them as
	// "wrong shard", counts revisions differently from the other members
	// and, once it leads, hands out revisions the shard has already used.
	Start, End []byte
	// FromSnapshot says that the shard's log does not start at index 1
	// but from a snapshot that holds its range (a split's child): Start
	// and End are ignored, and a member without that state yet (one
	// started empty, to be sent it) keeps no key at all until it has it.
	FromSnapshot bool
	// OnSplit is told, on the apply goroutine, when this shard applied a
	// split: the host starts its member of the new shard from the state
	// given. It must not block.
	OnSplit func(SplitState)
	// OnLeaseRevoked is told, on the apply goroutine, of every lease this
	// shard revoked (expired or asked): the host revokes the copies in the
	// shards split from it. It must not block.
	OnLeaseRevoked func(id int64)
}

// ErrGRPCWrongShard refuses a request for keys this shard does not keep.
// The router (shard/) re-reads the shard map and retries on it; a client
// talking to a shard directly sees it as FailedPrecondition.
var ErrGRPCWrongShard = status.Error(codes.FailedPrecondition, "ballot: wrong shard")

// IsWrongShard reports whether err is ErrGRPCWrongShard (also across a
// gRPC hop, where the error arrives as a status).
func IsWrongShard(err error) bool {
	st, ok := status.FromError(err)
	return ok && st.Code() == codes.FailedPrecondition && st.Message() == "ballot: wrong shard"
}

// owns reports whether this server keeps every key of [key, end) (etcd's
// conventions for end: empty is the single key, "\x00" every key from key).
func (s *Server) owns(key, end []byte) bool {
	if s.cfg.Shard == nil {
		return true
	}
	if !s.rangeKnown() {
		return false
	}
	start, shardEnd := s.Range()
	if bytes.Compare(key, start) < 0 {
		return false
	}
	switch {
	case len(end) == 0:
		return len(shardEnd) == 0 || bytes.Compare(key, shardEnd) < 0
	case len(end) == 1 && end[0] == 0:
		return len(shardEnd) == 0
	}
	return len(shardEnd) == 0 || bytes.Compare(end, shardEnd) <= 0
}

// requestGuard is shardGuard for a request as it arrives, before it is
// proposed or read. A member waiting for its first state
// (ShardConfig.FromSnapshot) lets the request through to wait for it, as
// any member behind does: its read barrier or its proposal completes only
// once the state is here, and the check after a read sees the range. At
// apply time shardGuard refuses everything until then.
func (s *Server) requestGuard(r *pb.InternalRaftRequest) error {
	if !s.rangeKnown() {
		return nil
	}
	return s.shardGuard(r)
}

// shardGuard refuses a request that touches a key outside this shard.
func (s *Server) shardGuard(r *pb.InternalRaftRequest) error {
	if s.cfg.Shard == nil || s.cfg.Unsafe.NoShardGuard {
		return nil
	}
	ok := true
	switch {
	case r.Range != nil:
		ok = s.owns(r.Range.Key, r.Range.RangeEnd)
	case r.Put != nil:
		ok = s.owns(r.Put.Key, nil)
	case r.DeleteRange != nil:
		ok = s.owns(r.DeleteRange.Key, r.DeleteRange.RangeEnd)
	case r.Txn != nil:
		ok = s.ownsTxn(r.Txn)
	}
	if !ok {
		return ErrGRPCWrongShard
	}
	return nil
}

func (s *Server) ownsTxn(t *pb.TxnRequest) bool {
	for _, c := range t.Compare {
		if !s.owns(c.Key, c.RangeEnd) {
			return false
		}
	}
	for _, ops := range [][]*pb.RequestOp{t.Success, t.Failure} {
		for _, op := range ops {
			switch v := op.Request.(type) {
			case *pb.RequestOp_RequestRange:
				if !s.owns(v.RequestRange.Key, v.RequestRange.RangeEnd) {
					return false
				}
			case *pb.RequestOp_RequestPut:
				if !s.owns(v.RequestPut.Key, nil) {
					return false
				}
			case *pb.RequestOp_RequestDeleteRange:
				if !s.owns(v.RequestDeleteRange.Key, v.RequestDeleteRange.RangeEnd) {
					return false
				}
			case *pb.RequestOp_RequestTxn:
				if !s.ownsTxn(v.RequestTxn) {
					return false
				}
			}
		}
	}
	return true
}
