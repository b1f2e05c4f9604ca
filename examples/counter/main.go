// Command counter is a replicated counter built on package node: the
// smallest complete application of ballot's embeddable runtime.
//
// It shows how to
//
//   - write a deterministic StateMachine (a counter) with Snapshot and
//     Restore;
//   - make client retries safe: each increment carries (client, seq), and
//     the state machine remembers, per client, the last sequence number it
//     applied and its result, so an increment that is retried after a
//     timeout or a crash is applied once and answered with the same value;
//   - serve writes with Node.Propose (a follower forwards to the leader) and
//     linearizable reads with Node.ReadBarrier (POST /inc, GET /value; GET
//     /leader tells which member this one thinks leads);
//   - map the node's errors to HTTP: anything that means "not now"
//     (ErrNotLeader, ErrBusy, ErrOutcomeUnknown, ErrStopped, ErrNoSpace, a
//     timeout) is a 503 with the error text, which a client retries with the
//     same (client, seq);
//   - stop cleanly on SIGTERM or SIGINT.
//
// Run three members on one machine:
//
//	peers=1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003
//	counter --id 1 --peers $peers --data /tmp/c1 --http 127.0.0.1:8001 &
//	counter --id 2 --peers $peers --data /tmp/c2 --http 127.0.0.1:8002 &
//	counter --id 3 --peers $peers --data /tmp/c3 --http 127.0.0.1:8003 &
//	curl -X POST '127.0.0.1:8002/inc?client=alice&seq=1'   # 1
//	curl -X POST '127.0.0.1:8003/inc?client=alice&seq=1'   # 1 again: a retry
//	curl 127.0.0.1:8001/value                              # 1
//
// A client's sequence numbers must increase, and a client must not start
// seq N+1 before seq N was acknowledged: the state machine keeps only the
// last one per client. (A real service would also expire idle clients, with
// a time chosen by the proposer and carried in the command.)
//
// counter_test.go runs three such processes and kills them with SIGKILL, one
// at a time, while clients increment, then checks that the counter equals
// the number of acknowledged increments on every member.
package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ballotdb/ballot/consensus"
	"github.com/ballotdb/ballot/node"
)

// defaultClusterID names the counter's group unless --cluster-id says
// otherwise.
const defaultClusterID = 0xc0ffee

// maxClientLen bounds a client ID.
const maxClientLen = 128

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "counter:", err)
		os.Exit(1)
	}
}

// options are the command-line flags.
type options struct {
	id              consensus.NodeID
	clusterID       uint64
	peers           map[consensus.NodeID]string
	dataDir         string
	httpAddr        string
	tick            time.Duration
	electionTicks   int
	timeout         time.Duration
	snapshotEntries uint64
	logLevel        slog.Level
}

func parseFlags(args []string) (options, error) {
	fs := flag.NewFlagSet("counter", flag.ContinueOnError)
	id := fs.Uint64("id", 0, "this member's ID (required, one of the IDs in --peers)")
	clusterID := fs.Uint64("cluster-id", defaultClusterID, "the group's cluster ID")
	peers := fs.String("peers", "", "members as ID=host:port,... (peer addresses; this member listens on its own)")
	dataDir := fs.String("data", "", "data directory (required)")
	httpAddr := fs.String("http", "127.0.0.1:8080", "client API address")
	tick := fs.Duration("tick", 100*time.Millisecond, "engine tick")
	electionTicks := fs.Int("election-ticks", 10, "election timeout in ticks")
	timeout := fs.Duration("timeout", 5*time.Second, "bound on one client request")
	snapshotEntries := fs.Uint64("snapshot-entries", 0, "snapshot after this many applied entries (0: the node's default)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return options{}, err
	}
	o := options{id: consensus.NodeID(*id), clusterID: *clusterID, dataDir: *dataDir, httpAddr: *httpAddr,
		tick: *tick, electionTicks: *electionTicks, timeout: *timeout, snapshotEntries: *snapshotEntries}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if err := o.logLevel.UnmarshalText([]byte(*logLevel)); err != nil {
		return o, fmt.Errorf("--log-level: %w", err)
	}
	var err error
	if o.peers, err = parsePeers(*peers); err != nil {
		return o, err
	}
	switch {
	case o.id == consensus.None:
		return o, errors.New("--id is required")
	case o.peers[o.id] == "":
		return o, fmt.Errorf("--peers has no address for this member (--id %d)", o.id)
	case o.dataDir == "":
		return o, errors.New("--data is required")
	case o.timeout <= 0:
		return o, errors.New("--timeout must be positive")
	}
	return o, nil
}

