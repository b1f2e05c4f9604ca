package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/ballotdb/ballot/server"
)

// TestKitchen runs the whole story against a cluster the example starts
// itself, bounded in time, and checks its JSON event log for the outcomes
// consensus promises.
func TestKitchen(t *testing.T) {
	const bound = 60 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	events := filepath.Join(t.TempDir(), "events.jsonl")
	var out strings.Builder
	start := time.Now()
	var published []*mvccpb.KeyValue
	inspect := func(ctx context.Context, eps []string) error {
		var err error
		published, err = readPublished(ctx, eps)
		return err
	}
	if err := run(ctx, config{eventsPath: events, ttlSeconds: 2, out: &out, inspect: inspect}); err != nil {
		t.Fatalf("run: %v\nnarration:\n%s", err, out.String())
	}
	if took := time.Since(start); took > bound {
		t.Fatalf("the story took %v, over %v", took, bound)
	}
	t.Logf("narration:\n%s", out.String())

	evs := readEvents(t, events)
	byKind := map[string][]map[string]any{}
	for _, e := range evs {
		if e["msg"] == "" || e["time"] == nil {
			t.Errorf("event without msg or time: %v", e)
		}
		k := e["event"].(string)
		byKind[k] = append(byKind[k], e)
	}

	// Election: two head chefs in turn, the second after the first was
	// killed, with a larger token; the first one's late post refused.
	el := byKind["elected"]
	if len(el) != 2 {
		t.Fatalf("%d elected events, want 2: %v", len(el), el)
	}
	first, second := el[0], el[1]
	if first["chef"] == second["chef"] {
		t.Errorf("the same chef %v was elected twice", first["chef"])
	}
	if second["token"].(float64) <= first["token"].(float64) {
		t.Errorf("second head chef's token %v not above the first's %v", second["token"], first["token"])
	}
	if k := byKind["killed"]; len(k) != 1 || k[0]["chef"] != first["chef"] {
		t.Errorf("killed events %v, want the first head chef %v", k, first["chef"])
	}
	if ms := second["after_ms"].(float64); ms < 500 {
		t.Errorf("the next head chef took over %v ms after the collapse, before the 2 s lease could run out", ms)
	}
	if s := byKind["stale_write_refused"]; len(s) != 1 || s[0]["chef"] != first["chef"] || s[0]["token"] != first["token"] {
		t.Errorf("stale_write_refused %v, want one for %v with token %v", s, first["chef"], first["token"])
	}
	for _, w := range byKind["board_write"] {
		if w["chef"] != first["chef"] && w["chef"] != second["chef"] {
			t.Errorf("board accepted a post from %v, who never led", w["chef"])
		}
	}

	// Poll: one outcome, pasta by majority; Dana's double vote counted once.
	po := byKind["poll_outcome"]
	if len(po) != 1 || po[0]["winner"] != "pasta" || po[0]["reason"] != "majority" {
		t.Fatalf("poll outcomes %v, want exactly one: pasta by majority", po)
	}
	dana := 0
	for _, v := range byKind["vote"] {
		if v["voter"] == "Dana" {
			dana++
		}
	}
	if dana != 1 {
		t.Errorf("Dana had %d votes counted, want 1", dana)
	}
	refusedDana := false
	for _, v := range byKind["vote_refused"] {
		refusedDana = refusedDana || (v["voter"] == "Dana" && v["reason"] == "already voted")
	}
	if !refusedDana {
		t.Errorf("Dana's second vote was not refused: %v", byKind["vote_refused"])
	}
	votes := 0
	for _, n := range po[0]["counts"].(map[string]any) {
		votes += int(n.(float64))
	}
	if votes != len(byKind["vote"]) || votes != int(po[0]["voted"].(float64)) {
		t.Errorf("outcome counted %d votes (voted %v), %d were accepted", votes, po[0]["voted"], len(byKind["vote"]))
	}

	// Two-phase commit: every station ends in the same state, that of the
	// decision: commit when all were ready, abort otherwise.
	want := map[string]string{"pasta-1": "COMMIT", "pasta-2": "ABORT", "pasta-3": "ABORT", "pasta-4": "ABORT"}
	got := map[string]bool{}
	for _, o := range byKind["twopc_outcome"] {
		tx := o["tx"].(string)
		got[tx] = true
		if o["decision"] != want[tx] {
			t.Errorf("%s: decision %v, want %s", tx, o["decision"], want[tx])
		}
		state := map[string]string{"COMMIT": "committed", "ABORT": "aborted"}[want[tx]]
		stations := o["stations"].(map[string]any)
		if len(stations) != len(chefNames) {
			t.Errorf("%s: %d stations reported, want %d", tx, len(stations), len(chefNames))
		}
		for name, st := range stations {
			if st != state {
				t.Errorf("%s: %s's station is %v, want %s", tx, name, st, state)
			}
		}
	}
	for tx := range want {
		if !got[tx] {
			t.Errorf("no outcome for %s", tx)
		}
	}
	if len(byKind["station_crash"]) != 1 || len(byKind["station_recovered"]) != 1 || len(byKind["coordinator_crash"]) != 1 {
		t.Errorf("crash events: station %d, recovered %d, coordinator %d; want one each",
			len(byKind["station_crash"]), len(byKind["station_recovered"]), len(byKind["coordinator_crash"]))
	}
	if len(byKind["done"]) != 1 {
		t.Errorf("the story did not finish: %v", evs[len(evs)-1])
	}

	checkPublished(t, evs, published)
}

