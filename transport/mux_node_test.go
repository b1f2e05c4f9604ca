package transport_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/ballotdb/ballot/consensus"
	"github.com/ballotdb/ballot/internal/testutil"
	"github.com/ballotdb/ballot/node"
	"github.com/ballotdb/ballot/transport"
	"github.com/ballotdb/ballot/vfs"
)

// listSM records the commands it applies.
type listSM struct {
	mu  sync.Mutex
	cmd []string
}

func (s *listSM) Apply(_ uint64, cmd []byte) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cmd = append(s.cmd, string(cmd))
	return nil
}

func (s *listSM) Snapshot(w io.Writer) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return json.NewEncoder(w).Encode(s.cmd)
}

func (s *listSM) Restore(r io.Reader) error {
	var cmd []string
	if err := json.NewDecoder(r).Decode(&cmd); err != nil {
		return err
	}
	s.mu.Lock()
	s.cmd = cmd
	s.mu.Unlock()
	return nil
}

func (s *listSM) commands() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.cmd...)
}

// TestMuxCarriesNodeGroups: three hosts each run a member of three Raft
// groups, every group's transport a Group of its host's Mux, as
// node.Config.NewTransport is meant to be used. Each group elects a leader
// and applies its own commands, and only its own, on every member.
func TestMuxCarriesNodeGroups(t *testing.T) {
	hosts := []consensus.NodeID{1, 2, 3}
	groups := []uint64{101, 102, 103}
	muxes := map[consensus.NodeID]*transport.Mux{}
	peers := map[consensus.NodeID]string{}
	for _, id := range hosts {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		m, err := transport.NewMux(transport.Config{ID: id, ClusterID: 7, Listener: ln,
			BackoffMin: 5 * time.Millisecond, BackoffMax: 50 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		muxes[id], peers[id] = m, m.Addr().String()
	}
	type member struct {
		n  *node.Node
		sm *listSM
	}
	members := map[uint64][]member{}
	for _, g := range groups {
		for _, id := range hosts {
			mux := muxes[id]
			sm := &listSM{}
			n, err := node.Start(context.Background(), node.Config{
				ID: id, ClusterID: g, Peers: peers, DataDir: "/data", FS: vfs.NewMem(), WALSegmentBytes: 256 << 10,
				NewTransport: func(h transport.Handler) (transport.Transport, error) { return mux.Group(g, h) },
				TickInterval: 10 * time.Millisecond, ElectionTicks: 10, HeartbeatTicks: 1,
				Seed: uint64(id)*7919 + g,
			}, sm)
			if err != nil {
				t.Fatal(err)
			}
			defer n.Stop()
			members[g] = append(members[g], member{n, sm})
		}
	}
	// Propose through whichever member leads the group at the time; a
	// proposal cut short by an election is tried again (a duplicate is
	// harmless here: only each command's group is checked).
	for _, g := range groups {
		for i := range 5 {
			cmd := fmt.Appendf(nil, "g%d-%d", g, i)
			testutil.Eventually(t, 20*time.Second, func() bool {
				for _, m := range members[g] {
					if m.n.Leader() == m.n.ID() {
						ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
						defer cancel()
						_, err := m.n.Propose(ctx, cmd)
						return err == nil
					}
				}
				return false
			}, "group %d: proposal %d never applied on a leader", g, i)
		}
	}
	for _, g := range groups {
		for _, m := range members[g] {
			testutil.Eventually(t, 20*time.Second, func() bool { return len(m.sm.commands()) >= 5 },
				"group %d member %d applied %v", g, m.n.ID(), m.sm.commands())
			for _, c := range m.sm.commands() {
				var got uint64
				if _, err := fmt.Sscanf(c, "g%d-", &got); err != nil || got != g {
					t.Fatalf("group %d member %d applied %q", g, m.n.ID(), c)
				}
			}
		}
	}
	for _, id := range hosts {
		if st := muxes[id].Stats(); st.Groups != len(groups) || st.Peers != len(hosts)-1 {
			t.Fatalf("host %d: %+v", id, st)
		}
	}
}
