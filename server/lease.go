package server

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"sort"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ballotdb/ballot/consensus"
)

// lessor decides when leases expire. Only the leader expires leases, by
// proposing their revocation through the log; every member's store then
// deletes the attached keys at the same revision.
//
// Deadlines live in the leader's memory only, measured on its monotonic
// clock. A keep-alive that reaches a follower is forwarded to the leader,
// which moves the deadline; a LeaseCheckpoint entry with no remaining time
// is a renewal through the log and moves it when the leader applies it.
//
// A member that becomes leader gives every lease a fresh full TTL before
// it may expire any, as etcd does, so a crash of the leader never expires
// a lease that was being kept alive. A leader that hands leadership away
// on purpose (MoveLeader, a shard host's balancer, a graceful stop) does
// better: handOver records each lease's remaining time in the log first,
// and the next leader, once it has applied everything committed before
// its term (takeHandOver), shortens the full TTLs to that, so moving
// leadership around does not keep abandoned leases alive longer (etcd's
// lease checkpoints, taken at the one moment they matter). Safety: from the
// moment the remaining times are read until the handover ends, this member
// renews nothing; afterwards, renewing a lease whose recorded remaining
// time is set first clears it through the log, so a successor never
// starts from a figure older than an acknowledged keep-alive.
type lessor struct {
	s *Server

	mu        sync.Mutex
	deadline  map[int64]time.Time
	ttl       map[int64]int64 // granted TTL in seconds
	leaderFor uint64          // the term in which this member last became leader; 0 if not leader
	// handing is non-nil while a handover holds renewals back; it is
	// closed when the handover ends.
	handing chan struct{}
	// revoking holds the leases whose revocation is in flight, proposed
	// as leader of leaderFor (at most revokeParallel); revokeStop cancels
	// their waits when that leadership ends.
	revoking   map[int64]bool
	revokeCtx  context.Context
	revokeStop context.CancelFunc
}

func newLessor(s *Server) *lessor {
	return &lessor{s: s, deadline: map[int64]time.Time{}, ttl: map[int64]int64{}}
}

// minTTL is the shortest lease TTL in seconds: etcd's rule, one and a half
// election timeouts rounded up, so a lease cannot expire during an election.
func (l *lessor) minTTL() int64 {
	tick, et := l.s.ticks()
	d := time.Duration(3*et/2) * tick
	return int64(math.Ceil(d.Seconds()))
}

// run checks for expired leases ten times a second while this member leads.
func (l *lessor) run() {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	defer func() {
		l.mu.Lock()
		l.endRevokes()
		l.mu.Unlock()
	}()
	for {
		select {
		case <-l.s.stopc:
			return
		case <-l.s.node.Done():
			return
		case <-t.C:
			l.check()
		}
	}
}

// check syncs the deadlines with the store's leases and revokes expired
// ones. It runs on the lessor goroutine.
func (l *lessor) check() {
	n := l.s.node
	if n.Role() != consensus.Leader || n.Leader() != n.ID() {
		l.mu.Lock()
		l.leaderFor = 0
		l.endRevokes()
		l.mu.Unlock()
		return
	}
	term := n.Term()
	ids := l.s.store.Leases()
	l.mu.Lock()
	// Read under the lock: a keep-alive acknowledged before taking up
	// (renew, below) was then acknowledged before now, so the full TTL
	// from now covers its promise.
	now := time.Now()
	fresh := l.leaderFor != term
	l.leaderFor = term
	var given map[int64]time.Time // the deadlines taking up term gave
	if fresh {
		l.endRevokes() // proposed in an earlier term this member led
		given = make(map[int64]time.Time, len(ids))
	}
	live := make(map[int64]bool, len(ids))
	var expired []int64
	for _, id := range ids {
		live[id] = true
		if sc := l.s.cfg.Shard; sc != nil && uint64(id)>>48 != sc.ID {
			// A copy of a lease homed in another shard (split from it):
			// only the home decides when it expires; its host revokes the
			// copy after (shard/ sweeps them), so a copy never dies first.
			continue
		}
		ttl, _, err := l.s.store.LeaseTimeToLive(id, false)
		if err != nil {
			continue
		}
		l.ttl[id] = ttl
		d, ok := l.deadline[id]
		if fresh || !ok {
			d = now.Add(time.Duration(ttl) * time.Second)
			l.deadline[id] = d
			if fresh {
				given[id] = d
			}
			continue
		}
		if l.s.cfg.Unsafe.LeaseEarlyExpiry {
			d = d.Add(-time.Duration(ttl) * time.Second / 2) // BROKEN ON PURPOSE
		}
		if now.After(d) {
			expired = append(expired, id)
		}
	}
	for id := range l.deadline {
		if !live[id] {
			delete(l.deadline, id)
			delete(l.ttl, id)
		}
	}
	l.mu.Unlock()
	if fresh && len(given) > 0 {
		l.s.wg.Add(1)
		go func() { defer l.s.wg.Done(); l.takeHandOver(term, now, given) }()
	}
	l.revoke(term, expired)
}

