package shards

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/ballotdb/ballot/bench/internal/load"
	"github.com/ballotdb/ballot/shard"
	"github.com/ballotdb/ballot/shard/shardtest"
)

const (
	hosts      = 3
	valueBytes = 256
	// maxConns is how many clientv3.Clients a row gets at most (each on
	// every host's endpoint); more client goroutines share them
	// round-robin, as in the service suite.
	maxConns  = 64
	opTimeout = 30 * time.Second
)

// ints reads a comma-separated list of positive integers from env, or def.
func ints(b *testing.B, env string, def []int) []int {
	s := os.Getenv(env)
	if s == "" {
		return def
	}
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			b.Fatalf("%s=%q: want positive integers separated by commas", env, s)
		}
		out = append(out, n)
	}
	return out
}

// quiesceModes are the quiescence settings to run: on (the default) and
// off (shard.Config.NoQuiesce), or those BALLOT_BENCH_QUIESCE names.
func quiesceModes() []string {
	if s := os.Getenv("BALLOT_BENCH_QUIESCE"); s != "" {
		return strings.Split(s, ",")
	}
	return []string{"on", "off"}
}

// startCluster starts a 3-host sharded cluster with ballot's default
// timing (shardtest's 10 ms test tick put back to 100 ms) and waits until
// every group has a leader.
func startCluster(b *testing.B, shards int, quiesce string) *shardtest.Cluster {
	b.Helper()
	c := shardtest.NewWith(b, hosts, shards, func(cfg *shard.Config) {
		cfg.TickInterval = 100 * time.Millisecond
		cfg.ElectionTicks = 10
		cfg.NoQuiesce = quiesce == "off"
	})
	c.WaitLeaders(60*time.Second + time.Duration(shards)*500*time.Millisecond)
	return c
}

// newClient returns a client on every host, its connections made before
// any timing.
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

// key returns the n-th key of a row: its first byte cycles over
// 0x00..0xff, so consecutive keys fall in every shard of the initial map
// in turn (shard.Initial divides the first byte evenly).
func key(n int) string {
	return string([]byte{byte(n % 256)}) + fmt.Sprintf("bench/%09d", n)
}

// BenchmarkShardPuts: single-key puts of 256-byte values spread evenly
// over every shard of a 3-host cluster, through clientv3, with 1, 2, 4 and
// 8 shards and 64 and 256 concurrent clients. One b.N iteration is
// BALLOT_BENCH_SHARD_OPS puts (run with -benchtime 1x). vs-1shard is this
// row's ops/s over the 1-shard cluster's at the same client count and
// quiescence, measured earlier in the same process.
func BenchmarkShardPuts(b *testing.B) {
	shardCounts := ints(b, "BALLOT_BENCH_SHARDS", []int{1, 2, 4, 8})
	clientCounts := ints(b, "BALLOT_BENCH_CLIENTS", []int{64, 256})
	ops := ints(b, "BALLOT_BENCH_SHARD_OPS", []int{6000})[0]
	val := strings.Repeat("v", valueBytes)
	base := map[string]float64{} // "clients/quiesce" → 1-shard ops/s
	for _, q := range quiesceModes() {
		for _, shards := range shardCounts {
			b.Run(fmt.Sprintf("quiesce=%s/shards=%d", q, shards), func(b *testing.B) {
				c := startCluster(b, shards, q)
				eps := c.Endpoints()
				var pool []*clientv3.Client
				for range min(maxConns, max(clientCounts[0], clientCounts[len(clientCounts)-1])) {
					pool = append(pool, newClient(b, eps))
				}
				// Warm every shard's path (leader known, connections
				// made) before the first timed row.
				for i := range 4 * 256 {
					ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
					_, err := pool[i%len(pool)].Put(ctx, key(i), val)
					cancel()
					if err != nil {
						b.Fatalf("warm-up put: %v", err)
					}
				}
				for _, clients := range clientCounts {
					b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) {
						next := make([]int, clients)
						n := b.N * ops
						load.Run(b, n, clients, func(w int) error {
							k := key(next[w]*clients + w)
							next[w]++
							ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
							defer cancel()
							_, err := pool[w%len(pool)].Put(ctx, k, val)
							return err
						})
						// load.Run reported ops/s; recompute it for the
						// ratio from the benchmark's own elapsed time.
						rate := float64(n) / b.Elapsed().Seconds()
						id := fmt.Sprintf("%d/%s", clients, q)
						if shards == 1 {
							base[id] = rate
						}
						if r, ok := base[id]; ok && r > 0 {
							b.ReportMetric(rate/r, "vs-1shard")
						}
					})
				}
			})
		}
	}
}

