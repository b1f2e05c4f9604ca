// Package queue is the fair, lease-bound waiting line that recipes/election
// and recipes/lock share.
//
// Each waiter puts one key under a common prefix, attached to its lease:
//
//	<prefix><lease ID in hex>   value: whatever the waiter announces
//
// The key's create revision is the waiter's place in line and, once it is at
// the front, its fencing token: revisions are assigned by the consensus log
// and only grow, so a later holder always has a larger token than an earlier
// one (a key that was deleted is never created again with its old create
// revision). The waiter at the front is the one whose key has the lowest
// create revision among those that still exist. A key goes away when its
// owner leaves (a compare-and-delete on its create revision) or when its
// lease expires, so a crashed waiter or holder does not block the line for
// longer than its lease's TTL.
//
// Wait does not trust the line alone: after every predecessor is gone it
// reads its own key back and reports ErrLost if it is gone too (its lease
// expired while it waited), so no one is told it holds what it does not.
package queue

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// ErrLost means the waiter's own key is gone: its lease expired or was
// revoked, so it is no longer in line.
var ErrLost = errors.New("queue: own key is gone (lease expired or revoked)")

// Ticket is a waiter's place in line.
type Ticket struct {
	Key string
	// Rev is the create revision of Key: the place in line, and the
	// fencing token of the waiter once it is at the front.
	Rev   int64
	Lease clientv3.LeaseID
}

// Fence is the compare that holds only while t's key is the very key that
// was created at t.Rev: put it in the If of a Txn to make a write
// conditional on t still being in line (or at the front).
func (t Ticket) Fence() clientv3.Cmp {
	return clientv3.Compare(clientv3.CreateRevision(t.Key), "=", t.Rev)
}

// Join puts the waiter's key under prefix with value, attached to lease, and
// returns its ticket. Joining again with the same lease returns the same
// place in line (with the value updated), so a retry after an unknown
// outcome is safe.
func Join(ctx context.Context, cli *clientv3.Client, prefix string, lease clientv3.LeaseID, value string) (Ticket, error) {
	key := fmt.Sprintf("%s%016x", prefix, int64(lease))
	resp, err := cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, value, clientv3.WithLease(lease))).
		Else(clientv3.OpGet(key)).Commit()
	if err != nil {
		return Ticket{}, fmt.Errorf("queue: join %s: %w", prefix, err)
	}
	t := Ticket{Key: key, Rev: resp.Header.Revision, Lease: lease}
	if resp.Succeeded {
		return t, nil
	}
	kvs := resp.Responses[0].GetResponseRange().GetKvs()
	if len(kvs) == 0 {
		return Ticket{}, fmt.Errorf("queue: join %s: key vanished between compare and read: %w", prefix, ErrLost)
	}
	t.Rev = kvs[0].CreateRevision
	if string(kvs[0].Value) != value {
		r, err := cli.Txn(ctx).If(t.Fence()).Then(clientv3.OpPut(key, value, clientv3.WithLease(lease))).Commit()
		if err != nil {
			return Ticket{}, fmt.Errorf("queue: join %s: update value: %w", prefix, err)
		}
		if !r.Succeeded {
			return Ticket{}, fmt.Errorf("queue: join %s: %w", prefix, ErrLost)
		}
	}
	return t, nil
}

// Wait blocks until t is at the front of the line under prefix: every key
// with a lower create revision is gone and t's own key still exists. It
// returns ErrLost if t's key is gone, and stops early with ErrLost when lost
// is closed (the waiter's session ended) or with ctx's error.
func Wait(ctx context.Context, cli *clientv3.Client, prefix string, t Ticket, lost <-chan struct{}) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if lost != nil {
		go func() {
			select {
			case <-lost:
				cancel()
			case <-ctx.Done():
			}
		}()
	}
	fail := func(err error) error {
		select {
		case <-lost:
			return ErrLost
		default:
		}
		return err
	}
	// Each round waits for the youngest predecessor to go, so the line is
	// not herded: only the waiter right behind a leaving key wakes up.
	for {
		resp, err := cli.Get(ctx, prefix, append(clientv3.WithLastCreate(), clientv3.WithMaxCreateRev(t.Rev-1))...)
		if err != nil {
			return fail(fmt.Errorf("queue: wait %s: %w", prefix, err))
		}
		if len(resp.Kvs) == 0 {
			break
		}
		if err := waitDelete(ctx, cli, string(resp.Kvs[0].Key), resp.Header.Revision+1); err != nil {
			return fail(err)
		}
	}
	resp, err := cli.Get(ctx, t.Key)
	if err != nil {
		return fail(fmt.Errorf("queue: wait %s: read own key: %w", prefix, err))
	}
	if len(resp.Kvs) == 0 || resp.Kvs[0].CreateRevision != t.Rev {
		return ErrLost
	}
	return nil
}

