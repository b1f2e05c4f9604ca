package web

import (
	"context"
	"crypto/subtle"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/ballotdb/ballot/consensus"
	"github.com/ballotdb/ballot/server"
)

//go:embed static
var staticFiles embed.FS

// Config configures a dashboard Handler.
type Config struct {
	// Title names the cluster on the page.
	Title string
	// Local is the member in this process, if any (ballot dev's
	// supervisor has none: it shows its children as Peers).
	Local *Local
	// Peers are the other members' dashboards, by HTTP base URL
	// (http://host:port): the page shows them through this handler.
	Peers []Peer
	// Token, if set, must come with every dashboard request: as
	// "Authorization: Bearer <token>", a ?token= query parameter (the
	// page then keeps it in a cookie) or that cookie. Sent to Peers too.
	Token string
	// Dev, if set, adds ballot dev's controls (stop, restart, partition,
	// transfer leadership, write load). Nil outside ballot dev: the
	// endpoints then do not exist.
	Dev DevControls
	// Logger receives the handler's few logs. Default: discard.
	Logger *slog.Logger
}

// Peer is another member's dashboard.
type Peer struct {
	Name string
	URL  string // http://host:port
}

// Local is a member served from this process.
type Local struct {
	Name   string
	Server *server.Server
	Tap    *Tap
}

// DevControls carries out ballot dev's buttons. Actions: "stop",
// "start", "partition", "heal", "leader" (transfer leadership to member)
// and "load" (a short write load; member is empty).
type DevControls interface {
	Act(ctx context.Context, action, member string) error
	// Partitioned names the members cut off from the others.
	Partitioned() []string
}

// CheckExposure says whether a dashboard may be served on listen (a
// host:port): on loopback always; elsewhere only with a token.
func CheckExposure(listen, token string) error {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return fmt.Errorf("web: listen address %q: %w", listen, err)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	if token == "" {
		return fmt.Errorf("web: the dashboard is not served on %s, which is not loopback, without --dashboard-token", listen)
	}
	return nil
}

const (
	tokenCookie = "ballot_dashboard_token"
	// devHeader must come with every dev action: a page of another origin
	// cannot send it without a CORS preflight, which is never answered.
	devHeader = "X-Ballot-Dashboard"
)

// Handler returns the dashboard: the page and its static files, the
// member and cluster state as JSON, the event streams, and in dev mode
// the controls. Mount it at the root of the member's HTTP port, after
// more specific routes (/metrics, /healthz...).
func Handler(cfg Config) http.Handler {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	h := &handler{cfg: cfg, client: &http.Client{Timeout: 2 * time.Second}, peers: map[string]*httputil.ReverseProxy{}}
	for _, p := range cfg.Peers {
		h.peers[p.Name] = h.proxy(p)
	}
	static, err := fs.Sub(staticFiles, "static")
	if err != nil {
		panic(err) // the embedded tree is part of the binary
	}
	mux := http.NewServeMux()
	mux.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(static)))
	mux.HandleFunc("GET /{$}", h.index)
	mux.HandleFunc("GET /dashboard", h.index)
	mux.HandleFunc("GET /api/cluster", h.cluster)
	mux.HandleFunc("GET /api/members/{name}/events", h.memberEvents)
	if cfg.Local != nil {
		mux.HandleFunc("GET /api/state", h.state)
		mux.HandleFunc("GET /api/events", h.events)
	}
	if cfg.Dev != nil {
		mux.HandleFunc("POST /api/dev/{action}", h.dev)
	}
	return h.auth(mux)
}

type handler struct {
	cfg    Config
	client *http.Client
	peers  map[string]*httputil.ReverseProxy

	statsMu sync.Mutex
	statsAt time.Time
	stats   storeStats
}

type storeStats struct{ keys, bytes, rev int64 }

// auth requires the token, when there is one.
func (h *handler) auth(next http.Handler) http.Handler {
	if h.cfg.Token == "" {
		return next
	}
	want := []byte(h.cfg.Token)
	ok := func(got string) bool { return subtle.ConstantTimeCompare([]byte(got), want) == 1 }
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if q := r.URL.Query().Get("token"); q != "" && ok(q) {
			http.SetCookie(w, &http.Cookie{Name: tokenCookie, Value: q, Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode})
			next.ServeHTTP(w, r)
			return
		}
		if b, found := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); found && ok(b) {
			next.ServeHTTP(w, r)
			return
		}
		if c, err := r.Cookie(tokenCookie); err == nil && ok(c.Value) {
			next.ServeHTTP(w, r)
			return
		}
		http.Error(w, "dashboard: a token is required (?token=, or Authorization: Bearer)", http.StatusUnauthorized)
	})
}

func (h *handler) index(w http.ResponseWriter, r *http.Request) {
	b, err := staticFiles.ReadFile("static/index.html")
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-cache")
	w.Write(b)
}

