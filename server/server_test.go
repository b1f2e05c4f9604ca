package server_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"

	"github.com/ballotdb/ballot/consensus"
	"github.com/ballotdb/ballot/internal/testutil"
	"github.com/ballotdb/ballot/server"
	"github.com/ballotdb/ballot/server/servertest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// clientv3 and grpc keep package-level goroutines.
		goleak.IgnoreTopFunction("google.golang.org/grpc/internal/grpcsync.(*CallbackSerializer).run"),
		goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"),
	)
}

// TestKVThroughEveryMember: writes and reads through the leader and through
// a follower (forwarded inside the cluster) see one history, with etcd's
// revision rules and response headers.
func TestKVThroughEveryMember(t *testing.T) {
	c := servertest.New(t, 3, nil)
	lead, fol := c.Leader(), c.Follower()
	lc, fc := c.Client(lead), c.Client(fol)
	ctx := ctxT(t)

	p1, err := fc.Put(ctx, "a", "1")
	if err != nil {
		t.Fatal(err)
	}
	h := p1.Header
	if h.ClusterId != c.Member(fol).ClusterID() || h.MemberId != c.Member(fol).MemberID() || h.RaftTerm == 0 || h.Revision != 2 {
		t.Fatalf("put header %+v: want cluster %x, member %x, a term and revision 2", h, c.Member(fol).ClusterID(), c.Member(fol).MemberID())
	}
	if _, err := lc.Put(ctx, "a", "2"); err != nil {
		t.Fatal(err)
	}
	if _, err := lc.Put(ctx, "b", "x"); err != nil {
		t.Fatal(err)
	}
	// A linearizable read on the follower sees the leader's writes.
	g, err := fc.Get(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	if len(g.Kvs) != 1 || string(g.Kvs[0].Value) != "2" || g.Kvs[0].Version != 2 || g.Kvs[0].CreateRevision != 2 || g.Kvs[0].ModRevision != 3 {
		t.Fatalf("get a: %+v", g.Kvs)
	}
	if g.Header.Revision != 4 {
		t.Fatalf("revision after three puts: %d, want 4", g.Header.Revision)
	}
	// A delete of nothing and a txn writing nothing do not move the revision.
	d, err := fc.Delete(ctx, "nothing")
	if err != nil || d.Deleted != 0 || d.Header.Revision != 4 {
		t.Fatalf("delete of nothing: %+v %v", d, err)
	}
	tr, err := lc.Txn(ctx).If(clientv3.Compare(clientv3.Value("a"), "=", "2")).
		Then(clientv3.OpPut("a", "3"), clientv3.OpPut("c", "y"), clientv3.OpGet("a")).
		Else(clientv3.OpGet("a")).Commit()
	if err != nil || !tr.Succeeded {
		t.Fatalf("txn: %v %+v", err, tr)
	}
	if tr.Header.Revision != 5 {
		t.Fatalf("a txn of two puts is one revision: got %d, want 5", tr.Header.Revision)
	}
	got := tr.Responses[2].GetResponseRange().Kvs[0]
	if string(got.Value) != "3" || got.ModRevision != 5 {
		t.Fatalf("txn reads its own write: %+v", got)
	}
	// Prefix and range reads, count and limit.
	all, err := fc.Get(ctx, "", clientv3.WithPrefix(), clientv3.WithLimit(2))
	if err != nil || all.Count != 3 || len(all.Kvs) != 2 || !all.More {
		t.Fatalf("prefix read with limit: %+v %v", all, err)
	}
	// Reads at an old revision.
	old, err := fc.Get(ctx, "a", clientv3.WithRev(2))
	if err != nil || string(old.Kvs[0].Value) != "1" {
		t.Fatalf("read at revision 2: %+v %v", old, err)
	}
	// Serializable reads on every member converge.
	for _, name := range []string{lead, fol} {
		cli := c.Client(name)
		testutil.Eventually(t, 5*time.Second, func() bool {
			r, err := cli.Get(ctx, "c", clientv3.WithSerializable())
			return err == nil && len(r.Kvs) == 1 && string(r.Kvs[0].Value) == "y"
		}, "serializable read on %s never saw c", name)
	}
}

// TestBadInputRefusedWithEtcdErrors: each bad request gets the error etcd
// gives, and none changes the state.
func TestBadInputRefusedWithEtcdErrors(t *testing.T) {
	c := servertest.New(t, 3, nil)
	cli := c.Client(c.Follower())
	ctx := ctxT(t)
	if _, err := cli.Put(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, "k", "v2"); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Compact(ctx, 2); err != nil {
		t.Fatal(err)
	}
	before, err := cli.Get(ctx, "", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	many := cli.Txn(ctx)
	var ops []clientv3.Op
	for i := range 129 {
		ops = append(ops, clientv3.OpPut(fmt.Sprint("k", i), "v"))
	}
	cases := []struct {
		name string
		do   func() error
		want error
	}{
		{"empty key put", func() error { _, err := cli.Put(ctx, "", "v"); return err }, rpctypes.ErrGRPCEmptyKey},
		{"empty key get", func() error { _, err := cli.Get(ctx, ""); return err }, rpctypes.ErrGRPCEmptyKey},
		{"value over the limit", func() error { _, err := cli.Put(ctx, "big", strings.Repeat("x", 1600*1024)); return err }, rpctypes.ErrGRPCRequestTooLarge},
		{"future revision", func() error { _, err := cli.Get(ctx, "k", clientv3.WithRev(1000)); return err }, rpctypes.ErrGRPCFutureRev},
		{"compacted revision", func() error { _, err := cli.Get(ctx, "k", clientv3.WithRev(1)); return err }, rpctypes.ErrGRPCCompacted},
		{"compact again", func() error { _, err := cli.Compact(ctx, 2); return err }, rpctypes.ErrGRPCCompacted},
		{"unknown lease", func() error { _, err := cli.Put(ctx, "k", "v", clientv3.WithLease(0x1234)); return err }, rpctypes.ErrGRPCLeaseNotFound},
		{"too many txn ops", func() error { _, err := many.Then(ops...).Commit(); return err }, rpctypes.ErrGRPCTooManyOps},
		{"duplicate key in txn", func() error {
			_, err := cli.Txn(ctx).Then(clientv3.OpPut("d", "1"), clientv3.OpPut("d", "2")).Commit()
			return err
		}, rpctypes.ErrGRPCDuplicateKey},
		{"revoke unknown lease", func() error { _, err := cli.Revoke(ctx, 0x777); return err }, rpctypes.ErrGRPCLeaseNotFound},
		{"ignore value of a missing key", func() error { _, err := cli.Put(ctx, "missing", "", clientv3.WithIgnoreValue()); return err }, rpctypes.ErrGRPCKeyNotFound},
	}
	for _, tc := range cases {
		err := tc.do()
		if err == nil {
			t.Errorf("%s: no error, want %v", tc.name, tc.want)
			continue
		}
		if code, msg := errCodeMsg(err); code != status.Code(tc.want) || msg != status.Convert(tc.want).Message() {
			t.Errorf("%s: %q (%s), want %q (%s)", tc.name, msg, code, status.Convert(tc.want).Message(), status.Code(tc.want))
		}
	}
	after, err := cli.Get(ctx, "", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if after.Header.Revision != before.Header.Revision || len(after.Kvs) != len(before.Kvs) {
		t.Fatalf("bad input changed the state: revision %d → %d, %d keys → %d", before.Header.Revision, after.Header.Revision, len(before.Kvs), len(after.Kvs))
	}
	// Auth is not there yet: a clean Unimplemented, not a crash.
	_, err = cli.AuthStatus(ctx)
	if status.Code(err) != codes.Unimplemented {
		t.Fatalf("auth status: %v, want Unimplemented", err)
	}
}

// TestWatch: a watcher sees every change in order, one Txn's events in one
// response, from an old revision too; one behind a compaction is told so.
func TestWatch(t *testing.T) {
	c := servertest.New(t, 3, nil)
	lc, fc := c.Client(c.Leader()), c.Client(c.Follower())
	ctx := ctxT(t)
	wch := fc.Watch(ctx, "w/", clientv3.WithPrefix(), clientv3.WithPrevKV())
	// Let the watch be created before writing (a create response arrives
	// first; a progress request confirms the stream is up).
	if err := fc.RequestProgress(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := lc.Put(ctx, "w/a", "1"); err != nil {
		t.Fatal(err)
	}
	if _, err := lc.Txn(ctx).Then(clientv3.OpPut("w/b", "2"), clientv3.OpDelete("w/a")).Commit(); err != nil {
		t.Fatal(err)
	}
	if _, err := lc.Put(ctx, "other", "x"); err != nil {
		t.Fatal(err)
	}
	var got []string
	var responses int
	for len(got) < 3 {
		select {
		case wr := <-wch:
			if err := wr.Err(); err != nil {
				t.Fatal(err)
			}
			if len(wr.Events) > 0 {
				responses++
			}
			for _, ev := range wr.Events {
				s := fmt.Sprintf("%s %s@%d", ev.Type, ev.Kv.Key, ev.Kv.ModRevision)
				if ev.Type == mvccpb.DELETE && (ev.PrevKv == nil || string(ev.PrevKv.Value) != "1") {
					t.Fatalf("delete without its prev_kv: %+v", ev)
				}
				got = append(got, s)
			}
		case <-ctx.Done():
			t.Fatalf("watch saw only %v", got)
		}
	}
	want := []string{"PUT w/a@2", "PUT w/b@3", "DELETE w/a@3"}
	if fmt.Sprint(got) != fmt.Sprint(want) || responses != 2 {
		t.Fatalf("events %v in %d responses, want %v in 2", got, responses, want)
	}
	// From an old revision: the whole history replays.
	old := fc.Watch(ctx, "w/", clientv3.WithPrefix(), clientv3.WithRev(1))
	n := 0
	for n < 3 {
		wr := <-old
		if wr.Err() != nil {
			t.Fatal(wr.Err())
		}
		n += len(wr.Events)
	}
	// Behind a compaction: the compacted error with the compact revision
	// (compacted through the watching member, so it has applied it).
	if _, err := fc.Compact(ctx, 4); err != nil {
		t.Fatal(err)
	}
	stale := fc.Watch(ctx, "w/", clientv3.WithPrefix(), clientv3.WithRev(2))
	wr := <-stale
	if !errors.Is(wr.Err(), rpctypes.ErrCompacted) || wr.CompactRevision != 4 {
		t.Fatalf("watch behind a compaction: err %v compact revision %d, want ErrCompacted at 4", wr.Err(), wr.CompactRevision)
	}
}

// TestLeases: keys attached to a lease go when it is revoked, and when it
// expires because no one keeps it alive; a lease kept alive through a
// follower outlives many TTLs, and a leader change does not expire it.
func TestLeases(t *testing.T) {
	c := servertest.New(t, 3, nil)
	lead, fol := c.Leader(), c.Follower()
	fc := c.Client(fol)
	ctx := ctxT(t)

	g, err := fc.Grant(ctx, 1) // below the minimum: raised to it, as etcd does
	if err != nil {
		t.Fatal(err)
	}
	if g.TTL < 1 {
		t.Fatalf("granted TTL %d", g.TTL)
	}
	if _, err := fc.Put(ctx, "owned", "v", clientv3.WithLease(g.ID)); err != nil {
		t.Fatal(err)
	}
	ttl, err := fc.TimeToLive(ctx, g.ID, clientv3.WithAttachedKeys())
	if err != nil || len(ttl.Keys) != 1 || string(ttl.Keys[0]) != "owned" || ttl.GrantedTTL != g.TTL {
		t.Fatalf("time to live: %+v %v", ttl, err)
	}
	if _, err := fc.Revoke(ctx, g.ID); err != nil {
		t.Fatal(err)
	}
	if r, _ := fc.Get(ctx, "owned"); len(r.Kvs) != 0 {
		t.Fatal("revoking the lease left its key")
	}

	// Expiry: nobody keeps it alive.
	exp, err := fc.Grant(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fc.Put(ctx, "expiring", "v", clientv3.WithLease(exp.ID)); err != nil {
		t.Fatal(err)
	}
	granted := time.Now()
	testutil.Eventually(t, 10*time.Second, func() bool {
		r, err := fc.Get(ctx, "expiring")
		return err == nil && len(r.Kvs) == 0
	}, "a lease nobody kept alive never expired")
	if took := time.Since(granted); took < time.Duration(exp.TTL)*time.Second-200*time.Millisecond {
		t.Fatalf("lease of %ds expired after %v", exp.TTL, took)
	}

	// Kept alive through a follower, across a leader change.
	kept, err := fc.Grant(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fc.Put(ctx, "kept", "v", clientv3.WithLease(kept.ID)); err != nil {
		t.Fatal(err)
	}
	kctx, kcancel := context.WithCancel(context.Background())
	defer kcancel()
	ka, err := fc.KeepAlive(kctx, kept.ID)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for range ka {
		}
	}()
	deadline := time.Now().Add(time.Duration(3*kept.TTL) * time.Second)
	c.Stop(lead) // hands leadership away, then stops
	for time.Now().Before(deadline) {
		r, err := fc.Get(ctx, "kept")
		if err == nil && len(r.Kvs) == 0 {
			t.Fatal("a lease kept alive expired")
		}
		select {
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		}
	}
	c.Restart(lead)
	kcancel()
}

// errCodeMsg returns the gRPC code and message of an error as a client
// sees it: clientv3 turns etcd's well-known errors into rpctypes.EtcdError.
func errCodeMsg(err error) (codes.Code, string) {
	var ee rpctypes.EtcdError
	if errors.As(err, &ee) {
		return ee.Code(), ee.Error()
	}
	st := status.Convert(err)
	return st.Code(), st.Message()
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestHostileBytesOnTheClientPort: garbage, a TLS handshake to the plain
// port, and a request whose body is not a valid message are refused
// without harming the member; a write afterwards still works and nothing
// changed meanwhile.
func TestHostileBytesOnTheClientPort(t *testing.T) {
	c := servertest.New(t, 3, nil)
	name := c.Follower()
	addr := c.Endpoints(name)[0]
	cli := c.Client(name)
	ctx := ctxT(t)
	before, err := cli.Get(ctx, "x")
	if err != nil {
		t.Fatal(err)
	}
	// Garbage bytes.
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	conn.Write([]byte("GET / HTTP/1.1\r\n\r\n\x00\x01\x02 not grpc at all"))
	conn.Close()
	// TLS to the plain port.
	tc, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", addr, &tls.Config{InsecureSkipVerify: true})
	if err == nil {
		tc.Close()
		t.Fatal("a TLS handshake with the plain client port succeeded")
	}
	// A malformed request body, sent with a raw codec.
	gc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer gc.Close()
	var out rawFrame
	err = gc.Invoke(ctx, "/etcdserverpb.KV/Put", rawFrame{0xff, 0xff, 0xff, 0x0f, 0x0a}, &out, grpc.ForceCodecV2(rawCodec{}))
	if err == nil {
		t.Fatal("a malformed Put was accepted")
	}
	t.Logf("malformed request refused: %v", err)
	after, err := cli.Get(ctx, "x")
	if err != nil {
		t.Fatal(err)
	}
	if after.Header.Revision != before.Header.Revision {
		t.Fatalf("hostile input changed the revision %d → %d", before.Header.Revision, after.Header.Revision)
	}
	if _, err := cli.Put(ctx, "x", "still fine"); err != nil {
		t.Fatalf("member unusable after hostile input: %v", err)
	}
}

// rawFrame and rawCodec send bytes as they are.
type rawFrame []byte

type rawCodec struct{}

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(v.(rawFrame))}, nil
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	*v.(*rawFrame) = data.Materialize()
	return nil
}

func (rawCodec) Name() string { return "proto" }

// TestLeaseHandOver: leadership handed away on purpose (MoveLeader) keeps
// each lease's remaining time instead of giving it a full TTL, and a
// keep-alive after the handover clears the recorded time through the log,
// on every member, so no later leader starts from a figure older than it.
func TestLeaseHandOver(t *testing.T) {
	c := servertest.New(t, 3, nil)
	lead, fol := c.Leader(), c.Follower()
	ctx := ctxT(t)
	cli := c.Client(lead)
	g, err := cli.Grant(ctx, 6)
	if err != nil {
		t.Fatal(err)
	}
	leaseRunsDown(t, c.Member(lead), g.ID, 4*time.Second)
	if _, err := cli.MoveLeader(ctx, c.Member(fol).MemberID()); err != nil {
		t.Fatalf("MoveLeader: %v", err)
	}
	testutil.Eventually(t, 10*time.Second, func() bool {
		_, ok := server.LeaseLeft(c.Member(fol), int64(g.ID))
		return ok
	}, "the new leader never took up its term")
	// Taking up gives a full TTL (6 s) at once; within a second (a read
	// barrier here) the new leader shortens it to what the handover
	// recorded: at most 4 s (rounded up to the second) plus an election
	// timeout (100 ms here). Without the handover it stays above 5 s for
	// that second.
	var left time.Duration
	testutil.Eventually(t, time.Second, func() bool {
		left, _ = server.LeaseLeft(c.Member(fol), int64(g.ID))
		return left <= 4*time.Second+100*time.Millisecond
	}, "the new leader did not shorten the lease to the 4 s it had left")
	for _, name := range c.Names() {
		if rem := server.LeaseCheckpointed(c.Member(name), int64(g.ID)); rem < 1 || rem > 4 {
			t.Fatalf("%s recorded %d s left for the lease, want 1..4", name, rem)
		}
	}

	// A keep-alive now renews to the full TTL and clears the record on
	// every member (through the log), so a crash of this leader would not
	// let its successor start from the old figure.
	ka, err := c.Client(fol).KeepAliveOnce(ctx, g.ID)
	if err != nil || ka.TTL != 6 {
		t.Fatalf("keep-alive after the handover: %+v %v", ka, err)
	}
	if left, ok := server.LeaseLeft(c.Member(fol), int64(g.ID)); !ok || left < 5*time.Second {
		t.Fatalf("after the keep-alive the leader gives the lease %v (%v), want about 6 s", left, ok)
	}
	testutil.Eventually(t, 10*time.Second, func() bool {
		for _, name := range c.Names() {
			if server.LeaseCheckpointed(c.Member(name), int64(g.ID)) != 0 {
				return false
			}
		}
		return true
	}, "the keep-alive did not clear the recorded remaining time on every member")
}

// TestLeaseTakeUpNotHeldUpByRevocations: a revocation the leader proposed
// just before it lost its quorum (an entry that never commits) holds up
// neither the lessor's checks nor its next term: when the member leads
// again it gives the leases their TTLs at once. A chaos run (containers,
// a leader paused past its leases' deadlines) found the lessor waiting
// out such revocations for the whole request timeout, and every lease
// then expiring that much late.
func TestLeaseTakeUpNotHeldUpByRevocations(t *testing.T) {
	if servertest.Engine() != "raft" {
		t.Skip("relies on Raft's CheckQuorum step-down of a leader cut off from its quorum")
	}
	// A 2 s election timeout: the leader keeps its term for that long
	// after its followers stop, long enough for a lease to expire; the
	// request timeout (what a stuck revocation waited) is 9 s.
	c := servertest.New(t, 3, func(cfg *server.Config) {
		cfg.TickInterval = 100 * time.Millisecond
		cfg.ElectionTicks = 20
	})
	lead := c.Leader()
	ctx := ctxT(t)
	cli := c.Client(lead)
	short, err := cli.Grant(ctx, 3)
	if err != nil {
		t.Fatal(err)
	}
	kept, err := cli.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	leaseRunsDown(t, c.Member(lead), short.ID, 500*time.Millisecond)
	var others []string
	for _, name := range c.Names() {
		if name != lead {
			others = append(others, name)
		}
	}
	for _, name := range others {
		c.Stop(name)
	}
	// The short lease expires now, while the leader still holds its term:
	// it proposes the revocation, which cannot commit; then it steps down.
	testutil.Eventually(t, 10*time.Second, func() bool {
		return c.Member(lead).Node().Role() != consensus.Leader
	}, "the leader cut off from its quorum did not step down")
	for _, name := range others {
		c.Restart(name)
	}
	if now := c.Leader(); now != lead {
		if _, err := c.Client(now).MoveLeader(ctx, c.Member(lead).MemberID()); err != nil {
			t.Fatalf("MoveLeader back to %s: %v", lead, err)
		}
	}
	testutil.Eventually(t, 10*time.Second, func() bool {
		return c.Member(lead).Node().Role() == consensus.Leader
	}, "%s did not lead again", lead)
	testutil.Eventually(t, 1500*time.Millisecond, func() bool {
		_, ok := server.LeaseLeft(c.Member(lead), int64(kept.ID))
		return ok
	}, "the new term's lessor did not take up within 1.5 s (held up by the old term's revocation?)")
	// And the short lease, abandoned, goes within its TTL of taking up.
	testutil.Eventually(t, 5*time.Second, func() bool {
		r, err := c.Client(lead).TimeToLive(ctx, short.ID)
		return err == nil && r.TTL == -1
	}, "the short lease was not revoked by the new term")
}

// leaseRunsDown waits until the leader s has less than below left on the
// lease id.
func leaseRunsDown(t *testing.T, s *server.Server, id clientv3.LeaseID, below time.Duration) {
	t.Helper()
	testutil.Eventually(t, 10*time.Second, func() bool {
		left, ok := server.LeaseLeft(s, int64(id))
		return ok && left < below
	}, "the lease never ran down below %v on the leader", below)
}