// revoke proposes the revocation of the expired leases as the leader of
// term, side by side and without waiting for them: a revocation held up
// by a slow round (or one proposed just before this member lost the term,
// whose entry may never commit) must delay neither the other leases nor
// the next check, which must take up a new term at once. At most
// revokeParallel are in flight; the rest wait for a later check. Only the
// leader of term may revoke on its own clock: a revocation it decided
// before a pause must not be forwarded to (and committed by) the leader
// that replaced it meanwhile (etcd-io/etcd#15247).
func (l *lessor) revoke(term uint64, expired []int64) {
	if len(expired) == 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.leaderFor != term {
		return
	}
	if l.revokeStop == nil {
		l.revokeCtx, l.revokeStop = context.WithCancel(context.Background())
		l.revoking = map[int64]bool{}
	}
	parent := l.revokeCtx
	for _, id := range expired {
		if len(l.revoking) >= revokeParallel {
			return
		}
		if l.revoking[id] {
			continue
		}
		l.revoking[id] = true
		revoking := l.revoking
		ctx, cancel := context.WithTimeout(parent, l.s.requestTimeout())
		l.s.wg.Add(1)
		go func() {
			defer l.s.wg.Done()
			defer cancel()
			err := l.s.proposeAsLeader(ctx, term, &pb.InternalRaftRequest{LeaseRevoke: &pb.LeaseRevokeRequest{ID: id}})
			l.mu.Lock()
			delete(revoking, id)
			l.mu.Unlock()
			switch {
			case errors.Is(err, rpctypes.ErrGRPCNoLeader), parent.Err() != nil:
				// No longer the leader of term: the next leader decides.
			case err != nil && !errors.Is(err, rpctypes.ErrGRPCLeaseNotFound):
				l.s.log.Warn("revoking an expired lease failed; will retry", "lease", id, "err", err)
			default:
				l.s.log.Info("lease expired", "lease", id)
			}
		}()
	}
}

// endRevokes stops waiting for the revocations proposed in the term this
// member led: their entries commit or not without it, and the next leader
// (maybe this member again, in a later term) revokes afresh whatever is
// left. l.mu is held.
func (l *lessor) endRevokes() {
	if l.revokeStop == nil {
		return
	}
	l.revokeStop()
	l.revokeStop, l.revokeCtx, l.revoking = nil, nil, nil
}

