package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/membershippb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/ballotdb/ballot/consensus"
	"github.com/ballotdb/ballot/node"
)

// Membership.
//
// Who is a member, and whether it votes, is the engine's configuration,
// changed through the log by the node (AddLearner, PromoteMember,
// RemoveMember). Where a member listens for peers travels with the change
// (the node's address book). What the engine does not know, a member's name
// and client URLs, each member publishes itself once it runs, as etcd does:
// a ClusterMemberAttrSet request through the log, kept in the store's meta
// under "member/<ID, 16 hex digits>", so every member lists every other
// member's client URLs, and a snapshot carries them.
//
// IDs. A member's ID derives from the cluster token and its peer address
// (MemberIDFor), the cluster's from the token (ClusterIDFor). A member
// added at runtime therefore computes its own ID from its --initial-cluster
// entry without asking anyone, and a cluster member ID is stable across
// restarts. The cost: a removed member's peer address cannot be reused
// under the same token (IDs are never reused), and MemberAdd says so.
//
// Membership changes run on the leader. A member that is not the leader
// forwards the request to the leader's client URL, so etcdctl may talk to
// any member. Removing the leader first moves leadership to the most
// caught-up voter.
const memberPrefix = "member/"

func memberKey(id uint64) string { return fmt.Sprintf("%s%016x", memberPrefix, id) }

// memberAttrs returns what member id published about itself, if anything.
func (s *Server) memberAttrs(id uint64) *membershippb.Attributes {
	b := s.store.Meta(memberKey(id))
	if b == nil {
		return nil
	}
	var a membershippb.Attributes
	if proto.Unmarshal(b, &a) != nil {
		return nil
	}
	return &a
}

// applyMemberAttrs records a member's published name and client URLs.
func (s *Server) applyMemberAttrs(r *membershippb.ClusterMemberAttrSetRequest) (proto.Message, error, bool) {
	if r.Member_ID == 0 || r.MemberAttributes == nil {
		return nil, rpctypes.ErrGRPCMemberNotFound, true
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(r.MemberAttributes)
	if err != nil {
		return nil, rpctypes.ErrGRPCMemberBadURLs, true
	}
	s.store.SetMeta(memberKey(r.Member_ID), b)
	return nil, nil, true
}

// members lists the current members, voters first, each in ID order, with
// what is known of their names and URLs.
func (s *Server) members() []*pb.Member {
	st := s.node.Status()
	book := s.node.PeerAddrs()
	scheme := s.peerScheme()
	var out []*pb.Member
	add := func(id consensus.NodeID, learner bool) {
		m := &pb.Member{ID: uint64(id), IsLearner: learner}
		if addr := book[id]; addr != "" {
			m.PeerURLs = []string{scheme + "://" + addr}
		}
		if a := s.memberAttrs(uint64(id)); a != nil {
			m.Name, m.ClientURLs = a.Name, slices.Clone(a.ClientUrls)
		} else if uint64(id) == s.id {
			m.Name, m.ClientURLs = s.cfg.Name, s.clientURLs()
		}
		out = append(out, m)
	}
	for _, id := range slices.Sorted(slices.Values(st.ConfState.Voters)) {
		add(id, false)
	}
	for _, id := range slices.Sorted(slices.Values(st.ConfState.Learners)) {
		add(id, true)
	}
	return out
}

// member returns the member with the given ID, or nil.
func (s *Server) member(id uint64) *pb.Member {
	for _, m := range s.members() {
		if m.ID == id {
			return m
		}
	}
	return nil
}

func (s *Server) peerScheme() string {
	if s.cfg.PeerTLS {
		return "https"
	}
	return "http"
}

// clientURLs are the URLs this member advertises to clients.
func (s *Server) clientURLs() []string {
	if len(s.cfg.AdvertiseClientURLs) > 0 {
		return slices.Clone(s.cfg.AdvertiseClientURLs)
	}
	scheme := "http"
	if s.clientTLSEnabled() {
		scheme = "https"
	}
	addr := s.cfg.ClientListener.Addr().String()
	if host, port, err := net.SplitHostPort(addr); err == nil {
		if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
			// Listening on every interface: advertise the host this
			// member's peers reach it at.
			if peerHost, _, err := net.SplitHostPort(s.cfg.InitialCluster[s.cfg.Name]); err == nil && peerHost != "" {
				addr = net.JoinHostPort(peerHost, port)
			}
		}
	}
	return []string{scheme + "://" + addr}
}

