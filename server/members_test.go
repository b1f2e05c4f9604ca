package server_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ballotdb/ballot/server"
	"github.com/ballotdb/ballot/server/servertest"
)

// waitFor polls cond every 20 ms until it holds or d passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline.C:
			t.Fatalf("timed out after %v waiting for %s", d, what)
		case <-tick.C:
		}
	}
}

// memberSummary is "name client-URL learner?" per member, sorted.
func memberSummary(ms []*pb.Member) []string {
	var out []string
	for _, m := range ms {
		out = append(out, fmt.Sprintf("%s %v %v", m.Name, m.ClientURLs, m.IsLearner))
	}
	slices.Sort(out)
	return out
}

func TestMemberListShowsEveryMember(t *testing.T) {
	c := servertest.New(t, 3, nil)
	c.Leader()
	var want []string
	for _, n := range c.Names() {
		want = append(want, fmt.Sprintf("%s [http://%s] false", n, c.Endpoints(n)[0]))
	}
	for _, n := range c.Names() {
		cli := c.Client(n)
		waitFor(t, 10*time.Second, "member "+n+" to list everyone's name and client URL", func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			resp, err := cli.MemberList(ctx)
			return err == nil && slices.Equal(memberSummary(resp.Members), want)
		})
	}
}

func TestMembershipErrorsAreEtcds(t *testing.T) {
	c := servertest.New(t, 3, nil)
	c.Leader()
	cli := c.Client(c.Follower())
	ctx := ctxT(t)
	list, err := cli.MemberList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	voter := list.Members[0]
	cases := []struct {
		name string
		call func() error
		want error
	}{
		{"bad URL", func() error { // past clientv3's own checks
			_, err := pb.NewClusterClient(cli.ActiveConnection()).MemberAdd(ctx, &pb.MemberAddRequest{PeerURLs: []string{"not a url"}})
			return err
		}, rpctypes.ErrGRPCMemberBadURLs},
		{"two URLs", func() error {
			_, err := cli.MemberAdd(ctx, []string{"http://127.0.0.1:1", "http://127.0.0.1:2"})
			return err
		}, rpctypes.ErrMemberBadURLs},
		{"peer URL in use", func() error { _, err := cli.MemberAdd(ctx, voter.PeerURLs); return err }, rpctypes.ErrMemberExist},
		{"remove unknown", func() error { _, err := cli.MemberRemove(ctx, 12345); return err }, rpctypes.ErrMemberNotFound},
		{"promote a voter", func() error { _, err := cli.MemberPromote(ctx, voter.ID); return err }, rpctypes.ErrMemberNotLearner},
		{"promote unknown", func() error { _, err := cli.MemberPromote(ctx, 12345); return err }, rpctypes.ErrMemberNotFound},
		{"update unknown", func() error { _, err := cli.MemberUpdate(ctx, 12345, []string{"http://127.0.0.1:1"}); return err }, rpctypes.ErrMemberNotFound},
	}
	for _, tc := range cases {
		if err := tc.call(); !errors.Is(err, tc.want) {
			t.Errorf("%s: error %v, want %v", tc.name, err, tc.want)
		}
	}
	after, err := cli.MemberList(ctx)
	if err != nil || len(after.Members) != 3 {
		t.Fatalf("membership changed by refused requests: %v %v", after, err)
	}
}

func TestMoveLeader(t *testing.T) {
	c := servertest.New(t, 3, nil)
	lead := c.Leader()
	fol := c.Follower()
	ctx := ctxT(t)
	target := c.Member(fol).MemberID()
	if _, err := c.Client(fol).MoveLeader(ctx, target); !errors.Is(err, rpctypes.ErrNotLeader) {
		t.Fatalf("MoveLeader on a follower: %v, want %v", err, rpctypes.ErrNotLeader)
	}
	if _, err := c.Client(lead).MoveLeader(ctx, 12345); !errors.Is(err, rpctypes.ErrBadLeaderTransferee) {
		t.Fatalf("MoveLeader to a stranger: %v", err)
	}
	if _, err := c.Client(lead).MoveLeader(ctx, target); err != nil {
		t.Fatalf("MoveLeader: %v", err)
	}
	if got := c.Leader(); got != fol {
		t.Fatalf("leader is %s after moving it to %s", got, fol)
	}
}

