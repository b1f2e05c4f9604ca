package shard

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sort"
	"strconv"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/ballotdb/ballot/server"
)

// Errors the router answers with (see docs/sharding.md).
var (
	ErrGRPCLeaseOtherShard = status.Error(codes.FailedPrecondition, "ballot: lease and key in different shards (a lease lives in one shard; see docs/sharding.md)")
	ErrGRPCRevisionAcross  = status.Error(codes.InvalidArgument, "ballot: a range across shards cannot be read at a revision (revisions are per shard)")
	ErrGRPCLeaseIDShard    = status.Error(codes.InvalidArgument, "ballot: in sharded mode a lease ID names its shard in its top 16 bits; this one names none")
	ErrGRPCShardedOnly     = status.Error(codes.Unimplemented, "ballot: not available in sharded mode (see docs/sharding.md)")
)

// WatchSpansShards is the cancel reason of a watch whose range spans shards.
const WatchSpansShards = "ballot: watch range spans shards (see docs/sharding.md)"

// LeaseKeyHeader is the gRPC metadata key a client sets on LeaseGrant to
// home the lease in the shard that holds that key (binary metadata: any
// key bytes).
const LeaseKeyHeader = "ballot-lease-key-bin"

// ModeHeader is the gRPC header every answer of a sharded host carries.
const ModeHeader = "ballot-mode"

// wrongShardRetries bounds how often a request is re-routed after the map
// it was routed by turned out stale.
const wrongShardRetries = 10

// router serves the etcd v3 API of a sharded host by sending each request
// to the shard(s) its keys are in, through this host's member of each
// group (see groupConn). It holds no data of its own.
type router struct {
	h *Host
}

// errNotHere is the answer for a shard this host keeps no member of (yet:
// a split's child starts a moment after its parent applied the split).
var errNotHere = status.Error(codes.Unavailable, "ballot: shard not kept by this host")

// hopHeader marks a request one router forwarded to another: the second
// router serves it from its own member or refuses it, never forwarding it
// again, so a stale map cannot bounce a request between hosts.
const hopHeader = "ballot-hop"

// conn returns a connection that serves shard id: to this host's member of
// it, or, when this host keeps none (the shard moved away, or its member
// here is not started yet), to the router of a host that does.
//
// A call to another host names the group (ballot-group metadata): that
// host's router hands it to its own member as it is, whatever the method,
// instead of routing it again — the parts of a request this router split
// are not split twice, and operator calls (member changes) reach the group.
func (r *router) conn(ctx context.Context, id uint64) (grpc.ClientConnInterface, error) {
	g := r.h.group(id)
	if g != nil && !g.drained.Load() {
		return g.conn, nil
	}
	if md, ok := metadata.FromIncomingContext(ctx); ok && len(md.Get(hopHeader)) > 0 {
		return nil, errNotHere
	}
	s, ok := r.h.Map().ByID(id)
	if !ok {
		return nil, errNotHere
	}
	for _, name := range s.Members {
		if name == r.h.cfg.Name {
			continue
		}
		if c, err := r.h.hostConn(ctx, name); err == nil {
			return groupConn{c, strconv.FormatUint(id, 10)}, nil
		}
	}
	if g != nil { // drained, but no other host answers: better than nothing
		return g.conn, nil
	}
	return nil, errNotHere
}

// groupConn is a connection to another host's router whose calls name the
// group they are for.
type groupConn struct {
	cc    *grpc.ClientConn
	group string
}

func (c groupConn) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	return c.cc.Invoke(metadata.AppendToOutgoingContext(ctx, server.GroupHeader, c.group), method, args, reply, opts...)
}

func (c groupConn) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	return c.cc.NewStream(metadata.AppendToOutgoingContext(ctx, server.GroupHeader, c.group), desc, method, opts...)
}

// waitConn is conn, waiting (about 3 s at most) for this host to start its
// member of a shard the map says it keeps.
func (r *router) waitConn(ctx context.Context, id uint64) (grpc.ClientConnInterface, error) {
	backoff := 5 * time.Millisecond
	for attempt := 0; ; attempt++ {
		c, err := r.conn(ctx, id)
		if err == nil || attempt == wrongShardRetries {
			return c, err
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, err
		case <-t.C:
		}
		backoff = min(2*backoff, 500*time.Millisecond)
	}
}

// retryable reports whether a request that failed with err should be
// routed again after re-reading the map: a shard refused keys it no longer
// keeps, or this host has no member of the shard yet.
func retryable(err error) bool {
	return server.IsWrongShard(err) || isStatus(err, errNotHere) || errors.Is(err, errLeaseHomeUnknown)
}

// routed runs f on the current map, re-reading the map and retrying with
// backoff (about 3 s in all) while the route turns out stale.
func routed[T any](ctx context.Context, r *router, f func(Map) (T, error)) (T, error) {
	var zero T
	backoff := 5 * time.Millisecond
	for attempt := 0; ; attempt++ {
		out, err := pushed(ctx, r.h, func() (T, error) { return f(r.h.Map()) })
		if errors.Is(err, errLeaseHomeUnknown) && attempt == wrongShardRetries {
			return out, rpctypes.ErrGRPCLeaseNotFound
		}
		if err == nil || !retryable(err) || attempt == wrongShardRetries {
			return out, err
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return zero, err
		case <-t.C:
		}
		backoff = min(2*backoff, 500*time.Millisecond)
		if err := r.h.mapStale(ctx); err != nil {
			return zero, err
		}
	}
}

