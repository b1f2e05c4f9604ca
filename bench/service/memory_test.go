package service

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

const (
	// memDefaultKeys is the number of keys BenchmarkMemory loads unless
	// BALLOT_BENCH_KEYS says otherwise.
	memDefaultKeys = 1_000_000
	// memTxnPuts is how many puts one loading txn carries (etcd's and
	// ballot's limit is 128 operations per txn).
	memTxnPuts = 128
	// memLoaders is how many clients load concurrently.
	memLoaders = 8
)

// BenchmarkMemory loads N keys (BALLOT_BENCH_KEYS, default 1M) of 16 bytes
// with 256-byte values into a 3-member cluster of each system, waits until
// every member has applied them all, and reports what the process holds
// beyond what it held before the cluster started: resident memory (VmRSS,
// which for etcd includes the pages of its bbolt file that it touched
// through mmap) and Go heap in use (live objects after a GC), in MB and in
// bytes per key. The cluster holds three replicas of every key, so a
// member's share is a third.
//
// BALLOT_BENCH_HEAPPROFILE=path also writes a heap profile of the loaded
// cluster to path.<system>.
//
// Run one system per process (-bench 'BenchmarkMemory/system=ballot$',
// -benchtime 1x): the figures are the process's, and a system measured
// after the other would inherit its garbage and its freed-but-kept pages.
func BenchmarkMemory(b *testing.B) {
	n := memDefaultKeys
	if s := os.Getenv("BALLOT_BENCH_KEYS"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v <= 0 {
			b.Fatalf("BALLOT_BENCH_KEYS=%q: want a positive integer", s)
		}
		n = v
	}
	val := strings.Repeat("v", valueBytes)
	for _, sys := range Systems {
		b.Run("system="+sys.Name, func(b *testing.B) {
			for range b.N {
				rss0, heap0 := memNow(b)
				eps := sys.Start(b, 3)
				var loaders []*clientv3.Client
				for range memLoaders {
					loaders = append(loaders, newClient(b, eps))
				}
				memLoad(b, loaders, n, val)
				for _, ep := range eps {
					memWaitApplied(b, newClient(b, []string{ep}), n)
				}
				rss, heap := memNow(b)
				if path := os.Getenv("BALLOT_BENCH_HEAPPROFILE"); path != "" {
					memHeapProfile(b, path+"."+sys.Name)
				}
				b.ReportMetric(float64(rss-rss0)/(1<<20), "rss-MB")
				b.ReportMetric(float64(heap-heap0)/(1<<20), "heap-MB")
				b.ReportMetric(float64(rss-rss0)/float64(n), "rss-B/key")
				b.ReportMetric(float64(heap-heap0)/float64(n), "heap-B/key")
				b.ReportMetric(float64(n), "keys")
			}
		})
	}
}

// memHeapProfile writes a heap profile of the loaded cluster to path (the
// in-use figures are as of the last GC, which memNow just ran).
func memHeapProfile(b *testing.B, path string) {
	b.Helper()
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		b.Fatal(err)
	}
}

// memKey is the i-th key: 16 bytes.
func memKey(i int) string { return fmt.Sprintf("mem/key/%08d", i) }

// memLoad writes keys 0..n-1 in txns of memTxnPuts puts, spread over the
// loaders.
func memLoad(b *testing.B, loaders []*clientv3.Client, n int, val string) {
	b.Helper()
	batches := (n + memTxnPuts - 1) / memTxnPuts
	errs := make([]error, len(loaders))
	var wg sync.WaitGroup
	for j, cli := range loaders {
		wg.Go(func() {
			for t := j; t < batches; t += len(loaders) {
				var ops []clientv3.Op
				for i := t * memTxnPuts; i < min(n, (t+1)*memTxnPuts); i++ {
					ops = append(ops, clientv3.OpPut(memKey(i), val))
				}
				ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
				_, err := cli.Txn(ctx).Then(ops...).Commit()
				cancel()
				if err != nil {
					errs[j] = fmt.Errorf("txn %d: %w", t, err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		b.Fatal(err)
	}
}

// memWaitApplied waits until the member behind cli serves all n keys
// from its own state (a serializable count).
func memWaitApplied(b *testing.B, cli *clientv3.Client, n int) {
	b.Helper()
	deadline := time.NewTimer(5 * time.Minute)
	defer deadline.Stop()
	poll := time.NewTicker(100 * time.Millisecond) // a follower catching up: poll its count
	defer poll.Stop()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		resp, err := cli.Get(ctx, "mem/key/", clientv3.WithPrefix(), clientv3.WithCountOnly(), clientv3.WithSerializable())
		cancel()
		if err == nil && resp.Count == int64(n) {
			return
		}
		select {
		case <-deadline.C:
			b.Fatalf("member %v: count %v (err %v), want %d", cli.Endpoints(), resp, err, n)
		case <-poll.C:
		}
	}
}

// memNow returns the process's resident set and the Go heap's live
// objects, in bytes, after a full collection has returned what it can to
// the OS.
func memNow(b *testing.B) (rss, heap uint64) {
	b.Helper()
	runtime.GC()
	debug.FreeOSMemory()
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	metrics.Read(s)
	heap = s[0].Value.Uint64()
	f, err := os.Open("/proc/self/status")
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				b.Fatal(err)
			}
			return kb << 10, heap
		}
	}
	b.Fatal("no VmRSS in /proc/self/status")
	return 0, 0
}
