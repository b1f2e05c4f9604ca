// Package election is leader election on ballot (or on any etcd v3 API):
// candidates campaign for a named election, exactly one of them leads at a
// time, and every term of leadership carries a fencing token.
//
//	el := election.New(cli, election.WithTTL(5))
//	term, err := el.Campaign(ctx, "head-chef", "alice") // blocks until alice leads
//	...
//	err = store.Write(term.Token, order)                // a resource that honours tokens
//	...
//	err = term.Resign(ctx)
//
// Each candidate puts a key under ballot/election/NAME/, attached to a
// lease of its own that a session keeps alive. The candidate whose key was
// created first leads; a leader resigns by deleting its key, and a leader
// that crashes (or stops renewing its lease) loses its key when the lease
// expires, after which the next candidate in line leads. Leader and Observe
// tell anyone which candidate leads and with which value.
//
// # Guarantee
//
// At any revision of the store at most one candidate's key is the first
// under the prefix, so at most one candidate holds leadership as the store
// sees it. A term's token is the create revision of its key; the revisions
// of the consensus log only grow, so a later term always has a larger token
// than an earlier one, and a term's token is unique to it.
//
// # Assumption
//
// "At most one leader" holds in the store, not in the processes. A leader
// learns it lost its lease only when its session notices (Term.Done), and a
// process that is paused (garbage collection, a stopped VM, a slow disk)
// for longer than the lease TTL, or whose clock runs slow enough that it
// thinks less time passed than the store does, may still believe it leads
// after a successor was elected. Leadership is therefore safe to act on only
// with fencing: every action a leader takes on a shared resource carries
// its token, and the resource refuses a token lower than one it has seen
// (see recipes/fence), or the action is a Txn that includes Term.Fence (it
// fails once the term's key is gone). Without fencing, safety rests on the
// TTL being longer than any pause plus clock drift over the TTL — an
// assumption, not a guarantee.
//
// Liveness: when a leader dies, the next one leads within one TTL (plus an
// election of the ballot cluster if the ballot leader died too).
package election

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

// Prefix is where every election's keys live: Prefix + NAME + "/" + lease.
const Prefix = "ballot/election/"

// DefaultTTLSeconds is the lease TTL of a candidate unless WithTTL says
// otherwise.
const DefaultTTLSeconds = 10

var (
	// ErrNoLeader is returned by Leader when no candidate leads.
	ErrNoLeader = errors.New("election: no leader")
	// ErrLost means the candidate's lease expired or was revoked before
	// or while it led.
	ErrLost = errors.New("election: lease lost")
	// ErrBadName is returned for an election name that cannot be a key
	// segment.
	ErrBadName = queue.ErrBadName
)

// Elector campaigns in and observes elections through one client. It is
// safe for concurrent use.
type Elector struct {
	cli        *clientv3.Client
	ttlSeconds int
}

// Option configures an Elector.
type Option func(*Elector)

// WithTTL sets the lease TTL of each campaign, in seconds: how long a dead
// leader keeps leadership before the next candidate takes over. The server
// may raise a TTL that is too short (etcd and ballot: to one and a half
// election timeouts).
func WithTTL(seconds int) Option { return func(e *Elector) { e.ttlSeconds = seconds } }

// New returns an Elector that talks through cli.
func New(cli *clientv3.Client, opts ...Option) *Elector {
	e := &Elector{cli: cli, ttlSeconds: DefaultTTLSeconds}
	for _, o := range opts {
		o(e)
	}
	return e
}

func prefix(name string) string { return Prefix + name + "/" }

// Leader is what anyone can read about who leads an election.
type Leader struct {
	Name  string // the election
	Value string // what the leader announced when it campaigned
	// Token is the term's fencing token: the create revision of the
	// leader's key.
	Token int64
	Key   string
	Lease clientv3.LeaseID
	// Revision is the store revision this was read at.
	Revision int64
}

// Term is one candidate's term of leadership, from the moment Campaign
// returns it until Resign, or until its lease is lost (Done).
type Term struct {
	Name   string // the election
	Value  string
	Token  int64 // the fencing token: larger than every earlier term's
	Key    string
	ticket queue.Ticket
	sess   *concurrency.Session
	cli    *clientv3.Client
}

