package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/ballotdb/ballot/consensus"
	"github.com/ballotdb/ballot/node"
	"github.com/ballotdb/ballot/server"
)

type serveFlags struct {
	name            string
	dataDir         string
	listenClient    string
	listenPeer      string
	listenHTTP      string
	advertiseClient string
	forceNewCluster bool
	peerRoutes      string
	initialCluster  string
	clusterToken    string
	clusterState    string
	engine          string
	tick            time.Duration
	electionTicks   int
	logLevel        string
	logFormat       string
	configFile      string
	snapshotCount   uint64
	unsafeStale     bool
	unsafeEarlyAck  bool
	unsafeLease     bool
	unsafeCorrupt   bool
	clientTLS       server.TLSConfig
	dashboard       dashboardFlags
	quotaBytes      int64
	corruptCheck    time.Duration
	shards          int
	splitBytes      int64
	splitLoad       float64
}

func serveCommand() *cobra.Command {
	var f serveFlags
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run one ballot member serving the etcd v3 API",
		Long: `Run one ballot member serving the etcd v3 API.

Every flag can also be set by an environment variable named BALLOT_ and the
flag's name in capitals with dashes as underscores (BALLOT_DATA_DIR), or by a
JSON config file (--config) mapping flag names to values. A flag on the
command line wins over the environment, which wins over the file.`,
		Example: `  ballot serve --name n1 --data-dir /var/lib/ballot/n1 \
    --listen-client 127.0.0.1:2379 --listen-peer 127.0.0.1:2380 \
    --initial-cluster n1=127.0.0.1:2380,n2=127.0.0.1:22380,n3=127.0.0.1:32380`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := applyEnvAndConfig(cmd.Flags(), f.configFile); err != nil {
				return err
			}
			return runServe(cmd.Context(), f)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.name, "name", "", "this member's name, as in --initial-cluster (required)")
	fl.StringVar(&f.dataDir, "data-dir", "", "directory for the write-ahead log and snapshots (required)")
	fl.StringVar(&f.listenClient, "listen-client", "127.0.0.1:2379", "address for clients (etcd v3 gRPC API)")
	fl.StringVar(&f.listenPeer, "listen-peer", "127.0.0.1:2380", "address for the other members")
	fl.StringVar(&f.peerRoutes, "unsafe-peer-routes", "", "TESTING: name=host:port,... dial these addresses to reach those peers (the chaos rig's fault proxies); IDs still derive from --initial-cluster")
	fl.BoolVar(&f.forceNewCluster, "force-new-cluster", false, "disaster recovery: start this member alone as a new one-member cluster from its data (once; then restart without it and add members)")
	fl.StringVar(&f.advertiseClient, "advertise-client-urls", "", "client URLs this member publishes to the cluster, comma-separated (default: http://<listen-client>)")
	fl.StringVar(&f.listenHTTP, "listen-http", "127.0.0.1:2381", "address for health and status over HTTP ('' to disable)")
	fl.StringVar(&f.initialCluster, "initial-cluster", "", "initial members: name=host:port,... (peer addresses)")
	fl.StringVar(&f.clusterToken, "initial-cluster-token", "ballot-cluster", "token naming the cluster; member and cluster IDs derive from it")
	fl.StringVar(&f.clusterState, "initial-cluster-state", "new", "new: bootstrap with --initial-cluster; existing: join a running cluster")
	fl.StringVar(&f.engine, "engine", "raft", "consensus engine: raft or paxos (every member must run the same)")
	fl.DurationVar(&f.tick, "tick", 100*time.Millisecond, "length of one engine tick (heartbeat interval)")
	fl.IntVar(&f.electionTicks, "election-ticks", 10, "election timeout in ticks")
	fl.Uint64Var(&f.snapshotCount, "snapshot-count", 10000, "applied entries between automatic snapshots")
	fl.StringVar(&f.clientTLS.CertFile, "cert-file", "", "client port TLS certificate (PEM); with --key-file turns TLS on for clients. Reloaded when the file changes")
	fl.StringVar(&f.clientTLS.KeyFile, "key-file", "", "client port TLS private key (PEM)")
	fl.StringVar(&f.clientTLS.TrustedCAFile, "trusted-ca-file", "", "CA certificates (PEM) that sign client certificates")
	fl.BoolVar(&f.clientTLS.ClientCertAuth, "client-cert-auth", false, "refuse clients without a certificate signed by --trusted-ca-file")
	fl.Int64Var(&f.quotaBytes, "quota-backend-bytes", server.DefaultQuotaBackendBytes, "data size beyond which the NOSPACE alarm is raised and writes are refused (-1: no quota)")
	fl.DurationVar(&f.corruptCheck, "corrupt-check-time", server.DefaultCorruptCheckTime, "how often the leader compares the members' hashes, raising CORRUPT on a mismatch (0: never)")
	fl.IntVar(&f.shards, "shards", 0, "sharded mode: a new cluster starts with this many shards, each its own consensus group (0: one group, exact etcd semantics; see docs/sharding.md). Every member must pass the same value")
	fl.Int64Var(&f.splitBytes, "split-bytes", 0, "sharded mode: split a shard at its middle key once its data passes this many bytes (0: 256 MiB; negative: never)")
	fl.Float64Var(&f.splitLoad, "split-load", 0, "sharded mode: split a shard at its middle key once its log grows faster than this many entries a second for 5 s (0: never)")
	fl.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	fl.StringVar(&f.logFormat, "log-format", "text", "text or json")
	fl.StringVar(&f.configFile, "config", "", "JSON file of flag values")
	addDashboardFlags(fl, &f.dashboard)
	fl.BoolVar(&f.unsafeStale, "unsafe-stale-reads", false, "BROKEN ON PURPOSE: serve linearizable reads without a read barrier (for the chaos rig's self-test)")
	fl.BoolVar(&f.unsafeEarlyAck, "unsafe-early-ack", false, "BROKEN ON PURPOSE: acknowledge writes before they commit (for the chaos rig's self-test)")
	fl.BoolVar(&f.unsafeLease, "unsafe-lease-early-expiry", false, "BROKEN ON PURPOSE: expire leases at half their TTL (for the chaos rig's self-test)")
	_ = fl.MarkHidden("unsafe-stale-reads")
	_ = fl.MarkHidden("unsafe-early-ack")
	fl.BoolVar(&f.unsafeCorrupt, "unsafe-corrupt-puts", false, "BROKEN ON PURPOSE: apply every put with its value changed on this member alone (for the chaos rig's replica check)")
	_ = fl.MarkHidden("unsafe-lease-early-expiry")
	_ = fl.MarkHidden("unsafe-corrupt-puts")
	_ = fl.MarkHidden("unsafe-peer-routes")
	return cmd
}

