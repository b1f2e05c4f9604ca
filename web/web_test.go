package web_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ballotdb/ballot/server"
	"github.com/ballotdb/ballot/server/servertest"
	"github.com/ballotdb/ballot/web"
)

// dashCluster starts three members with a tap each and serves the
// leader's dashboard.
func dashCluster(t *testing.T, cfg web.TapConfig, token string) (*servertest.Cluster, string, *web.Tap, *httptest.Server) {
	t.Helper()
	var mu sync.Mutex
	taps := map[string]*web.Tap{}
	c := servertest.New(t, 3, func(sc *server.Config) {
		tap := web.NewTap(cfg)
		mu.Lock()
		taps[sc.Name] = tap
		mu.Unlock()
		sc.Observe.Node = tap
	})
	lead := c.Leader()
	ts := httptest.NewServer(web.Handler(web.Config{Title: "test", Token: token,
		Local: &web.Local{Name: lead, Server: c.Member(lead), Tap: taps[lead]}}))
	t.Cleanup(ts.Close)
	return c, lead, taps[lead], ts
}

// TestEventStreamRateLimit floods the leader with writes while a client
// reads its event stream, and checks that the message events stay within
// the configured hard limit (burst + rate·elapsed), that the limit was
// what held them back (events were sampled out), and that the writes were
// not slowed into failing.
func TestEventStreamRateLimit(t *testing.T) {
	const rate, burst = 20.0, 10
	c, lead, tap, ts := dashCluster(t, web.TapConfig{MessagesPerSecond: rate, MessageBurst: burst,
		TimelinePerSecond: 5, TimelineBurst: 5}, "")

	start := time.Now()
	resp, err := http.Get(ts.URL + "/api/events")
	if err != nil {
		t.Fatal(err)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("Content-Type %q", ct)
	}
	var msgs, timeline atomic.Int64
	read := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			data, ok := strings.CutPrefix(sc.Text(), "data: ")
			if !ok {
				continue
			}
			var ev web.Event
			if err := json.Unmarshal([]byte(data), &ev); err != nil {
				read <- fmt.Errorf("bad event %q: %w", data, err)
				return
			}
			switch ev.Kind {
			case "msg":
				msgs.Add(1)
			case "timeline":
				timeline.Add(1)
			}
		}
		read <- nil
	}()

	// The flood: 16 writers for two seconds.
	cli := c.Client(lead)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var writes, failed atomic.Int64
	var wg sync.WaitGroup
	val := strings.Repeat("x", 100)
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				if _, err := cli.Put(ctx, fmt.Sprintf("w%d/%d", w, i%50), val); err == nil {
					writes.Add(1)
				} else if ctx.Err() == nil {
					failed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	resp.Body.Close()
	if err := <-read; err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(start)

	limit := burst + rate*elapsed.Seconds()
	st := tap.Stats()
	t.Logf("%d writes (%d failed) in %v; %d message events and %d timeline events streamed; tap %+v",
		writes.Load(), failed.Load(), elapsed.Round(time.Millisecond), msgs.Load(), timeline.Load(), st)
	if got := float64(msgs.Load()); got > limit {
		t.Errorf("%v message events in %v: over the limit %v (burst %d + %v/s)", got, elapsed, limit, burst, rate)
	}
	if msgs.Load() == 0 {
		t.Error("no message events at all: the stream does not work")
	}
	if st.Sampled == 0 {
		t.Error("nothing was sampled out: the flood did not reach the limit, so the test proves nothing")
	}
	if writes.Load() == 0 {
		t.Error("the flood made no write")
	}
	if tlimit := 64 + 5 + 5*elapsed.Seconds(); float64(timeline.Load()) > tlimit {
		t.Errorf("%d timeline events: over history + limit %v", timeline.Load(), tlimit)
	}
}

