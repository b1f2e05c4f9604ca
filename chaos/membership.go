package chaos

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// The transfer and member nemeses change who leads and who is a member
// while the other nemeses' faults are under way: they run on their own
// schedule, beside the fault schedule, so a transfer can meet a partition
// and a membership change a paused leader.

// Kinds of the change nemeses.
const (
	NemesisTransfer = "transfer" // move leadership to a random member (MoveLeader)
	NemesisMember   = "member"   // remove a member, wipe it, add it back as a learner on a new address, promote it
)

// errNotRemoved: the member nemesis's removal was refused; nothing changed.
var errNotRemoved = errors.New("chaos: member not removed")

// replacer is a cluster whose members the member nemesis can replace.
type replacer interface {
	replace(ctx context.Context, i int) error
}

func clientFor(addrs []string) (*clientv3.Client, error) {
	cli, err := clientv3.New(clientv3.Config{Endpoints: addrs, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return nil, fmt.Errorf("chaos: client: %w", err)
	}
	return cli, nil
}

// memberIDByName finds a member's ID in the member list.
func memberIDByName(ctx context.Context, cli *clientv3.Client, name string) (uint64, error) {
	resp, err := cli.MemberList(ctx)
	if err != nil {
		return 0, fmt.Errorf("chaos: member list: %w", err)
	}
	for _, m := range resp.Members {
		if m.Name == name {
			return m.ID, nil
		}
	}
	return 0, fmt.Errorf("chaos: no member named %s", name)
}

// removedAfterAll reports whether a removal whose call failed went through
// all the same: the answer is lost when the member that answered is the
// one removed and stops (a Paxos run saw "removing n1 refused" for a
// removal that had committed, then n1's exit as a violation). It waits a
// few seconds for the member to exit or to leave the member list.
func removedAfterAll(ctx context.Context, cli *clientv3.Client, member string, exited <-chan struct{}) bool {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		lctx, lcancel := context.WithTimeout(ctx, 2*time.Second)
		resp, err := cli.MemberList(lctx)
		lcancel()
		if err == nil && !slices.ContainsFunc(resp.Members, func(m *etcdserverpb.Member) bool { return m.Name == member }) {
			return true
		}
		select {
		case <-exited:
			return true
		case <-ctx.Done():
			return false
		case <-tick.C:
		}
	}
}

// memberCallTimeout bounds one try of a membership change (a change
// proposed to a leader that then loses its leadership is answered
// "outcome unknown" when the leadership goes; this bounds everything else).
const memberCallTimeout = 5 * time.Second

// errTally counts the errors of a retried call by message, so that a
// call that never succeeds says what it met, not only its last timeout.
type errTally struct {
	order []string
	n     map[string]int
}

func (t *errTally) add(err error) {
	msg := err.Error()
	if len(msg) > 160 {
		msg = msg[:160] + "…"
	}
	if t.n == nil {
		t.n = map[string]int{}
	}
	if t.n[msg] == 0 {
		t.order = append(t.order, msg)
	}
	t.n[msg]++
}

func (t *errTally) String() string {
	var parts []string
	for _, m := range t.order {
		parts = append(parts, fmt.Sprintf("%d× %s", t.n[m], m))
	}
	return strings.Join(parts, "; ")
}