// TestGrowAndShrinkWhileWriting grows 3 members to 5 through learners and
// shrinks back to 3, removing the leader on the way, while a client writes:
// no acknowledged write is lost and the writer meets only retriable errors.
func TestGrowAndShrinkWhileWriting(t *testing.T) {
	c := servertest.New(t, 3, nil)
	c.Leader()
	w := startWriter(t, c.Client())
	ctx := ctxT(t)
	admin := c.Client()
	for _, name := range []string{"m4", "m5"} {
		id := c.AddMember(name, true)
		// Promote once caught up; until then etcd's error says why.
		waitFor(t, 20*time.Second, name+" to be promoted", func() bool {
			_, err := admin.MemberPromote(ctx, id)
			if err != nil && !errors.Is(err, rpctypes.ErrMemberLearnerNotReady) && !retriable(err) {
				t.Fatalf("promote %s: %v", name, err)
			}
			return err == nil
		})
	}
	waitFor(t, 10*time.Second, "five voters", func() bool {
		resp, err := admin.MemberList(ctx)
		if err != nil {
			return false
		}
		voters := 0
		for _, m := range resp.Members {
			if !m.IsLearner && m.Name != "" {
				voters++
			}
		}
		return voters == 5
	})

	// Shrink: remove the leader first, then one more member.
	for range 2 {
		victim := c.Leader()
		id := c.Member(victim).MemberID()
		other := c.Follower()
		if _, err := c.Client(other).MemberRemove(ctx, id); err != nil {
			t.Fatalf("remove %s: %v", victim, err)
		}
		c.Forget(victim)
	}
	before := w.writes.Load()
	waitFor(t, 10*time.Second, "writes after the shrink", func() bool { return w.writes.Load() > before+20 })
	w.stopAndCheck(t)
	w.checkAll(t, c)
	resp, err := c.Client().MemberList(ctx)
	if err != nil || len(resp.Members) != 3 {
		t.Fatalf("member list after shrinking: %v %v", resp, err)
	}
	t.Logf("%d writes acknowledged, %d retried, through 4 membership changes", w.writes.Load(), w.retries.Load())
}

// retriable reports whether a client may retry err (etcd's transient
// errors: no leader, leader changed, timeouts, unavailable).
func retriable(err error) bool {
	for _, e := range []error{rpctypes.ErrNoLeader, rpctypes.ErrLeaderChanged, rpctypes.ErrTimeout,
		rpctypes.ErrTimeoutDueToLeaderFail, rpctypes.ErrTimeoutDueToConnectionLost, rpctypes.ErrStopped,
		rpctypes.ErrTooManyRequests, context.DeadlineExceeded} {
		if errors.Is(err, e) {
			return true
		}
	}
	return clientv3.IsConnCanceled(err) || isUnavailable(err)
}

func isUnavailable(err error) bool { return status.Code(err) == codes.Unavailable }

