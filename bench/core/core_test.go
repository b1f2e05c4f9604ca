package core

import (
	"fmt"
	"testing"

	"github.com/ballotdb/ballot/bench/internal/load"
)

var (
	payloadSizes = []int{16, 256, 4096}
	windows      = []int{1, 64, 1024}
)

// BenchmarkCore measures leader-applied proposals per second, and
// allocations and bytes per proposal (of the whole process: hashicorp/raft's
// goroutines included), for every engine, payload size and window. One
// cluster per engine is started on first use and reused by every
// sub-benchmark; sub-benchmarks are named payload/window/engine so that the
// engines of one cell run back to back (in reverse order when
// BALLOT_BENCH_REVERSE=1).
func BenchmarkCore(b *testing.B) {
	clusters := map[string]Cluster{}
	defer func() {
		for _, c := range clusters {
			c.Close()
		}
	}()
	for _, size := range payloadSizes {
		for _, window := range windows {
			for _, eng := range load.Order(Engines) {
				b.Run(fmt.Sprintf("payload=%dB/window=%d/engine=%s", size, window, eng.Name), func(b *testing.B) {
					c := clusters[eng.Name]
					if c == nil {
						var err error
						if c, err = eng.New(); err != nil {
							b.Fatal(err)
						}
						clusters[eng.Name] = c
					}
					payload := make([]byte, size)
					retrier, _ := c.(interface{ Retried() int })
					retried0 := 0
					if retrier != nil {
						retried0 = retrier.Retried()
					}
					b.ReportAllocs()
					b.ResetTimer()
					if err := c.Run(b.N, window, payload); err != nil {
						b.Fatal(err)
					}
					b.StopTimer()
					b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "proposals/s")
					if retrier != nil && retrier.Retried() > retried0 {
						// Leadership moved during the run (hashicorp/raft
						// elects by wall-clock timeouts).
						b.ReportMetric(float64(retrier.Retried()-retried0), "retried")
					}
				})
			}
		}
	}
}