// takeHandOver shortens, after taking up term at start, the deadlines of
// the leases a handover recorded a remaining time for: to start + that
// time + an election timeout (as etcd's Promote extends, for the
// keep-alives the handover held back to reach this leader). It first
// applies everything committed before term (a quorum-confirmed read
// barrier), so the store holds every record and every clearing since;
// a lease renewed since start (its deadline no longer the one given) is
// left alone. Taking up itself does not wait for this: a new leader that
// is still catching up must not hold every expiry back meanwhile.
func (l *lessor) takeHandOver(term uint64, start time.Time, given map[int64]time.Time) {
	ctx, cancel := context.WithTimeout(context.Background(), l.s.requestTimeout())
	defer cancel()
	for !l.s.confirmLeader(ctx, term) {
		if ctx.Err() != nil || l.s.node.Term() != term {
			return // full TTLs stand: safe, only later
		}
		t := time.NewTimer(l.electionTimeout() / 4)
		select {
		case <-ctx.Done():
		case <-l.s.stopc:
		case <-t.C:
		}
		t.Stop()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.leaderFor != term {
		return
	}
	for id, d0 := range given {
		rem, err := l.s.store.LeaseCheckpointedTTL(id)
		if err != nil || rem <= 0 || !l.deadline[id].Equal(d0) {
			continue
		}
		if d := start.Add(time.Duration(rem)*time.Second + l.electionTimeout()); d.Before(d0) {
			l.deadline[id] = d
		}
	}
}

// revokeParallel bounds the revocations the lessor has in flight.
const revokeParallel = 32

// renew moves a lease's deadline (ttl seconds from now) on the leader of
// term. It reports expired when the deadline has already passed: the lease
// is being revoked and must not be renewed (etcd answers "not found"
// then), and wait, non-nil, while a handover holds renewals back: the
// caller waits for it to close and tries again. Before the lessor has
// taken up leadership of term (check), renewing needs nothing: taking up
// gives every lease a full TTL from a later moment (and a lease whose
// handed-over time is recorded was cleared through the log first, so
// takeHandOver leaves it at that).
func (l *lessor) renew(id, ttl int64, term uint64) (expired bool, wait <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.handing != nil {
		return false, l.handing
	}
	if l.leaderFor != term {
		return false, nil // taking up gives every lease a full TTL from a later moment
	}
	now := time.Now()
	if d, ok := l.deadline[id]; ok && now.After(d) {
		return true, nil
	}
	l.deadline[id] = now.Add(time.Duration(ttl) * time.Second)
	return false, nil
}

// handOver prepares this member's leadership of the current term to be
// handed away: it holds renewals back, records every lease's remaining
// time in the log (LeaseCheckpoint entries, checkpointBatch leases each)
// and returns a release that lets renewals go on. Release is also called
// on its own after handOverMax, so a transfer that never ends cannot hold
// keep-alives back for long. A member that has not taken up its term
// records nothing (its successor gives full TTLs, which is safe).
func (l *lessor) handOver(ctx context.Context) (release func(), err error) {
	n := l.s.node
	term := n.Term()
	l.mu.Lock()
	if l.handing != nil || l.leaderFor != term || n.Role() != consensus.Leader {
		l.mu.Unlock()
		return func() {}, nil
	}
	ch := make(chan struct{})
	l.handing = ch
	now := time.Now()
	cps := make([]*pb.LeaseCheckpoint, 0, len(l.deadline))
	for id, d := range l.deadline {
		left := max(int64(math.Ceil(d.Sub(now).Seconds())), 1)
		cps = append(cps, &pb.LeaseCheckpoint{ID: id, Remaining_TTL: left})
	}
	l.mu.Unlock()
	var once sync.Once
	end := func() {
		once.Do(func() {
			l.mu.Lock()
			l.handing = nil
			l.mu.Unlock()
			close(ch)
		})
	}
	timer := time.AfterFunc(l.handOverMax(), end)
	release = func() { timer.Stop(); end() }
	sort.Slice(cps, func(i, j int) bool { return cps[i].ID < cps[j].ID })
	for len(cps) > 0 {
		batch := cps[:min(len(cps), checkpointBatch)]
		cps = cps[len(batch):]
		cp := &pb.InternalRaftRequest{LeaseCheckpoint: &pb.LeaseCheckpointRequest{Checkpoints: batch}}
		if err := l.s.proposeAsLeader(ctx, term, cp); err != nil {
			release()
			return func() {}, fmt.Errorf("server: recording the leases' remaining time: %w", err)
		}
	}
	return release, nil
}

// proposeAsLeader proposes r as the leader of term (only that leader may
// append it: never forwarded) and waits for it to apply.
func (s *Server) proposeAsLeader(ctx context.Context, term uint64, r *pb.InternalRaftRequest) error {
	_, err := s.proposeWith(ctx, r,
		func(ctx context.Context, cmd []byte) ([]byte, error) { return s.node.ProposeAsLeader(ctx, term, cmd) })
	return err
}

// checkpointBatch bounds the leases one LeaseCheckpoint entry carries.
const checkpointBatch = 1000

// handOverMax is how long a handover may hold renewals back: two election
// timeouts, past which an engine has abandoned the transfer.
func (l *lessor) handOverMax() time.Duration { return 2 * l.electionTimeout() }

func (l *lessor) electionTimeout() time.Duration {
	tick, et := l.s.ticks()
	return time.Duration(et) * tick
}

// renewed is called by the apply goroutine for a renewal through the log
// (a LeaseCheckpoint with no remaining time).
func (l *lessor) renewed(id int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if ttl, ok := l.ttl[id]; ok && l.leaderFor != 0 {
		if d, ok := l.deadline[id]; ok && time.Now().After(d) {
			return // expired: its revocation is under way
		}
		l.deadline[id] = time.Now().Add(time.Duration(ttl) * time.Second)
	}
}

// remaining returns the seconds left on a lease as the leader sees them,
// or the granted TTL where this member does not know better.
func (l *lessor) remaining(id, granted int64) int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	if d, ok := l.deadline[id]; ok && l.leaderFor != 0 {
		left := int64(math.Ceil(time.Until(d).Seconds()))
		return max(left, 0)
	}
	return granted
}

