package server_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ballotdb/ballot/internal/testutil"
	"github.com/ballotdb/ballot/server"
	"github.com/ballotdb/ballot/server/servertest"
)

// waitRev waits until every member has applied revision rev.
func waitRev(t *testing.T, c *servertest.Cluster, rev int64) {
	t.Helper()
	for _, name := range c.Names() {
		mc := c.Client(name)
		testutil.Eventually(t, 10*time.Second, func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			resp, err := mc.Get(ctx, "\x00", clientv3.WithSerializable(), clientv3.WithLimit(1))
			return err == nil && resp.Header.Revision >= rev
		}, "member %s did not reach revision %d", name, rev)
	}
}

// TestHashEqualAcrossMembers: after the same writes every member answers
// HashKV and Hash with the same values, at the current revision and at an
// earlier one; Status carries etcd's fields.
func TestHashEqualAcrossMembers(t *testing.T) {
	c := servertest.New(t, 3, nil)
	cli := c.Client()
	ctx := ctxT(t)
	var mid int64
	for i := range 30 {
		resp, err := cli.Put(ctx, fmt.Sprintf("k%d", i%7), fmt.Sprintf("v%d", i))
		if err != nil {
			t.Fatal(err)
		}
		if i == 10 {
			mid = resp.Header.Revision
		}
	}
	d, err := cli.Delete(ctx, "k3")
	if err != nil {
		t.Fatal(err)
	}
	rev := d.Header.Revision
	waitRev(t, c, rev)
	for _, at := range []int64{rev, mid} {
		var first *clientv3.HashKVResponse
		for _, ep := range c.Endpoints() {
			h, err := cli.HashKV(ctx, ep, at)
			if err != nil {
				t.Fatalf("HashKV(%d) on %s: %v", at, ep, err)
			}
			if h.HashRevision != at || h.CompactRevision != -1 || h.Header.MemberId == 0 {
				t.Fatalf("HashKV(%d) on %s: %+v", at, ep, h)
			}
			if first == nil {
				first = h
			} else if h.Hash != first.Hash {
				t.Fatalf("HashKV(%d): %s says %d, another member %d", at, ep, h.Hash, first.Hash)
			}
		}
	}
	// Hash (the whole state) agrees too once every member applied the
	// same entries (the member attributes are meta, replicated as well).
	testutil.Eventually(t, 10*time.Second, func() bool {
		var hashes []uint32
		for _, ep := range c.Endpoints() {
			conn, err := grpc.NewClient(ep, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				return false
			}
			h, err := pb.NewMaintenanceClient(conn).Hash(ctx, &pb.HashRequest{})
			conn.Close()
			if err != nil {
				return false
			}
			hashes = append(hashes, h.Hash)
		}
		return hashes[0] == hashes[1] && hashes[1] == hashes[2]
	}, "Hash differs across members")

	if _, err := cli.HashKV(ctx, c.Endpoints()[0], rev+100); !errors.Is(err, rpctypes.ErrFutureRev) {
		t.Fatalf("HashKV of a future revision: %v", err)
	}
	lead := c.Member(c.Leader()).MemberID()
	for _, ep := range c.Endpoints() {
		st, err := cli.Status(ctx, ep)
		if err != nil {
			t.Fatal(err)
		}
		if st.Version != server.Version || st.DbSize < st.DbSizeInUse || st.DbSizeInUse <= 0 ||
			st.DbSizeQuota != server.DefaultQuotaBackendBytes || st.Leader != lead || st.RaftIndex == 0 ||
			st.RaftAppliedIndex == 0 || st.RaftTerm == 0 || len(st.Errors) != 0 {
			t.Fatalf("status of %s: %+v", ep, st)
		}
	}
}