// applyEnvAndConfig fills flags not set on the command line from BALLOT_*
// variables, then from the config file.
func applyEnvAndConfig(fs *pflag.FlagSet, file string) error {
	var fromFile map[string]any
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return fmt.Errorf("config file: %w", err)
		}
		if err := json.Unmarshal(b, &fromFile); err != nil {
			return fmt.Errorf("config file %s: %w", file, err)
		}
		for k := range fromFile {
			if fs.Lookup(k) == nil {
				return fmt.Errorf("config file %s: unknown flag %q", file, k)
			}
		}
	}
	var err error
	fs.VisitAll(func(fl *pflag.Flag) {
		if fl.Changed || err != nil {
			return
		}
		env := "BALLOT_" + strings.ToUpper(strings.ReplaceAll(fl.Name, "-", "_"))
		if v, ok := os.LookupEnv(env); ok {
			if e := fs.Set(fl.Name, v); e != nil {
				err = fmt.Errorf("%s: %w", env, e)
			}
			return
		}
		if v, ok := fromFile[fl.Name]; ok {
			if e := fs.Set(fl.Name, fmt.Sprint(v)); e != nil {
				err = fmt.Errorf("config file %s: %s: %w", file, fl.Name, e)
			}
		}
	})
	return err
}

// parseCluster parses name=host:port,... (an http:// prefix is accepted).
func parseCluster(s string) (map[string]string, error) {
	out := map[string]string{}
	if strings.TrimSpace(s) == "" {
		return out, nil
	}
	for _, part := range strings.Split(s, ",") {
		name, addr, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok || name == "" || addr == "" {
			return nil, fmt.Errorf("--initial-cluster: %q is not name=host:port", part)
		}
		addr = stripScheme(addr)
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return nil, fmt.Errorf("--initial-cluster: member %s: %w", name, err)
		}
		if _, dup := out[name]; dup {
			return nil, fmt.Errorf("--initial-cluster: member %s named twice", name)
		}
		out[name] = addr
	}
	return out, nil
}

func stripScheme(a string) string {
	for _, p := range []string{"http://", "https://"} {
		a = strings.TrimPrefix(a, p)
	}
	return a
}

func newLogger(level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, fmt.Errorf("--log-format: %q is neither text nor json", format)
}