// AtFront reports, without waiting, whether t is at the front of the line
// under prefix with its own key still there.
func AtFront(ctx context.Context, cli *clientv3.Client, prefix string, t Ticket) (bool, error) {
	resp, err := cli.Txn(ctx).If(t.Fence()).
		Then(clientv3.OpGet(prefix, append(clientv3.WithLastCreate(), clientv3.WithMaxCreateRev(t.Rev-1))...)).Commit()
	if err != nil {
		return false, fmt.Errorf("queue: check %s: %w", prefix, err)
	}
	if !resp.Succeeded {
		return false, ErrLost
	}
	return len(resp.Responses[0].GetResponseRange().GetKvs()) == 0, nil
}

// waitDelete returns once key is deleted at or after rev. A watch that ends
// without that (a compaction, a lost stream) returns nil as well: the caller
// reads the line again, which is always safe.
func waitDelete(ctx context.Context, cli *clientv3.Client, key string, rev int64) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for wr := range cli.Watch(clientv3.WithRequireLeader(wctx), key, clientv3.WithRev(rev)) {
		if wr.Canceled || wr.Err() != nil {
			return nil
		}
		for _, ev := range wr.Events {
			if ev.Type == mvccpb.DELETE {
				return nil
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("queue: wait for %s: %w", key, err)
	}
	return nil
}

// Leave takes t's key out of the line, if it is still t's (the compare on
// its create revision keeps a stale ticket from deleting a newer key).
func Leave(ctx context.Context, cli *clientv3.Client, t Ticket) error {
	if _, err := cli.Txn(ctx).If(t.Fence()).Then(clientv3.OpDelete(t.Key)).Commit(); err != nil {
		return fmt.Errorf("queue: leave %s: %w", t.Key, err)
	}
	return nil
}

// Front returns the key at the front of the line under prefix, or nil when
// the line is empty, and the revision it was read at.
func Front(ctx context.Context, cli *clientv3.Client, prefix string) (*mvccpb.KeyValue, int64, error) {
	resp, err := cli.Get(ctx, prefix, clientv3.WithFirstCreate()...)
	if err != nil {
		return nil, 0, fmt.Errorf("queue: front of %s: %w", prefix, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, resp.Header.Revision, nil
	}
	return resp.Kvs[0], resp.Header.Revision, nil
}

// ErrBadName is returned for a recipe name that cannot be a path segment
// of a key.
var ErrBadName = errors.New("recipes: a name must be non-empty, at most 256 bytes, and contain no '/'")

// CheckName reports whether name can be one segment of a recipe's keys: a
// name with '/' in it would put one recipe's keys inside another's prefix.
func CheckName(name string) error {
	if name == "" || len(name) > 256 || strings.Contains(name, "/") {
		return fmt.Errorf("%q: %w", name, ErrBadName)
	}
	return nil
}

// NewSession grants a lease of ttlSeconds within ctx and starts a session
// that keeps it alive until the session is closed or orphaned — not until
// ctx ends: ctx bounds the grant only, since a campaign's or a lock's
// context usually ends long before the term or the hold does.
func NewSession(ctx context.Context, cli *clientv3.Client, ttlSeconds int) (*concurrency.Session, error) {
	lease, err := cli.Grant(ctx, int64(ttlSeconds))
	if err != nil {
		return nil, fmt.Errorf("grant lease: %w", err)
	}
	sess, err := concurrency.NewSession(cli, concurrency.WithLease(lease.ID), concurrency.WithTTL(ttlSeconds),
		concurrency.WithContext(context.WithoutCancel(ctx)))
	if err != nil {
		// Best effort: the lease expires on its own otherwise.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Duration(ttlSeconds)*time.Second)
		defer cancel()
		_, _ = cli.Revoke(rctx, lease.ID)
		return nil, fmt.Errorf("start session: %w", err)
	}
	return sess, nil
}
