package nodes

import (
	"context"
	"fmt"
	"testing"

	"github.com/ballotdb/ballot/bench/internal/load"
)

var proposerCounts = []int{1, 16, 256}

// BenchmarkNode runs proposers goroutines proposing 256-byte commands to
// a three-member cluster of each runtime, splitting b.N between them, and
// reports proposals per second and p50/p99/p99.9 latency, and for ballot
// (whose file system can be wrapped) fsyncs and WAL bytes per proposal. Each system's
// cluster starts on its first sub-benchmark and runs to the end (so
// -bench can pick one system alone, for a profile); sub-benchmarks are
// named proposers=N/system=S so the systems of one row run back to back.
func BenchmarkNode(b *testing.B) {
	clusters := map[string]Cluster{}
	b.Cleanup(func() {
		for _, c := range clusters {
			c.Close()
		}
	})
	dir := b.TempDir()
	systems := load.Order(Systems)
	cmd := make([]byte, 256)
	for _, proposers := range proposerCounts {
		for _, sys := range systems {
			b.Run(fmt.Sprintf("proposers=%d/system=%s", proposers, sys.Name), func(b *testing.B) {
				c := clusters[sys.Name]
				if c == nil {
					var err error
					if c, err = sys.Start(dir); err != nil {
						b.Fatal(err)
					}
					clusters[sys.Name] = c
					b.ResetTimer()
				}
				counted, _ := c.(interface {
					Counters() (leaderSyncs, leaderBytes, allSyncs, allBytes int64)
				})
				var ls0, lb0, as0, ab0 int64
				if counted != nil {
					ls0, lb0, as0, ab0 = counted.Counters()
				}
				load.Run(b, b.N, proposers, func(int) error {
					ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
					defer cancel()
					return c.Propose(ctx, cmd)
				})
				if counted != nil {
					// Where the runtime lets us count: fsyncs and bytes
					// written per proposal, on the leader and in all.
					ls, lb, as, ab := counted.Counters()
					n := float64(b.N)
					b.ReportMetric(float64(ls-ls0)/n, "leader-fsyncs/op")
					b.ReportMetric(float64(lb-lb0)/n, "leader-wal-B/op")
					b.ReportMetric(float64(as-as0)/n, "fsyncs/op")
					b.ReportMetric(float64(ab-ab0)/n, "wal-B/op")
				}
			})
		}
	}
}