// TestQuotaNoSpace fills a small quota: NOSPACE is raised through the log,
// puts, put-txns and lease grants are refused with etcd's error on every
// member, reads, deletes and compaction work; after compaction, defragment
// and disarm, writes resume.
func TestQuotaNoSpace(t *testing.T) {
	const quota = 64 << 10
	c := servertest.New(t, 3, func(cfg *server.Config) { cfg.QuotaBackendBytes = quota })
	cli := c.Client()
	ctx := ctxT(t)
	if _, err := cli.Put(ctx, "keep", "me"); err != nil {
		t.Fatal(err)
	}
	val := strings.Repeat("x", 1024)
	var err error
	puts := 0
	for ; puts < 1000; puts++ {
		if _, err = cli.Put(ctx, "big", val); err != nil {
			break
		}
	}
	if !errors.Is(err, rpctypes.ErrNoSpace) {
		t.Fatalf("after %d puts of 1 KiB into a %d-byte quota: %v, want %v", puts, quota, err, rpctypes.ErrNoSpace)
	}
	if puts < quota/(1024+200) {
		t.Fatalf("refused after only %d puts", puts)
	}
	// The alarm is replicated: every member lists it and refuses writes.
	var alarms *clientv3.AlarmResponse
	testutil.Eventually(t, 10*time.Second, func() bool {
		alarms, err = cli.AlarmList(ctx)
		return err == nil && len(alarms.Alarms) > 0
	}, "no alarm after the quota was exceeded")
	if a := alarms.Alarms[0]; a.Alarm != pb.AlarmType_NOSPACE {
		t.Fatalf("alarms %v", alarms.Alarms)
	}
	for _, name := range c.Names() {
		mc := c.Client(name)
		if _, err := mc.Put(ctx, "more", "x"); !errors.Is(err, rpctypes.ErrNoSpace) {
			t.Fatalf("put on %s under NOSPACE: %v", name, err)
		}
		if _, err := mc.Grant(ctx, 60); !errors.Is(err, rpctypes.ErrNoSpace) {
			t.Fatalf("lease grant on %s under NOSPACE: %v", name, err)
		}
		if _, err := mc.Txn(ctx).Then(clientv3.OpPut("t", "v")).Commit(); !errors.Is(err, rpctypes.ErrNoSpace) {
			t.Fatalf("txn with a put on %s under NOSPACE: %v", name, err)
		}
		g, err := mc.Get(ctx, "keep")
		if err != nil || len(g.Kvs) != 1 {
			t.Fatalf("read on %s under NOSPACE: %v %v", name, g, err)
		}
		st, err := mc.Status(ctx, c.Endpoints(name)[0])
		if err != nil || len(st.Errors) == 0 || !strings.Contains(st.Errors[len(st.Errors)-1], "NOSPACE") {
			t.Fatalf("status on %s under NOSPACE: %+v %v", name, st, err)
		}
	}
	if _, err := cli.Delete(ctx, "keep"); err != nil {
		t.Fatalf("delete under NOSPACE: %v", err)
	}
	d, err := cli.Txn(ctx).Then(clientv3.OpDelete("nothing")).Commit()
	if err != nil {
		t.Fatalf("delete-only txn under NOSPACE: %v", err)
	}
	// Compact everything, defragment every member until it is under the
	// quota again, then disarm.
	if _, err := cli.Compact(ctx, d.Header.Revision); err != nil {
		t.Fatalf("compact under NOSPACE: %v", err)
	}
	for _, ep := range c.Endpoints() {
		testutil.Eventually(t, 10*time.Second, func() bool {
			if _, err := cli.Defragment(ctx, ep); err != nil {
				return false
			}
			st, err := cli.Status(ctx, ep)
			return err == nil && st.DbSize < quota/4 && st.DbSize == st.DbSizeInUse
		}, "member %s not back under the quota after compaction and defragment", ep)
	}
	if _, err := cli.Put(ctx, "more", "x"); !errors.Is(err, rpctypes.ErrNoSpace) {
		t.Fatalf("put before the disarm: %v", err)
	}
	disarmed, err := cli.AlarmDisarm(ctx, &clientv3.AlarmMember{})
	if err != nil || len(disarmed.Alarms) == 0 {
		t.Fatalf("disarm: %v %v", disarmed, err)
	}
	if l, err := cli.AlarmList(ctx); err != nil || len(l.Alarms) != 0 {
		t.Fatalf("alarms after disarm: %v %v", l, err)
	}
	for _, name := range c.Names() {
		if _, err := c.Client(name).Put(ctx, "more", name); err != nil {
			t.Fatalf("put on %s after disarm: %v", name, err)
		}
	}
	if _, err := cli.Grant(ctx, 60); err != nil {
		t.Fatalf("lease grant after disarm: %v", err)
	}
}