// TestForceNewCluster loses two of three members for good, restarts the
// survivor as a new one-member cluster from its data and grows it back to
// three with fresh members: everything written before the loss is there.
func TestForceNewCluster(t *testing.T) {
	var force atomic.Bool
	c := servertest.New(t, 3, func(cfg *server.Config) {
		if cfg.Name == "m1" {
			cfg.ForceNewCluster = force.Load()
		}
	})
	c.Leader()
	cli := c.Client()
	ctx := ctxT(t)
	for i := range 50 {
		if _, err := cli.Put(ctx, fmt.Sprintf("k%02d", i), fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	want, err := cli.Get(ctx, "k", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	// m1 must hold everything before the loss (it applied it).
	waitFor(t, 10*time.Second, "m1 to apply everything", func() bool {
		return c.Member("m1").Node().Applied() >= c.Member(c.Leader()).Node().Applied()
	})
	c.Forget("m2")
	c.Forget("m3")
	c.Stop("m1")

	force.Store(true)
	c.Restart("m1")
	force.Store(false)
	c.Leader()
	survivor := c.Client("m1")
	got, err := survivor.Get(ctx, "k", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Kvs) != len(want.Kvs) || got.Header.Revision != want.Header.Revision {
		t.Fatalf("after force-new-cluster: %d keys at revision %d, want %d at %d", len(got.Kvs), got.Header.Revision, len(want.Kvs), want.Header.Revision)
	}
	if _, err := survivor.Put(ctx, "after", "loss"); err != nil {
		t.Fatalf("write on the forced cluster: %v", err)
	}
	// Restarted without the flag, it keeps being a one-member cluster.
	c.Stop("m1")
	c.Restart("m1")
	c.Leader()
	for _, name := range []string{"m4", "m5"} {
		id := c.AddMember(name, true)
		waitFor(t, 20*time.Second, name+" to be promoted", func() bool {
			_, err := c.Client("m1").MemberPromote(ctx, id)
			return err == nil
		})
	}
	for _, name := range []string{"m4", "m5"} {
		mc := c.Client(name)
		waitFor(t, 10*time.Second, name+" to have the data", func() bool {
			r, err := mc.Get(ctx, "k", clientv3.WithPrefix(), clientv3.WithSerializable())
			return err == nil && len(r.Kvs) == len(want.Kvs)
		})
		for i, kv := range want.Kvs {
			r, err := mc.Get(ctx, string(kv.Key), clientv3.WithSerializable())
			if err != nil || len(r.Kvs) != 1 || r.Kvs[0].ModRevision != kv.ModRevision || string(r.Kvs[0].Value) != string(kv.Value) {
				t.Fatalf("%s key %d: %v %v, want %v", name, i, r, err, kv)
			}
		}
	}
	ml, err := c.Client("m1").MemberList(ctx)
	if err != nil || len(ml.Members) != 3 {
		t.Fatalf("members: %v %v", ml, err)
	}
}

// TestRollingRestart restarts every member in turn (a stopping leader
// hands leadership away first) while a client writes: the client meets no
// error it could not retry, and no acknowledged write is lost.
func TestRollingRestart(t *testing.T) {
	c := servertest.New(t, 3, nil)
	c.Leader()
	w := startWriter(t, c.Client())
	for _, name := range c.Names() {
		before := w.writes.Load()
		c.Stop(name)
		c.Restart(name)
		c.Leader()
		waitFor(t, 10*time.Second, "writes after restarting "+name, func() bool { return w.writes.Load() > before+10 })
	}
	w.stopAndCheck(t)
	w.checkAll(t, c)
}

// writer puts fresh keys in a loop, recording acknowledged ones.
type writer struct {
	stop            chan struct{}
	wg              sync.WaitGroup
	acked           sync.Map
	writes, retries atomic.Int64
	badErr          atomic.Value
}

func startWriter(t *testing.T, cli *clientv3.Client) *writer {
	w := &writer{stop: make(chan struct{})}
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		for i := 0; ; i++ {
			select {
			case <-w.stop:
				return
			default:
			}
			k := fmt.Sprintf("k%05d", i)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, err := cli.Put(ctx, k, k)
			cancel()
			switch {
			case err == nil:
				w.acked.Store(k, true)
				w.writes.Add(1)
			case retriable(err):
				w.retries.Add(1)
			default:
				w.badErr.Store(err)
			}
		}
	}()
	t.Cleanup(func() {
		select {
		case <-w.stop:
		default:
			close(w.stop)
		}
		w.wg.Wait()
	})
	return w
}

// stopAndCheck stops the writer and fails t if it met an error a client
// could not retry.
func (w *writer) stopAndCheck(t *testing.T) {
	t.Helper()
	close(w.stop)
	w.wg.Wait()
	if e := w.badErr.Load(); e != nil {
		t.Fatalf("the writer met a non-retriable error: %v", e)
	}
}

// checkAll checks every acknowledged write is on every running member.
func (w *writer) checkAll(t *testing.T, c *servertest.Cluster) {
	t.Helper()
	ctx := ctxT(t)
	lead := c.Leader()
	for _, name := range c.Names() {
		if c.Member(name) == nil {
			continue
		}
		cli := c.Client(name)
		waitFor(t, 10*time.Second, name+" to apply everything", func() bool {
			return c.Member(name).Node().Applied() >= c.Member(lead).Node().Applied()
		})
		resp, err := cli.Get(ctx, "k", clientv3.WithPrefix(), clientv3.WithSerializable())
		if err != nil {
			t.Fatal(err)
		}
		have := map[string]bool{}
		for _, kv := range resp.Kvs {
			have[string(kv.Key)] = true
		}
		missing := 0
		w.acked.Range(func(k, _ any) bool {
			if !have[k.(string)] {
				missing++
			}
			return true
		})
		if missing > 0 {
			t.Fatalf("%s lost %d acknowledged writes", name, missing)
		}
	}
}
