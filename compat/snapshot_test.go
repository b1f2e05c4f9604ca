package compat

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ballotdb/ballot/server"
	"github.com/ballotdb/ballot/server/servertest"
)

// TestSnapshotRestoreUnderLoad saves a snapshot with etcdctl while clients
// write (puts, deletes, txns, a leased key), restores it into every member
// of a new three-member cluster, and compares the two clusters at every
// revision up to the snapshot's: every key with its value, create and mod
// revision, version and lease, and the hash of the whole history.
func TestSnapshotRestoreUnderLoad(t *testing.T) {
	src := servertest.New(t, 3, nil)
	cli := newClient(t, src.Endpoints())
	ctx := testCtx(t, 2*time.Minute)
	lease, err := cli.Grant(ctx, 3600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, "leased", "v", clientv3.WithLease(lease.ID)); err != nil {
		t.Fatal(err)
	}

	// Writers: each its own key space and random generator.
	var writes atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 7))
			for {
				select {
				case <-stop:
					return
				default:
				}
				k := fmt.Sprintf("w%d/k%02d", w, r.IntN(20))
				var err error
				switch r.IntN(10) {
				case 0:
					_, err = cli.Delete(ctx, k)
				case 1:
					_, err = cli.Txn(ctx).If(clientv3.Compare(clientv3.Version(k), ">", 0)).
						Then(clientv3.OpPut(k, "txn"), clientv3.OpPut(k+"/t", "t")).Else(clientv3.OpPut(k, "new")).Commit()
				default:
					_, err = cli.Put(ctx, k, fmt.Sprint(r.Uint32()))
				}
				if err != nil {
					errs <- fmt.Errorf("writer %d: %w", w, err)
					return
				}
				writes.Add(1)
			}
		}()
	}
	stopWriters := func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		wg.Wait()
	}
	defer stopWriters()
	poll(t, 30*time.Second, func() bool { return writes.Load() >= 200 }, "writers made %d writes", writes.Load())

	file := filepath.Join(t.TempDir(), "snap.db")
	one := ctl{t: t, bin: etcdctl(t), eps: src.Endpoints()[1]}
	one.run("", "snapshot", "save", file)
	after := writes.Load()
	poll(t, 30*time.Second, func() bool { return writes.Load() >= after+100 }, "writers stalled after the snapshot")
	stopWriters()
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}

	backup, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	_, info, err := server.ReadBackup(backup)
	if err != nil {
		t.Fatal(err)
	}
	end, err := cli.Get(ctx, "leased")
	if err != nil {
		t.Fatal(err)
	}
	if info.Revision >= end.Header.Revision || info.Revision < 200 {
		t.Fatalf("snapshot at revision %d; the source went on to %d", info.Revision, end.Header.Revision)
	}
	t.Logf("snapshot at revision %d (%d keys) of %d; restoring", info.Revision, info.Keys, end.Header.Revision)

	dst := servertest.New(t, 3, func(cfg *server.Config) {
		if _, err := server.RestoreDataDir(context.Background(), server.RestoreConfig{Backup: backup, DataDir: cfg.DataDir,
			Name: cfg.Name, InitialCluster: cfg.InitialCluster, ClusterToken: cfg.ClusterToken}); err != nil {
			t.Errorf("restore %s: %v", cfg.Name, err)
		}
	})
	dcli := newClient(t, dst.Endpoints())
	for rev := int64(1); rev <= info.Revision; rev++ {
		want, err := cli.Get(ctx, "", clientv3.WithPrefix(), clientv3.WithRev(rev))
		if err != nil {
			t.Fatal(err)
		}
		got, err := dcli.Get(ctx, "", clientv3.WithPrefix(), clientv3.WithRev(rev))
		if err != nil {
			t.Fatalf("restored cluster at revision %d: %v", rev, err)
		}
		if len(got.Kvs) != len(want.Kvs) {
			t.Fatalf("revision %d: %d keys restored, %d in the source", rev, len(got.Kvs), len(want.Kvs))
		}
		for i, w := range want.Kvs {
			g := got.Kvs[i]
			if string(g.Key) != string(w.Key) || string(g.Value) != string(w.Value) || g.CreateRevision != w.CreateRevision ||
				g.ModRevision != w.ModRevision || g.Version != w.Version || g.Lease != w.Lease {
				t.Fatalf("revision %d, key %d: restored %v, source %v", rev, i, g, w)
			}
		}
	}
	now, err := dcli.Get(ctx, "leased")
	if err != nil {
		t.Fatal(err)
	}
	if now.Header.Revision != info.Revision || len(now.Kvs) != 1 || now.Kvs[0].Lease != int64(lease.ID) {
		t.Fatalf("restored cluster at revision %d (want %d), leased key %v", now.Header.Revision, info.Revision, now.Kvs)
	}
	for _, ep := range dst.Endpoints() {
		var dh, sh *clientv3.HashKVResponse
		poll(t, 10*time.Second, func() bool {
			var err1, err2 error
			dh, err1 = dcli.HashKV(ctx, ep, info.Revision)
			sh, err2 = cli.HashKV(ctx, src.Endpoints()[0], info.Revision)
			return err1 == nil && err2 == nil && dh.Hash == sh.Hash
		}, "restored member %s hashes %v, the source %v", ep, dh, sh)
	}
	ttl, err := dcli.TimeToLive(ctx, lease.ID, clientv3.WithAttachedKeys())
	if err != nil || ttl.TTL <= 0 || len(ttl.Keys) != 1 {
		t.Fatalf("restored lease: %+v %v", ttl, err)
	}
	p, err := dcli.Put(ctx, "after-restore", "v")
	if err != nil || p.Header.Revision != info.Revision+1 {
		t.Fatalf("write to the restored cluster: %v %v", p, err)
	}
}
