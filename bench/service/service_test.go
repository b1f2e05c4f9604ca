package service

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ballotdb/ballot/bench/internal/load"
)

const (
	keyCount   = 1000
	valueBytes = 256
	// maxConns is how many clientv3.Clients a system gets; a row with
	// more clients shares them round-robin.
	maxConns = 100
)

// row is one line of the service table: an operation at a client count.
type row struct {
	op      string
	clients int
}

// opsPerRow is how many operations one b.N iteration of a row runs, per
// client count: enough that 1000 clients each run several and the
// one-client rows still finish in seconds. BALLOT_BENCH_OPS scales it
// (benchall --quick passes a smaller base).
func opsPerRow(clients int) int {
	base := 2000
	if s := os.Getenv("BALLOT_BENCH_OPS"); s != "" {
		if n, err := strconv.Atoi(s); err == nil && n > 0 {
			base = n
		}
	}
	switch {
	case clients >= 1000:
		return 4 * base
	case clients >= 100:
		return 2 * base
	}
	return base
}

// rows are the service table's lines per cluster size.
var rows = map[int][]row{
	3: {
		{"put", 1}, {"put", 100}, {"put", 1000},
		{"get-linearizable", 1}, {"get-linearizable", 100}, {"get-linearizable", 1000},
		{"get-serializable", 1}, {"get-serializable", 100},
		{"txn", 1}, {"txn", 100},
	},
	5: {
		{"put", 1}, {"put", 100}, {"get-linearizable", 100},
	},
}

// BenchmarkService runs the same client workload against a ballot cluster
// and an etcd cluster of 3 and then 5 members. The clusters of one size
// run together for all of that size's rows, and are stopped before the
// next size starts; 1000 keys of 16 bytes hold 256-byte values before the
// first row. Sub-benchmarks are named members/op/clients/system so that
// the systems of one row run back to back. One b.N iteration of a row is
// opsPerRow operations (run it with -benchtime 1x): ns/op is that batch's
// time, ops/s and the percentiles are per operation.
func BenchmarkService(b *testing.B) {
	keys := make([]string, keyCount)
	for i := range keys {
		keys[i] = fmt.Sprintf("bench/key/%06d", i) // 16 bytes
	}
	val := strings.Repeat("v", valueBytes)
	for _, members := range []int{3, 5} {
		b.Run(fmt.Sprintf("members=%d", members), func(b *testing.B) {
			systems := load.Order(Systems)
			clients := map[string][]*clientv3.Client{}
			for _, sys := range systems {
				eps := sys.Start(b, members)
				for range maxConns {
					clients[sys.Name] = append(clients[sys.Name], newClient(b, eps))
				}
				populate(b, sys.Name, clients[sys.Name], keys, val)
			}
			for _, r := range rows[members] {
				for _, sys := range systems {
					b.Run(fmt.Sprintf("op=%s/clients=%d/system=%s", r.op, r.clients, sys.Name), func(b *testing.B) {
						pool := clients[sys.Name]
						rngs := make([]*rand.Rand, r.clients)
						for w := range rngs {
							rngs[w] = rand.New(rand.NewPCG(uint64(w), uint64(b.N)))
						}
						load.Run(b, b.N*opsPerRow(r.clients), r.clients, func(w int) error {
							return do(pool[w%len(pool)], r.op, keys[rngs[w].IntN(len(keys))], val)
						})
					})
				}
			}
		})
	}
}

// populate writes every key once, spread over the clients.
func populate(b *testing.B, name string, clients []*clientv3.Client, keys []string, val string) {
	b.Helper()
	var wg sync.WaitGroup
	errs := make([]error, len(clients))
	for j, cli := range clients {
		wg.Go(func() {
			for i := j; i < len(keys); i += len(clients) {
				if err := do(cli, "put", keys[i], val); err != nil {
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
