// Package metrics exports one ballot member's metrics in the Prometheus
// text format (served at /metrics on the member's HTTP port).
//
// A Member is a node.Observer (it counts messages, WAL writes, snapshots,
// proposals and leader changes as the node reports them) and provides
// gRPC interceptors (requests and latencies by method); Watch adds the
// gauges read from a running server (term, leadership, indexes, watchers,
// leases). Each Member has its own prometheus.Registry, never the global
// one, so several members in one process (tests) do not collide.
//
//	m := metrics.New()
//	srv, err := server.Start(ctx, server.Config{..., Observe: m.Observe()})
//	m.Watch(srv)
//	mux.Handle("/metrics", m.Handler())
//
// Names follow Prometheus conventions: the ballot_ prefix, base units
// (seconds, bytes), _total for counters. docs/dashboard.md lists them.
// Every method the node calls is a few atomic adds: it never blocks.
package metrics

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/ballotdb/ballot/consensus"
	"github.com/ballotdb/ballot/node"
	"github.com/ballotdb/ballot/server"
)

// knownTypes bounds the message types whose counters are resolved ahead
// of time (the hot path then does no label lookup).
const knownTypes = 64

// rttGiveUp is how long a heartbeat's answer is waited for before it is
// taken as lost (and the next heartbeat timed instead).
const rttGiveUp = 2 * time.Second

// Member holds one member's metrics.
type Member struct {
	reg *prometheus.Registry

	leaderChanges prometheus.Counter
	propCommitted prometheus.Counter
	propFailed    prometheus.Counter
	walDuration   prometheus.Histogram
	walBytes      prometheus.Histogram
	walErrors     prometheus.Counter
	snapshots     *prometheus.CounterVec
	snapDuration  prometheus.Histogram
	snapBytes     prometheus.Histogram
	membership    prometheus.Counter

	sentVec, recvVec *prometheus.CounterVec
	sent, recv       [knownTypes]prometheus.Counter
	dropped          *prometheus.CounterVec

	grpcRequests *prometheus.CounterVec
	grpcDuration *prometheus.HistogramVec
	grpcStreams  *prometheus.GaugeVec

	// Peer round trips: a leader's heartbeat to a peer, then the peer's
	// answer. One unanswered heartbeat per peer: bounded by the members.
	rtt    *prometheus.HistogramVec
	rttMu  sync.Mutex
	hbSent map[consensus.NodeID]time.Time
}

var _ node.Observer = (*Member)(nil)