// TestClusterState reads /api/state and /api/cluster: the member's state,
// with sizes and counts only.
func TestClusterState(t *testing.T) {
	c, lead, _, ts := dashCluster(t, web.TapConfig{}, "")
	cli := c.Client(lead)
	if _, err := cli.Put(context.Background(), "secret-key", "secret-value"); err != nil {
		t.Fatal(err)
	}
	get := func(path string) []byte {
		resp, err := http.Get(ts.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %s", path, resp.Status)
		}
		var b strings.Builder
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			b.WriteString(sc.Text())
		}
		return []byte(b.String())
	}
	var st web.MemberState
	if err := json.Unmarshal(get("/api/state"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Name != lead || st.Role != "leader" || st.Commit == 0 || st.Applied == 0 || !st.Ready || len(st.Voters) != 3 || len(st.Log) == 0 {
		t.Errorf("state %+v", st)
	}
	raw := string(get("/api/cluster"))
	if strings.Contains(raw, "secret") {
		t.Errorf("the cluster view shows a key or value: %s", raw)
	}
	var cl struct {
		Dev     bool `json:"dev"`
		Members []struct {
			Name string `json:"name"`
			Up   bool   `json:"up"`
		} `json:"members"`
	}
	if err := json.Unmarshal([]byte(raw), &cl); err != nil {
		t.Fatal(err)
	}
	if cl.Dev || len(cl.Members) != 1 || !cl.Members[0].Up {
		t.Errorf("cluster %s", raw)
	}
	resp, err := http.Post(ts.URL+"/api/dev/stop", "application/x-www-form-urlencoded", strings.NewReader("member="+lead))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		t.Error("a dev control answered outside dev mode")
	}
	if s := get("/"); !strings.Contains(string(s), "static/app.js") {
		t.Error("the page does not load its script")
	}
	if s := get("/static/app.js"); len(s) < 1000 {
		t.Error("app.js not served")
	}
}

// TestToken requires the token, in any of its three forms.
func TestToken(t *testing.T) {
	_, _, _, ts := dashCluster(t, web.TapConfig{}, "s3cret")
	code := func(req *http.Request) int {
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	req, _ := http.NewRequest(http.MethodGet, ts.URL+"/api/state", nil)
	if c := code(req); c != http.StatusUnauthorized {
		t.Errorf("no token: %d", c)
	}
	req, _ = http.NewRequest(http.MethodGet, ts.URL+"/api/state?token=wrong", nil)
	if c := code(req); c != http.StatusUnauthorized {
		t.Errorf("wrong token: %d", c)
	}
	req, _ = http.NewRequest(http.MethodGet, ts.URL+"/api/state", nil)
	req.Header.Set("Authorization", "Bearer s3cret")
	if c := code(req); c != http.StatusOK {
		t.Errorf("bearer token: %d", c)
	}
	resp, err := http.Get(ts.URL + "/?token=s3cret")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	var cookie *http.Cookie
	for _, c := range resp.Cookies() {
		cookie = c
	}
	if resp.StatusCode != http.StatusOK || cookie == nil || !cookie.HttpOnly || cookie.SameSite != http.SameSiteStrictMode {
		t.Fatalf("?token=: %s, cookie %+v", resp.Status, cookie)
	}
	req, _ = http.NewRequest(http.MethodGet, ts.URL+"/api/cluster", nil)
	req.AddCookie(cookie)
	if c := code(req); c != http.StatusOK {
		t.Errorf("cookie: %d", c)
	}
}

// TestCheckExposure serves loopback freely and elsewhere only with a
// token.
func TestCheckExposure(t *testing.T) {
	for _, tc := range []struct {
		addr, token string
		ok          bool
	}{
		{"127.0.0.1:2381", "", true},
		{"[::1]:2381", "", true},
		{"localhost:2381", "", true},
		{"0.0.0.0:2381", "", false},
		{"10.0.0.5:2381", "", false},
		{":2381", "", false},
		{"0.0.0.0:2381", "t", true},
	} {
		if err := web.CheckExposure(tc.addr, tc.token); (err == nil) != tc.ok {
			t.Errorf("CheckExposure(%q, %q) = %v", tc.addr, tc.token, err)
		}
	}
}
