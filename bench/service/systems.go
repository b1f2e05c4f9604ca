package service

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/ballotdb/ballot/server"
	"github.com/ballotdb/ballot/server/servertest"
)

// System names a service and starts a cluster of it, returning its client
// endpoints; the cluster stops in b.Cleanup.
type System struct {
	Name  string
	Start func(b *testing.B, members int) []string
}

// Systems is every service compared, ballot's first.
var Systems = []System{
	{Name: "ballot", Start: startBallot},
	{Name: "etcd", Start: startEtcd},
}

const opTimeout = 30 * time.Second

// startBallot starts members ballot members with ballot's default timing
// (servertest's 10 ms test tick is put back to 100 ms).
func startBallot(b *testing.B, members int) []string {
	b.Helper()
	c := servertest.New(b, members, func(cfg *server.Config) {
		cfg.TickInterval = 100 * time.Millisecond
		cfg.ElectionTicks = 10
	})
	c.Leader()
	return c.Endpoints()
}

// startEtcd starts members etcd members, each with its own data directory,
// fsync on and etcd's default timing, and returns once all are ready.
func startEtcd(b *testing.B, members int) []string {
	b.Helper()
	var (
		names    []string
		cus, pus []url.URL
		initial  []string
	)
	for i := 1; i <= members; i++ {
		name := fmt.Sprintf("etcd%d", i)
		cu, pu := freeURL(b), freeURL(b)
		names = append(names, name)
		cus = append(cus, cu)
		pus = append(pus, pu)
		initial = append(initial, name+"="+pu.String())
	}
	logDir := b.TempDir()
	cfgs := make([]*embed.Config, members)
	for i := range members {
		cfg := embed.NewConfig()
		cfg.Name = names[i]
		cfg.Dir = b.TempDir()
		cfg.ListenClientUrls = []url.URL{cus[i]}
		cfg.AdvertiseClientUrls = []url.URL{cus[i]}
		cfg.ListenPeerUrls = []url.URL{pus[i]}
		cfg.AdvertisePeerUrls = []url.URL{pus[i]}
		cfg.InitialCluster = strings.Join(initial, ",")
		cfg.InitialClusterToken = "bench"
		cfg.ClusterState = embed.ClusterStateFlagNew
		cfg.TickMs = 100      // etcd's default
		cfg.ElectionMs = 1000 // etcd's default
		cfg.LogLevel = "error"
		logFile := filepath.Join(logDir, names[i]+".log")
		cfg.LogOutputs = []string{logFile}
		b.Cleanup(func() {
			if out, err := os.ReadFile(logFile); b.Failed() && err == nil && len(out) > 0 {
				b.Logf("%s log:\n%s", names[i], out)
			}
		})
		cfgs[i] = cfg
	}
	// A member of a new cluster waits for its peers, so start them together.
	etcds := make([]*embed.Etcd, members)
	errs := make([]error, members)
	var wg sync.WaitGroup
	for i := range members {
		wg.Go(func() { etcds[i], errs[i] = embed.StartEtcd(cfgs[i]) })
	}
	wg.Wait()
	for _, e := range etcds {
		if e != nil {
			b.Cleanup(e.Close)
		}
	}
	if err := errors.Join(errs...); err != nil {
		b.Fatalf("start etcd: %v", err)
	}
	deadline := time.After(60 * time.Second)
	for i, e := range etcds {
		select {
		case <-e.Server.ReadyNotify():
		case err := <-e.Err():
			b.Fatalf("%s failed: %v", names[i], err)
		case <-deadline:
			b.Fatalf("%s not ready within 60s", names[i])
		}
	}
	var eps []string
	for _, cu := range cus {
		eps = append(eps, cu.Host)
	}
	return eps
}

// freeURL returns an http URL on a loopback port the OS chose.
func freeURL(b *testing.B) url.URL {
	b.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		b.Fatal(err)
	}
	return url.URL{Scheme: "http", Host: addr}
}

// newClient returns a client on all the endpoints, with its connections
// made (a few serializable reads go round the balancer) before any timing.
func newClient(b *testing.B, eps []string) *clientv3.Client {
	b.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 10 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cli.Close() })
	for range 2 * len(eps) {
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		_, err := cli.Get(ctx, "bench/warmup", clientv3.WithSerializable())
		cancel()
		if err != nil {
			b.Fatalf("warm up client on %v: %v", eps, err)
		}
	}
	return cli
}

// do performs one operation of kind op on key k.
func do(cli *clientv3.Client, op, k, val string) error {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	switch op {
	case "put":
		_, err := cli.Put(ctx, k, val)
		return err
	case "get-linearizable", "get-serializable":
		var opts []clientv3.OpOption
		if op == "get-serializable" {
			opts = append(opts, clientv3.WithSerializable())
		}
		resp, err := cli.Get(ctx, k, opts...)
		if err != nil {
			return err
		}
		if len(resp.Kvs) != 1 || len(resp.Kvs[0].Value) != len(val) {
			return fmt.Errorf("get %s: %d kvs", k, len(resp.Kvs))
		}
		return nil
	case "txn":
		// Every key always holds val, so the compare succeeds and the put runs.
		resp, err := cli.Txn(ctx).
			If(clientv3.Compare(clientv3.Value(k), "=", val)).
			Then(clientv3.OpPut(k, val)).
			Commit()
		if err != nil {
			return err
		}
		if !resp.Succeeded {
			return fmt.Errorf("txn on %s: compare failed", k)
		}
		return nil
	}
	return fmt.Errorf("unknown op %q", op)
}