// leaseHome is the shard a lease ID names in its top 16 bits.
func leaseHome(m Map, id int64) (Shard, error) {
	s, ok := m.ByID(uint64(id) >> 48)
	if !ok || id <= 0 {
		return Shard{}, ErrGRPCLeaseIDShard
	}
	return s, nil
}

// staleFor reports whether the map may be too old to know lease id's home:
// the ID names a shard this map does not have. Shards are never merged, so
// a shard missing from the map was split off after it, or never existed;
// only reading the map again tells which.
func staleFor(m Map, id int64) bool {
	if id <= 0 || uint64(id)>>48 == 0 {
		return false
	}
	_, ok := m.ByID(uint64(id) >> 48)
	return !ok
}

// errLeaseHomeUnknown: a request names a lease homed in a shard this host's
// map does not know yet. routed reads the map again and retries; a lease
// whose shard is still unknown after that does not exist.
var errLeaseHomeUnknown = errors.New("shard: the lease's home shard is not in this host's map")

// freshFor reads the map again if it does not know lease id's home shard
// (a split this host has not heard of made it), so that a lease granted in
// a new shard never looks "not found" through a host that is behind.
func (r *router) freshFor(ctx context.Context, id int64) error {
	if !staleFor(r.h.Map(), id) {
		return nil
	}
	return r.h.mapStale(ctx)
}

// ---- KV ----

type kvRouter struct {
	pb.UnimplementedKVServer
	r *router
}

func (k *kvRouter) kv(ctx context.Context, id uint64) (pb.KVClient, error) {
	c, err := k.r.conn(ctx, id)
	if err != nil {
		return nil, err
	}
	return pb.NewKVClient(c), nil
}

func (k *kvRouter) Range(ctx context.Context, req *pb.RangeRequest) (*pb.RangeResponse, error) {
	return routed(ctx, k.r, func(m Map) (*pb.RangeResponse, error) {
		parts := m.Split(req.Key, req.RangeEnd)
		switch len(parts) {
		case 0:
			parts = []Part{{Shard: m.Lookup(req.Key), Key: req.Key, End: req.RangeEnd}}
		case 1:
			c, err := k.kv(ctx, parts[0].Shard.ID)
			if err != nil {
				return nil, err
			}
			return c.Range(ctx, req)
		}
		if req.Revision != 0 {
			return nil, ErrGRPCRevisionAcross
		}
		resps := make([]*pb.RangeResponse, len(parts))
		err := fanOut(len(parts), func(i int) error {
			c, err := k.kv(ctx, parts[i].Shard.ID)
			if err != nil {
				return err
			}
			sub := proto.Clone(req).(*pb.RangeRequest)
			sub.Key, sub.RangeEnd = parts[i].Key, parts[i].End
			resps[i], err = c.Range(ctx, sub)
			return err
		})
		if err != nil {
			return nil, err
		}
		return mergeRanges(req, resps), nil
	})
}

// mergeRanges joins the shards' answers to one request, in the order the
// request asked for, applying its limit over the whole.
func mergeRanges(req *pb.RangeRequest, resps []*pb.RangeResponse) *pb.RangeResponse {
	out := &pb.RangeResponse{Header: resps[0].Header}
	for _, r := range resps {
		out.Count += r.Count
		if r.Header.GetRevision() > out.Header.GetRevision() {
			out.Header = r.Header
		}
		out.Kvs = append(out.Kvs, r.Kvs...) // shards in key order: so are their keys
	}
	target, order := req.SortTarget, req.SortOrder
	if order == pb.RangeRequest_NONE {
		target, order = pb.RangeRequest_KEY, pb.RangeRequest_ASCEND
	}
	if target != pb.RangeRequest_KEY || order == pb.RangeRequest_DESCEND {
		less := sortLess(target)
		sort.SliceStable(out.Kvs, func(i, j int) bool {
			if order == pb.RangeRequest_DESCEND {
				return less(out.Kvs[j], out.Kvs[i])
			}
			return less(out.Kvs[i], out.Kvs[j])
		})
	}
	if req.Limit > 0 && int64(len(out.Kvs)) > req.Limit {
		out.Kvs = out.Kvs[:req.Limit]
	}
	out.More = out.Count > int64(len(out.Kvs)) && !req.CountOnly
	if req.CountOnly {
		out.Kvs = nil
	}
	return out
}

func sortLess(t pb.RangeRequest_SortTarget) func(a, b *mvccpb.KeyValue) bool {
	switch t {
	case pb.RangeRequest_VERSION:
		return func(a, b *mvccpb.KeyValue) bool { return a.Version < b.Version }
	case pb.RangeRequest_CREATE:
		return func(a, b *mvccpb.KeyValue) bool { return a.CreateRevision < b.CreateRevision }
	case pb.RangeRequest_MOD:
		return func(a, b *mvccpb.KeyValue) bool { return a.ModRevision < b.ModRevision }
	case pb.RangeRequest_VALUE:
		return func(a, b *mvccpb.KeyValue) bool { return bytes.Compare(a.Value, b.Value) < 0 }
	}
	return func(a, b *mvccpb.KeyValue) bool { return bytes.Compare(a.Key, b.Key) < 0 }
}

