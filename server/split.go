package server

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"maps"
	"slices"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ballotdb/ballot/consensus"
	"github.com/ballotdb/ballot/kv"
)

// A shard splits through its own log (see shard/ and docs/sharding.md):
// the split is one entry, and every member, applying it at the same
// index, moves the keys from the split key on out of its store
// (kv.Store.SplitOff) into the initial state of the new shard, narrows its
// own range, and hands that state to its host (ShardConfig.OnSplit), which
// starts its member of the new group from it. Every member of the new
// group thus starts from the same state at the same index, exactly as
// members restored from one backup do.
//
// The entry is not an etcd request: it starts with internalMarker, a byte
// no encoded InternalRaftRequest starts with (a protobuf field tag's low
// three bits are its wire type, and the request has no field of wire type
// 5), so the state machine tells the two apart by the first byte.
const internalMarker = 0x05

const (
	internalSplit = 'S'
	internalDrain = 'N' // the split drain on or off: see Drain

	metaShardRange    = "ballot/shard/range"     // the shard's current [start, end)
	metaShardChildren = "ballot/shard/children/" // + child ID: a SplitRecord
	metaSplitDrain    = "ballot/shard/draining"  // present: the split drain is on
)

// ErrGRPCSplitRefused refuses a split at a key outside the shard's range.
var ErrGRPCSplitRefused = status.Error(codes.FailedPrecondition, "ballot: split key not strictly inside the shard's range")

// ErrGRPCSplitBusy refuses a split while the shard takes part in
// cross-shard transactions (their locks and records would have to move
// with the keys); the splitter tries again later.
var ErrGRPCSplitBusy = status.Error(codes.Unavailable, "ballot: shard busy with cross-shard transactions; split again later")

// ErrGRPCSplitDraining refuses to begin or prepare a cross-shard
// transaction in a shard that is draining for a split (see Drain); the
// coordinator starts the transaction again, on the map after the split.
var ErrGRPCSplitDraining = status.Error(codes.Unavailable, "ballot: shard draining for a split; transaction refused, try again")

// IsSplitDraining reports whether err is ErrGRPCSplitDraining (also across
// a gRPC hop).
func IsSplitDraining(err error) bool {
	st, ok := status.FromError(err)
	return ok && st.Code() == codes.Unavailable && st.Message() == "ballot: shard draining for a split; transaction refused, try again"
}

// SplitRequest asks a shard to split at Key: the keys from Key to the
// shard's end go to a new shard Child, kept by Members (host name → peer
// address).
type SplitRequest struct {
	Child   uint64            `json:"child"`
	Key     []byte            `json:"key"`
	Members map[string]string `json:"members"`
}

// SplitRecord is a split as the parent applied it; it stays in the
// parent's replicated metadata, so the host can finish the split (tell the
// meta group, start the child) whatever crashed in between.
type SplitRecord struct {
	Child   uint64            `json:"child"`
	Start   []byte            `json:"start"`
	End     []byte            `json:"end"`
	Index   uint64            `json:"index"`
	Members map[string]string `json:"members"`
}

// SplitState is what OnSplit gets: the record and the new shard's
// initial state.
type SplitState struct {
	SplitRecord
	Store *kv.Store
}

// keyRange is a shard's range as its member knows it.
type keyRange struct {
	start, end []byte
	// unknown: the member has no state yet (ShardConfig.FromSnapshot)
	// and keeps no key.
	unknown bool
}

// Range returns the shard's current key range (nil, nil when the server
// keeps the whole keyspace, or has no state yet: see rangeKnown).
func (s *Server) Range() (start, end []byte) {
	r := s.shardRange.Load()
	if r == nil {
		return nil, nil
	}
	return r.start, r.end
}

// rangeKnown reports whether the member knows its shard's range (a
// server that is not a shard always does); one that does not keeps no
// key.
func (s *Server) rangeKnown() bool {
	if s.cfg.Shard == nil {
		return true
	}
	r := s.shardRange.Load()
	return r != nil && !r.unknown
}