// leaseServer is etcd's Lease service.
type leaseServer struct {
	pb.UnimplementedLeaseServer
	s *Server
}

func (ls *leaseServer) LeaseGrant(ctx context.Context, r *pb.LeaseGrantRequest) (*pb.LeaseGrantResponse, error) {
	if r.TTL > MaxLeaseTTL {
		return nil, rpctypes.ErrGRPCLeaseTTLTooLarge
	}
	if err := ls.s.refuseWrite(ctx, &pb.InternalRaftRequest{LeaseGrant: r}); err != nil {
		return nil, err
	}
	req := &pb.LeaseGrantRequest{TTL: max(r.TTL, ls.s.less.minTTL()), ID: r.ID}
	if req.ID == 0 {
		// The proposer picks the ID, so that Apply stays deterministic.
		var b [8]byte
		for req.ID <= 0 {
			rand.Read(b[:])
			req.ID = int64(binary.LittleEndian.Uint64(b[:]) >> 1)
		}
	}
	resp, err := ls.s.propose(ctx, &pb.InternalRaftRequest{LeaseGrant: req})
	if err != nil {
		return nil, err
	}
	out := resp.(*pb.LeaseGrantResponse)
	out.Header = ls.s.fillHeader(out.Header)
	return out, nil
}

func (ls *leaseServer) LeaseRevoke(ctx context.Context, r *pb.LeaseRevokeRequest) (*pb.LeaseRevokeResponse, error) {
	resp, err := ls.s.propose(ctx, &pb.InternalRaftRequest{LeaseRevoke: r})
	if err != nil {
		return nil, err
	}
	out := resp.(*pb.LeaseRevokeResponse)
	out.Header = ls.s.fillHeader(out.Header)
	return out, nil
}

func (ls *leaseServer) LeaseTimeToLive(ctx context.Context, r *pb.LeaseTimeToLiveRequest) (*pb.LeaseTimeToLiveResponse, error) {
	if err := ls.s.readBarrier(ctx); err != nil {
		return nil, err
	}
	ttl, keys, err := ls.s.store.LeaseTimeToLive(r.ID, r.Keys)
	if err != nil {
		if errors.Is(err, rpctypes.ErrGRPCLeaseNotFound) {
			return &pb.LeaseTimeToLiveResponse{Header: ls.s.header(0), ID: r.ID, TTL: -1}, nil
		}
		return nil, err
	}
	return &pb.LeaseTimeToLiveResponse{Header: ls.s.header(0), ID: r.ID, TTL: ls.s.less.remaining(r.ID, ttl),
		GrantedTTL: ttl, Keys: keys}, nil
}

func (ls *leaseServer) LeaseLeases(ctx context.Context, r *pb.LeaseLeasesRequest) (*pb.LeaseLeasesResponse, error) {
	if err := ls.s.readBarrier(ctx); err != nil {
		return nil, err
	}
	out := &pb.LeaseLeasesResponse{Header: ls.s.header(0)}
	for _, id := range ls.s.store.Leases() {
		out.Leases = append(out.Leases, &pb.LeaseStatus{ID: id})
	}
	return out, nil
}

// LeaseKeepAlive renews leases for as long as the client streams requests.
func (ls *leaseServer) LeaseKeepAlive(stream pb.Lease_LeaseKeepAliveServer) error {
	for {
		req, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			if status.Code(err) == codes.Canceled {
				return nil
			}
			return err
		}
		ttl, err := ls.keepAliveOnce(stream.Context(), req.ID)
		if err != nil && !errors.Is(err, rpctypes.ErrGRPCLeaseNotFound) {
			return err
		}
		resp := &pb.LeaseKeepAliveResponse{Header: ls.s.header(0), ID: req.ID, TTL: ttl}
		if err := stream.Send(resp); err != nil {
			return nil
		}
	}
}