// parsePeers parses "1=host:port,2=host:port".
func parsePeers(s string) (map[consensus.NodeID]string, error) {
	peers := map[consensus.NodeID]string{}
	if strings.TrimSpace(s) == "" {
		return nil, errors.New("--peers is required")
	}
	for part := range strings.SplitSeq(s, ",") {
		idStr, addr, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok || addr == "" {
			return nil, fmt.Errorf("--peers: %q is not ID=host:port", part)
		}
		id, err := strconv.ParseUint(idStr, 10, 64)
		if err != nil || id == 0 {
			return nil, fmt.Errorf("--peers: bad member ID %q", idStr)
		}
		if _, dup := peers[consensus.NodeID(id)]; dup {
			return nil, fmt.Errorf("--peers: member %d listed twice", id)
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return nil, fmt.Errorf("--peers: member %d: %w", id, err)
		}
		peers[consensus.NodeID(id)] = addr
	}
	return peers, nil
}

func run(args []string) error {
	o, err := parseFlags(args)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: o.logLevel}))

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	peerLn, err := net.Listen("tcp", o.peers[o.id])
	if err != nil {
		return fmt.Errorf("peer listener: %w", err)
	}
	httpLn, err := net.Listen("tcp", o.httpAddr)
	if err != nil {
		peerLn.Close()
		return fmt.Errorf("client listener: %w", err)
	}
	sm := newCounter()
	startCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	n, err := node.Start(startCtx, node.Config{
		ID: o.id, ClusterID: o.clusterID, Peers: o.peers, DataDir: o.dataDir, Listen: peerLn,
		TickInterval: o.tick, ElectionTicks: o.electionTicks, SnapshotEntries: o.snapshotEntries,
		Logger: log,
	}, sm)
	cancel()
	if err != nil {
		peerLn.Close()
		httpLn.Close()
		return err
	}
	log.Info("counter serving", "node", o.id, "http", httpLn.Addr().String(), "peer", o.peers[o.id])

	srv := &http.Server{Handler: newServer(n, sm, o.timeout, log).routes(), ReadHeaderTimeout: 5 * time.Second}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(httpLn) }()

	var runErr error
	select {
	case <-ctx.Done():
		log.Info("signal received, stopping", "node", o.id)
	case <-n.Done():
		runErr = fmt.Errorf("node stopped on its own: %w", n.Err())
	case err := <-serveErr:
		runErr = fmt.Errorf("http server: %w", err)
	}
	shutCtx, cancel := context.WithTimeout(context.Background(), o.timeout)
	if err := srv.Shutdown(shutCtx); err != nil {
		log.Warn("http shutdown", "err", err)
	}
	cancel()
	n.Stop()
	log.Info("counter stopped", "node", o.id)
	return runErr
}

// counter is the state machine: a value, and per client the last sequence
// number applied and the value it produced.
type counter struct {
	mu       sync.Mutex // Apply runs on the node's apply goroutine, reads on HTTP's
	value    uint64
	sessions map[string]session
}

type session struct {
	Seq    uint64 `json:"seq"`
	Result uint64 `json:"result"`
}

func newCounter() *counter { return &counter{sessions: map[string]session{}} }

// A command is an increment by one for (client, seq):
//
//	'i' | seq (8 bytes, little endian) | client
const opInc = 'i'

func encodeInc(client string, seq uint64) []byte {
	b := make([]byte, 0, 9+len(client))
	b = append(b, opInc)
	b = binary.LittleEndian.AppendUint64(b, seq)
	return append(b, client...)
}

func decodeInc(cmd []byte) (client string, seq uint64, ok bool) {
	if len(cmd) < 10 || cmd[0] != opInc {
		return "", 0, false
	}
	return string(cmd[9:]), binary.LittleEndian.Uint64(cmd[1:9]), true
}

