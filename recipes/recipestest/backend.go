// Package recipestest holds the checks that prove ballot's recipes
// (election, lock, poll, twopc): the same checks run in each recipe's own
// tests against a real three-member ballot cluster, and in the compat
// module against ballot and against embedded etcd, table-driven.
//
// A check talks to its system through a Backend: endpoints per member and,
// where the backend has several members, a way to stop and restart one.
// Checks that need a member crash run only where Members() >= 3, and say so
// in the test log otherwise.
//
// Every check asserts outcomes (who led with which token, which write a
// fenced register accepted, how many votes were counted, which state every
// participant ended in); none sleeps to wait for one.
package recipestest

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/ballotdb/ballot/server/servertest"
)

// TTLSeconds is the lease TTL the checks use: etcd's minimum with its
// default timing (one and a half election timeouts, rounded up).
const TTLSeconds = 2

// Backend is a system the checks run against.
type Backend interface {
	Name() string
	// Members is how many members the system has.
	Members() int
	// Endpoints returns the client addresses of the given members (by
	// index), or of every member when none is given.
	Endpoints(members ...int) []string
	// Stop stops member i and Restart starts it again; only called when
	// Members() >= 3.
	Stop(i int)
	Restart(i int)
}

// Ballot adapts a servertest cluster.
func Ballot(c *servertest.Cluster) Backend { return ballotBackend{c} }

type ballotBackend struct{ c *servertest.Cluster }

func (b ballotBackend) Name() string { return "ballot" }
func (b ballotBackend) Members() int { return len(b.c.Names()) }
func (b ballotBackend) Stop(i int)   { b.c.Stop(b.c.Names()[i]) }
func (b ballotBackend) Restart(i int) {
	b.c.Restart(b.c.Names()[i])
}
func (b ballotBackend) Endpoints(members ...int) []string {
	names := b.c.Names()
	var pick []string
	for _, i := range members {
		pick = append(pick, names[i])
	}
	return b.c.Endpoints(pick...)
}

// Fixed is a backend of fixed endpoints that cannot be stopped (one etcd
// member, say): Members is 1, and every member index means all endpoints.
func Fixed(name string, endpoints ...string) Backend { return fixed{name, endpoints} }

type fixed struct {
	name string
	eps  []string
}

func (f fixed) Name() string              { return f.name }
func (f fixed) Members() int              { return 1 }
func (f fixed) Endpoints(...int) []string { return f.eps }
func (f fixed) Stop(int)                  { panic("recipestest: a Fixed backend cannot stop a member") }
func (f fixed) Restart(int)               { panic("recipestest: a Fixed backend cannot restart a member") }

// member returns the endpoints of member i modulo the backend's size.
func member(b Backend, i int) []string { return b.Endpoints(i % b.Members()) }

// client dials eps and closes the client when t ends.
func client(t testing.TB, eps []string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

func testCtx(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

var uniq atomic.Int64

// unique returns a name no other check in this process uses, so checks can
// share one backend.
func unique(kind string) string {
	return fmt.Sprintf("%s-%d-%d", kind, time.Now().UnixNano()%1e9, uniq.Add(1))
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