// loadRange reads the range from the store's metadata or, if the store
// has none, the range the shard's log started with (ShardConfig): a shard
// that never split, or a member replaying the log from its start, before
// the split entry that narrows it.
func (s *Server) loadRange() {
	if s.cfg.Shard == nil {
		return
	}
	r := keyRange{start: s.cfg.Shard.Start, end: s.cfg.Shard.End, unknown: s.cfg.Shard.FromSnapshot}
	if b := s.store.Meta(metaShardRange); b != nil {
		d := decodeRange(b)
		r = keyRange{start: d[0], end: d[1]}
	}
	s.shardRange.Store(&r)
}

func encodeRange(start, end []byte) []byte {
	b := binary.AppendUvarint(nil, uint64(len(start)))
	b = append(b, start...)
	return append(b, end...)
}

func decodeRange(b []byte) [2][]byte {
	n, k := binary.Uvarint(b)
	if k <= 0 || int(n) > len(b)-k {
		panic(fmt.Sprintf("server: corrupt shard range in metadata: %x", b))
	}
	return [2][]byte{slices.Clone(b[k : k+int(n)]), slices.Clone(b[k+int(n):])}
}

// Split splits this shard at req.Key through the log (see above) and
// returns once it is applied here.
func (s *Server) Split(ctx context.Context, req SplitRequest) error {
	if s.cfg.Shard == nil {
		return status.Error(codes.FailedPrecondition, "ballot: not a shard")
	}
	body, err := json.Marshal(req)
	if err != nil {
		return err
	}
	cmd := append([]byte{internalMarker, internalSplit}, body...)
	ctx, cancel := s.requestContext(ctx)
	defer cancel()
	out, err := s.proposeRetry(ctx, cmd)
	if err != nil {
		return s.toGRPC(ctx, err)
	}
	res, err := kv.DecodeResult(out)
	if err != nil {
		return err
	}
	return res.Err
}

// Drain turns the split drain on or off through the log. A shard refuses
// to split while it holds cross-shard transaction state (ErrGRPCSplitBusy),
// and under steady cross-shard load it always does: a test with 16
// clients saw a split wait two minutes and give up. While the drain is on,
// the shard refuses to begin or prepare new transactions
// (ErrGRPCSplitDraining: their coordinators start them again, with
// backoff) and lets those under way decide, resolve and be forgotten, so
// the state empties and the split gets through. The split entry turns the
// drain off; so does the splitter when it gives up, and the host's sweep
// when a drain outlives its splitter (shard/).
func (s *Server) Drain(ctx context.Context, on bool) error {
	if s.cfg.Shard == nil {
		return status.Error(codes.FailedPrecondition, "ballot: not a shard")
	}
	cmd := []byte{internalMarker, internalDrain, 0}
	if on {
		cmd[2] = 1
	}
	ctx, cancel := s.requestContext(ctx)
	defer cancel()
	if _, err := s.proposeRetry(ctx, cmd); err != nil {
		return s.toGRPC(ctx, err)
	}
	return nil
}

// Draining reports whether the split drain is on, as this member applied.
func (s *Server) Draining() bool { return s.store.Meta(metaSplitDrain) != nil }