// promoteWhenReady promotes a learner, retrying while it catches up.
func promoteWhenReady(ctx context.Context, cli *clientv3.Client, id uint64) error {
	var seen errTally
	for {
		// Refusals (not caught up yet, a change still pending, no leader
		// under a fault) are retried until ctx ends; so is a try whose
		// change was lost with a leader (answered "request timed out").
		actx, cancel := context.WithTimeout(ctx, memberCallTimeout)
		_, err := cli.MemberPromote(actx, id)
		cancel()
		if err == nil {
			return nil
		}
		if errors.Is(err, rpctypes.ErrMemberNotLearner) {
			return nil // an earlier try went through
		}
		seen.add(err)
		select {
		case <-ctx.Done():
			return fmt.Errorf("chaos: promote %x: %w (errors: %v)", id, ctx.Err(), &seen)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// moveLeader asks the leader (found through the members' status pages) to
// hand leadership to member to.
func moveLeader(ctx context.Context, c cluster, to int) error {
	lead := c.leader()
	if lead < 0 || lead == to {
		return fmt.Errorf("chaos: no leader to move, or %s leads already", name(to))
	}
	cli, err := clientFor([]string{c.client(lead)})
	if err != nil {
		return err
	}
	defer cli.Close()
	all, err := clientFor([]string{c.client(to)})
	if err != nil {
		return err
	}
	defer all.Close()
	st, err := all.Status(ctx, c.client(to))
	if err != nil {
		return fmt.Errorf("chaos: status of %s: %w", name(to), err)
	}
	if _, err := cli.MoveLeader(ctx, st.Header.MemberId); err != nil {
		return fmt.Errorf("chaos: move leader to %s: %w", name(to), err)
	}
	return nil
}

// wipeDir empties a data directory (it may be a mount point).
func wipeDir(dir string) error {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("chaos: wipe %s: %w", dir, err)
	}
	for _, e := range ents {
		if e.Name() == "lost+found" {
			continue
		}
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return fmt.Errorf("chaos: wipe %s: %w", dir, err)
		}
	}
	return nil
}

// runChanges is the transfer and member nemeses' schedule. New changes
// start only while ctx (the run) lasts; a change under way finishes within
// its own bound under opsCtx (the rig's, which only an interrupt ends), so
// the end of the run never leaves a member half replaced.
func (nm *nemesis) runChanges(ctx, opsCtx context.Context, start time.Time, election time.Duration, kinds []string) {
	n := nm.c.size()
	if _, ok := nm.c.(replacer); !ok && slices.Contains(kinds, NemesisMember) {
		nm.logf("!!! SKIPPED: the member nemesis runs on process clusters only (not on containers yet)")
		kinds = slices.DeleteFunc(slices.Clone(kinds), func(k string) bool { return k == NemesisMember })
		if len(kinds) == 0 {
			return
		}
	}
	for ctx.Err() == nil {
		select {
		case <-ctx.Done():
			return
		case <-time.After(election*3 + time.Duration(nm.rng.IntN(3000))*time.Millisecond):
		}
		kind := kinds[nm.rng.IntN(len(kinds))]
		at := time.Since(start)
		opCtx, cancel := context.WithTimeout(opsCtx, 30*election+20*time.Second)
		switch kind {
		case NemesisTransfer:
			to := nm.rng.IntN(n)
			if err := moveLeader(opCtx, nm.c, to); err != nil {
				nm.note(at, kind, "transfer to "+name(to)+" refused: "+err.Error())
			} else {
				nm.note(at, kind, "leadership moved to "+name(to))
			}
		case NemesisMember:
			r, ok := nm.c.(replacer)
			if !ok {
				cancel()
				continue
			}
			i := nm.pickMember()
			if !nm.locks.tryLock(i) {
				cancel()
				continue
			}
			nm.note(at, kind, "remove "+name(i)+", wipe it, add it back as a learner, promote it")
			if err := r.replace(opCtx, i); errors.Is(err, errNotRemoved) {
				// Refused under faults before anything changed: fine.
				nm.note(time.Since(start), kind, "removing "+name(i)+" refused: "+err.Error())
			} else if err != nil {
				// Removed but not back within the bound: a cluster that
				// cannot grow again after faults heal is a violation.
				nm.violation(fmt.Sprintf("%s was removed but could not be added back: %v", name(i), err))
			} else {
				nm.note(time.Since(start), "heal", name(i)+" is a voter again")
			}
			nm.locks.unlock(i)
		}
		cancel()
	}
}