// New returns a Member with its own registry, holding the Go runtime and
// process collectors too.
func New() *Member {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	f := func(c prometheus.Collector) { reg.MustRegister(c) }
	m := &Member{reg: reg}
	m.leaderChanges = prometheus.NewCounter(prometheus.CounterOpts{Name: "ballot_leader_changes_total",
		Help: "Times this member saw the leader change to a new, known leader."})
	m.propCommitted = prometheus.NewCounter(prometheus.CounterOpts{Name: "ballot_proposals_committed_total",
		Help: "Proposals made on this member that were committed and applied."})
	m.propFailed = prometheus.NewCounter(prometheus.CounterOpts{Name: "ballot_proposals_failed_total",
		Help: "Proposals made on this member that failed (refused, busy, abandoned by the caller, or stopped)."})
	m.walDuration = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "ballot_wal_fsync_duration_seconds",
		Help:    "Time of one WAL write including its fsync.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)})
	m.walBytes = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "ballot_wal_fsync_bytes",
		Help:    "Entry bytes made durable by one WAL write and fsync.",
		Buckets: prometheus.ExponentialBuckets(64, 4, 10)})
	m.walErrors = prometheus.NewCounter(prometheus.CounterOpts{Name: "ballot_wal_write_errors_total",
		Help: "WAL writes that failed (a full disk is retried; an fsync error stops the member)."})
	m.snapshots = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ballot_snapshots_total",
		Help: "Snapshots made durable, by source (local: taken here; leader: received from the leader)."}, []string{"source"})
	m.snapDuration = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "ballot_snapshot_duration_seconds",
		Help:    "Time to make one snapshot durable.",
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 16)})
	m.snapBytes = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "ballot_snapshot_size_bytes",
		Help:    "Size of each snapshot made durable.",
		Buckets: prometheus.ExponentialBuckets(1024, 4, 12)})
	m.membership = prometheus.NewCounter(prometheus.CounterOpts{Name: "ballot_membership_changes_total",
		Help: "Applied membership changes that altered the membership."})
	m.sentVec = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ballot_messages_sent_total",
		Help: "Consensus messages handed to the transport, by type."}, []string{"type"})
	m.recvVec = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ballot_messages_received_total",
		Help: "Consensus messages received from peers and queued for the engine, by type."}, []string{"type"})
	m.dropped = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ballot_messages_dropped_total",
		Help: "Consensus messages this member dropped, by type and reason."}, []string{"type", "reason"})
	m.grpcRequests = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ballot_grpc_requests_total",
		Help: "gRPC calls handled on the client port, by full method and status code."}, []string{"method", "code"})
	m.grpcDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "ballot_grpc_request_duration_seconds",
		Help:    "Latency of unary gRPC calls on the client port, by full method.",
		Buckets: prometheus.ExponentialBuckets(0.0001, 2.5, 14)}, []string{"method"})
	m.rtt = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "ballot_peer_round_trip_time_seconds",
		Help:    "Time from a leader's heartbeat to a peer until the peer's answer arrives, by peer ID (hex).",
		Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16)}, []string{"peer"})
	m.hbSent = map[consensus.NodeID]time.Time{}
	m.grpcStreams = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "ballot_grpc_streams_open",
		Help: "Open gRPC streams on the client port (Watch, LeaseKeepAlive), by full method."}, []string{"method"})
	for _, c := range []prometheus.Collector{m.leaderChanges, m.propCommitted, m.propFailed, m.walDuration, m.walBytes,
		m.walErrors, m.snapshots, m.snapDuration, m.snapBytes, m.membership, m.sentVec, m.recvVec, m.dropped,
		m.grpcRequests, m.grpcDuration, m.grpcStreams, m.rtt} {
		f(c)
	}
	for i := range knownTypes {
		name := consensus.MessageType(i).String()
		if strings.HasPrefix(name, "MessageType(") || strings.Contains(name, "(") {
			continue // not a type this build knows
		}
		m.sent[i] = m.sentVec.WithLabelValues(name)
		m.recv[i] = m.recvVec.WithLabelValues(name)
	}
	m.snapshots.WithLabelValues("local")
	m.snapshots.WithLabelValues("leader")
	return m
}

// Registry returns the member's registry, to add collectors to it.
func (m *Member) Registry() *prometheus.Registry { return m.reg }

// Handler serves the registry in the Prometheus exposition format.
func (m *Member) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// Observe returns the hooks to put in server.Config.Observe. To add
// another node observer (a dashboard's), combine them with node.Observers.
func (m *Member) Observe() server.Observe {
	return server.Observe{Node: m, Unary: []grpc.UnaryServerInterceptor{m.unary},
		Stream: []grpc.StreamServerInterceptor{m.stream}}
}

// Watch registers the gauges read from a running server. Call it once,
// after server.Start.
func (m *Member) Watch(srv *server.Server) {
	n := srv.Node()
	gauge := func(name, help string, fn func() float64) {
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, fn))
	}
	gauge("ballot_term", "The current term (epoch) this member knows.", func() float64 { return float64(n.Term()) })
	gauge("ballot_is_leader", "1 if this member is the leader, else 0.", func() float64 {
		return b2f(n.Role() == consensus.Leader)
	})
	gauge("ballot_has_leader", "1 if this member knows a leader, else 0.", func() float64 {
		return b2f(n.Leader() != consensus.None)
	})
	gauge("ballot_commit_index", "The highest log index this member knows is committed.", func() float64 {
		return float64(n.LastStatus().Commit)
	})
	gauge("ballot_applied_index", "The last log index applied to the state machine.", func() float64 {
		return float64(n.Applied())
	})
	gauge("ballot_apply_lag_entries", "Committed entries not yet applied (commit index minus applied index).", func() float64 {
		st := n.LastStatus()
		if st.Commit < st.Applied {
			return 0
		}
		return float64(st.Commit - st.Applied)
	})
	gauge("ballot_proposals_pending", "Proposals made on this member waiting for their outcome.", func() float64 {
		return float64(n.PendingProposals())
	})
	gauge("ballot_watchers", "Watchers registered on this member.", func() float64 { return float64(srv.Watchers()) })
	gauge("ballot_leases", "Leases in the store.", func() float64 { return float64(srv.Leases()) })
	gauge("ballot_ready", "1 if this member is ready (as /readyz), else 0.", func() float64 { return b2f(srv.Ready() == nil) })
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// ---- node.Observer ----