// TestCorruptionCheckRaisesCorrupt: one member applies puts differently on
// purpose; the leader's consistency check raises CORRUPT naming exactly
// that member, writes are then refused with etcd's error, reads work.
func TestCorruptionCheckRaisesCorrupt(t *testing.T) {
	c := servertest.New(t, 3, func(cfg *server.Config) {
		cfg.CorruptCheckTime = 100 * time.Millisecond
		cfg.Unsafe.CorruptPuts = cfg.Name == "m2"
	})
	bad := c.Member("m2").MemberID()
	cli := c.Client()
	ctx := ctxT(t)
	// The first put already makes m2 differ: the check may raise CORRUPT
	// before the others.
	for i := range 5 {
		if _, err := cli.Put(ctx, fmt.Sprintf("k%d", i), "v"); errors.Is(err, rpctypes.ErrCorrupt) && i > 0 {
			break
		} else if err != nil {
			t.Fatal(err)
		}
	}
	var alarms *clientv3.AlarmResponse
	testutil.Eventually(t, 20*time.Second, func() bool {
		var err error
		alarms, err = cli.AlarmList(ctx)
		return err == nil && len(alarms.Alarms) > 0
	}, "no CORRUPT alarm")
	if len(alarms.Alarms) != 1 || alarms.Alarms[0].MemberID != bad || alarms.Alarms[0].Alarm != pb.AlarmType_CORRUPT {
		t.Fatalf("alarms %v, want CORRUPT for m2 (%x) only", alarms.Alarms, bad)
	}
	if _, err := cli.Put(ctx, "after", "v"); !errors.Is(err, rpctypes.ErrCorrupt) {
		t.Fatalf("put under CORRUPT: %v, want %v", err, rpctypes.ErrCorrupt)
	}
	if _, err := cli.Delete(ctx, "k0"); !errors.Is(err, rpctypes.ErrCorrupt) {
		t.Fatalf("delete under CORRUPT: %v", err)
	}
	if g, err := cli.Get(ctx, "k0"); err != nil || len(g.Kvs) != 1 {
		t.Fatalf("read under CORRUPT: %v %v", g, err)
	}
}