func (k *kvRouter) Put(ctx context.Context, req *pb.PutRequest) (*pb.PutResponse, error) {
	return routed(ctx, k.r, func(m Map) (*pb.PutResponse, error) {
		s := m.Lookup(req.Key)
		if req.Lease != 0 {
			if staleFor(m, req.Lease) {
				return nil, errLeaseHomeUnknown
			}
			if home, err := leaseHome(m, req.Lease); err != nil || !m.Lineage(home.ID, s.ID) {
				return nil, ErrGRPCLeaseOtherShard
			}
		}
		c, err := k.kv(ctx, s.ID)
		if err != nil {
			return nil, err
		}
		return c.Put(ctx, req)
	})
}

func (k *kvRouter) DeleteRange(ctx context.Context, req *pb.DeleteRangeRequest) (*pb.DeleteRangeResponse, error) {
	return routed(ctx, k.r, func(m Map) (*pb.DeleteRangeResponse, error) {
		parts := m.Split(req.Key, req.RangeEnd)
		if len(parts) == 0 {
			parts = []Part{{Shard: m.Lookup(req.Key), Key: req.Key, End: req.RangeEnd}}
		}
		if len(parts) == 1 {
			c, err := k.kv(ctx, parts[0].Shard.ID)
			if err != nil {
				return nil, err
			}
			return c.DeleteRange(ctx, req)
		}
		// Each part is routed (and retried) on its own: a part that is
		// deleted must not be deleted again because another part's route
		// was stale, or its deletions would go missing from the answer.
		resps := make([]*pb.DeleteRangeResponse, len(parts))
		err := fanOut(len(parts), func(i int) error {
			sub := proto.Clone(req).(*pb.DeleteRangeRequest)
			sub.Key, sub.RangeEnd = parts[i].Key, parts[i].End
			var err error
			resps[i], err = k.DeleteRange(ctx, sub)
			if retryable(err) {
				// This part ran out of retries; the others may be done, so
				// the whole must not be tried again.
				return status.Error(codes.Unavailable, "ballot: a part of a delete across shards could not be routed; parts may be deleted: "+err.Error())
			}
			return err
		})
		if err != nil {
			return nil, err
		}
		out := &pb.DeleteRangeResponse{Header: resps[0].Header}
		for _, r := range resps {
			out.Deleted += r.Deleted
			out.PrevKvs = append(out.PrevKvs, r.PrevKvs...)
			if r.Header.GetRevision() > out.Header.GetRevision() {
				out.Header = r.Header
			}
		}
		return out, nil
	})
}

func (k *kvRouter) Txn(ctx context.Context, req *pb.TxnRequest) (*pb.TxnResponse, error) {
	return routed(ctx, k.r, func(m Map) (*pb.TxnResponse, error) {
		ids := map[uint64]bool{}
		var leaseErr error
		txnShards(m, req, ids, &leaseErr)
		if leaseErr != nil {
			return nil, leaseErr
		}
		if len(ids) > 1 {
			return k.r.h.txn(ctx, req)
		}
		id := m.Lookup(nil).ID // a Txn with no keys at all: any shard answers it
		for s := range ids {
			id = s
		}
		c, err := k.kv(ctx, id)
		if err != nil {
			return nil, err
		}
		return c.Txn(ctx, req)
	})
}

// txnShards adds the shards every key of t is in to ids, and notes a put
// whose lease lives in another shard than its key.
func txnShards(m Map, t *pb.TxnRequest, ids map[uint64]bool, leaseErr *error) {
	add := func(key, end []byte) {
		parts := m.Split(key, end)
		if len(parts) == 0 {
			parts = []Part{{Shard: m.Lookup(key)}}
		}
		for _, p := range parts {
			ids[p.Shard.ID] = true
		}
	}
	for _, c := range t.Compare {
		add(c.Key, c.RangeEnd)
	}
	for _, ops := range [][]*pb.RequestOp{t.Success, t.Failure} {
		for _, op := range ops {
			switch v := op.Request.(type) {
			case *pb.RequestOp_RequestRange:
				add(v.RequestRange.Key, v.RequestRange.RangeEnd)
			case *pb.RequestOp_RequestPut:
				add(v.RequestPut.Key, nil)
				if l := v.RequestPut.Lease; l != 0 {
					if staleFor(m, l) {
						*leaseErr = errLeaseHomeUnknown
					} else if home, err := leaseHome(m, l); err != nil || !m.Lineage(home.ID, m.Lookup(v.RequestPut.Key).ID) {
						*leaseErr = ErrGRPCLeaseOtherShard
					}
				}
			case *pb.RequestOp_RequestDeleteRange:
				add(v.RequestDeleteRange.Key, v.RequestDeleteRange.RangeEnd)
			case *pb.RequestOp_RequestTxn:
				txnShards(m, v.RequestTxn, ids, leaseErr)
			}
		}
	}
}