// readPublished reads what the kitchen wrote for the dashboard.
func readPublished(ctx context.Context, eps []string) ([]*mvccpb.KeyValue, error) {
	cli, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	r, err := cli.Get(ctx, server.AppEventsPrefix+appName+"/", clientv3.WithPrefix())
	if err != nil {
		return nil, err
	}
	return r.Kvs, nil
}

// checkPublished: every event of the log is also in the cluster under the
// dashboard's prefix, in the same order (keys in order of writing), with
// the same kind, message and time, each on the run's lease.
func checkPublished(t *testing.T, evs []map[string]any, kvs []*mvccpb.KeyValue) {
	t.Helper()
	if len(kvs) != len(evs) {
		t.Fatalf("%d events under %s, %d in the event log", len(kvs), server.AppEventsPrefix+appName+"/", len(evs))
	}
	lease := kvs[0].Lease
	if lease == 0 {
		t.Errorf("event %s has no lease: events would pile up", kvs[0].Key)
	}
	for i, kv := range kvs {
		if i > 0 && kv.ModRevision <= kvs[i-1].ModRevision {
			t.Errorf("%s written at revision %d, not after %s at %d", kv.Key, kv.ModRevision, kvs[i-1].Key, kvs[i-1].ModRevision)
		}
		if kv.Lease != lease {
			t.Errorf("%s on lease %x, the run's first event on %x", kv.Key, kv.Lease, lease)
		}
		if len(kv.Value) > eventBytesMax {
			t.Errorf("%s holds %d bytes, over %d", kv.Key, len(kv.Value), eventBytesMax)
		}
		var got map[string]any
		if err := json.Unmarshal(kv.Value, &got); err != nil {
			t.Fatalf("%s: %q: %v", kv.Key, kv.Value, err)
		}
		for _, f := range []string{"event", "msg", "time"} {
			if got[f] != evs[i][f] {
				t.Errorf("%s: %s %v, the event log's line %d has %v", kv.Key, f, got[f], i+1, evs[i][f])
			}
		}
	}
}

func readEvents(t *testing.T, path string) []map[string]any {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var evs []map[string]any
	r := bufio.NewReader(f)
	for {
		line, err := r.ReadBytes('\n')
		if len(line) > 0 {
			var e map[string]any
			if jerr := json.Unmarshal(line, &e); jerr != nil {
				t.Fatalf("event log line %q: %v", line, jerr)
			}
			evs = append(evs, e)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	return evs
}
