package main

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/ballotdb/ballot/server"
	"github.com/ballotdb/ballot/server/servertest"
)

// TestHTTPEndpoints checks a member's HTTP port as serve builds it: health,
// readiness, metrics, pprof only with its flag, and the dashboard refused
// on an address that is not loopback unless a token is set.
func TestHTTPEndpoints(t *testing.T) {
	mons := map[string]*monitor{}
	flags := dashboardFlags{eventsPerSec: 40, eventsBurst: 40}
	c := servertest.New(t, 1, func(cfg *server.Config) {
		m := newMonitor(flags, cfg.Name, "127.0.0.1:0", slog.New(slog.DiscardHandler))
		mons[cfg.Name] = m
		cfg.Observe = m.observe()
	})
	name := c.Leader()
	srv := c.Member(name)

	serve := func(m *monitor) *httptest.Server {
		t.Helper()
		h, err := httpHandler(srv, m)
		if err != nil {
			t.Fatal(err)
		}
		ts := httptest.NewServer(h)
		t.Cleanup(ts.Close)
		return ts
	}
	get := func(ts *httptest.Server, path string) (int, string) {
		t.Helper()
		resp, err := http.Get(ts.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	ts := serve(mons[name])
	for _, tc := range []struct {
		path string
		code int
		has  string
	}{
		{"/healthz", 200, "ok"},
		{"/readyz", 200, "ok"},
		{"/metrics", 200, "ballot_is_leader 1"},
		{"/debug/pprof/", 404, ""},
		{"/", 200, "static/app.js"},
		{"/api/state", 200, `"role":"leader"`},
		{"/status", 200, `"role":"leader"`},
	} {
		code, body := get(ts, tc.path)
		if code != tc.code || !strings.Contains(body, tc.has) {
			t.Errorf("GET %s: %d %q, want %d containing %q", tc.path, code, body, tc.code, tc.has)
		}
	}

	// Another monitor on the same member, for the flags' other settings
	// (its metrics are not watched twice: a fresh registry).
	wide := newMonitor(dashboardFlags{enablePprof: true}, name, "0.0.0.0:2381", slog.New(slog.DiscardHandler))
	ts = serve(wide)
	if code, _ := get(ts, "/debug/pprof/"); code != 200 {
		t.Errorf("/debug/pprof/ with --enable-pprof: %d", code)
	}
	if code, body := get(ts, "/"); code != http.StatusForbidden || !strings.Contains(body, "--dashboard-token") {
		t.Errorf("dashboard on 0.0.0.0 without a token: %d %q", code, body)
	}
	if code, _ := get(ts, "/api/state"); code == 200 {
		t.Error("the dashboard's API answered on 0.0.0.0 without a token")
	}
	if code, _ := get(ts, "/metrics"); code != 200 {
		t.Errorf("/metrics on 0.0.0.0: %d", code)
	}

	tok := newMonitor(dashboardFlags{token: "t0k"}, name, "0.0.0.0:2381", slog.New(slog.DiscardHandler))
	ts = serve(tok)
	if code, _ := get(ts, "/api/state"); code != http.StatusUnauthorized {
		t.Errorf("dashboard with a token, asked without: %d", code)
	}
	if code, _ := get(ts, "/api/state?token=t0k"); code != 200 {
		t.Errorf("dashboard with its token: %d", code)
	}
}
