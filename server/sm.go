package server

import (
	"io"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/proto"
)

// leaseCheckpointTag is the first byte of an encoded InternalRaftRequest
// whose first field is lease_checkpoint (field 11, length-delimited): the
// server encodes requests without ID, so a renewal starts with it.
const leaseCheckpointTag = 11<<3 | 2

// stateMachine is what the node replicates: the MVCC store, plus the
// server's view of lease renewals relayed through the log.
type stateMachine struct{ s *Server }

func (m *stateMachine) Apply(index uint64, cmd []byte) []byte {
	if len(cmd) > 0 && cmd[0] == leaseCheckpointTag {
		var r pb.InternalRaftRequest
		if proto.Unmarshal(cmd, &r) == nil && r.LeaseCheckpoint != nil {
			for _, c := range r.LeaseCheckpoint.Checkpoints {
				m.s.less.renewed(c.ID)
			}
		}
	}
	return m.s.store.Apply(index, cmd)
}

func (m *stateMachine) Snapshot(w io.Writer) error { return m.s.store.Snapshot(w) }

func (m *stateMachine) Restore(r io.Reader) error {
	if err := m.s.store.Restore(r); err != nil {
		return err
	}
	m.s.hub.restored()
	return nil
}