// MessageSent counts a message by type.
func (m *Member) MessageSent(msg consensus.Message) {
	if msg.Type == consensus.MsgHeartbeat {
		now := time.Now()
		m.rttMu.Lock()
		// Keep the oldest unanswered heartbeat, unless it is so old that
		// its answer was lost: then time the new one.
		if at, waiting := m.hbSent[msg.To]; !waiting || now.Sub(at) > rttGiveUp {
			m.hbSent[msg.To] = now
		}
		m.rttMu.Unlock()
	}
	if int(msg.Type) < knownTypes && m.sent[msg.Type] != nil {
		m.sent[msg.Type].Inc()
		return
	}
	m.sentVec.WithLabelValues(msg.Type.String()).Inc()
}

// MessageReceived counts a message by type, and observes a peer's round
// trip when it answers a heartbeat.
func (m *Member) MessageReceived(msg consensus.Message) {
	if msg.Type == consensus.MsgHeartbeatResp {
		m.rttMu.Lock()
		sent, ok := m.hbSent[msg.From]
		delete(m.hbSent, msg.From)
		m.rttMu.Unlock()
		if ok {
			m.rtt.WithLabelValues(strconv.FormatUint(uint64(msg.From), 16)).Observe(time.Since(sent).Seconds())
		}
	}
	if int(msg.Type) < knownTypes && m.recv[msg.Type] != nil {
		m.recv[msg.Type].Inc()
		return
	}
	m.recvVec.WithLabelValues(msg.Type.String()).Inc()
}

// MessageDropped counts a dropped message by type and reason.
func (m *Member) MessageDropped(msg consensus.Message, reason string) {
	m.dropped.WithLabelValues(msg.Type.String(), reason).Inc()
}

// StatusChanged counts leader changes.
func (m *Member) StatusChanged(c node.StatusChange) {
	if c.Leader != c.PrevLeader && c.Leader != consensus.None {
		m.leaderChanges.Inc()
	}
}

// WALWritten observes a WAL write's duration and size.
func (m *Member) WALWritten(w node.WALWrite) {
	if w.Err != nil {
		m.walErrors.Inc()
		return
	}
	m.walDuration.Observe(w.Duration.Seconds())
	m.walBytes.Observe(float64(w.Bytes))
}

// SnapshotSaved counts a snapshot and observes its duration and size.
func (m *Member) SnapshotSaved(s node.SnapshotSave) {
	src := "local"
	if s.FromLeader {
		src = "leader"
	}
	m.snapshots.WithLabelValues(src).Inc()
	m.snapDuration.Observe(s.Duration.Seconds())
	m.snapBytes.Observe(float64(s.Bytes))
}

// ProposalDone counts a proposal's outcome.
func (m *Member) ProposalDone(err error) {
	if err == nil {
		m.propCommitted.Inc()
		return
	}
	m.propFailed.Inc()
}

// MembershipChanged counts a membership change.
func (m *Member) MembershipChanged(uint64, consensus.ConfState) { m.membership.Inc() }

// ---- gRPC ----

func (m *Member) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := h(ctx, req)
	m.grpcDuration.WithLabelValues(info.FullMethod).Observe(time.Since(start).Seconds())
	m.grpcRequests.WithLabelValues(info.FullMethod, status.Code(err).String()).Inc()
	return resp, err
}

func (m *Member) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	g := m.grpcStreams.WithLabelValues(info.FullMethod)
	g.Inc()
	err := h(srv, ss)
	g.Dec()
	m.grpcRequests.WithLabelValues(info.FullMethod, status.Code(err).String()).Inc()
	return err
}