// Apply increments the counter unless (client, seq) is not newer than the
// client's last applied request; either way it returns the value that
// request produced (8 bytes, little endian). A malformed command changes
// nothing and returns nil. It depends only on the state and cmd.
func (c *counter) Apply(_ uint64, cmd []byte) []byte {
	client, seq, ok := decodeInc(cmd)
	if !ok {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.sessions[client]
	if seq > s.Seq {
		c.value++
		s = session{Seq: seq, Result: c.value}
		c.sessions[client] = s
	}
	// A duplicate gets the result of the client's last request: for a retry
	// of that request it is the value it produced; an older one has long
	// been answered and its proposer has moved on.
	return binary.LittleEndian.AppendUint64(nil, s.Result)
}

// snapshotData is the snapshot format: JSON, whose map keys are sorted, so
// every member writes the same bytes for the same state.
type snapshotData struct {
	Value    uint64             `json:"value"`
	Sessions map[string]session `json:"sessions"`
}

func (c *counter) Snapshot(w io.Writer) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return json.NewEncoder(w).Encode(snapshotData{Value: c.value, Sessions: c.sessions})
}

func (c *counter) Restore(r io.Reader) error {
	var d snapshotData
	if err := json.NewDecoder(r).Decode(&d); err != nil {
		return fmt.Errorf("counter: restore: %w", err)
	}
	if d.Sessions == nil {
		d.Sessions = map[string]session{}
	}
	c.mu.Lock()
	c.value, c.sessions = d.Value, d.Sessions
	c.mu.Unlock()
	return nil
}

func (c *counter) get() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.value
}

// server is the client API.
type server struct {
	n       *node.Node
	sm      *counter
	timeout time.Duration
	log     *slog.Logger
}

func newServer(n *node.Node, sm *counter, timeout time.Duration, log *slog.Logger) *server {
	return &server{n: n, sm: sm, timeout: timeout, log: log}
}

func (s *server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /inc", s.inc)
	mux.HandleFunc("GET /value", s.value)
	mux.HandleFunc("GET /leader", s.leader)
	return mux
}

// inc handles POST /inc?client=C&seq=N: it applies the increment for
// (C, N) once, however often it is sent, and answers the value it produced.
func (s *server) inc(w http.ResponseWriter, r *http.Request) {
	client := r.URL.Query().Get("client")
	seq, err := strconv.ParseUint(r.URL.Query().Get("seq"), 10, 64)
	switch {
	case client == "" || len(client) > maxClientLen:
		http.Error(w, fmt.Sprintf("client must be 1 to %d bytes", maxClientLen), http.StatusBadRequest)
		return
	case err != nil || seq == 0:
		http.Error(w, "seq must be a positive integer", http.StatusBadRequest)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.timeout)
	defer cancel()
	res, err := s.n.Propose(ctx, encodeInc(client, seq))
	if err != nil {
		s.fail(w, "inc", err)
		return
	}
	if len(res) != 8 {
		http.Error(w, "counter: unexpected result", http.StatusInternalServerError)
		return
	}
	fmt.Fprintln(w, binary.LittleEndian.Uint64(res))
}

// value handles GET /value: a linearizable read of the counter.
func (s *server) value(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), s.timeout)
	defer cancel()
	if err := s.n.ReadBarrier(ctx); err != nil {
		s.fail(w, "value", err)
		return
	}
	fmt.Fprintln(w, s.sm.get())
}

// leader handles GET /leader: the leader this member knows of, 0 if none
// (a hint, not a linearizable read).
func (s *server) leader(w http.ResponseWriter, _ *http.Request) {
	fmt.Fprintln(w, uint64(s.n.Leader()))
}

// fail answers err: 503 for what a retry may cure, with the error text.
func (s *server) fail(w http.ResponseWriter, op string, err error) {
	code := http.StatusServiceUnavailable
	switch {
	case errors.Is(err, consensus.ErrTooLarge):
		code = http.StatusRequestEntityTooLarge
	case errors.Is(err, node.ErrNotLeader), errors.Is(err, node.ErrBusy),
		errors.Is(err, node.ErrOutcomeUnknown), errors.Is(err, node.ErrStopped),
		errors.Is(err, node.ErrNoSpace), errors.Is(err, consensus.ErrProposalDropped),
		errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
	default:
		code = http.StatusInternalServerError
	}
	s.log.Debug("request failed", "op", op, "code", code, "err", err)
	http.Error(w, err.Error(), code)
}
