package shard_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ballotdb/ballot/shard"
	"github.com/ballotdb/ballot/shard/shardtest"
)

// BenchmarkShardedPuts: puts of 256-byte values spread evenly over every
// shard of a 3-host cluster (real disk, fsync on, loopback TCP), through
// 64 clients, with a WAL fsync per group or one shared flush per host.
func BenchmarkShardedPuts(b *testing.B) {
	for _, shards := range []int{1, 4, 8} {
		for _, shared := range []bool{false, true} {
			b.Run(fmt.Sprintf("shards=%d/shared-sync=%v", shards, shared), func(b *testing.B) {
				c := shardtest.NewWith(b, 3, shards, func(cfg *shard.Config) {
					cfg.SyncPerGroup = !shared
					cfg.TickInterval = 50 * time.Millisecond
				})
				c.WaitLeaders(30 * time.Second)
				const clients = 64
				value := string(make([]byte, 256))
				var next atomic.Int64
				var wg sync.WaitGroup
				ctx := context.Background()
				b.ResetTimer()
				start := time.Now()
				for i := 0; i < clients; i++ {
					cli := c.Client(c.Names()[i%3])
					wg.Add(1)
					go func() {
						defer wg.Done()
						for {
							n := next.Add(1)
							if n > int64(b.N) {
								return
							}
							key := string([]byte{byte(n * 37 % 256)}) + fmt.Sprint(n)
							if _, err := cli.Put(ctx, key, value); err != nil {
								b.Error(err)
								return
							}
						}
					}()
				}
				wg.Wait()
				b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "puts/s")
			})
		}
	}
}