// publish makes this member's name and client URLs known to the cluster
// (once the store's copy differs), retrying until it succeeds or the
// server stops.
func (s *Server) publish() {
	want := &membershippb.Attributes{Name: s.cfg.Name, ClientUrls: s.clientURLs()}
	backoff := 100 * time.Millisecond
	for {
		if a := s.memberAttrs(s.id); a != nil && proto.Equal(a, want) {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := s.waitLeader(ctx)
		if err == nil {
			_, err = s.propose(ctx, &pb.InternalRaftRequest{ClusterMemberAttrSet: &membershippb.ClusterMemberAttrSetRequest{
				Member_ID: s.id, MemberAttributes: want}})
		}
		cancel()
		if err == nil {
			s.log.Info("published member attributes", "name", want.Name, "client_urls", strings.Join(want.ClientUrls, ","))
			continue // check the applied copy
		}
		t := time.NewTimer(backoff)
		select {
		case <-s.stopc:
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// peerAddr parses one peer URL (or bare host:port) into host:port.
func peerAddr(raw string) (string, error) {
	if !strings.Contains(raw, "://") {
		raw = "http://" + raw
	}
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || u.Port() == "" || (u.Path != "" && u.Path != "/") {
		return "", rpctypes.ErrGRPCMemberBadURLs
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", rpctypes.ErrGRPCMemberBadURLs
	}
	return u.Host, nil
}

// onePeerAddr checks a request's peer URLs: ballot members listen on one
// peer address.
func onePeerAddr(urls []string) (string, error) {
	if len(urls) != 1 {
		return "", rpctypes.ErrGRPCMemberBadURLs
	}
	return peerAddr(urls[0])
}

// Cluster service.

type clusterServer struct {
	pb.UnimplementedClusterServer
	s *Server
}

func (c *clusterServer) MemberList(ctx context.Context, r *pb.MemberListRequest) (*pb.MemberListResponse, error) {
	if r.Linearizable {
		if err := c.s.readBarrier(ctx); err != nil {
			return nil, err
		}
	}
	return &pb.MemberListResponse{Header: c.s.header(0), Members: c.s.members()}, nil
}

func (c *clusterServer) MemberAdd(ctx context.Context, r *pb.MemberAddRequest) (*pb.MemberAddResponse, error) {
	s := c.s
	addr, err := onePeerAddr(r.PeerURLs)
	if err != nil {
		return nil, err
	}
	id := MemberIDFor(s.cfg.ClusterToken, addr)
	for _, m := range s.members() {
		if m.ID == id {
			return nil, rpctypes.ErrGRPCMemberExist
		}
		for _, u := range m.PeerURLs {
			if a, err := peerAddr(u); err == nil && a == addr {
				return nil, rpctypes.ErrGRPCPeerURLExist
			}
		}
	}
	err = s.onLeader(ctx, func(ctx context.Context, n *node.Node) error {
		if r.IsLearner {
			return n.AddLearner(ctx, consensus.NodeID(id), addr)
		}
		return n.AddMember(ctx, consensus.NodeID(id), addr)
	}, func(ctx context.Context, cl pb.ClusterClient) error {
		_, err := cl.MemberAdd(ctx, r)
		return err
	})
	if err != nil {
		return nil, s.memberErr(ctx, id, err)
	}
	if err := s.waitMember(ctx, id, true); err != nil {
		return nil, err
	}
	return &pb.MemberAddResponse{Header: s.header(0), Member: &pb.Member{ID: id, PeerURLs: slices.Clone(r.PeerURLs), IsLearner: r.IsLearner},
		Members: s.members()}, nil
}

func (c *clusterServer) MemberRemove(ctx context.Context, r *pb.MemberRemoveRequest) (*pb.MemberRemoveResponse, error) {
	s := c.s
	target, err := s.memberSeen(ctx, r.ID)
	if err != nil {
		return nil, err
	}
	if !target.IsLearner {
		voters := 0
		for _, m := range s.members() {
			if !m.IsLearner {
				voters++
			}
		}
		if voters == 1 {
			return nil, rpctypes.ErrGRPCMemberNotEnoughStarted
		}
	}
	err = s.onLeader(ctx, func(ctx context.Context, n *node.Node) error {
		if uint64(n.ID()) == r.ID {
			// Removing the leader: hand leadership away first, then
			// let the new leader remove this member.
			to := s.transfereeExcept(r.ID)
			if to == 0 {
				return rpctypes.ErrGRPCMemberNotEnoughStarted
			}
			if err := s.TransferLeadership(ctx, consensus.NodeID(to)); err != nil {
				return err
			}
			return errRetryOnLeader
		}
		return n.RemoveMember(ctx, consensus.NodeID(r.ID))
	}, func(ctx context.Context, cl pb.ClusterClient) error {
		_, err := cl.MemberRemove(ctx, r)
		return err
	})
	if err != nil {
		return nil, s.memberErr(ctx, r.ID, err)
	}
	if r.ID != s.id {
		if err := s.waitMember(ctx, r.ID, false); err != nil {
			return nil, err
		}
	}
	return &pb.MemberRemoveResponse{Header: s.header(0), Members: s.members()}, nil
}

func (c *clusterServer) MemberPromote(ctx context.Context, r *pb.MemberPromoteRequest) (*pb.MemberPromoteResponse, error) {
	s := c.s
	m, err := s.memberSeen(ctx, r.ID)
	if err != nil {
		return nil, err
	}
	if !m.IsLearner {
		return nil, rpctypes.ErrGRPCMemberNotLearner
	}
	err = s.onLeader(ctx, func(ctx context.Context, n *node.Node) error {
		return n.PromoteMember(ctx, consensus.NodeID(r.ID))
	}, func(ctx context.Context, cl pb.ClusterClient) error {
		_, err := cl.MemberPromote(ctx, r)
		return err
	})
	if err != nil {
		return nil, s.memberErr(ctx, r.ID, err)
	}
	return &pb.MemberPromoteResponse{Header: s.header(0), Members: s.members()}, nil
}

// memberSeen returns member id, or ErrGRPCMemberNotFound once a read
// barrier shows this member has applied everything committed before the
// request: a member that has not yet applied an addition must not answer
// "not found" for a member the client was just told exists.
func (s *Server) memberSeen(ctx context.Context, id uint64) (*pb.Member, error) {
	if m := s.member(id); m != nil {
		return m, nil
	}
	if err := s.readBarrier(ctx); err != nil {
		return nil, err
	}
	if m := s.member(id); m != nil {
		return m, nil
	}
	return nil, rpctypes.ErrGRPCMemberNotFound
}

// MemberUpdate changes where a member listens for peers: the new address
// travels through the log like an added member's.
func (c *clusterServer) MemberUpdate(ctx context.Context, r *pb.MemberUpdateRequest) (*pb.MemberUpdateResponse, error) {
	s := c.s
	if _, err := s.memberSeen(ctx, r.ID); err != nil {
		return nil, err
	}
	addr, err := onePeerAddr(r.PeerURLs)
	if err != nil {
		return nil, err
	}
	for _, o := range s.members() {
		for _, u := range o.PeerURLs {
			if a, err := peerAddr(u); err == nil && a == addr && o.ID != r.ID {
				return nil, rpctypes.ErrGRPCPeerURLExist
			}
		}
	}
	err = s.onLeader(ctx, func(ctx context.Context, n *node.Node) error {
		return n.UpdatePeerAddr(ctx, consensus.NodeID(r.ID), addr)
	}, func(ctx context.Context, cl pb.ClusterClient) error {
		_, err := cl.MemberUpdate(ctx, r)
		return err
	})
	if err != nil {
		return nil, s.memberErr(ctx, r.ID, err)
	}
	return &pb.MemberUpdateResponse{Header: s.header(0), Members: s.members()}, nil
}

// errRetryOnLeader: leadership moved on purpose; run the step again on the
// new leader.
var errRetryOnLeader = errors.New("server: leadership moved; retry on the new leader")

// onLeader runs local on this member's node if it leads, or remote against
// the leader's client URL otherwise, until one of them answers or ctx
// ends. A leader change in between is retried.
func (s *Server) onLeader(ctx context.Context, local func(context.Context, *node.Node) error, remote func(context.Context, pb.ClusterClient) error) error {
	ctx, cancel := s.requestContext(ctx)
	defer cancel()
	for {
		if err := s.waitLeader(ctx); err != nil {
			return err
		}
		lead := uint64(s.node.Leader())
		var err error
		if lead == s.id {
			err = local(ctx, s.node)
		} else {
			err = s.forward(ctx, lead, remote)
		}
		switch {
		case err == nil:
			return nil
		case errors.Is(err, errRetryOnLeader), errors.Is(err, node.ErrNotLeader), errors.Is(err, consensus.ErrProposalDropped),
			errors.Is(err, rpctypes.ErrGRPCNoLeader), errors.Is(err, rpctypes.ErrGRPCLeaderChanged), errors.Is(err, errNoClientURL):
		default:
			return err
		}
		t := time.NewTimer(50 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

var errNoClientURL = errors.New("server: the leader has not published its client URL yet")

// forward calls the leader's Cluster service.
func (s *Server) forward(ctx context.Context, lead uint64, call func(context.Context, pb.ClusterClient) error) error {
	conn, err := s.dialMember(lead)
	if err != nil {
		return err
	}
	return call(ctx, pb.NewClusterClient(conn))
}

// memberConns caches one gRPC connection per member, for forwarding and
// the consistency check.
type memberConns struct {
	mu    sync.Mutex
	conns map[uint64]*grpc.ClientConn
	urls  map[uint64]string
}

// GroupHeader is the gRPC metadata key that names the group a member's
// call to another member is for (see Config.GroupTag).
const GroupHeader = "ballot-group"

// dialMember returns a connection to member id's first client URL. The
// connection is cached and replaced when the URL changes; Stop closes
// them all.
func (s *Server) dialMember(id uint64) (*grpc.ClientConn, error) {
	m := s.member(id)
	if m == nil || len(m.ClientURLs) == 0 {
		return nil, errNoClientURL
	}
	raw := m.ClientURLs[0]
	mc := &s.mconns
	mc.mu.Lock()
	defer mc.mu.Unlock()
	if c := mc.conns[id]; c != nil && mc.urls[id] == raw {
		return c, nil
	} else if c != nil {
		c.Close()
	}
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("server: member %x has a bad client URL %q", id, raw)
	}
	creds := grpc.WithTransportCredentials(insecure.NewCredentials())
	if u.Scheme == "https" {
		tc, err := s.memberClientTLS()
		if err != nil {
			return nil, err
		}
		creds = grpc.WithTransportCredentials(tc)
	}
	opts := []grpc.DialOption{creds}
	if tag := s.cfg.GroupTag; tag != "" {
		opts = append(opts, grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, inv grpc.UnaryInvoker, o ...grpc.CallOption) error {
			return inv(metadata.AppendToOutgoingContext(ctx, GroupHeader, tag), method, req, reply, cc, o...)
		}), grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, str grpc.Streamer, o ...grpc.CallOption) (grpc.ClientStream, error) {
			return str(metadata.AppendToOutgoingContext(ctx, GroupHeader, tag), desc, cc, method, o...)
		}))
	}
	c, err := grpc.NewClient(u.Host, opts...)
	if err != nil {
		return nil, fmt.Errorf("server: dial member %x at %s: %w", id, raw, err)
	}
	if mc.conns == nil {
		mc.conns, mc.urls = map[uint64]*grpc.ClientConn{}, map[uint64]string{}
	}
	mc.conns[id], mc.urls[id] = c, raw
	return c, nil
}

func (mc *memberConns) close() {
	mc.mu.Lock()
	defer mc.mu.Unlock()
	for _, c := range mc.conns {
		c.Close()
	}
	mc.conns, mc.urls = nil, nil
}

// waitMember waits until this member's view has (present) or lacks
// member id, so that a response's member list shows the change.
func (s *Server) waitMember(ctx context.Context, id uint64, present bool) error {
	ctx, cancel := s.requestContext(ctx)
	defer cancel()
	for {
		if (s.member(id) != nil) == present {
			return nil
		}
		t := time.NewTimer(20 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return rpctypes.ErrGRPCTimeout
		case <-t.C:
		}
	}
}

// transfereeExcept picks the voter, other than id, that is most caught up
// (by the leader's progress), or 0.
func (s *Server) transfereeExcept(id uint64) uint64 {
	st := s.node.Status()
	var best uint64
	var bestMatch uint64
	for _, v := range st.ConfState.Voters {
		if uint64(v) == id {
			continue
		}
		match := st.Progress[v].Match
		if best == 0 || match > bestMatch {
			best, bestMatch = uint64(v), match
		}
	}
	return best
}

// memberErr maps a membership failure to etcd's error.
func (s *Server) memberErr(ctx context.Context, id uint64, err error) error {
	if st, ok := status.FromError(err); ok && st.Code() != codes.Unknown {
		return err // an etcd error, from the leader we forwarded to
	}
	switch {
	case errors.Is(err, consensus.ErrLearnerNotReady):
		return rpctypes.ErrGRPCLearnerNotReady
	case errors.Is(err, consensus.ErrIDRemoved):
		return fmt.Errorf("%w (member %x was removed and its ID, derived from its peer address, is never reused: use another peer address)",
			rpctypes.ErrGRPCMemberExist, id)
	case errors.Is(err, consensus.ErrInvalidConfChange):
		s.log.Warn("membership change refused", "member", fmt.Sprintf("%x", id), "err", err)
		return rpctypes.ErrGRPCMemberNotEnoughStarted
	}
	return s.toGRPC(ctx, err)
}

// MoveLeader hands leadership to another voter (Maintenance service).
func (m *maintenanceServer) MoveLeader(ctx context.Context, r *pb.MoveLeaderRequest) (*pb.MoveLeaderResponse, error) {
	s := m.s
	if uint64(s.node.Leader()) != s.id {
		return nil, rpctypes.ErrGRPCNotLeader
	}
	t := s.member(r.TargetID)
	if t == nil || t.IsLearner {
		return nil, rpctypes.ErrGRPCBadLeaderTransferee
	}
	if r.TargetID == s.id {
		return &pb.MoveLeaderResponse{Header: s.header(0)}, nil
	}
	ctx, cancel := s.requestContext(ctx)
	defer cancel()
	if err := s.TransferLeadership(ctx, consensus.NodeID(r.TargetID)); err != nil {
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
			return nil, s.toGRPC(ctx, err)
		}
		s.log.Warn("leader transfer failed", "to", fmt.Sprintf("%x", r.TargetID), "err", err)
		return nil, rpctypes.ErrGRPCTimeoutDueToLeaderFail
	}
	return &pb.MoveLeaderResponse{Header: s.header(0)}, nil
}

// clientTLSEnabled says the client port speaks TLS.
func (s *Server) clientTLSEnabled() bool { return s.ClientTLS() }

// memberClientTLS is what this member presents when it calls another
// member's client port (see clientTLSCredentials).
func (s *Server) memberClientTLS() (credentials.TransportCredentials, error) {
	if c := s.clientTLSCredentials(); c != nil {
		return c, nil
	}
	return nil, errors.New("server: a member's client URL is https but this member has no client TLS configured")
}
