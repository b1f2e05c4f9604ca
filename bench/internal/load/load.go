// Package load runs a benchmark's operations from many concurrent workers
// and reports what the harness compares: operations per second and the
// latency percentiles p50, p99 and p99.9 (nearest rank, per operation,
// measured by the caller's side), as testing.B metrics.
//
// It also says in which order a benchmark should visit the systems it
// compares: benchall alternates the order from one run to the next
// (BALLOT_BENCH_REVERSE=1), so that neither system is always measured first
// on a machine whose load drifts.
package load

import (
	"errors"
	"os"
	"slices"
	"sync"
	"testing"
	"time"
)

// Run splits n operations between workers goroutines, each calling op
// with its worker number, and reports ops/s, p50-ms, p99-ms and p999-ms.
// The timer covers only the operations. The first error stops the worker
// that met it and fails the benchmark. n is usually b.N; a benchmark whose
// rows need a number of operations of their own (enough for every one of
// 1000 clients to run several) passes b.N times that number.
func Run(b *testing.B, n, workers int, op func(worker int) error) {
	b.Helper()
	lat := make([][]time.Duration, workers)
	errs := make([]error, workers)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for w := range workers {
		share := n / workers
		if w < n%workers {
			share++
		}
		lat[w] = make([]time.Duration, 0, share)
		wg.Go(func() {
			<-start
			for range share {
				t0 := time.Now()
				if err := op(w); err != nil {
					errs[w] = err
					return
				}
				lat[w] = append(lat[w], time.Since(t0))
			}
		})
	}
	b.ResetTimer()
	t0 := time.Now()
	close(start)
	wg.Wait()
	elapsed := time.Since(t0)
	b.StopTimer()
	if err := errors.Join(errs...); err != nil {
		b.Fatal(err)
	}
	all := slices.Concat(lat...)
	slices.Sort(all)
	b.ReportMetric(float64(n)/elapsed.Seconds(), "ops/s")
	b.ReportMetric(Percentile(all, 0.50), "p50-ms")
	b.ReportMetric(Percentile(all, 0.99), "p99-ms")
	b.ReportMetric(Percentile(all, 0.999), "p999-ms")
}

// Percentile returns the p-th percentile (nearest rank) of sorted, in ms.
func Percentile(sorted []time.Duration, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted))*p+0.5) - 1
	i = min(max(i, 0), len(sorted)-1)
	return float64(sorted[i]) / float64(time.Millisecond)
}

// Order returns systems in the order this run should measure them: as
// given, or reversed when BALLOT_BENCH_REVERSE is set to 1.
func Order[T any](systems []T) []T {
	out := slices.Clone(systems)
	if os.Getenv("BALLOT_BENCH_REVERSE") == "1" {
		slices.Reverse(out)
	}
	return out
}