// Compact compacts every shard at the revision, or leaves a shard alone
// whose own revision is lower than it or that is already compacted past
// it (revisions are per shard; see docs/sharding.md).
func (k *kvRouter) Compact(ctx context.Context, req *pb.CompactionRequest) (*pb.CompactionResponse, error) {
	m := k.r.h.Map()
	resps := make([]*pb.CompactionResponse, len(m.Shards))
	err := fanOut(len(m.Shards), func(i int) error {
		c, err := k.kv(ctx, m.Shards[i].ID)
		if err != nil {
			return err
		}
		resps[i], err = c.Compact(ctx, req)
		if err != nil && (isStatus(err, rpctypes.ErrGRPCFutureRev) || isStatus(err, rpctypes.ErrGRPCCompacted)) {
			return nil
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	out := &pb.CompactionResponse{}
	for _, r := range resps {
		if r != nil && r.Header.GetRevision() >= out.Header.GetRevision() {
			out.Header = r.Header
		}
	}
	if out.Header == nil {
		return nil, rpctypes.ErrGRPCFutureRev
	}
	return out, nil
}

func isStatus(err, want error) bool {
	a, _ := status.FromError(err)
	b, _ := status.FromError(want)
	return a.Code() == b.Code() && a.Message() == b.Message()
}

// fanOut runs f(0..n-1) concurrently and returns the first error.
func fanOut(n int, f func(i int) error) error {
	if n == 1 {
		return f(0)
	}
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = f(i) }()
	}
	wg.Wait()
	// The first error, as it came: a client must get the status a shard
	// answered (etcd's clients match lease-not-found and the like by their
	// exact message), not a join of them, which gRPC would send as one
	// status whose message nests the others'.
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// ---- Lease ----

type leaseRouter struct {
	pb.UnimplementedLeaseServer
	r *router
}

func (l *leaseRouter) lease(ctx context.Context, id uint64) (pb.LeaseClient, error) {
	c, err := l.r.conn(ctx, id)
	if err != nil {
		return nil, err
	}
	return pb.NewLeaseClient(c), nil
}

// LeaseGrant homes the lease in the shard that holds the key named by the
// ballot-lease-key-bin metadata, else in the shard its ID names, else in the
// first shard; an ID the router picks names its home in its top 16 bits.
func (l *leaseRouter) LeaseGrant(ctx context.Context, req *pb.LeaseGrantRequest) (*pb.LeaseGrantResponse, error) {
	if err := l.r.freshFor(ctx, req.ID); err != nil {
		return nil, err
	}
	m := l.r.h.Map()
	home := m.Shards[0]
	if md, ok := metadata.FromIncomingContext(ctx); ok && len(md.Get(LeaseKeyHeader)) > 0 {
		home = m.Lookup([]byte(md.Get(LeaseKeyHeader)[0]))
	}
	if req.ID != 0 {
		s, err := leaseHome(m, req.ID)
		if err != nil {
			return nil, err
		}
		home = s
	}
	c, err := l.lease(ctx, home.ID)
	if err != nil {
		return nil, err
	}
	if req.ID != 0 {
		return c.LeaseGrant(ctx, req)
	}
	for range 8 {
		sub := &pb.LeaseGrantRequest{TTL: req.TTL, ID: int64(home.ID<<48 | (rand.Uint64N(1<<48-1) + 1))}
		resp, err := c.LeaseGrant(ctx, sub)
		if isStatus(err, rpctypes.ErrGRPCLeaseExist) {
			continue // a random ID already taken: draw another
		}
		return resp, err
	}
	return nil, rpctypes.ErrGRPCLeaseExist
}

// lineage returns the shards lease id lives in: its home first, then the
// shards split from the home since (each holds a copy; see kv.SplitOff).
func (l *leaseRouter) lineage(ctx context.Context, id int64) ([]uint64, error) {
	if err := l.r.freshFor(ctx, id); err != nil {
		return nil, err
	}
	m := l.r.h.Map()
	s, err := leaseHome(m, id)
	if err != nil {
		return nil, rpctypes.ErrGRPCLeaseNotFound
	}
	return append([]uint64{s.ID}, m.Descendants(s.ID)...), nil
}

// LeaseRevoke revokes the lease in every shard it lives in; the home's
// answer is the client's.
func (l *leaseRouter) LeaseRevoke(ctx context.Context, req *pb.LeaseRevokeRequest) (*pb.LeaseRevokeResponse, error) {
	ids, err := l.lineage(ctx, req.ID)
	if err != nil {
		return nil, err
	}
	resps := make([]*pb.LeaseRevokeResponse, len(ids))
	err = fanOut(len(ids), func(i int) error {
		c, err := l.lease(ctx, ids[i])
		if err != nil {
			return err
		}
		resps[i], err = c.LeaseRevoke(ctx, req)
		if i > 0 && isStatus(err, rpctypes.ErrGRPCLeaseNotFound) {
			return nil // this copy expired or was revoked already
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	return resps[0], nil
}

// LeaseTimeToLive answers with the home's TTL and the keys attached in
// every shard the lease lives in.
func (l *leaseRouter) LeaseTimeToLive(ctx context.Context, req *pb.LeaseTimeToLiveRequest) (*pb.LeaseTimeToLiveResponse, error) {
	ids, err := l.lineage(ctx, req.ID)
	if errors.Is(err, rpctypes.ErrGRPCLeaseNotFound) {
		return &pb.LeaseTimeToLiveResponse{Header: &pb.ResponseHeader{}, ID: req.ID, TTL: -1}, nil
	}
	if err != nil {
		return nil, err
	}
	resps := make([]*pb.LeaseTimeToLiveResponse, len(ids))
	err = fanOut(len(ids), func(i int) error {
		c, err := l.lease(ctx, ids[i])
		if err != nil {
			return err
		}
		resps[i], err = c.LeaseTimeToLive(ctx, req)
		return err
	})
	if err != nil {
		return nil, err
	}
	out := resps[0]
	for _, r := range resps[1:] {
		if r.TTL >= 0 {
			out.Keys = append(out.Keys, r.Keys...)
		}
	}
	return out, nil
}

func (l *leaseRouter) LeaseLeases(ctx context.Context, req *pb.LeaseLeasesRequest) (*pb.LeaseLeasesResponse, error) {
	// Ask the shards of a fresh map: with an old one, the leases of a
	// shard split off since would be missing from the list, as if gone.
	if err := l.r.h.mapStale(ctx); err != nil {
		return nil, err
	}
	m := l.r.h.Map()
	resps := make([]*pb.LeaseLeasesResponse, len(m.Shards))
	err := fanOut(len(m.Shards), func(i int) error {
		c, err := l.lease(ctx, m.Shards[i].ID)
		if err != nil {
			return err
		}
		resps[i], err = c.LeaseLeases(ctx, req)
		return err
	})
	if err != nil {
		return nil, err
	}
	out := &pb.LeaseLeasesResponse{Header: resps[0].Header}
	for i, r := range resps {
		for _, l := range r.Leases {
			// A shard split from a lease's home keeps a copy, which goes
			// only after the home revokes the lease: the home alone says
			// whether the lease exists.
			if uint64(l.ID)>>48 == m.Shards[i].ID {
				out.Leases = append(out.Leases, l)
			}
		}
	}
	sort.Slice(out.Leases, func(i, j int) bool { return out.Leases[i].ID < out.Leases[j].ID })
	return out, nil
}

// LeaseKeepAlive relays each keep-alive to the lease's home shard, over one
// stream per shard opened on first use. Only the home's lessor decides
// when a lease expires; the copies in shards split from it never expire on
// their own, and are revoked after the home's (sweepLeaseCopies), so no
// copy — and none of its keys — can go before the home says so. (The
// aggregation below waits for every shard a keep-alive went to; with the
// home alone it answers as soon as the home does.)
func (l *leaseRouter) LeaseKeepAlive(stream pb.Lease_LeaseKeepAliveServer) error {
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	type pending struct {
		home  uint64
		wait  map[uint64]bool // shards yet to answer
		resp  *pb.LeaseKeepAliveResponse
		least int64
	}
	var (
		mu      sync.Mutex // guards waiting and serializes stream.Send
		waiting = map[int64][]*pending{}
		inner   = map[uint64]pb.Lease_LeaseKeepAliveClient{}
		errc    = make(chan error, 1)
	)
	fail := func(err error) {
		select {
		case errc <- err:
		default:
		}
		cancel()
	}
	// answer takes shard sid's answer for a lease into the oldest keep-alive
	// of that lease still waiting for sid, and answers the client when
	// that one has all its answers.
	answer := func(sid uint64, resp *pb.LeaseKeepAliveResponse) error {
		mu.Lock()
		defer mu.Unlock()
		q := waiting[resp.ID]
		for i, p := range q {
			if !p.wait[sid] {
				continue
			}
			delete(p.wait, sid)
			if sid == p.home {
				p.resp = resp
			}
			if resp.TTL > 0 && (p.least == 0 || resp.TTL < p.least) {
				p.least = resp.TTL
			}
			if len(p.wait) > 0 || i != 0 {
				return nil
			}
			// Answer, in order, every keep-alive of this lease now complete.
			for len(q) > 0 && len(q[0].wait) == 0 {
				out := q[0].resp
				if out.TTL > 0 && q[0].least > 0 {
					out.TTL = q[0].least
				}
				if err := stream.Send(out); err != nil {
					return err
				}
				q = q[1:]
			}
			if len(q) == 0 {
				delete(waiting, resp.ID)
			} else {
				waiting[resp.ID] = q
			}
			return nil
		}
		return nil // an answer for a keep-alive no longer waited for
	}
	reqs := make(chan *pb.LeaseKeepAliveRequest)
	go func() {
		for {
			req, err := stream.Recv()
			if err != nil {
				fail(err)
				return
			}
			select {
			case reqs <- req:
			case <-ctx.Done():
				return
			}
		}
	}()
	for {
		var req *pb.LeaseKeepAliveRequest
		select {
		case req = <-reqs:
		case <-ctx.Done():
			select {
			case err := <-errc:
				if errors.Is(err, context.Canceled) || errors.Is(err, io.EOF) {
					return nil
				}
				return err
			default:
				return ctx.Err()
			}
		}
		ids, err := l.lineage(ctx, req.ID)
		if err != nil && !errors.Is(err, rpctypes.ErrGRPCLeaseNotFound) {
			// The map could not be read again: no answer is known, and
			// "not found" would be a lie.
			return err
		}
		if err != nil {
			mu.Lock()
			err = stream.Send(&pb.LeaseKeepAliveResponse{Header: &pb.ResponseHeader{}, ID: req.ID, TTL: 0})
			mu.Unlock()
			if err != nil {
				return err
			}
			continue
		}
		ids = ids[:1] // the home alone: see above
		p := &pending{home: ids[0], wait: map[uint64]bool{}}
		for _, sid := range ids {
			p.wait[sid] = true
		}
		mu.Lock()
		waiting[req.ID] = append(waiting[req.ID], p)
		mu.Unlock()
		for _, sid := range ids {
			in := inner[sid]
			if in == nil {
				c, err := l.lease(ctx, sid)
				if err != nil {
					return err
				}
				if in, err = c.LeaseKeepAlive(ctx); err != nil {
					return err
				}
				inner[sid] = in
				go func() {
					for {
						resp, err := in.Recv()
						if err != nil {
							fail(err)
							return
						}
						if err := answer(sid, resp); err != nil {
							fail(err)
							return
						}
					}
				}()
			}
			if err := in.Send(req); err != nil {
				return err
			}
		}
	}
}

// ---- Watch ----

type watchRouter struct {
	pb.UnimplementedWatchServer
	r *router
}

// Watch relays each watch to the one shard its range is in, over one
// stream per shard opened on first use. Watch IDs are chosen here and
// passed on, so the shards' answers need no translation; a progress
// answer for a whole shard stream is sent to each of that shard's
// watchers by ID, since its revision means nothing to the other shards'.
//
// The router remembers, for each watch, the first revision the client has
// not yet been sent everything up to. When a split moves a watch's range
// to another shard, the old shard cancels the watch once it has sent every
// event up to the split (server.ShardSplitReason), and the router creates
// it again on the new shard from that revision — the new shard holds the
// range's history (kv.SplitOff) — without telling the client, which sees
// one unbroken watch: no gap, no repeat.
func (w *watchRouter) Watch(stream pb.Watch_WatchServer) error {
	ws := &watchStream{r: w.r, out: stream, inner: map[uint64]pb.Watch_WatchClient{}, ws: map[int64]*routedWatch{}}
	ws.ctx, ws.cancel = context.WithCancel(stream.Context())
	defer ws.cancel()
	reqs := make(chan *pb.WatchRequest)
	go func() {
		for {
			req, err := stream.Recv()
			if err != nil {
				ws.fail(err)
				return
			}
			select {
			case reqs <- req:
			case <-ws.ctx.Done():
				return
			}
		}
	}()
	for {
		select {
		case req := <-reqs:
			if err := ws.handle(req); err != nil {
				return err
			}
		case <-ws.ctx.Done():
			return ws.err()
		}
	}
}

type watchStream struct {
	r      *router
	out    pb.Watch_WatchServer
	ctx    context.Context
	cancel context.CancelFunc

	mu     sync.Mutex // guards everything below and serializes out.Send
	inner  map[uint64]pb.Watch_WatchClient
	ws     map[int64]*routedWatch
	nextID int64
	cause  error
}

// routedWatch is one client watch as the router keeps it.
type routedWatch struct {
	shard uint64
	req   *pb.WatchCreateRequest
	// next is the first revision of shard's history not yet fully sent
	// to the client (0: not known yet).
	next int64
	// rerouted: the client has its Created answer already; the one for
	// the re-created watch is not passed on.
	rerouted bool
	// moves counts re-creations, bounded by maxWatchMoves.
	moves int
}

// maxWatchMoves bounds how often one watch is re-created after its range
// moved before the router gives up and cancels it.
const maxWatchMoves = 32

func (ws *watchStream) fail(err error) {
	ws.mu.Lock()
	if ws.cause == nil {
		ws.cause = err
	}
	ws.mu.Unlock()
	ws.cancel()
}

func (ws *watchStream) err() error {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	if ws.cause == nil || errors.Is(ws.cause, context.Canceled) || status.Code(ws.cause) == codes.Canceled {
		return nil
	}
	return ws.cause
}

func (ws *watchStream) send(r *pb.WatchResponse) error {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	return ws.out.Send(r)
}

func (ws *watchStream) handle(req *pb.WatchRequest) error {
	switch v := req.RequestUnion.(type) {
	case *pb.WatchRequest_CreateRequest:
		return ws.create(v.CreateRequest)
	case *pb.WatchRequest_CancelRequest:
		ws.mu.Lock()
		w, ok := ws.ws[v.CancelRequest.WatchId]
		var in pb.Watch_WatchClient
		if ok {
			in = ws.inner[w.shard]
		}
		ws.mu.Unlock()
		if in == nil {
			return nil // etcd ignores a cancel of an unknown watch
		}
		return in.Send(req)
	case *pb.WatchRequest_ProgressRequest:
		ws.mu.Lock()
		ins := make([]pb.Watch_WatchClient, 0, len(ws.inner))
		for _, in := range ws.inner {
			ins = append(ins, in)
		}
		ws.mu.Unlock()
		for _, in := range ins {
			if err := in.Send(req); err != nil {
				return err
			}
		}
	}
	return nil
}

func (ws *watchStream) create(c *pb.WatchCreateRequest) error {
	ws.mu.Lock()
	id := c.WatchId
	if id == 0 {
		for ws.nextID++; ws.ws[ws.nextID] != nil; ws.nextID++ {
		}
		id = ws.nextID
	}
	if ws.ws[id] != nil {
		ws.mu.Unlock()
		return ws.send(&pb.WatchResponse{Header: &pb.ResponseHeader{}, WatchId: id, Created: true, Canceled: true, CancelReason: "etcdserver: duplicate watch ID"})
	}
	w := &routedWatch{req: proto.Clone(c).(*pb.WatchCreateRequest)}
	w.req.WatchId = id
	ws.ws[id] = w
	ws.mu.Unlock()
	return ws.route(id, w, c.StartRevision)
}

// route sends watch id to the shard its range is in now, from revision
// start (0: from now).
func (ws *watchStream) route(id int64, w *routedWatch, start int64) error {
	m := ws.r.h.Map()
	parts := m.Split(w.req.Key, w.req.RangeEnd)
	if len(parts) == 0 {
		parts = []Part{{Shard: m.Lookup(w.req.Key)}}
	}
	if len(parts) > 1 {
		ws.mu.Lock()
		delete(ws.ws, id)
		created := w.rerouted
		ws.mu.Unlock()
		wid := id
		if !created {
			wid = -1 // as etcd answers a watch it refuses at create
		}
		return ws.send(&pb.WatchResponse{Header: &pb.ResponseHeader{}, WatchId: wid, Created: !created, Canceled: true, CancelReason: WatchSpansShards})
	}
	sid := parts[0].Shard.ID
	ws.mu.Lock()
	w.shard = sid
	in := ws.inner[sid]
	ws.mu.Unlock()
	if in == nil {
		conn, err := ws.r.waitConn(ws.ctx, sid)
		if err != nil {
			ws.r.h.log.Debug("watch cannot move", "watch", id, "to_shard", sid, "err", err)
			return err
		}
		if in, err = pb.NewWatchClient(conn).Watch(ws.ctx); err != nil {
			return err
		}
		ws.mu.Lock()
		ws.inner[sid] = in
		ws.mu.Unlock()
		go ws.relay(sid, in)
	}
	sub := proto.Clone(w.req).(*pb.WatchCreateRequest)
	sub.StartRevision = start
	return in.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: sub}})
}

// relay sends one shard's watch answers to the client.
func (ws *watchStream) relay(sid uint64, in pb.Watch_WatchClient) {
	for {
		resp, err := in.Recv()
		if err != nil {
			ws.fail(err)
			return
		}
		if err := ws.relayOne(sid, resp); err != nil {
			ws.fail(err)
			return
		}
	}
}

func (ws *watchStream) relayOne(sid uint64, resp *pb.WatchResponse) error {
	rev := resp.Header.GetRevision()
	if resp.WatchId == -1 && !resp.Created && !resp.Canceled && len(resp.Events) == 0 {
		// A progress answer for the whole shard stream: to each of the
		// shard's watchers by its own ID.
		ws.mu.Lock()
		var ids []int64
		for id, w := range ws.ws {
			if w.shard == sid {
				ids = append(ids, id)
				w.next = max(w.next, rev+1)
			}
		}
		ws.mu.Unlock()
		for _, id := range ids {
			r := proto.Clone(resp).(*pb.WatchResponse)
			r.WatchId = id
			if err := ws.send(r); err != nil {
				return err
			}
		}
		return nil
	}
	ws.mu.Lock()
	w := ws.ws[resp.WatchId]
	if w == nil || w.shard != sid {
		ws.mu.Unlock()
		return nil // a watch cancelled or moved meanwhile
	}
	switch {
	case resp.Canceled && (resp.CancelReason == server.ShardSplitReason || resp.CancelReason == server.WrongShardReason):
		// The range moved: create the watch again where it is now.
		start := w.next
		if start == 0 {
			start = w.req.StartRevision
		}
		if resp.CancelReason == server.ShardSplitReason {
			w.rerouted = true
		}
		w.moves++
		if w.moves > maxWatchMoves {
			delete(ws.ws, resp.WatchId)
			ws.mu.Unlock()
			resp.CancelReason = "ballot: the watch's range kept moving; watch again"
			return ws.send(resp)
		}
		ws.mu.Unlock()
		ws.r.h.log.Debug("watch moves", "watch", resp.WatchId, "from_shard", sid, "reason", resp.CancelReason, "start", start)
		if w.moves > 1 { // the map was stale again: give the split time to land
			t := time.NewTimer(time.Duration(min(w.moves, 10)) * 20 * time.Millisecond)
			select {
			case <-ws.ctx.Done():
				t.Stop()
				return ws.ctx.Err()
			case <-t.C:
			}
		}
		if err := ws.r.h.mapStale(ws.ctx); err != nil {
			return err
		}
		return ws.route(resp.WatchId, w, start)
	case resp.Canceled:
		delete(ws.ws, resp.WatchId)
	case resp.Created:
		if w.req.StartRevision == 0 && w.next == 0 {
			w.next = rev + 1
		} else if w.next == 0 {
			w.next = w.req.StartRevision
		}
		if w.rerouted {
			ws.mu.Unlock()
			return nil
		}
	case len(resp.Events) > 0:
		if !resp.Fragment {
			w.next = max(w.next, resp.Events[len(resp.Events)-1].Kv.ModRevision+1)
		}
	default: // a progress notification for this watch
		w.next = max(w.next, rev+1)
	}
	ws.mu.Unlock()
	return ws.send(resp)
}

// ---- Cluster and Maintenance: about hosts, answered by the meta group ----

type clusterRouter struct {
	pb.UnimplementedClusterServer
	r *router
}

func (c *clusterRouter) meta() (pb.ClusterClient, error) {
	conn, err := c.r.conn(context.Background(), MetaGroup)
	if err != nil {
		return nil, err
	}
	return pb.NewClusterClient(conn), nil
}

func (c *clusterRouter) MemberList(ctx context.Context, req *pb.MemberListRequest) (*pb.MemberListResponse, error) {
	cl, err := c.meta()
	if err != nil {
		return nil, err
	}
	return cl.MemberList(ctx, req)
}

// Membership of the hosts is fixed in sharded mode for now (see
// docs/sharding.md); shards move with ballot shard move.
func (c *clusterRouter) MemberAdd(context.Context, *pb.MemberAddRequest) (*pb.MemberAddResponse, error) {
	return nil, ErrGRPCShardedOnly
}
func (c *clusterRouter) MemberRemove(context.Context, *pb.MemberRemoveRequest) (*pb.MemberRemoveResponse, error) {
	return nil, ErrGRPCShardedOnly
}
func (c *clusterRouter) MemberUpdate(context.Context, *pb.MemberUpdateRequest) (*pb.MemberUpdateResponse, error) {
	return nil, ErrGRPCShardedOnly
}
func (c *clusterRouter) MemberPromote(context.Context, *pb.MemberPromoteRequest) (*pb.MemberPromoteResponse, error) {
	return nil, ErrGRPCShardedOnly
}

type maintenanceRouter struct {
	pb.UnimplementedMaintenanceServer
	r *router
}

// Status answers for the meta group (leader, term, the host's ID), with
// the sizes summed over every group this host keeps.
func (m *maintenanceRouter) Status(ctx context.Context, req *pb.StatusRequest) (*pb.StatusResponse, error) {
	conn, err := m.r.conn(ctx, MetaGroup)
	if err != nil {
		return nil, err
	}
	out, err := pb.NewMaintenanceClient(conn).Status(ctx, req)
	if err != nil {
		return nil, err
	}
	for _, g := range m.r.h.groups() {
		if g.id == MetaGroup {
			continue
		}
		st, err := pb.NewMaintenanceClient(g.conn).Status(ctx, req)
		if err != nil {
			return nil, fmt.Errorf("shard %d: %w", g.id, err)
		}
		out.DbSize += st.DbSize
		out.DbSizeInUse += st.DbSizeInUse
		out.Errors = append(out.Errors, st.Errors...)
	}
	return out, nil
}

// Alarm lists (or changes) the alarms of every shard.
func (m *maintenanceRouter) Alarm(ctx context.Context, req *pb.AlarmRequest) (*pb.AlarmResponse, error) {
	out := &pb.AlarmResponse{}
	for _, g := range m.r.h.groups() {
		resp, err := pb.NewMaintenanceClient(g.conn).Alarm(ctx, req)
		if err != nil {
			return nil, fmt.Errorf("shard %d: %w", g.id, err)
		}
		out.Header = resp.Header
		out.Alarms = append(out.Alarms, resp.Alarms...)
	}
	return out, nil
}

// Hash, HashKV, Snapshot and MoveLeader are per group: not answered for a
// whole sharded host (ballot shard list shows each shard's state).
func (m *maintenanceRouter) Hash(context.Context, *pb.HashRequest) (*pb.HashResponse, error) {
	return nil, ErrGRPCShardedOnly
}
func (m *maintenanceRouter) HashKV(context.Context, *pb.HashKVRequest) (*pb.HashKVResponse, error) {
	return nil, ErrGRPCShardedOnly
}
func (m *maintenanceRouter) Snapshot(*pb.SnapshotRequest, pb.Maintenance_SnapshotServer) error {
	return ErrGRPCShardedOnly
}
func (m *maintenanceRouter) MoveLeader(context.Context, *pb.MoveLeaderRequest) (*pb.MoveLeaderResponse, error) {
	return nil, ErrGRPCShardedOnly
}

// Defragment defragments every group this host keeps.
func (m *maintenanceRouter) Defragment(ctx context.Context, req *pb.DefragmentRequest) (*pb.DefragmentResponse, error) {
	out := &pb.DefragmentResponse{}
	for _, g := range m.r.h.groups() {
		resp, err := pb.NewMaintenanceClient(g.conn).Defragment(ctx, req)
		if err != nil {
			return nil, fmt.Errorf("shard %d: %w", g.id, err)
		}
		out.Header = resp.Header
	}
	return out, nil
}

// modeInterceptors put the ballot-mode header on every answer.
func modeUnary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	_ = grpc.SetHeader(ctx, metadata.Pairs(ModeHeader, "sharded"))
	return h(ctx, req)
}

func modeStream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	_ = ss.SetHeader(metadata.Pairs(ModeHeader, "sharded"))
	return h(srv, ss)
}
