package chaos

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/metadata"

	"github.com/ballotdb/ballot/server"
	"github.com/ballotdb/ballot/shard"
)

// The replica check: at the end of a run, the members of every group
// (the one group, or each shard) hold the same state at the same applied
// index. The state machine is deterministic, so any difference is a
// member that applied the log differently — a divergence the per-key
// checkers may never see, because clients read from leaders only: issue
// 9's open finding was a move's new member that refused the writes from
// before a split, counted revisions differently and, once it led, handed
// out revisions the shard had already used.
//
// Each member is sampled (its applied index, then Maintenance.Hash — the
// hash of its whole replicated state and its revision — then its applied
// index again) until every member answers at one applied index; samples
// taken while the index moved are dropped. Two members that answered at
// the same applied index with different hashes or revisions are a
// violation. A member that never reaches the others (removed, or too slow
// before the deadline) is logged and left out: no verdict without a
// common index.

// replicaSample is one member's state at an applied index.
type replicaSample struct {
	applied uint64
	rev     int64
	hash    uint32
}

func (s replicaSample) String() string {
	return fmt.Sprintf("revision %d, hash %08x at applied index %d", s.rev, s.hash, s.applied)
}

// replicaGroup is one group to check: its name in reports, the members'
// clients by name, and the group tag for sharded hosts ("" for a
// single-group cluster).
type replicaGroup struct {
	name    string
	tag     string
	members map[string]*clientv3.Client
}

// sample asks one member for its state, or false if its applied index
// moved while it was asked (or it did not answer).
func (g replicaGroup) sample(ctx context.Context, cli *clientv3.Client) (replicaSample, bool) {
	if g.tag != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, server.GroupHeader, g.tag)
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	mc := pb.NewMaintenanceClient(cli.ActiveConnection())
	before, err := mc.Status(ctx, &pb.StatusRequest{})
	if err != nil {
		return replicaSample{}, false
	}
	h, err := mc.Hash(ctx, &pb.HashRequest{})
	if err != nil {
		return replicaSample{}, false
	}
	after, err := mc.Status(ctx, &pb.StatusRequest{})
	if err != nil || after.RaftAppliedIndex != before.RaftAppliedIndex {
		return replicaSample{}, false
	}
	return replicaSample{applied: before.RaftAppliedIndex, rev: h.Header.GetRevision(), hash: h.Hash}, true
}

// checkReplicas checks every group until timeout and returns the
// violations found and a line for the report; logf gets the groups it
// could not give a verdict on.
func checkReplicas(ctx context.Context, groups []replicaGroup, timeout time.Duration, logf func(string, ...any)) ([]string, string) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	found := make([][]string, len(groups))
	decided := make([]bool, len(groups))
	notes := make([]string, len(groups))
	var wg sync.WaitGroup
	for i, g := range groups {
		wg.Go(func() { found[i], decided[i], notes[i] = g.check(ctx, logf) })
	}
	wg.Wait()
	v := slices.Concat(found...)
	var open []string
	for i, d := range decided {
		if !d {
			open = append(open, notes[i])
		}
	}
	line := fmt.Sprintf("replicas: %d of %d groups compared at a common applied index, %d disagreeing, %d without a verdict",
		len(groups)-len(open), len(groups), len(v), len(open))
	if len(open) > 0 {
		line += " (" + strings.Join(open, "; ") + ")"
	}
	return v, line
}

// check samples the members until they agree at one applied index (true),
// two disagree at one (the violation, true) or ctx ends (false, and where
// each member last stood).
func (g replicaGroup) check(ctx context.Context, logf func(string, ...any)) ([]string, bool, string) {
	seen := map[string]map[uint64]replicaSample{} // member → applied index → sample
	names := slices.Sorted(maps.Keys(g.members))
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		latest := map[string]uint64{}
		for _, n := range names {
			s, ok := g.sample(ctx, g.members[n])
			if !ok {
				continue
			}
			if seen[n] == nil {
				seen[n] = map[uint64]replicaSample{}
			}
			seen[n][s.applied] = s
			latest[n] = s.applied
		}
		if v := replicaDisagreements(g.name, seen); len(v) > 0 {
			return v, true, ""
		}
		if len(latest) == len(names) && allEqual(slices.Collect(maps.Values(latest))) {
			return nil, true, ""
		}
		select {
		case <-ctx.Done():
			var at []string
			for _, n := range names {
				if a, ok := latest[n]; ok {
					at = append(at, fmt.Sprintf("%s at %d", n, a))
				} else {
					at = append(at, n+" not answering")
				}
			}
			note := g.name + ": " + strings.Join(at, ", ")
			logf("replica check, %s; no common applied index before the deadline, no verdict", note)
			return nil, false, note
		case <-tick.C:
		}
	}
}

// replicaDisagreements compares the samples members took at the same
// applied index.
func replicaDisagreements(group string, seen map[string]map[uint64]replicaSample) []string {
	var out []string
	names := slices.Sorted(maps.Keys(seen))
	for i, a := range names {
		for _, b := range names[i+1:] {
			for idx, sa := range seen[a] {
				if sb, ok := seen[b][idx]; ok && (sa.rev != sb.rev || sa.hash != sb.hash) {
					out = append(out, fmt.Sprintf("replicas: %s: %s has %s, %s has %s", group, a, sa, b, sb))
					break
				}
			}
		}
	}
	return out
}

func allEqual(xs []uint64) bool {
	for _, x := range xs {
		if x != xs[0] {
			return false
		}
	}
	return true
}

// replicaGroups lists the groups of the run (clients: each member's, by
// index, nil for one without): the one group of all members,
// or the meta group and each shard of the map with the members the map
// gives it.
func replicaGroups(ctx context.Context, shards bool, clients []*clientv3.Client) ([]replicaGroup, error) {
	byName := map[string]*clientv3.Client{}
	var any *clientv3.Client
	for i, c := range clients {
		if c != nil {
			byName[name(i)] = c
			any = c
		}
	}
	if any == nil {
		return nil, fmt.Errorf("replica check: no member's client")
	}
	if !shards {
		return []replicaGroup{{name: "the cluster", members: byName}}, nil
	}
	l, err := listShards(ctx, any)
	if err != nil {
		return nil, fmt.Errorf("replica check: listing the shards: %w", err)
	}
	// The meta group (shard.MetaGroup) has a member on every host.
	out := []replicaGroup{{name: "the meta group", tag: strconv.FormatUint(shard.MetaGroup, 10), members: byName}}
	for _, s := range l.Shards {
		g := replicaGroup{name: "shard " + strconv.FormatUint(s.ID, 10), tag: strconv.FormatUint(s.ID, 10), members: map[string]*clientv3.Client{}}
		for _, m := range s.Members {
			if c := byName[m]; c != nil {
				g.members[m] = c
			}
		}
		out = append(out, g) // a member without a client is left out
	}
	return out, nil
}
