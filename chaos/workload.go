package chaos

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/anishathalye/porcupine"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

func decodeJSON(resp *http.Response, v any) error {
	defer resp.Body.Close()
	return json.NewDecoder(resp.Body).Decode(v)
}

func newClient(endpoints []string) (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 2 * time.Second, Logger: zap.NewNop(),
		DialKeepAliveTime: time.Second, DialKeepAliveTimeout: time.Second})
}

// recorder collects the register history with times relative to start.
type recorder struct {
	start               time.Time
	mu                  sync.Mutex
	ops                 []porcupine.Operation
	ok, failed, unknown atomic.Int64
	noSpace             atomic.Int64 // calls refused with etcd's "database space exceeded"
}

// refused counts a call a full disk refused.
func (r *recorder) refused(err error) {
	if err != nil && (errors.Is(err, rpctypes.ErrNoSpace) || strings.Contains(err.Error(), "database space exceeded")) {
		r.noSpace.Add(1)
	}
}

func (r *recorder) now() int64 { return int64(time.Since(r.start)) }

func (r *recorder) add(op porcupine.Operation) {
	r.mu.Lock()
	r.ops = append(r.ops, op)
	r.mu.Unlock()
}

// registerClient runs random operations on a small, rotating set of keys:
// each window of the run uses fresh keys, bounding every key's history so
// the checker stays fast.
func registerClient(ctx context.Context, id int, cli *clientv3.Client, rng *rand.Rand, prefix string, keys int, window time.Duration,
	opTimeout time.Duration, rec *recorder) {
	seq := 0
	for ctx.Err() == nil {
		seq++
		gen := int(time.Since(rec.start) / window)
		key := fmt.Sprintf("%s%d/%d", prefix, gen, rng.IntN(keys))
		val := fmt.Sprintf("c%d-%d", id, seq)
		in := regInput{key: key, value: val}
		switch p := rng.IntN(100); {
		case p < 45:
			in.kind = opGet
		case p < 75:
			in.kind = opPut
		case p < 92:
			in.kind = opCAS
			in.expected = fmt.Sprintf("c%d-%d", rng.IntN(4), rng.IntN(seq+1))
			if rng.IntN(2) == 0 {
				// compare against what is most likely there: read it first
				// (a separate operation, recorded like any other).
				if g, ok := doOp(ctx, cli, id, regInput{kind: opGet, key: key}, opTimeout, rec); ok && g.exists {
					in.expected = g.value
				}
			}
		default:
			in.kind = opDel
		}
		doOp(ctx, cli, id, in, opTimeout, rec)
	}
}

// doOp runs one operation and records it. A read that fails is left out
// (it changed nothing); a write whose outcome is unknown is recorded as
// such: it may have taken effect at any time after its call.
func doOp(ctx context.Context, cli *clientv3.Client, id int, in regInput, timeout time.Duration, rec *recorder) (regOutput, bool) {
	octx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	call := rec.now()
	var out regOutput
	var err error
	switch in.kind {
	case opGet:
		var r *clientv3.GetResponse
		r, err = cli.Get(octx, in.key)
		if err == nil && len(r.Kvs) > 0 {
			out.exists, out.value = true, string(r.Kvs[0].Value)
		}
	case opPut:
		_, err = cli.Put(octx, in.key, in.value)
	case opDel:
		_, err = cli.Delete(octx, in.key)
	case opCAS:
		var r *clientv3.TxnResponse
		r, err = cli.Txn(octx).If(clientv3.Compare(clientv3.Value(in.key), "=", in.expected)).
			Then(clientv3.OpPut(in.key, in.value)).Commit()
		if err == nil {
			out.ok = r.Succeeded
		}
	}
	ret := rec.now()
	rec.refused(err)
	if err != nil {
		if in.kind == opGet {
			rec.failed.Add(1)
			return out, false
		}
		rec.unknown.Add(1)
		out.unknown = true
		rec.add(porcupine.Operation{ClientId: id, Input: in, Call: call, Output: out, Return: unknownReturn})
		return out, false
	}
	rec.ok.Add(1)
	rec.add(porcupine.Operation{ClientId: id, Input: in, Call: call, Output: out, Return: ret})
	return out, true
}

// setWorkload adds unique keys; every acknowledged add must be present once
// all faults heal.
type setWorkload struct {
	rec    *recorder
	prefix string // the keys' prefix (keyspace.set)
	mu     sync.Mutex
	acked  []string
	n      atomic.Int64
}

func (s *setWorkload) run(ctx context.Context, id int, cli *clientv3.Client, opTimeout time.Duration) {
	for ctx.Err() == nil {
		k := fmt.Sprintf("%s%d-%d", s.prefix, id, s.n.Add(1))
		octx, cancel := context.WithTimeout(ctx, opTimeout)
		_, err := cli.Put(octx, k, "x")
		cancel()
		s.rec.refused(err)
		if err == nil {
			s.mu.Lock()
			s.acked = append(s.acked, k)
			s.mu.Unlock()
		}
	}
}

