// Package lock is a distributed mutual-exclusion lock on ballot (or on any
// etcd v3 API) whose every acquisition carries a fencing token.
//
//	l := lock.New(cli, lock.WithTTL(5))
//	h, err := l.Lock(ctx, "oven")          // blocks until held
//	...
//	err = h.Put(ctx, "oven/temp", "220")   // succeeds only while h is current
//	...
//	err = h.Unlock(ctx)
//
// Waiters line up under ballot/lock/NAME/, each with a key attached to a
// lease of its own; the waiter whose key was created first holds the lock.
// Unlock deletes the key; a holder that crashes loses it when its lease
// expires, and the next in line holds the lock. TryLock gives up (ErrLocked)
// if the lock is not held within a given wait.
//
// # Guarantee
//
// At every revision of the store at most one key is first in line, so the
// store never shows two holders. Each acquisition's token is the create
// revision of its key: tokens only grow from one holder to the next, and
// Held.Fence (used by Held.Txn and Held.Put) makes a write to the store
// conditional on the holder's key still existing with that create
// revision, so a holder whose lease has expired — however long it was
// paused — cannot write through the lock after a successor took it.
//
// # Assumption
//
// Mutual exclusion among processes (as opposed to in the store) rests on
// timing: a holder learns that its lease expired only when its session
// notices (Held.Done), and a process paused longer than the TTL (GC, a
// stopped VM, swapping), or whose clock runs slow against the store's,
// will go on as if it held the lock. Writes to the store are safe through
// the fenced helpers regardless; writes to anything else are safe only if
// that resource checks the token (recipes/fence). Everything else assumes
// pauses plus clock drift stay well under the TTL.
package lock

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/ballotdb/ballot/recipes/internal/queue"
)

// Prefix is where every lock's keys live: Prefix + NAME + "/" + lease.
const Prefix = "ballot/lock/"

// DefaultTTLSeconds is the lease TTL of an acquisition unless WithTTL says
// otherwise.
const DefaultTTLSeconds = 10

var (
	// ErrLocked is returned by TryLock when the lock was not free within
	// its wait.
	ErrLocked = errors.New("lock: held by another")
	// ErrFenced is returned by Held.Put when the holder is no longer
	// current: its key is gone (lease expired, revoked, or unlocked).
	ErrFenced = errors.New("lock: fencing token is no longer current")
	// ErrLost means the lease expired or was revoked while waiting.
	ErrLost = errors.New("lock: lease lost")
	// ErrBadName is returned for a lock name that cannot be a key segment.
	ErrBadName = queue.ErrBadName
)

// Locker acquires locks through one client. It is safe for concurrent use.
type Locker struct {
	cli        *clientv3.Client
	ttlSeconds int
}

// Option configures a Locker.
type Option func(*Locker)

// WithTTL sets the lease TTL of each acquisition, in seconds: how long a
// crashed holder keeps the lock. The server may raise a TTL that is too
// short.
func WithTTL(seconds int) Option { return func(l *Locker) { l.ttlSeconds = seconds } }

// New returns a Locker that talks through cli.
func New(cli *clientv3.Client, opts ...Option) *Locker {
	l := &Locker{cli: cli, ttlSeconds: DefaultTTLSeconds}
	for _, o := range opts {
		o(l)
	}
	return l
}

func prefix(name string) string { return Prefix + name + "/" }

// Held is one acquisition of a lock, from Lock until Unlock or until its
// lease is lost.
type Held struct {
	Name string
	// Token is the fencing token: larger than every earlier holder's.
	Token  int64
	Key    string
	ticket queue.Ticket
	sess   *concurrency.Session
	cli    *clientv3.Client
}

// Lock blocks until the lock name is held, or ctx ends (then the place in
// line is given up and ctx's error returned).
func (l *Locker) Lock(ctx context.Context, name string) (*Held, error) {
	return l.acquire(ctx, name, ctx)
}

// TryLock is Lock that waits at most wait for the lock (0: take it only if
// it is free now) and then returns ErrLocked.
func (l *Locker) TryLock(ctx context.Context, name string, wait time.Duration) (*Held, error) {
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	h, err := l.acquire(ctx, name, wctx)
	if err != nil && ctx.Err() == nil && wctx.Err() != nil {
		return nil, fmt.Errorf("lock %s: not free within %v: %w", name, wait, ErrLocked)
	}
	return h, err
}

// acquire joins the line with ctx and waits in it with wctx.
func (l *Locker) acquire(ctx context.Context, name string, wctx context.Context) (*Held, error) {
	if err := queue.CheckName(name); err != nil {
		return nil, fmt.Errorf("lock: %w", err)
	}
	sess, err := queue.NewSession(ctx, l.cli, l.ttlSeconds)
	if err != nil {
		return nil, fmt.Errorf("lock %s: start session: %w", name, err)
	}
	t, err := queue.Join(ctx, l.cli, prefix(name), sess.Lease(), "")
	if err != nil {
		sess.Close()
		return nil, fmt.Errorf("lock %s: %w", name, err)
	}
	front, err := queue.AtFront(ctx, l.cli, prefix(name), t)
	if err == nil && !front {
		err = queue.Wait(wctx, l.cli, prefix(name), t, sess.Done())
	}
	if err != nil {
		sess.Close() // revoking the lease takes the key out of line
		if errors.Is(err, queue.ErrLost) {
			return nil, fmt.Errorf("lock %s: %w", name, ErrLost)
		}
		return nil, fmt.Errorf("lock %s: %w", name, err)
	}
	return &Held{Name: name, Token: t.Rev, Key: t.Key, ticket: t, sess: sess, cli: l.cli}, nil
}

// Unlock releases the lock (only if h is still the holder) and revokes the
// acquisition's lease. Unlocking a lock whose lease already expired is not
// an error.
func (h *Held) Unlock(ctx context.Context) error {
	err := queue.Leave(ctx, h.cli, h.ticket)
	cerr := h.sess.Close()
	if err != nil {
		return fmt.Errorf("lock %s: unlock: %w", h.Name, err)
	}
	if cerr != nil && !errors.Is(cerr, rpctypes.ErrLeaseNotFound) {
		return fmt.Errorf("lock %s: unlock: revoke lease: %w", h.Name, cerr)
	}
	return nil
}

// Done is closed when the acquisition's session stops renewing its lease:
// from then on the holder must assume it no longer holds the lock.
func (h *Held) Done() <-chan struct{} { return h.sess.Done() }

// Session is the acquisition's lease session. Orphan on it models a holder
// that stops renewing (a crash or a pause) without unlocking.
func (h *Held) Session() *concurrency.Session { return h.sess }

// Fence is the compare that holds only while h is the holder: the lock
// key's create revision is still h's token.
func (h *Held) Fence() clientv3.Cmp { return h.ticket.Fence() }

// Txn starts a transaction whose If already includes Fence: add further
// compares with If, and the Then branch runs only while h holds the lock.
func (h *Held) Txn(ctx context.Context) clientv3.Txn { return h.cli.Txn(ctx).If(h.Fence()) }

// Put writes key=value only while h holds the lock, and returns ErrFenced
// if it no longer does (nothing is written then).
func (h *Held) Put(ctx context.Context, key, value string, opts ...clientv3.OpOption) error {
	resp, err := h.Txn(ctx).Then(clientv3.OpPut(key, value, opts...)).Commit()
	if err != nil {
		return fmt.Errorf("lock %s: fenced put %s: %w", h.Name, key, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("lock %s: fenced put %s with token %d: %w", h.Name, key, h.Token, ErrFenced)
	}
	return nil
}