func runServe(ctx context.Context, f serveFlags) error {
	if f.name == "" || f.dataDir == "" {
		return errors.New("serve: --name and --data-dir are required")
	}
	if f.engine != string(node.EngineRaft) && f.engine != string(node.EnginePaxos) {
		return fmt.Errorf("serve: --engine %q: want raft or paxos", f.engine)
	}
	log, err := newLogger(f.logLevel, f.logFormat)
	if err != nil {
		return err
	}
	initial, err := parseCluster(f.initialCluster)
	if err != nil {
		return err
	}
	routes, err := parseCluster(f.peerRoutes)
	if err != nil {
		return fmt.Errorf("--unsafe-peer-routes: %w", err)
	}
	join := false
	switch f.clusterState {
	case "new":
		if len(initial) == 0 {
			initial = map[string]string{f.name: stripScheme(f.listenPeer)}
		}
	case "existing":
		join = true
	default:
		return fmt.Errorf("--initial-cluster-state: %q is neither new nor existing", f.clusterState)
	}
	if err := os.MkdirAll(f.dataDir, 0o700); err != nil {
		return fmt.Errorf("serve: data dir: %w", err)
	}
	clientTLS, err := f.clientTLSConfig()
	if err != nil {
		return err
	}
	cl, err := net.Listen("tcp", stripScheme(f.listenClient))
	if err != nil {
		return fmt.Errorf("serve: --listen-client: %w", err)
	}
	pl, err := net.Listen("tcp", stripScheme(f.listenPeer))
	if err != nil {
		cl.Close()
		return fmt.Errorf("serve: --listen-peer: %w", err)
	}
	mon := newMonitor(f.dashboard, f.name, f.listenHTTP, log)
	if f.shards > 0 {
		return runShardHost(ctx, f, log, initial, join, cl, pl, mon)
	}
	srv, err := server.Start(ctx, server.Config{
		Name: f.name, ClusterToken: f.clusterToken, InitialCluster: initial, Join: join,
		Engine:              node.EngineKind(f.engine),
		AdvertiseClientURLs: splitList(f.advertiseClient), ForceNewCluster: f.forceNewCluster, PeerRoutes: routes,
		DataDir: f.dataDir, ClientListener: cl, PeerListener: pl,
		TickInterval: f.tick, ElectionTicks: f.electionTicks, SnapshotEntries: f.snapshotCount,
		Logger: log, Clock: serveClock(f.dataDir, log), TLS: clientTLS, Observe: mon.observe(),
		QuotaBackendBytes: f.quotaBytes, CorruptCheckTime: cmp.Or(f.corruptCheck, -1), // flag 0: never
		Unsafe: server.UnsafeKnobs{StaleReads: f.unsafeStale, EarlyAck: f.unsafeEarlyAck, LeaseEarlyExpiry: f.unsafeLease, CorruptPuts: f.unsafeCorrupt},
	})
	if err != nil {
		pl.Close()
		return err
	}
	var httpSrv *http.Server
	if f.listenHTTP != "" {
		hl, err := net.Listen("tcp", stripScheme(f.listenHTTP))
		if err != nil {
			srv.Stop()
			return fmt.Errorf("serve: --listen-http: %w", err)
		}
		h, err := httpHandler(srv, mon)
		if err != nil {
			hl.Close()
			srv.Stop()
			return err
		}
		httpSrv = &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
		go httpSrv.Serve(hl)
	}
	fmt.Fprintf(os.Stderr, "ballot: member %s (%x) of cluster %x serving clients on %s\n",
		f.name, srv.MemberID(), srv.ClusterID(), srv.ClientURL())

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sig)
	select {
	case s := <-sig:
		log.Info("stopping", "signal", s.String())
	case <-srv.Done():
	}
	if httpSrv != nil {
		httpSrv.Close()
	}
	srv.Stop()
	if err := srv.Err(); err != nil {
		return fmt.Errorf("serve: stopped after a failure: %w", err)
	}
	return nil
}

// clientTLSConfig is the client port's TLS, or nil for plain text.
func (f *serveFlags) clientTLSConfig() (*server.TLSConfig, error) {
	t := f.clientTLS
	if t == (server.TLSConfig{}) {
		return nil, nil
	}
	if t.CertFile == "" || t.KeyFile == "" {
		return nil, errors.New("serve: client TLS needs both --cert-file and --key-file")
	}
	if t.ClientCertAuth && t.TrustedCAFile == "" {
		return nil, errors.New("serve: --client-cert-auth needs --trusted-ca-file")
	}
	return &t, nil
}

// httpHandler serves health and status, the operator's view over HTTP,
// with the metrics, health checks and dashboard of monitor.go.
func httpHandler(srv *server.Server, mon *monitor) (http.Handler, error) {
	mux := http.NewServeMux()
	mux.HandleFunc("/health", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		lead := srv.Node().Leader()
		if lead == consensus.None {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, `{"health":"false","reason":"no leader"}`)
			return
		}
		fmt.Fprintln(w, `{"health":"true","reason":""}`)
	})
	mux.HandleFunc("/status", func(w http.ResponseWriter, r *http.Request) {
		st := srv.Node().Status()
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{
			"member_id": fmt.Sprintf("%x", srv.MemberID()), "cluster_id": fmt.Sprintf("%x", srv.ClusterID()),
			"role": st.Role.String(), "term": st.Epoch, "leader": fmt.Sprintf("%x", uint64(st.Leader)),
			"commit": st.Commit, "applied": st.Applied, "last_index": st.LastIndex,
		})
	})
	if err := mon.mount(mux, srv); err != nil {
		return nil, err
	}
	return mux, nil
}

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(v string) []string {
	var out []string
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
