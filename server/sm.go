package server

import (
	"io"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/proto"
)

// stateMachine is what the node replicates: the MVCC store, whose apply
// hook (see applyHook) also lets the server keep replicated state of its
// own (member attributes, alarms) and notice relayed lease renewals.
type stateMachine struct{ s *Server }

func (m *stateMachine) Apply(index uint64, cmd []byte) []byte {
	if len(cmd) > 0 && cmd[0] == internalMarker {
		return m.s.applyInternal(index, cmd)
	}
	return m.s.store.Apply(index, cmd)
}

func (m *stateMachine) Snapshot(w io.Writer) error { return m.s.store.Snapshot(w) }

func (m *stateMachine) Restore(r io.Reader) error {
	if err := m.s.store.Restore(r); err != nil {
		return err
	}
	m.s.loadRange()
	m.s.loadTxn()
	m.s.hub.restored()
	return nil
}

// applyHook sees every replicated request before the store applies it:
// requests about the cluster rather than the keyspace are handled here,
// the rest go on to the store. It runs on the apply goroutine and must be
// deterministic.
func (s *Server) applyHook(r *pb.InternalRaftRequest) (proto.Message, error, bool) {
	if err := s.applyGuard(r); err != nil {
		return nil, err, true // refused by an active alarm: see quota.go
	}
	switch {
	case r.LeaseCheckpoint != nil:
		for _, c := range r.LeaseCheckpoint.Checkpoints {
			if c.Remaining_TTL == 0 {
				s.less.renewed(c.ID) // a renewal; otherwise a handover's record
			}
		}
		return nil, nil, false // the store records the checkpoint too
	case r.LeaseRevoke != nil && s.cfg.Shard != nil && s.cfg.Shard.OnLeaseRevoked != nil:
		s.cfg.Shard.OnLeaseRevoked(r.LeaseRevoke.ID)
		return nil, nil, false // the store revokes it
	case r.ClusterMemberAttrSet != nil:
		return s.applyMemberAttrs(r.ClusterMemberAttrSet)
	case r.Alarm != nil:
		return s.applyAlarm(r.Alarm)
	}
	return nil, nil, false
}