// MemberState is what the dashboard shows of one member: indexes, terms
// and sizes, never a key or a value.
type MemberState struct {
	Name          string              `json:"name"`
	ID            string              `json:"id"`
	Role          string              `json:"role"`
	Term          uint64              `json:"term"`
	Leader        string              `json:"leader"`
	Commit        uint64              `json:"commit"`
	Applied       uint64              `json:"applied"`
	FirstIndex    uint64              `json:"first_index"`
	LastIndex     uint64              `json:"last_index"`
	SnapshotIndex uint64              `json:"snapshot_index"`
	LastContactMs int64               `json:"last_contact_ms"` // since the leader was last heard; 0 on the leader; -1 unknown
	Ready         bool                `json:"ready"`
	NotReady      string              `json:"not_ready,omitempty"`
	Voters        []string            `json:"voters"`
	Learners      []string            `json:"learners"`
	Progress      map[string]progress `json:"progress,omitempty"` // the leader's view of each follower
	Log           []termRun           `json:"log"`
	Keys          int64               `json:"keys"`
	Bytes         int64               `json:"bytes"`
	Revision      int64               `json:"revision"`
	Watchers      int                 `json:"watchers"`
	Leases        int                 `json:"leases"`
	Alarms        []string            `json:"alarms"`
	Events        TapStats            `json:"events"`
}

type progress struct {
	Match uint64 `json:"match"`
	Next  uint64 `json:"next"`
	State string `json:"state"`
}

func hexList(ids []consensus.NodeID) []string {
	out := []string{}
	for _, id := range ids {
		out = append(out, hexID(id))
	}
	return out
}

// storeStatsEvery bounds how often the dashboard walks the store to count
// its keys (a walk holds the store's read lock, which writes wait for).
const storeStatsEvery = 10 * time.Second

// localState reads the local member's state: cheap reads only (the store
// is walked for its key count at most every storeStatsEvery).
func (h *handler) localState() MemberState {
	l := h.cfg.Local
	srv := l.Server
	st := srv.Node().LastStatus()
	ms := MemberState{Name: l.Name, ID: hexID(consensus.NodeID(srv.MemberID())), Role: st.Role.String(), Term: st.Epoch,
		Leader: hexID(st.Leader), Commit: st.Commit, Applied: st.Applied, FirstIndex: st.FirstIndex, LastIndex: st.LastIndex,
		Voters: hexList(st.ConfState.Voters), Learners: hexList(st.ConfState.Learners), Alarms: srv.Alarms(),
		Watchers: srv.Watchers(), Leases: srv.Leases(), LastContactMs: -1}
	if ms.Alarms == nil {
		ms.Alarms = []string{}
	}
	if st.FirstIndex > 0 {
		ms.SnapshotIndex = st.FirstIndex - 1
	}
	if err := srv.Ready(); err != nil {
		ms.NotReady = err.Error()
	} else {
		ms.Ready = true
	}
	if st.Role == consensus.Leader {
		ms.LastContactMs = 0
		ms.Progress = map[string]progress{}
		for id, pr := range st.Progress {
			ms.Progress[hexID(id)] = progress{Match: pr.Match, Next: pr.Next, State: pr.State}
		}
	}
	if l.Tap != nil {
		ms.Log = l.Tap.LogRuns()
		ms.Events = l.Tap.Stats()
		if st.Leader != consensus.None && st.Role != consensus.Leader {
			if at := l.Tap.LastContact(st.Leader); !at.IsZero() {
				ms.LastContactMs = time.Since(at).Milliseconds()
			}
		}
	}
	if ms.Log == nil {
		ms.Log = []termRun{}
	}
	h.statsMu.Lock()
	if time.Since(h.statsAt) > storeStatsEvery {
		s := srv.StoreStats()
		h.stats, h.statsAt = storeStats{keys: s.Keys, bytes: s.Bytes, rev: s.Revision}, time.Now()
	}
	ms.Keys, ms.Bytes, ms.Revision = h.stats.keys, h.stats.bytes, h.stats.rev
	h.statsMu.Unlock()
	return ms
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	json.NewEncoder(w).Encode(v)
}

func (h *handler) state(w http.ResponseWriter, r *http.Request) { writeJSON(w, h.localState()) }

// clusterMember is one row of /api/cluster.
type clusterMember struct {
	Name  string       `json:"name"`
	Up    bool         `json:"up"`
	Error string       `json:"error,omitempty"`
	State *MemberState `json:"state,omitempty"`
}

