package shard_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

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

// BenchmarkTxn: a Txn writing two keys in one shard (one round of
// consensus) against the same in two shards (two-phase commit), and the
// bank's transfers at 1, 16 and 64 clients.
func BenchmarkTxn(b *testing.B) {
	c := shardtest.NewWith(b, 3, 4, func(cfg *shard.Config) { cfg.TickInterval = 50 * time.Millisecond })
	c.WaitLeaders(30 * time.Second)
	ctx := context.Background()
	for _, shards := range []int{1, 2} {
		b.Run(fmt.Sprintf("shards=%d", shards), func(b *testing.B) {
			cli := c.Client()
			x, y := keyIn(1, 4, "tx"), keyIn(1, 4, "ty")
			if shards == 2 {
				y = keyIn(3, 4, "ty")
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				v := fmt.Sprint(i)
				if _, err := cli.Txn(ctx).Then(clientv3.OpPut(x, v), clientv3.OpPut(y, v)).Commit(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	for _, clients := range []int{1, 16, 64} {
		b.Run(fmt.Sprintf("bank/clients=%d", clients), func(b *testing.B) {
			const accounts = 16
			acct := func(i int) string { return keyIn(i%4+1, 4, fmt.Sprintf("bank%d", i)) }
			cli := c.Client()
			for i := 0; i < accounts; i++ {
				if _, err := cli.Put(ctx, acct(i), "1000"); err != nil {
					b.Fatal(err)
				}
			}
			var next atomic.Int64
			var done atomic.Int64
			var wg sync.WaitGroup
			b.ResetTimer()
			start := time.Now()
			for w := 0; w < clients; w++ {
				cl := c.Client(c.Names()[w%3])
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						n := next.Add(1)
						if n > int64(b.N) {
							return
						}
						from, to := int(n)%accounts, (int(n)*7+1)%accounts
						if from == to {
							to = (to + 1) % accounts
						}
						for { // optimistic: read, then compare-and-swap both
							ra, _ := cl.Get(ctx, acct(from))
							rb, _ := cl.Get(ctx, acct(to))
							if ra == nil || rb == nil || len(ra.Kvs) == 0 || len(rb.Kvs) == 0 {
								b.Error("reading balances failed")
								return
							}
							tr, err := cl.Txn(ctx).If(
								clientv3.Compare(clientv3.ModRevision(acct(from)), "=", ra.Kvs[0].ModRevision),
								clientv3.Compare(clientv3.ModRevision(acct(to)), "=", rb.Kvs[0].ModRevision),
							).Then(clientv3.OpPut(acct(from), "999"), clientv3.OpPut(acct(to), "1001")).Commit()
							if err != nil {
								b.Error(err)
								return
							}
							if tr.Succeeded {
								done.Add(1)
								break
							}
						}
					}
				}()
			}
			wg.Wait()
			b.ReportMetric(float64(done.Load())/time.Since(start).Seconds(), "transfers/s")
		})
	}
}
