package compat

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/ballotdb/ballot/internal/freeport"
	"github.com/ballotdb/ballot/server"
	"github.com/ballotdb/ballot/server/servertest"
)

// BenchmarkService runs the same client workload against a 3-member ballot
// cluster and a 3-member etcd 3.7.3 cluster, both in this process, on
// loopback and on the OS disk with fsync on, with the same timing (100 ms
// ticks/heartbeats, a 1 s election timeout). Each cluster is started once and
// reused by every sub-benchmark; sub-benchmarks are named op/clients=N/system
// so that the two systems' lines sit next to each other.
//
// Each client is its own clientv3.Client on all three endpoints (clientv3
// spreads requests over them); b.N is split across the clients and every
// operation's latency is recorded.
func BenchmarkService(b *testing.B) {
	keys := make([]string, benchKeys)
	for i := range keys {
		keys[i] = fmt.Sprintf("bench/key/%06d", i) // 16 bytes
	}
	val := strings.Repeat("v", benchValueBytes)

	systems := []struct {
		name string
		eps  []string
	}{
		{"ballot", benchStartBallot(b)},
		{"etcd", benchStartEtcd(b)},
	}
	maxClients := slices.Max(benchClientCounts)
	clients := map[string][]*clientv3.Client{}
	for _, sys := range systems {
		for range maxClients {
			clients[sys.name] = append(clients[sys.name], benchClient(b, sys.eps))
		}
		benchPopulate(b, sys.name, clients[sys.name], keys, val)
	}

	for _, op := range benchOps {
		b.Run(op, func(b *testing.B) {
			for _, nc := range benchClientCounts {
				b.Run(fmt.Sprintf("clients=%d", nc), func(b *testing.B) {
					for _, sys := range systems {
						b.Run(sys.name, func(b *testing.B) {
							benchRun(b, clients[sys.name][:nc], op, keys, val)
						})
					}
				})
			}
		})
	}
}

const (
	benchKeys       = 1000
	benchValueBytes = 256
	benchOpTimeout  = 30 * time.Second
)

var (
	benchOps          = []string{"put", "get-linearizable", "get-serializable", "txn"}
	benchClientCounts = []int{1, 16, 64}
)

// benchRun splits b.N operations of kind op across the clients, runs them
// concurrently and reports throughput and latency percentiles.
func benchRun(b *testing.B, clients []*clientv3.Client, op string, keys []string, val string) {
	n := b.N
	lat := make([][]time.Duration, len(clients))
	errs := make([]error, len(clients))
	var wg sync.WaitGroup
	start := make(chan struct{})
	for j, cli := range clients {
		share := n / len(clients)
		if j < n%len(clients) {
			share++
		}
		lat[j] = make([]time.Duration, 0, share)
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(j), uint64(n)))
			<-start
			for range share {
				k := keys[rng.IntN(len(keys))]
				t0 := time.Now()
				if err := benchDo(cli, op, k, val); err != nil {
					errs[j] = err
					return
				}
				lat[j] = append(lat[j], time.Since(t0))
			}
		}()
	}
	b.ResetTimer()
	t0 := time.Now()
	close(start)
	wg.Wait()
	elapsed := time.Since(t0)
	b.StopTimer()
	if err := errors.Join(errs...); err != nil {
		b.Fatalf("%s: %v", op, err)
	}
	all := slices.Concat(lat...)
	slices.Sort(all)
	b.ReportMetric(float64(n)/elapsed.Seconds(), "ops/s")
	b.ReportMetric(benchPercentile(all, 0.50), "p50-ms")
	b.ReportMetric(benchPercentile(all, 0.99), "p99-ms")
}

// benchDo performs one operation of kind op on key k.
func benchDo(cli *clientv3.Client, op, k, val string) error {
	ctx, cancel := context.WithTimeout(context.Background(), benchOpTimeout)
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

// benchPercentile returns the p-th percentile (nearest rank) of sorted, in ms.
func benchPercentile(sorted []time.Duration, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted))*p+0.5) - 1
	i = min(max(i, 0), len(sorted)-1)
	return float64(sorted[i]) / float64(time.Millisecond)
}

// benchClient returns a client on all the endpoints, with its connections
// made (a few serializable reads go round the balancer) before any timing.
func benchClient(b *testing.B, eps []string) *clientv3.Client {
	b.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 10 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cli.Close() })
	for range 2 * len(eps) {
		ctx, cancel := context.WithTimeout(context.Background(), benchOpTimeout)
		_, err := cli.Get(ctx, "bench/warmup", clientv3.WithSerializable())
		cancel()
		if err != nil {
			b.Fatalf("warm up client on %v: %v", eps, err)
		}
	}
	return cli
}

// benchPopulate writes every key once, spread over the clients.
func benchPopulate(b *testing.B, name string, clients []*clientv3.Client, keys []string, val string) {
	b.Helper()
	var wg sync.WaitGroup
	errs := make([]error, len(clients))
	for j, cli := range clients {
		wg.Go(func() {
			for i := j; i < len(keys); i += len(clients) {
				if err := benchDo(cli, "put", keys[i], val); err != nil {
					errs[j] = err
					return
				}
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		b.Fatalf("populate %s: %v", name, err)
	}
}

// benchStartBallot starts 3 ballot members with ballot's default timing
// (servertest's 10 ms test tick is put back to 100 ms) and returns their
// client endpoints.
func benchStartBallot(b *testing.B) []string {
	b.Helper()
	c := servertest.New(b, 3, func(cfg *server.Config) {
		cfg.TickInterval = 100 * time.Millisecond
		cfg.ElectionTicks = 10
	})
	c.Leader()
	return c.Endpoints()
}

// benchStartEtcd starts 3 etcd members in-process, each with its own data
// directory, fsync on and etcd's default timing, and returns their client
// endpoints once all are ready.
func benchStartEtcd(b *testing.B) []string {
	b.Helper()
	const size = 3
	var (
		names    []string
		cus, pus []url.URL
		initial  []string
	)
	for i := 1; i <= size; i++ {
		name := fmt.Sprintf("etcd%d", i)
		cu, pu := benchFreeURL(b), benchFreeURL(b)
		names = append(names, name)
		cus = append(cus, cu)
		pus = append(pus, pu)
		initial = append(initial, name+"="+pu.String())
	}
	logDir := b.TempDir()
	cfgs := make([]*embed.Config, size)
	for i := range size {
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
		// A clean shutdown logs errors not worth reading; the log is shown
		// only if the benchmark fails.
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
	etcds := make([]*embed.Etcd, size)
	errs := make([]error, size)
	var wg sync.WaitGroup
	for i := range size {
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

// benchFreeURL returns an http URL on a free loopback port below the
// ephemeral range (internal/freeport).
func benchFreeURL(b *testing.B) url.URL {
	b.Helper()
	addr, err := freeport.Pick("127.0.0.1")
	if err != nil {
		b.Fatal(err)
	}
	return url.URL{Scheme: "http", Host: addr}
}