// cluster gathers every member's state: the local one directly, the peers'
// over HTTP, concurrently, each within a second.
func (h *handler) cluster(w http.ResponseWriter, r *http.Request) {
	out := make([]clusterMember, len(h.cfg.Peers))
	var wg sync.WaitGroup
	for i, p := range h.cfg.Peers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i] = h.peerState(r.Context(), p)
		}()
	}
	wg.Wait()
	if h.cfg.Local != nil {
		st := h.localState()
		out = append(out, clusterMember{Name: h.cfg.Local.Name, Up: true, State: &st})
	}
	slices.SortFunc(out, func(a, b clusterMember) int { return strings.Compare(a.Name, b.Name) })
	resp := map[string]any{"title": h.cfg.Title, "dev": h.cfg.Dev != nil, "members": out, "now": time.Now().UnixMilli()}
	if h.cfg.Dev != nil {
		resp["partitioned"] = h.cfg.Dev.Partitioned()
	}
	writeJSON(w, resp)
}

func (h *handler) peerState(ctx context.Context, p Peer) clusterMember {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	cm := clusterMember{Name: p.Name}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(p.URL, "/")+"/api/state", nil)
	if err != nil {
		cm.Error = err.Error()
		return cm
	}
	if h.cfg.Token != "" {
		req.Header.Set("Authorization", "Bearer "+h.cfg.Token)
	}
	resp, err := h.client.Do(req)
	if err != nil {
		cm.Error = "unreachable"
		return cm
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		cm.Error = resp.Status
		return cm
	}
	var st MemberState
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		cm.Error = fmt.Sprintf("bad state: %v", err)
		return cm
	}
	cm.Up, cm.State = true, &st
	return cm
}

// proxy relays a peer's event stream.
func (h *handler) proxy(p Peer) *httputil.ReverseProxy {
	target, err := url.Parse(strings.TrimSuffix(p.URL, "/"))
	if err != nil {
		target = &url.URL{Scheme: "http", Host: "invalid"}
	}
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.URL.Path = "/api/events"
			pr.Out.URL.RawQuery = ""
			pr.Out.Header.Del("Cookie")
			if h.cfg.Token != "" {
				pr.Out.Header.Set("Authorization", "Bearer "+h.cfg.Token)
			}
		},
		FlushInterval: -1,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			http.Error(w, "member unreachable", http.StatusBadGateway)
		},
	}
}

func (h *handler) memberEvents(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if l := h.cfg.Local; l != nil && l.Name == name {
		h.events(w, r)
		return
	}
	p, ok := h.peers[name]
	if !ok {
		http.Error(w, "no such member", http.StatusNotFound)
		return
	}
	p.ServeHTTP(w, r)
}

// events streams the local tap as server-sent events: the recent timeline
// first, then events as they come, with a comment every 15 s so proxies
// keep the connection. The application events (appevents.go) come in the
// same stream: the recent ones after the timeline, then as they are
// applied.
func (h *handler) events(w http.ResponseWriter, r *http.Request) {
	tap := h.cfg.Local.Tap
	if tap == nil {
		http.Error(w, "no event stream", http.StatusNotFound)
		return
	}
	fl, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	sub, history, err := tap.subscribe()
	if err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	defer tap.unsubscribe(sub)
	apps := openAppFeed(r.Context(), h.cfg.Local.Server, h.cfg.Logger)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	fmt.Fprint(w, "retry: 2000\n\n")
	enc := func(ev Event) error {
		b, err := json.Marshal(ev)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "data: %s\n\n", b)
		return err
	}
	for _, ev := range history {
		if enc(ev) != nil {
			return
		}
	}
	if apps.writeInitial(w) != nil {
		return
	}
	fl.Flush()
	ping := time.NewTicker(15 * time.Second)
	defer ping.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-ping.C:
			if _, err := fmt.Fprint(w, ": ping\n\n"); err != nil {
				return
			}
			fl.Flush()
		case evs, ok := <-apps.events():
			if apps.write(w, evs, ok) != nil {
				return
			}
			fl.Flush()
		case ev := <-sub.ch:
			if enc(ev) != nil {
				return
			}
			for range 63 { // what else is queued, bounded, in one flush
				select {
				case ev := <-sub.ch:
					if enc(ev) != nil {
						return
					}
					continue
				default:
				}
				break
			}
			fl.Flush()
		}
	}
}

// dev carries out one of ballot dev's buttons.
func (h *handler) dev(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get(devHeader) == "" {
		http.Error(w, "dashboard: missing "+devHeader+" header", http.StatusForbidden)
		return
	}
	action, member := r.PathValue("action"), r.FormValue("member")
	ctx, cancel := context.WithTimeout(r.Context(), 20*time.Second)
	defer cancel()
	if err := h.cfg.Dev.Act(ctx, action, member); err != nil {
		var bad *BadActionError
		code := http.StatusInternalServerError
		if errors.As(err, &bad) {
			code = http.StatusBadRequest
		}
		h.cfg.Logger.Warn("dev action failed", "action", action, "member", member, "err", err)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
		return
	}
	writeJSON(w, map[string]string{"ok": action + " " + member})
}

// BadActionError is a dev action or member the controls do not know.
type BadActionError struct{ What string }

func (e *BadActionError) Error() string { return "dashboard: " + e.What }
