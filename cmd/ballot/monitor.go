package main

import (
	"fmt"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"strings"

	"github.com/spf13/pflag"

	"github.com/ballotdb/ballot/metrics"
	"github.com/ballotdb/ballot/node"
	"github.com/ballotdb/ballot/server"
	"github.com/ballotdb/ballot/web"
)

// dashboardFlags are serve's flags for metrics, health and the dashboard.
type dashboardFlags struct {
	token        string
	peers        string
	eventsPerSec float64
	eventsBurst  int
	enablePprof  bool
}

func addDashboardFlags(fl *pflag.FlagSet, f *dashboardFlags) {
	fl.StringVar(&f.token, "dashboard-token", "", "token the dashboard requires (Authorization: Bearer, or ?token= once); required to serve it when --listen-http is not loopback")
	fl.StringVar(&f.peers, "dashboard-peers", "", "other members' HTTP addresses for the dashboard's cluster view: name=http://host:port,...")
	fl.Float64Var(&f.eventsPerSec, "dashboard-events-per-second", 40, "hard limit on the dashboard's message events (a token bucket; the rest are sampled out)")
	fl.IntVar(&f.eventsBurst, "dashboard-events-burst", 40, "burst of the dashboard's message event limit")
	fl.BoolVar(&f.enablePprof, "enable-pprof", false, "serve Go's profiler at /debug/pprof/ on the HTTP port")
}

// monitor is one member's metrics and dashboard tap.
type monitor struct {
	f       dashboardFlags
	name    string
	listen  string
	log     *slog.Logger
	metrics *metrics.Member
	tap     *web.Tap
}

func newMonitor(f dashboardFlags, name, listenHTTP string, log *slog.Logger) *monitor {
	return &monitor{f: f, name: name, listen: stripScheme(listenHTTP), log: log, metrics: metrics.New(),
		tap: web.NewTap(web.TapConfig{MessagesPerSecond: f.eventsPerSec, MessageBurst: f.eventsBurst})}
}

// observe is what the server is started with.
func (m *monitor) observe() server.Observe {
	o := m.metrics.Observe()
	o.Node = node.Observers(m.metrics, m.tap)
	return o
}

// mount adds /healthz, /readyz, /metrics, /debug/pprof (with
// --enable-pprof) and the dashboard to mux.
func (m *monitor) mount(mux *http.ServeMux, srv *server.Server) error {
	m.metrics.Watch(srv)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-srv.Done():
			http.Error(w, "stopped", http.StatusServiceUnavailable)
		default:
			fmt.Fprintln(w, "ok")
		}
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := srv.Ready(); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.Handle("GET /metrics", m.metrics.Handler())
	if m.f.enablePprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	peers, err := parseDashboardPeers(m.f.peers, m.name)
	if err != nil {
		return err
	}
	if err := web.CheckExposure(m.listen, m.f.token); err != nil {
		m.log.Warn("dashboard not served", "err", err)
		mux.HandleFunc("/{$}", func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, err.Error(), http.StatusForbidden)
		})
		return nil
	}
	mux.Handle("/", web.Handler(web.Config{Title: m.name, Local: &web.Local{Name: m.name, Server: srv, Tap: m.tap},
		Peers: peers, Token: m.f.token, Logger: m.log}))
	return nil
}

// parseDashboardPeers parses name=http://host:port,... leaving out self.
func parseDashboardPeers(s, self string) ([]web.Peer, error) {
	var out []web.Peer
	for _, part := range splitList(s) {
		name, u, ok := strings.Cut(part, "=")
		if !ok || name == "" || u == "" {
			return nil, fmt.Errorf("--dashboard-peers: %q is not name=http://host:port", part)
		}
		if name == self {
			continue
		}
		if !strings.Contains(u, "://") {
			u = "http://" + u
		}
		out = append(out, web.Peer{Name: name, URL: u})
	}
	return out, nil
}
