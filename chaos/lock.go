package chaos

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ballotdb/ballot/recipes/lock"
)

// The lock workload: one holder per member contends for one lock
// (recipes/lock) and, while it holds it, increments a counter by a plain
// read then a write fenced by the lock's token — no compare-and-swap on the
// counter itself. So the lock alone keeps increments from being lost: if
// two holders ever both passed the fence, one increment would vanish.
// Checked at the end: the counter holds at least every acknowledged
// increment and at most those plus the unknown ones, and, in commit order,
// the tokens of acknowledged writes never go down (a write with a smaller
// token committed after a larger one is a stale holder let through).

const (
	lockName       = "chaos"
	lockCounterKey = "chaos-lock/counter"
)

type lockWrite struct {
	rev, token int64
}

type lockWorkload struct {
	// counterKey is the counter (default lockCounterKey); sharded runs
	// keep it beside the lock's keys, so the fenced write stays in one
	// shard (see keyspace).
	counterKey string
	// sharded: the holders grant their leases in the shard of the lock's
	// prefix (shard.LeaseKeyHeader), since the recipe's keys live there.
	sharded bool

	mu       sync.Mutex
	acquired int
	acked    int
	unknown  int
	fenced   int // writes refused because the holder had lost the lock
	writes   []lockWrite
}

func (lw *lockWorkload) counter() string {
	if lw.counterKey != "" {
		return lw.counterKey
	}
	return lockCounterKey
}

// holder takes the lock, increments the counter a few times, lets go, and
// again, until ctx ends.
func (lw *lockWorkload) holder(ctx context.Context, cli *clientv3.Client, opTimeout time.Duration) {
	l := lock.New(cli, lock.WithTTL(2))
	if lw.sharded {
		ctx = leaseHomedAt(ctx, lock.Prefix+lockName+"/")
	}
	for ctx.Err() == nil {
		actx, cancel := context.WithTimeout(ctx, 4*opTimeout)
		h, err := l.Lock(actx, lockName)
		if err != nil {
			cancel()
			continue
		}
		lw.mu.Lock()
		lw.acquired++
		lw.mu.Unlock()
		for range 3 {
			if !lw.increment(actx, cli, h) {
				break
			}
		}
		h.Unlock(actx)
		cancel()
	}
}

// increment reads the counter and writes it plus one through the fence. It
// reports whether to go on holding.
func (lw *lockWorkload) increment(ctx context.Context, cli *clientv3.Client, h *lock.Held) bool {
	r, err := cli.Get(ctx, lw.counter())
	if err != nil {
		return false
	}
	n := 0
	if len(r.Kvs) == 1 {
		if n, err = strconv.Atoi(string(r.Kvs[0].Value)); err != nil {
			return false
		}
	}
	resp, err := h.Txn(ctx).Then(clientv3.OpPut(lw.counter(), strconv.Itoa(n+1))).Commit()
	lw.mu.Lock()
	defer lw.mu.Unlock()
	switch {
	case err != nil:
		lw.unknown++ // it may have committed
		return false
	case !resp.Succeeded:
		lw.fenced++
		return false
	}
	lw.acked++
	lw.writes = append(lw.writes, lockWrite{rev: resp.Header.Revision, token: h.Token})
	return true
}

// check reads the counter and verifies the history against it.
func (lw *lockWorkload) check(ctx context.Context, final *clientv3.Client) []string {
	r, err := final.Get(ctx, lw.counter())
	if err != nil {
		return []string{"lock: reading the counter: " + err.Error()}
	}
	n := 0
	if len(r.Kvs) == 1 {
		if n, err = strconv.Atoi(string(r.Kvs[0].Value)); err != nil {
			return []string{fmt.Sprintf("lock: counter holds %q", r.Kvs[0].Value)}
		}
	}
	return lw.verify(n)
}

// verify compares the final counter with what was acknowledged, and the
// tokens of acknowledged writes in commit order.
func (lw *lockWorkload) verify(counter int) []string {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	var out []string
	if counter < lw.acked {
		out = append(out, fmt.Sprintf("lock: %d increments acknowledged but the counter is %d: two holders passed the fence", lw.acked, counter))
	}
	if counter > lw.acked+lw.unknown {
		out = append(out, fmt.Sprintf("lock: counter %d exceeds the %d acknowledged and %d unknown increments", counter, lw.acked, lw.unknown))
	}
	ws := slices.Clone(lw.writes)
	slices.SortFunc(ws, func(a, b lockWrite) int { return cmp.Compare(a.rev, b.rev) })
	for i := 1; i < len(ws); i++ {
		if ws[i].token < ws[i-1].token {
			out = append(out, fmt.Sprintf("lock: a write with token %d committed at revision %d after one with token %d at %d",
				ws[i].token, ws[i].rev, ws[i-1].token, ws[i-1].rev))
			break
		}
	}
	return out
}

func (lw *lockWorkload) summary() string {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	return fmt.Sprintf("lock: %d acquisitions, %d fenced increments acknowledged, %d refused by the fence, %d unknown",
		lw.acquired, lw.acked, lw.fenced, lw.unknown)
}
