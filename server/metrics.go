package server

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/ballotdb/ballot/consensus"
	"github.com/ballotdb/ballot/kv"
	"github.com/ballotdb/ballot/node"
)

// Observe hooks metrics and dashboards into a member (see package metrics
// and package web): the node's events and interceptors around every gRPC
// call. The zero value observes nothing.
type Observe struct {
	// Node is told what the consensus node does; it must never block.
	Node node.Observer
	// Unary and Stream wrap every gRPC call on the client port, in order.
	Unary  []grpc.UnaryServerInterceptor
	Stream []grpc.StreamServerInterceptor
}

// ReadyMaxApplyLag is how many committed entries a member may still have
// to apply and be ready (see Ready).
const ReadyMaxApplyLag = 1000

// Ready reports why this member should not take traffic, or nil: it must
// be running, a member of a group that has a leader, and have applied all
// but at most ReadyMaxApplyLag of the entries it knows are committed.
// It is cheap (no round trip to the engine): /readyz and the gRPC health
// service call it.
func (s *Server) Ready() error {
	select {
	case <-s.node.Done():
		return errors.New("stopped")
	default:
	}
	st := s.node.LastStatus()
	id := consensus.NodeID(s.id)
	if !slices.Contains(st.ConfState.Voters, id) && !slices.Contains(st.ConfState.Learners, id) &&
		!slices.Contains(st.ConfState.VotersOutgoing, id) {
		return errors.New("not a member of the group (yet)")
	}
	if st.Leader == consensus.None {
		return errors.New("no leader")
	}
	if st.Commit > st.Applied && st.Commit-st.Applied > ReadyMaxApplyLag {
		return fmt.Errorf("catching up: %d committed entries not applied yet", st.Commit-st.Applied)
	}
	return nil
}

// Watchers returns the number of watchers registered on this member.
func (s *Server) Watchers() int {
	s.hub.mu.Lock()
	defer s.hub.mu.Unlock()
	return len(s.hub.all)
}

// Leases returns the number of leases in the store.
func (s *Server) Leases() int { return len(s.store.Leases()) }

// StoreStats walks the store and returns its key count and size (never
// values): for dashboards, which should call it sparingly.
func (s *Server) StoreStats() kv.Stats { return s.store.Stats() }

// Alarms returns the active alarms, as "<member ID in hex>:<alarm type>".
func (s *Server) Alarms() []string {
	var out []string
	for _, a := range s.alarms() {
		out = append(out, fmt.Sprintf("%x:%s", a.MemberID, a.Alarm))
	}
	return out
}

// registerHealth serves the gRPC health service (grpc.health.v1) on the
// client port: the whole server ("") is SERVING while Ready says so,
// checked every half second until the server or its node stops.
func (s *Server) registerHealth() {
	hs := health.NewServer()
	healthpb.RegisterHealthServer(s.grpc, hs)
	set := func() {
		st := healthpb.HealthCheckResponse_SERVING
		if s.Ready() != nil {
			st = healthpb.HealthCheckResponse_NOT_SERVING
		}
		hs.SetServingStatus("", st)
	}
	set()
	go func() {
		t := time.NewTicker(500 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-s.stopc:
				hs.Shutdown()
				return
			case <-s.node.Done():
				hs.Shutdown()
				return
			case <-t.C:
				set()
			}
		}
	}()
}