// Campaign blocks until this candidate leads the election name, announcing
// value, and returns its term. It creates a lease (of the Elector's TTL)
// kept alive by a session that lasts as long as the term. If ctx ends
// first, the candidate leaves the line and Campaign returns ctx's error; if
// its lease is lost while it waits, it returns ErrLost.
func (e *Elector) Campaign(ctx context.Context, name, value string) (*Term, error) {
	if err := queue.CheckName(name); err != nil {
		return nil, fmt.Errorf("election: %w", err)
	}
	sess, err := queue.NewSession(ctx, e.cli, e.ttlSeconds)
	if err != nil {
		return nil, fmt.Errorf("election %s: start session: %w", name, err)
	}
	t, err := queue.Join(ctx, e.cli, prefix(name), sess.Lease(), value)
	if err != nil {
		sess.Close()
		return nil, fmt.Errorf("election %s: %w", name, err)
	}
	if err := queue.Wait(ctx, e.cli, prefix(name), t, sess.Done()); err != nil {
		// Revoking the lease deletes the key; use a context of our own,
		// since ctx may be what ended the wait.
		sess.Close()
		if errors.Is(err, queue.ErrLost) {
			return nil, fmt.Errorf("election %s: %w", name, ErrLost)
		}
		return nil, fmt.Errorf("election %s: campaign: %w", name, err)
	}
	return &Term{Name: name, Value: value, Token: t.Rev, Key: t.Key, ticket: t, sess: sess, cli: e.cli}, nil
}

// Resign ends the term: it deletes the term's key (only if it is still
// this term's) and revokes its lease, so the next candidate leads at once.
func (t *Term) Resign(ctx context.Context) error {
	err := queue.Leave(ctx, t.cli, t.ticket)
	cerr := t.sess.Close()
	if err != nil {
		return fmt.Errorf("election %s: resign: %w", t.Name, err)
	}
	if cerr != nil && !errors.Is(cerr, rpctypes.ErrLeaseNotFound) {
		return fmt.Errorf("election %s: resign: revoke lease: %w", t.Name, cerr)
	}
	return nil
}

// Done is closed when the term's session stops renewing its lease (the
// lease expired, was revoked, or the session was orphaned): from then on
// the candidate must assume it no longer leads.
func (t *Term) Done() <-chan struct{} { return t.sess.Done() }

// Fence is a compare that holds only while this term's key exists: put it
// in the If of a Txn to make a write to the store conditional on this term
// still leading.
func (t *Term) Fence() clientv3.Cmp { return t.ticket.Fence() }

// Session is the term's lease session: keys put with its lease go away
// with the term. Orphan on it models a leader that stops renewing (a crash
// or a pause) without resigning.
func (t *Term) Session() *concurrency.Session { return t.sess }

// Leader returns the current leader of the election name, or ErrNoLeader.
func (e *Elector) Leader(ctx context.Context, name string) (Leader, error) {
	if err := queue.CheckName(name); err != nil {
		return Leader{}, fmt.Errorf("election: %w", err)
	}
	kv, rev, err := queue.Front(ctx, e.cli, prefix(name))
	if err != nil {
		return Leader{}, fmt.Errorf("election %s: %w", name, err)
	}
	if kv == nil {
		return Leader{Name: name, Revision: rev}, ErrNoLeader
	}
	return Leader{Name: name, Value: string(kv.Value), Token: kv.CreateRevision, Key: string(kv.Key),
		Lease: clientv3.LeaseID(kv.Lease), Revision: rev}, nil
}

// Observe streams every change of the election's leader: the current one
// first, then each new leader (or a new value it announced) as the store
// orders them. A Leader with an empty Key means nobody leads. The channel
// is closed when ctx ends. A slow reader sees every leader that was still
// current when it read, not necessarily each short-lived one in between.
func (e *Elector) Observe(ctx context.Context, name string) <-chan Leader {
	out := make(chan Leader)
	go func() {
		defer close(out)
		if queue.CheckName(name) != nil {
			return
		}
		var last Leader
		first := true
		for ctx.Err() == nil {
			l, err := e.Leader(ctx, name)
			if err != nil && !errors.Is(err, ErrNoLeader) {
				// The member may be down or without a leader: retry
				// after a pause, bounded by ctx.
				if !sleepCtx(ctx, retryPause) {
					return
				}
				continue
			}
			if first || l.Key != last.Key || l.Value != last.Value || l.Token != last.Token {
				first = false
				last = l
				select {
				case out <- l:
				case <-ctx.Done():
					return
				}
			}
			waitChange(ctx, e.cli, prefix(name), l.Revision+1)
		}
	}()
	return out
}

// retryPause is how long Observe waits before reading again after an error.
const retryPause = 100 * time.Millisecond

// waitChange returns when anything under prefix changes at or after rev,
// when the watch ends (the caller reads again), or when ctx ends.
func waitChange(ctx context.Context, cli *clientv3.Client, prefix string, rev int64) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for wr := range cli.Watch(clientv3.WithRequireLeader(wctx), prefix, clientv3.WithPrefix(), clientv3.WithRev(rev)) {
		if len(wr.Events) > 0 || wr.Canceled || wr.Err() != nil {
			return
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
