package metrics_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/ballotdb/ballot/metrics"
	"github.com/ballotdb/ballot/server"
	"github.com/ballotdb/ballot/server/servertest"
)

// cluster starts three members, each with its own metrics registry served
// over HTTP.
func cluster(t *testing.T) (*servertest.Cluster, map[string]string) {
	t.Helper()
	var mu sync.Mutex
	ms := map[string]*metrics.Member{}
	c := servertest.New(t, 3, func(cfg *server.Config) {
		m := metrics.New()
		mu.Lock()
		ms[cfg.Name] = m
		mu.Unlock()
		cfg.Observe = m.Observe()
	})
	urls := map[string]string{}
	for name, m := range ms {
		m.Watch(c.Member(name))
		ts := httptest.NewServer(m.Handler())
		t.Cleanup(ts.Close)
		urls[name] = ts.URL
	}
	return c, urls
}

// scrape fetches and parses one member's /metrics.
func scrape(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return fams
}

// value returns the value of the series of name whose labels include
// labels (name=value pairs); a histogram's sample count.
func value(t *testing.T, fams map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	t.Helper()
	f, ok := fams[name]
	if !ok {
		t.Fatalf("metric %s missing", name)
	}
next:
	for _, m := range f.Metric {
		for i := 0; i+1 < len(labels); i += 2 {
			found := false
			for _, l := range m.Label {
				if l.GetName() == labels[i] && l.GetValue() == labels[i+1] {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount())
		}
	}
	t.Fatalf("metric %s%v: no such series", name, labels)
	return 0
}

func eventually(t *testing.T, d time.Duration, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(d)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", d, what)
		}
		<-tick.C
	}
}

// TestMetricsMoveWithWrites scrapes /metrics before and after writes and
// checks that the counters and gauges the writes touch moved, and that
// the names follow the Prometheus conventions.
func TestMetricsMoveWithWrites(t *testing.T) {
	c, urls := cluster(t)
	lead := c.Leader()
	fol := c.Follower()
	cli := c.Client(lead)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	before, folBefore := scrape(t, urls[lead]), scrape(t, urls[fol])
	const writes = 25
	for i := range writes {
		if _, err := cli.Put(ctx, fmt.Sprintf("k%d", i), "v"); err != nil {
			t.Fatal(err)
		}
	}
	lease, err := cli.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	wc := cli.Watch(ctx, "k")
	after := scrape(t, urls[lead])

	if d := value(t, after, "ballot_proposals_committed_total") - value(t, before, "ballot_proposals_committed_total"); d < writes {
		t.Errorf("ballot_proposals_committed_total moved by %v after %d writes", d, writes)
	}
	put := []string{"method", "/etcdserverpb.KV/Put", "code", "OK"}
	if got := value(t, after, "ballot_grpc_requests_total", put...); got < writes {
		t.Errorf("ballot_grpc_requests_total{Put,OK} = %v, want >= %d", got, writes)
	}
	if got := value(t, after, "ballot_grpc_request_duration_seconds", "method", "/etcdserverpb.KV/Put"); got < writes {
		t.Errorf("Put latency histogram has %v samples, want >= %d", got, writes)
	}
	if d := value(t, after, "ballot_wal_fsync_duration_seconds") - value(t, before, "ballot_wal_fsync_duration_seconds"); d < 1 {
		t.Errorf("no WAL fsync observed during %d writes", writes)
	}
	if value(t, after, "ballot_wal_fsync_bytes") <= value(t, before, "ballot_wal_fsync_bytes") {
		t.Error("ballot_wal_fsync_bytes did not move")
	}
	app := []string{"type", "MsgApp"}
	if value(t, after, "ballot_messages_sent_total", app...) <= value(t, before, "ballot_messages_sent_total", app...) {
		t.Error("the leader sent no MsgApp during the writes")
	}
	if got := value(t, after, "ballot_is_leader"); got != 1 {
		t.Errorf("ballot_is_leader on the leader = %v", got)
	}
	if value(t, after, "ballot_term") < 1 || value(t, after, "ballot_leader_changes_total") < 1 {
		t.Error("ballot_term or ballot_leader_changes_total not set")
	}
	value(t, after, "ballot_apply_lag_entries")
	value(t, after, "ballot_proposals_pending")
	value(t, after, "ballot_snapshots_total", "source", "local")
	if got := value(t, after, "ballot_leases"); got != 1 {
		t.Errorf("ballot_leases = %v after granting lease %x", got, lease.ID)
	}
	eventually(t, 5*time.Second, func() bool { return value(t, scrape(t, urls[lead]), "ballot_watchers") == 1 }, "ballot_watchers never reached 1")
	_ = wc

	eventually(t, 5*time.Second, func() bool {
		f := scrape(t, urls[fol])
		return value(t, f, "ballot_messages_received_total", app...) > value(t, folBefore, "ballot_messages_received_total", app...) &&
			value(t, f, "ballot_applied_index") >= value(t, after, "ballot_commit_index")
	}, "the follower neither received the appends nor applied them")
	if got := value(t, after, "ballot_peer_round_trip_time_seconds", "peer", fmt.Sprintf("%x", c.Member(fol).MemberID())); got < 1 {
		t.Errorf("no round trip to the follower observed")
	}
	if got := value(t, scrape(t, urls[fol]), "ballot_is_leader"); got != 0 {
		t.Errorf("ballot_is_leader on a follower = %v", got)
	}

	for name, f := range after {
		if len(name) < 7 || name[:7] != "ballot_" {
			continue
		}
		if f.GetType() == dto.MetricType_COUNTER && name[len(name)-6:] != "_total" {
			t.Errorf("counter %s does not end in _total", name)
		}
	}
}

// TestGRPCHealth asks the gRPC health service on the client port.
func TestGRPCHealth(t *testing.T) {
	c, _ := cluster(t)
	lead := c.Leader()
	cli := c.Client(lead)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	hc := healthpb.NewHealthClient(cli.ActiveConnection())
	eventually(t, 5*time.Second, func() bool {
		r, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
		return err == nil && r.Status == healthpb.HealthCheckResponse_SERVING
	}, "the leader's gRPC health service never said SERVING")
	if err := c.Member(lead).Ready(); err != nil {
		t.Errorf("Ready on the leader: %v", err)
	}
}