// check reads every set key and reports acknowledged adds that are gone.
func (s *setWorkload) check(ctx context.Context, cli *clientv3.Client) (int, []string, error) {
	r, err := cli.Get(ctx, s.prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return 0, nil, err
	}
	have := map[string]bool{}
	for _, kv := range r.Kvs {
		have[string(kv.Key)] = true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var lost []string
	for _, k := range s.acked {
		if !have[k] {
			lost = append(lost, k)
		}
	}
	return len(s.acked), lost, nil
}

// watchRecorder records every event one watcher receives on the register
// and set prefixes, from revision 1, resuming after a broken stream.
type watchRecorder struct {
	member int
	prefix string // what it watches ("": everything; keyspace.watch)
	mu     sync.Mutex
	events []*mvccpb.Event
	errs   []string
}

func (w *watchRecorder) run(ctx context.Context, cli *clientv3.Client) {
	next := int64(1)
	for ctx.Err() == nil {
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		for wr := range cli.Watch(wctx, w.prefix, clientv3.WithPrefix(), clientv3.WithRev(next), clientv3.WithPrevKV()) {
			if err := wr.Err(); err != nil {
				if wr.CompactRevision != 0 {
					w.mu.Lock()
					w.errs = append(w.errs, fmt.Sprintf("watch on %s compacted at %d", name(w.member), wr.CompactRevision))
					w.mu.Unlock()
				}
				break
			}
			w.mu.Lock()
			for _, ev := range wr.Events {
				w.events = append(w.events, ev)
				next = ev.Kv.ModRevision + 1
			}
			w.mu.Unlock()
		}
		cancel()
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond): // redial pacing
		}
	}
}

// checkWatches checks every watcher's events: revisions never go back, no
// event is repeated or missing (each watcher's sequence is a prefix of the
// longest), and replaying the longest reproduces the final state.
func checkWatches(ws []*watchRecorder, final map[string]string, finalRev int64) []string {
	var problems []string
	type evKey struct {
		rev  int64
		key  string
		kind mvccpb.Event_EventType
	}
	var longest []evKey
	seqs := make([][]evKey, len(ws))
	for i, w := range ws {
		w.mu.Lock()
		var last evKey
		atRev := map[string]bool{} // keys of last.rev's events
		for j, ev := range w.events {
			k := evKey{ev.Kv.ModRevision, string(ev.Kv.Key), ev.Type}
			// A revision carries one event per key it changed: one, but
			// for the bank's transfers (two keys in one Txn).
			if k.rev != last.rev {
				clear(atRev)
			}
			if j > 0 && (k.rev < last.rev || atRev[k.key]) {
				problems = append(problems, fmt.Sprintf("watcher on %s: event %d (%v) goes back or repeats after %v", name(w.member), j, k, last))
				break
			}
			last = k
			atRev[k.key] = true
			seqs[i] = append(seqs[i], k)
		}
		w.mu.Unlock()
		if len(seqs[i]) > len(longest) {
			longest = seqs[i]
		}
	}
	for i, s := range seqs {
		for j := range s {
			if s[j] != longest[j] {
				problems = append(problems, fmt.Sprintf("watcher on %s: event %d is %v, another watcher saw %v", name(ws[i].member), j, s[j], longest[j]))
				break
			}
		}
	}
	// Replay the longest watcher (with values) against the final state.
	var best *watchRecorder
	for i, w := range ws {
		if len(seqs[i]) == len(longest) {
			best = w
		}
	}
	if best != nil {
		state := map[string]string{}
		var lastRev int64
		best.mu.Lock()
		for _, ev := range best.events {
			if ev.Type == mvccpb.PUT {
				state[string(ev.Kv.Key)] = string(ev.Kv.Value)
			} else {
				delete(state, string(ev.Kv.Key))
			}
			lastRev = ev.Kv.ModRevision
		}
		best.mu.Unlock()
		if lastRev == finalRev {
			var diff []string
			for k, v := range final {
				if state[k] != v {
					diff = append(diff, k)
				}
			}
			for k := range state {
				if _, ok := final[k]; !ok {
					diff = append(diff, k)
				}
			}
			sort.Strings(diff)
			if len(diff) > 0 {
				problems = append(problems, fmt.Sprintf("replaying the watch events does not give the final state: %d keys differ, first %s", len(diff), diff[0]))
			}
		} else {
			problems = append(problems, fmt.Sprintf("no watcher reached the final revision %d (longest reached %d)", finalRev, lastRev))
		}
	}
	return problems
}