// applyInternal applies an entry that starts with internalMarker.
func (s *Server) applyInternal(index uint64, cmd []byte) []byte {
	s.store.SetApplied(index)
	if len(cmd) < 2 {
		return kv.EncodeResult(nil, status.Errorf(codes.InvalidArgument, "server: short internal entry"))
	}
	switch cmd[1] {
	case internalSplit:
	case internalDrain:
		if len(cmd) != 3 {
			return kv.EncodeResult(nil, status.Errorf(codes.InvalidArgument, "server: bad drain entry"))
		}
		if cmd[2] == 1 {
			s.store.SetMeta(metaSplitDrain, []byte{1})
		} else {
			s.store.SetMeta(metaSplitDrain, nil)
		}
		return kv.EncodeResult(&pb.RangeResponse{}, nil)
	case internalBegin, internalPrepare, internalResolve, internalDecide, internalExpire, internalForget:
		out, err := s.applyTxnCall(cmd[1], cmd[2:])
		if err != nil {
			return kv.EncodeResult(nil, err)
		}
		// The result rides as a one-key RangeResponse's value.
		return kv.EncodeResult(&pb.RangeResponse{Kvs: []*mvccpb.KeyValue{{Value: out}}, Count: 1}, nil)
	default:
		return kv.EncodeResult(nil, status.Errorf(codes.InvalidArgument, "server: unknown internal entry %x", cmd[:2]))
	}
	var req SplitRequest
	if err := json.Unmarshal(cmd[2:], &req); err != nil {
		return kv.EncodeResult(nil, status.Errorf(codes.InvalidArgument, "server: bad split entry: %v", err))
	}
	return kv.EncodeResult(nil, s.applySplit(index, req))
}

func (s *Server) applySplit(index uint64, req SplitRequest) error {
	if s.cfg.Shard == nil {
		return status.Error(codes.FailedPrecondition, "ballot: not a shard")
	}
	key := fmt.Sprint(req.Child)
	if s.store.Meta(metaShardChildren+key) != nil {
		return nil // the same split, proposed again: done already
	}
	if s.HasTxnState() {
		return ErrGRPCSplitBusy
	}
	if !s.rangeKnown() {
		return ErrGRPCSplitRefused
	}
	start, end := s.Range()
	if bytes.Compare(req.Key, start) <= 0 || (len(end) > 0 && bytes.Compare(req.Key, end) >= 0) || req.Child == 0 {
		return ErrGRPCSplitRefused
	}
	// Narrow the range before the keys leave: a read that checked the
	// range, then read, checks it again after (see kvServer.Range), and
	// must see it narrowed if it could have read the store without them.
	s.store.SetMeta(metaShardRange, encodeRange(start, req.Key))
	s.loadRange()
	child := s.store.SplitOff(req.Key, end)
	child.SetMeta(metaShardRange, encodeRange(req.Key, end))
	rec := SplitRecord{Child: req.Child, Start: req.Key, End: end, Index: index, Members: req.Members}
	b, _ := json.Marshal(rec)
	s.store.SetMeta(metaShardChildren+key, b)
	s.store.SetMeta(metaSplitDrain, nil)
	s.hub.cut(req.Key, end, s.store.Rev())
	s.log.Info("shard split", "shard", s.cfg.Shard.ID, "child", req.Child, "at", fmt.Sprintf("%q", req.Key), "index", index)
	if s.cfg.Shard.OnSplit != nil {
		s.cfg.Shard.OnSplit(SplitState{SplitRecord: rec, Store: child})
	}
	return nil
}

// SplitRecords returns the splits this shard has applied.
func (s *Server) SplitRecords() []SplitRecord {
	var out []SplitRecord
	for _, k := range s.store.MetaKeys(metaShardChildren) {
		var r SplitRecord
		if err := json.Unmarshal(s.store.Meta(k), &r); err == nil {
			out = append(out, r)
		}
	}
	return out
}

// SeedConfig says how to build the data directory of one member of a new
// group whose state starts as Store at Index (a split's child, a restored
// backup).
type SeedConfig struct {
	Store     *kv.Store
	DataDir   string
	ClusterID uint64
	MemberID  uint64
	// Peers are the group's voters and their peer addresses.
	Peers map[consensus.NodeID]string
	Index uint64
}

// SeedDataDir writes what the node would have written itself for a group
// that starts from a snapshot: the snapshot file and a WAL recording it
// (see RestoreDataDir). The directory must be empty or absent.
func SeedDataDir(ctx context.Context, cfg SeedConfig) error {
	return seedDataDir(ctx, cfg.Store, cfg.DataDir, cfg.ClusterID, cfg.MemberID, cfg.Peers, max(cfg.Index, 1))
}

func sortedIDs(book map[consensus.NodeID]string) []consensus.NodeID {
	return slices.Sorted(maps.Keys(book))
}