// BenchmarkIdleGroups: the cost of idle groups. A 3-host cluster with N
// shards (3·(N+1) group members in this process, the meta group
// included) is started, left to elect and settle, and then measured
// without any load: CPU burnt per second over a fixed idle window
// (getrusage, user+system, the whole process), then the Go heap of live
// objects after a GC and the goroutines, beyond what the process held
// before the cluster started. Per-member figures divide by 3·(N+1).
//
// BALLOT_BENCH_HEAPPROFILE=path also writes a heap profile of each idle
// cluster to path.shards<N>.quiesce-<on|off>, and BALLOT_BENCH_CPUPROFILE
// a CPU profile of its idle window.
//
// Run one shard count and quiescence setting per process (-bench
// 'BenchmarkIdleGroups/shards=64/quiesce=on$'): a cluster measured after
// another inherits part of its memory (measured: a 64-shard cluster after
// another showed ~80 MB less heap growth than alone).
func BenchmarkIdleGroups(b *testing.B) {
	idle := time.Duration(ints(b, "BALLOT_BENCH_IDLE_SECONDS", []int{10})[0]) * time.Second
	for _, shards := range ints(b, "BALLOT_BENCH_IDLE_SHARDS", []int{1, 64, 256}) {
		for _, q := range quiesceModes() {
			b.Run(fmt.Sprintf("shards=%d/quiesce=%s", shards, q), func(b *testing.B) {
				for range b.N {
					idleGroups(b, shards, q, idle)
				}
			})
		}
	}
}

func idleGroups(b *testing.B, shards int, q string, idle time.Duration) {
	heap0, inuse0, rss0, gr0 := memNow()
	t0 := time.Now()
	c := startCluster(b, min(shards, maxInitial), q)
	if shards > maxInitial {
		grow(b, c, shards)
		c.WaitLeaders(5 * time.Minute)
	}
	started := time.Since(t0)
	groups := shards + 1 // per host: every shard and the meta group
	members := hosts * groups
	// Settle: elections done, the initial map stored, leader balancing
	// (one transfer per host per map refresh) mostly over; with
	// quiescence on, wait until every group went quiet (bounded).
	c.WaitLeaders(60 * time.Second)
	quiet := func() int {
		n := 0
		for _, name := range c.Names() {
			n += c.Host(name).Quiet()
		}
		return n
	}
	// The meta group is woken by every host's map refresh (once a
	// second by default), so only the shards' members are waited for.
	if q == "on" {
		deadline := time.Now().Add(60 * time.Second)
		tick := time.NewTicker(100 * time.Millisecond)
		for quiet() < hosts*shards && time.Now().Before(deadline) {
			<-tick.C
		}
		tick.Stop()
	}
	ticks := func() (n int64) {
		for _, name := range c.Names() {
			n += c.Host(name).Ticks()
		}
		return n
	}
	if path := os.Getenv("BALLOT_BENCH_CPUPROFILE"); path != "" {
		f, err := os.Create(fmt.Sprintf("%s.shards%d.quiesce-%s", path, shards, q))
		if err != nil {
			b.Fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			b.Fatal(err)
		}
		defer f.Close()
	}
	tk0, cpu0, w0 := ticks(), cpuTime(b), time.Now()
	<-time.After(idle) // the measured idle window, not a wait for an outcome
	cpu1, w1, tk1 := cpuTime(b), time.Now(), ticks()
	if os.Getenv("BALLOT_BENCH_CPUPROFILE") != "" {
		pprof.StopCPUProfile()
	}
	quietEnd := quiet()
	window := w1.Sub(w0).Seconds()
	heap1, inuse1, rss1, gr1 := memNow()
	if path := os.Getenv("BALLOT_BENCH_HEAPPROFILE"); path != "" {
		f, err := os.Create(fmt.Sprintf("%s.shards%d.quiesce-%s", path, shards, q))
		if err != nil {
			b.Fatal(err)
		}
		if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
			b.Fatal(err)
		}
		f.Close()
	}

	cpuMsPerS := float64(cpu1-cpu0) / float64(time.Millisecond) / window
	b.ReportMetric(float64(members), "members")
	b.ReportMetric(started.Seconds(), "start-s")
	b.ReportMetric(float64(heap1-heap0)/(1<<20), "heap-MB")
	b.ReportMetric(float64(inuse1-inuse0)/(1<<20), "heapinuse-MB")
	b.ReportMetric(float64(rss1-rss0)/(1<<20), "rss-MB")
	b.ReportMetric(float64(heap1-heap0)/1024/float64(members), "heap-KB/member")
	b.ReportMetric(float64(gr1-gr0), "goroutines")
	b.ReportMetric(float64(gr1-gr0)/float64(members), "goroutines/member")
	b.ReportMetric(cpuMsPerS, "cpu-ms/s")
	b.ReportMetric(cpuMsPerS*1000/float64(members), "cpu-us/s/member")
	b.ReportMetric(float64(quietEnd)/float64(members), "quiet-frac")
	if q == "on" {
		// Host.Ticks counts only with quiescence on.
		b.ReportMetric(float64(tk1-tk0)/window, "ticks/s")
	}
}

