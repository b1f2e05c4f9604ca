package server

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/ballotdb/ballot/consensus"
)

// The consistency check.
//
// Every Config.CorruptCheckTime the leader picks one revision (its current
// one), hashes its own history up to it (kv.Store.HashKV) and asks every
// other member for HashKV at the same revision over the Maintenance service
// of its client port. A member that has not applied the revision yet is
// asked again until it has, within a bound; a member at another compact
// revision (it has not applied the same compaction yet) is left out of this
// round. Then the hashes are compared: when a strict majority of the
// cluster's members agree, every member with another hash is corrupt; with
// no majority but every member's answer, the members that differ from the
// leader are (etcd's rule); otherwise the round decides nothing. For each
// corrupt member the leader raises CORRUPT through the log, naming it, and
// logs the members, the revision and the hashes. While CORRUPT is active
// the cluster refuses writes (see quota.go) until an operator, having
// replaced the member's data, disarms it.

// DefaultCorruptCheckTime is how often the leader compares the members'
// hashes when Config.CorruptCheckTime is 0.
const DefaultCorruptCheckTime = 5 * time.Minute

func (s *Server) corruptCheckTime() time.Duration {
	switch d := s.cfg.CorruptCheckTime; {
	case d == 0:
		return DefaultCorruptCheckTime
	case d < 0:
		return 0
	default:
		return d
	}
}

// memberHash is one member's answer to a consistency check.
type memberHash struct {
	id         uint64
	hash       uint32
	compactRev int64
}

// checkCorruption runs one round of the consistency check, on the leader
// only. It returns the members it found corrupt.
func (s *Server) checkCorruption(ctx context.Context) []uint64 {
	defer s.maint.corruptRounds.Add(1)
	if s.node.Role() != consensus.Leader {
		return nil
	}
	own, crev, rev, err := s.store.HashKV(0)
	if err != nil {
		s.log.Warn("consistency check: hashing local state failed", "err", err)
		return nil
	}
	answers := []memberHash{{id: s.id, hash: own, compactRev: crev}}
	members := s.members()
	for _, m := range members {
		if m.ID == s.id {
			continue
		}
		a, err := s.memberHashKV(ctx, m.ID, rev)
		switch {
		case err != nil:
			s.log.Warn("consistency check: no hash from member", "peer", fmt.Sprintf("%x", m.ID), "revision", rev, "err", err)
			continue
		case a.compactRev != crev:
			s.log.Info("consistency check: member at another compact revision, left out of this round",
				"peer", fmt.Sprintf("%x", m.ID), "revision", rev, "compact_revision", a.compactRev, "leader_compact_revision", crev)
			continue
		}
		answers = append(answers, a)
	}
	var desc []string
	for _, a := range answers {
		desc = append(desc, fmt.Sprintf("%x=%d", a.id, a.hash))
	}
	bad, decided := corruptMembers(answers, s.id, len(members))
	if !decided {
		s.log.Warn("consistency check: hashes differ but too few members answered to tell which is wrong; the next round decides",
			"revision", rev, "compact_revision", crev, "hashes", strings.Join(desc, " "))
		return nil
	}
	if len(bad) == 0 {
		s.log.Debug("consistency check passed", "revision", rev, "members", len(answers), "hash", own)
		return nil
	}
	corrupt, _ := s.activeAlarmsFor(bad)
	for _, id := range bad {
		s.log.Error("consistency check: member's hash differs: raising CORRUPT", "peer", fmt.Sprintf("%x", id), "revision", rev,
			"compact_revision", crev, "hashes", strings.Join(desc, " "))
		if corrupt[id] {
			continue
		}
		if err := s.raiseAlarm(ctx, id, pb.AlarmType_CORRUPT); err != nil {
			s.log.Warn("raising CORRUPT failed; the next round retries", "peer", fmt.Sprintf("%x", id), "err", err)
		}
	}
	return bad
}

// memberHashKV asks member id for HashKV at rev, asking again while the
// member has not applied rev yet.
func (s *Server) memberHashKV(ctx context.Context, id uint64, rev int64) (memberHash, error) {
	ctx, cancel := context.WithTimeout(ctx, s.requestTimeout())
	defer cancel()
	conn, err := s.dialMember(id)
	if err != nil {
		return memberHash{}, err
	}
	cli := pb.NewMaintenanceClient(conn)
	for {
		resp, err := cli.HashKV(ctx, &pb.HashKVRequest{Revision: rev})
		if err == nil {
			return memberHash{id: id, hash: resp.Hash, compactRev: resp.CompactRevision}, nil
		}
		if rpctypes.ErrorDesc(err) != rpctypes.ErrorDesc(rpctypes.ErrGRPCFutureRev) {
			return memberHash{}, fmt.Errorf("server: HashKV(%d) on member %x: %w", rev, id, err)
		}
		t := time.NewTimer(20 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return memberHash{}, fmt.Errorf("server: member %x did not reach revision %d: %w", id, rev, ctx.Err())
		case <-t.C:
		}
	}
}

// corruptMembers decides who is corrupt from the answers (all at one
// compact revision) of a cluster of size members: those outside a hash held
// by a strict majority of the cluster; with no such majority, when every
// member answered, those that differ from the leader. Sorted by ID.
// decided is false when the answers disagree but cannot tell who is wrong
// (no majority, and some members did not answer).
func corruptMembers(answers []memberHash, leader uint64, members int) (bad []uint64, decided bool) {
	count := map[uint32]int{}
	var leaderHash uint32
	for _, a := range answers {
		count[a.hash]++
		if a.id == leader {
			leaderHash = a.hash
		}
	}
	if len(count) <= 1 {
		return nil, true
	}
	good, found := leaderHash, false
	for h, n := range count {
		if 2*n > members {
			good, found = h, true
		}
	}
	if !found && len(answers) < members {
		return nil, false
	}
	for _, a := range answers {
		if a.hash != good {
			bad = append(bad, a.id)
		}
	}
	slices.Sort(bad)
	return bad, true
}

// activeAlarmsFor reports which of the members have CORRUPT and which
// NOSPACE active.
func (s *Server) activeAlarmsFor(ids []uint64) (corrupt, nospace map[uint64]bool) {
	corrupt, nospace = map[uint64]bool{}, map[uint64]bool{}
	for _, a := range s.alarms() {
		if !slices.Contains(ids, a.MemberID) {
			continue
		}
		switch a.Alarm {
		case pb.AlarmType_CORRUPT:
			corrupt[a.MemberID] = true
		case pb.AlarmType_NOSPACE:
			nospace[a.MemberID] = true
		}
	}
	return corrupt, nospace
}

// unsafeCorrupt is Config.Unsafe.CorruptPuts: this member alone applies
// every Put with one byte more, so its history diverges on purpose.
func (s *Server) unsafeCorrupt(r *pb.InternalRaftRequest) {
	if s.cfg.Unsafe.CorruptPuts && r.Put != nil {
		r.Put.Value = append(slices.Clone(r.Put.Value), '!')
	}
}