// keepAliveOnce renews one lease. Only the leader renews, once a quorum
// round has confirmed it still leads (a deposed leader that does not know
// it yet must not promise a TTL its successor will not keep); any other
// member forwards the keep-alive to the leader's client port and hands
// back its answer, as etcd's followers do. A lease that does not exist, or
// whose deadline has passed, gets ErrGRPCLeaseNotFound (TTL 0).
func (ls *leaseServer) keepAliveOnce(ctx context.Context, id int64) (int64, error) {
	s := ls.s
	ctx, cancel := s.requestContext(ctx)
	defer cancel()
	for {
		n := s.node
		if term := n.Term(); n.Role() == consensus.Leader && s.confirmLeader(ctx, term) {
			ttl, _, err := s.store.LeaseTimeToLive(id, false)
			if err != nil {
				return 0, rpctypes.ErrGRPCLeaseNotFound
			}
			if rem, _ := s.store.LeaseCheckpointedTTL(id); rem > 0 {
				// A handover recorded this lease's remaining time: clear
				// it through the log first, or a later leader would start
				// from a figure older than this renewal.
				req := &pb.InternalRaftRequest{LeaseCheckpoint: &pb.LeaseCheckpointRequest{Checkpoints: []*pb.LeaseCheckpoint{{ID: id}}}}
				err := s.proposeAsLeader(ctx, term, req)
				if err != nil && !errors.Is(err, rpctypes.ErrGRPCNoLeader) {
					return 0, err
				}
				if err != nil {
					continue // no longer the leader of term: ask again
				}
			}
			expired, wait := s.less.renew(id, ttl, term)
			if wait != nil {
				select { // a handover is under way: renew after it
				case <-wait:
					continue
				case <-ctx.Done():
					return 0, s.toGRPC(ctx, ctx.Err())
				}
			}
			if expired {
				return 0, rpctypes.ErrGRPCLeaseNotFound
			}
			return ttl, nil
		}
		lead := uint64(n.Leader())
		if lead != 0 && lead != s.id {
			ttl, err := ls.forwardKeepAlive(ctx, lead, id)
			if err == nil || !errors.Is(err, errNoClientURL) {
				return ttl, err
			}
		}
		if err := s.waitLeader(ctx); err != nil {
			return 0, err
		}
		t := time.NewTimer(20 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return 0, s.toGRPC(ctx, ctx.Err())
		case <-t.C:
		}
	}
}

// forwardKeepAlive asks the leader to renew a lease.
func (ls *leaseServer) forwardKeepAlive(ctx context.Context, lead uint64, id int64) (int64, error) {
	conn, err := ls.s.dialMember(lead)
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := pb.NewLeaseClient(conn).LeaseKeepAlive(ctx)
	if err != nil {
		return 0, err
	}
	if err := st.Send(&pb.LeaseKeepAliveRequest{ID: id}); err != nil {
		return 0, err
	}
	resp, err := st.Recv()
	st.CloseSend()
	if err != nil {
		return 0, err
	}
	if resp.TTL <= 0 {
		return 0, rpctypes.ErrGRPCLeaseNotFound
	}
	return resp.TTL, nil
}

// TransferLeadership hands this member's leadership to member to, as
// node.TransferLeadership does, with the leases' remaining time recorded
// first so that the next leader does not give them a full TTL (see
// lessor). Everything that moves leadership on purpose goes through here.
func (s *Server) TransferLeadership(ctx context.Context, to consensus.NodeID) error {
	release, err := s.less.handOver(ctx)
	if err != nil {
		s.log.Warn("leader transfer: the leases' remaining time was not recorded; the next leader gives them a full TTL", "to", fmt.Sprintf("%x", uint64(to)), "err", err)
	}
	defer release()
	return s.node.TransferLeadership(ctx, to)
}

// confirmLeader reports whether this member still leads in term, confirmed
// by a quorum round (etcd's ensureLeadership).
func (s *Server) confirmLeader(ctx context.Context, term uint64) bool {
	n := s.node
	if n.Role() != consensus.Leader || n.Term() != term {
		return false
	}
	return n.ReadBarrier(ctx) == nil && n.Role() == consensus.Leader && n.Term() == term
}
