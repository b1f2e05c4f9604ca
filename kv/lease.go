package kv

import (
	"slices"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// attach records that key (the store's own copy) is attached to lease id.
func (s *Store) attach(id int64, key []byte) {
	if id == 0 {
		return
	}
	if l, ok := s.leases[id]; ok {
		l.keys[string(key)] = struct{}{}
	}
}

func (s *Store) detach(id int64, key []byte) {
	if id == 0 {
		return
	}
	if l, ok := s.leases[id]; ok {
		delete(l.keys, string(key))
	}
}

// LeaseGrant creates a lease with the ID and TTL in req. The ID is chosen
// by the proposer and must be nonzero (ID 0 fails with
// ErrGRPCLeaseNotFound, as etcd's lessor does); an existing ID fails with
// ErrGRPCLeaseExist; a TTL above MaxLeaseTTL fails with
// ErrGRPCLeaseTTLTooLarge. The TTL is kept as given (the server enforces
// the minimum). Granting does not advance the revision.
func (s *Store) LeaseGrant(req *pb.LeaseGrantRequest) (*pb.LeaseGrantResponse, error) {
	id, ttl := req.GetID(), req.GetTTL()
	if id == 0 {
		return nil, rpctypes.ErrGRPCLeaseNotFound
	}
	if ttl > MaxLeaseTTL {
		return nil, rpctypes.ErrGRPCLeaseTTLTooLarge
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.leases[id]; ok {
		return nil, rpctypes.ErrGRPCLeaseExist
	}
	s.leases[id] = &leaseRec{id: id, ttl: ttl, keys: make(map[string]struct{})}
	return &pb.LeaseGrantResponse{Header: &pb.ResponseHeader{Revision: s.rev}, ID: id, TTL: ttl}, nil
}

// LeaseRevoke deletes the lease and every key attached to it, in key
// order, all in one new revision (none if no key was attached).
func (s *Store) LeaseRevoke(req *pb.LeaseRevokeRequest) (*pb.LeaseRevokeResponse, error) {
	id := req.GetID()
	s.mu.Lock()
	l, ok := s.leases[id]
	if !ok {
		s.mu.Unlock()
		return nil, rpctypes.ErrGRPCLeaseNotFound
	}
	keys := sortedKeys(l.keys)
	w := s.beginWrite()
	for _, k := range keys {
		w.del([]byte(k))
	}
	delete(s.leases, id)
	rev, evs := w.end()
	obs := s.observer
	s.mu.Unlock()
	s.notify(obs, rev, evs)
	return &pb.LeaseRevokeResponse{Header: &pb.ResponseHeader{Revision: rev}}, nil
}

// LeaseCheckpoint records the remaining TTL of each listed lease (unknown
// leases are skipped, as in etcd). It does not advance the revision.
func (s *Store) LeaseCheckpoint(req *pb.LeaseCheckpointRequest) (*pb.LeaseCheckpointResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range req.GetCheckpoints() {
		if l, ok := s.leases[c.GetID()]; ok {
			l.remaining = c.GetRemaining_TTL()
		}
	}
	return &pb.LeaseCheckpointResponse{Header: &pb.ResponseHeader{Revision: s.rev}}, nil
}

// LeaseTimeToLive returns the lease's granted TTL and, if keys is true,
// its attached keys in order. An unknown lease gives ErrGRPCLeaseNotFound.
func (s *Store) LeaseTimeToLive(id int64, keys bool) (int64, [][]byte, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	l, ok := s.leases[id]
	if !ok {
		return 0, nil, rpctypes.ErrGRPCLeaseNotFound
	}
	var out [][]byte
	if keys {
		out = [][]byte{}
		for _, k := range sortedKeys(l.keys) {
			out = append(out, []byte(k))
		}
	}
	return l.ttl, out, nil
}

// LeaseCheckpointedTTL returns the remaining TTL last recorded for the
// lease by a LeaseCheckpoint (0 if none).
func (s *Store) LeaseCheckpointedTTL(id int64) (int64, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	l, ok := s.leases[id]
	if !ok {
		return 0, rpctypes.ErrGRPCLeaseNotFound
	}
	return l.remaining, nil
}

// Leases returns the IDs of all leases, sorted.
func (s *Store) Leases() []int64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	ids := make([]int64, 0, len(s.leases))
	for id := range s.leases {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

func sortedKeys(m map[string]struct{}) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