// TestSnapshotStream: the Snapshot stream is etcd's: the header and
// version on the first message, RemainingBytes counting down, a final
// SHA-256 of the bytes before it, 512k+32 bytes in all; the backup loads
// into a store with the member's revision and hash.
func TestSnapshotStream(t *testing.T) {
	c := servertest.New(t, 1, nil)
	cli := c.Client()
	ctx := ctxT(t)
	var rev int64
	for i := range 200 {
		resp, err := cli.Put(ctx, fmt.Sprintf("key/%03d", i), strings.Repeat("v", 300+i)) // 90 KB: several chunks
		if err != nil {
			t.Fatal(err)
		}
		rev = resp.Header.Revision
	}
	conn, err := grpc.NewClient(c.Endpoints()[0], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	stream, err := pb.NewMaintenanceClient(conn).Snapshot(ctx, &pb.SnapshotRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var all []byte
	var msgs []*pb.SnapshotResponse
	for {
		m, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		msgs = append(msgs, m)
		all = append(all, m.Blob...)
	}
	if len(msgs) < 3 || msgs[0].Header == nil || msgs[0].Version != server.Version {
		t.Fatalf("%d messages; the first with header %v, version %q", len(msgs), msgs[0].Header, msgs[0].Version)
	}
	body := len(all) - sha256.Size
	if len(all)%512 != sha256.Size || uint64(len(msgs[0].Blob))+msgs[0].RemainingBytes != uint64(body) {
		t.Fatalf("%d bytes; first blob %d + remaining %d", len(all), len(msgs[0].Blob), msgs[0].RemainingBytes)
	}
	if last := msgs[len(msgs)-1]; last.RemainingBytes != 0 || len(last.Blob) != sha256.Size {
		t.Fatalf("last message %d bytes, remaining %d", len(last.Blob), last.RemainingBytes)
	}
	if sum := sha256.Sum256(all[:body]); !bytes.Equal(sum[:], all[body:]) {
		t.Fatal("the final message is not the SHA-256 of the stream")
	}
	_, info, err := server.ReadBackup(all)
	if err != nil {
		t.Fatal(err)
	}
	h, err := cli.HashKV(ctx, c.Endpoints()[0], rev)
	if err != nil {
		t.Fatal(err)
	}
	if info.Revision != rev || info.Keys != 200 || info.Hash != h.Hash {
		t.Fatalf("backup %+v; member at revision %d hash %d", info, rev, h.Hash)
	}
	// A flipped byte fails the checksum.
	bad := bytes.Clone(all)
	bad[100] ^= 1
	if _, _, err := server.ReadBackup(bad); !errors.Is(err, server.ErrBackupChecksum) {
		t.Fatalf("corrupted backup: %v", err)
	}
	// clientv3's reader sees the same bytes.
	rc, err := cli.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	viaClient, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || len(viaClient)%512 != sha256.Size {
		t.Fatalf("clientv3 Snapshot: %d bytes, %v", len(viaClient), err)
	}
}

// TestRestoreIntoNewCluster: a backup restored into every member's data
// directory of a new three-member cluster brings up every key with its
// revisions, and the history hashes the same.
func TestRestoreIntoNewCluster(t *testing.T) {
	src := servertest.New(t, 3, nil)
	cli := src.Client()
	ctx := ctxT(t)
	for i := range 50 {
		if _, err := cli.Put(ctx, fmt.Sprintf("k%02d", i%20), fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cli.Delete(ctx, "k05"); err != nil {
		t.Fatal(err)
	}
	rc, err := cli.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	backup, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		t.Fatal(err)
	}
	_, info, err := server.ReadBackup(backup)
	if err != nil {
		t.Fatal(err)
	}
	want, err := cli.Get(ctx, "", clientv3.WithPrefix(), clientv3.WithRev(info.Revision))
	if err != nil {
		t.Fatal(err)
	}
	wantHash, err := cli.HashKV(ctx, src.Endpoints()[0], info.Revision)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	dst := servertest.New(t, 3, func(cfg *server.Config) {
		mu.Lock()
		defer mu.Unlock()
		if names, _ := os.ReadDir(cfg.DataDir); len(names) > 0 {
			return // a restart
		}
		if _, err := server.RestoreDataDir(context.Background(), server.RestoreConfig{Backup: backup, DataDir: cfg.DataDir,
			Name: cfg.Name, InitialCluster: cfg.InitialCluster, ClusterToken: cfg.ClusterToken}); err != nil {
			t.Errorf("restore %s: %v", cfg.Name, err)
		}
	})
	dcli := dst.Client()
	got, err := dcli.Get(ctx, "", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if got.Header.Revision != info.Revision || len(got.Kvs) != len(want.Kvs) {
		t.Fatalf("restored cluster at revision %d with %d keys, want %d and %d", got.Header.Revision, len(got.Kvs), info.Revision, len(want.Kvs))
	}
	for i := range want.Kvs {
		if w, g := want.Kvs[i], got.Kvs[i]; string(w.Key) != string(g.Key) || string(w.Value) != string(g.Value) ||
			w.CreateRevision != g.CreateRevision || w.ModRevision != g.ModRevision || w.Version != g.Version {
			t.Fatalf("key %d: got %v, want %v", i, g, w)
		}
	}
	for _, ep := range dst.Endpoints() {
		testutil.Eventually(t, 10*time.Second, func() bool {
			h, err := dcli.HashKV(ctx, ep, info.Revision)
			return err == nil && h.Hash == wantHash.Hash
		}, "restored member %s does not hash like the source", ep)
	}
	// The new cluster takes writes, and its members know one another.
	if _, err := dcli.Put(ctx, "new", "write"); err != nil {
		t.Fatal(err)
	}
	ml, err := dcli.MemberList(ctx)
	if err != nil || len(ml.Members) != 3 {
		t.Fatalf("member list %v %v", ml, err)
	}
	// The restored WAL's small first segment grows past its size and
	// rolls; a member restarted afterwards recovers all of it.
	var last int64
	for i := range 300 {
		p, err := dcli.Put(ctx, fmt.Sprintf("grow/%d", i%10), strings.Repeat("g", 1024))
		if err != nil {
			t.Fatal(err)
		}
		last = p.Header.Revision
	}
	waitRev(t, dst, last)
	name := dst.Follower()
	dst.Stop(name)
	dst.Restart(name)
	waitRev(t, dst, last)
	g, err := dst.Client(name).Get(ctx, "grow/", clientv3.WithPrefix(), clientv3.WithSerializable())
	if err != nil || len(g.Kvs) != 10 || g.Header.Revision != last {
		t.Fatalf("restarted member: %v keys at revision %d (want 10 at %d), %v", len(g.Kvs), g.Header.Revision, last, err)
	}
}

// TestSnapshotWithoutQuorum: a member that lost its majority still hands
// out a backup of its local state, the case backups exist for.
func TestSnapshotWithoutQuorum(t *testing.T) {
	c := servertest.New(t, 3, nil)
	cli := c.Client()
	ctx := ctxT(t)
	p, err := cli.Put(ctx, "k", "v")
	if err != nil {
		t.Fatal(err)
	}
	waitRev(t, c, p.Header.Revision)
	survivor := c.Follower()
	for _, n := range c.Names() {
		if n != survivor {
			c.Stop(n)
		}
	}
	rc, err := c.Client(survivor).Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		t.Fatal(err)
	}
	_, info, err := server.ReadBackup(b)
	if err != nil || info.Revision != p.Header.Revision || info.Keys != 1 {
		t.Fatalf("backup from a member without quorum: %+v %v", info, err)
	}
}