// memNow returns, after two GCs, the heap of live objects, the heap spans
// in use, the resident set (VmRSS) and the number of goroutines.
func memNow() (heap, inuse, rss uint64, goroutines int) {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc, ms.HeapInuse, vmRSS(), runtime.NumGoroutine()
}

// vmRSS returns the process's resident set in bytes (0 if unknown).
func vmRSS() uint64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb * 1024
		}
	}
	return 0
}

// cpuTime returns the user and system CPU time the process has used.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// maxInitial is the most shards a cluster can start with (shard.Initial
// divides the first byte of the key); more are made by splitting.
const maxInitial = 256

// grow splits the shards of a cluster started with maxInitial shards
// until it has target: shard i (keeping first byte i-1) is cut at the
// two-byte keys {i-1, 0xc0}, {i-1, 0x80}, {i-1, 0x40} in that order, so
// the parent keeps its ID and every split is of the same parent, one at a
// time (each is a log entry in the parent and two compare-and-swaps in
// the meta group). The shard whose first byte is '/' is skipped: a split
// key is moved back to its last '/'.
func grow(b *testing.B, c *shardtest.Cluster, target int) {
	b.Helper()
	h := c.Host(c.Names()[0])
	have := maxInitial
	t0 := time.Now()
	for i := 1; i <= maxInitial && have < target; i++ {
		first := byte(i - 1)
		if first == '/' {
			continue
		}
		for _, second := range []byte{0xc0, 0x80, 0x40} {
			if have >= target {
				break
			}
			var err error
			for try := range 5 {
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				_, err = h.Split(ctx, uint64(i), []byte{first, second})
				cancel()
				if err == nil {
					break
				}
				<-time.After(time.Duration(try+1) * 200 * time.Millisecond) // backoff before retrying

			}
			if err != nil {
				b.Fatalf("split shard %d at %x: %v (after %d splits)", i, []byte{first, second}, err, have-maxInitial)
			}
			have++
		}
	}
	if n := len(h.Map().Shards); n != target {
		b.Fatalf("after splitting: %d shards in the map, want %d", n, target)
	}
	b.ReportMetric(time.Since(t0).Seconds(), "split-s")
}
