package server

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
)

// The client port serves gRPC and HTTP (the JSON gateway) on one listener.
// front accepts each connection and hands it to one of two servers:
//
//	client port ──accept──▶ classify (one goroutine per new connection)
//	   plain text: first bytes are the HTTP/2 preface ──▶ grpc.Server.Serve
//	               anything else (HTTP/1.x)            ──▶ http.Server: gateway
//	   TLS:        handshake, then by the ALPN protocols the client offered
//	               h2 alone (every gRPC client)        ──▶ grpc.Server.Serve
//	               http/1.1, with or without h2 (curl) ──▶ http.Server: gRPC
//	                    requests to grpc.Server.ServeHTTP, the rest to the gateway
//	               none: by the first bytes, as in plain text
//
// A gRPC client thus keeps grpc.Server's own transport; only classifying a
// new connection costs anything. (An HTTP/2 client that sends JSON without
// offering http/1.1, such as curl --http2-prior-knowledge, reaches gRPC
// and is refused; HTTP/1.1 and curl's default HTTP/2 over TLS work.) The gateway reaches the same grpc.Server
// over an in-memory connection, so a JSON request is a gRPC call inside
// the process, past the TLS and client-certificate checks its HTTP
// connection has already passed.
type front struct {
	ln    net.Listener
	certs *certStore // nil: plain text
	tlsc  *tls.Config
	log   *slog.Logger
	grpc  *grpc.Server

	grpcL *connQueue // connections for grpc.Server.Serve
	httpL *connQueue // connections for http.Server.Serve
	memL  *connQueue // the gateway's in-memory connections to grpc
	http  *http.Server
	gw    *gateway

	// classifying bounds the connections being classified at once; a
	// connection past the bound waits in the kernel's accept queue.
	classifying chan struct{}
	mu          sync.Mutex            // guards pending and closed
	pending     map[net.Conn]struct{} // being classified; closed by close
	closed      bool
	wg          sync.WaitGroup // classify goroutines
}

const (
	// classifyTimeout bounds a new connection's TLS handshake and its
	// first bytes; a client silent for longer is dropped.
	classifyTimeout = 10 * time.Second
	// classifyingMax bounds the connections classified at once.
	classifyingMax = 1024
	// httpIdleTimeout closes an HTTP connection idle for this long.
	httpIdleTimeout = 2 * time.Minute
	// httpShutdownGrace is how long Stop lets HTTP requests finish.
	httpShutdownGrace = time.Second
)

// http2Preface opens every HTTP/2 connection (RFC 9113, section 3.4).
var http2Preface = []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")

func newFront(s *Server) (*front, error) {
	ln := s.cfg.ClientListener
	f := &front{
		ln: ln, certs: s.certs, log: s.log, grpc: s.grpc,
		grpcL:       newConnQueue(ln.Addr()),
		httpL:       newConnQueue(ln.Addr()),
		memL:        newConnQueue(memAddr{}),
		classifying: make(chan struct{}, classifyingMax),
		pending:     map[net.Conn]struct{}{},
	}
	if s.certs != nil {
		f.tlsc = s.certs.serverConfig()
	}
	gw, err := newGateway(f.memL.dial, s.cfg.MaxRequestBytes+grpcOverheadBytes)
	if err != nil {
		return nil, err
	}
	f.gw = gw
	f.http = &http.Server{
		Handler:           http.HandlerFunc(f.serveHTTP),
		ReadHeaderTimeout: classifyTimeout,
		IdleTimeout:       httpIdleTimeout,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		// Serve answers h2 on the *tls.Conns this server is handed.
		TLSConfig: &tls.Config{NextProtos: []string{alpnH2, alpnHTTP1}},
		HTTP2:     &http.HTTP2Config{MaxConcurrentStreams: 1 << 16},
	}
	return f, nil
}

// url is the client URL: https when TLS is on.
func (f *front) url() string {
	if f.certs != nil {
		return "https://" + f.ln.Addr().String()
	}
	return "http://" + f.ln.Addr().String()
}

// serve runs the servers and the accept loop until close; it returns the
// first error that stopped one of them early.
func (f *front) serve() error {
	errc := make(chan error, 4)
	var wg sync.WaitGroup
	run := func(serve func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := serve(); err != nil && !errors.Is(err, grpc.ErrServerStopped) && !errors.Is(err, http.ErrServerClosed) {
				errc <- err
			}
		}()
	}
	run(func() error { return f.grpc.Serve(f.grpcL) })
	run(func() error { return f.grpc.Serve(f.memL) })
	run(func() error { return f.http.Serve(f.httpL) })
	run(f.accept)
	wg.Wait()
	f.wg.Wait()
	close(errc)
	return <-errc
}

// accept hands each new connection to classify until the listener closes.
func (f *front) accept() error {
	var backoff time.Duration
	for {
		f.classifying <- struct{}{}
		c, err := f.ln.Accept()
		if err != nil {
			<-f.classifying
			if f.isClosed() || errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || isTemporary(err) {
				// As net/http: back off on EMFILE and the like.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				f.log.Warn("client accept failed; retrying", "err", err, "backoff", backoff)
				time.Sleep(backoff)
				continue
			}
			return fmt.Errorf("server: client listener: %w", err)
		}
		backoff = 0
		if !f.track(c) {
			<-f.classifying
			c.Close()
			return nil
		}
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			defer func() { <-f.classifying }()
			f.classify(c)
		}()
	}
}

func isTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

// track records c as being classified, so close can end it; false once
// closed.
func (f *front) track(c net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return false
	}
	f.pending[c] = struct{}{}
	return true
}

func (f *front) untrack(c net.Conn) {
	f.mu.Lock()
	delete(f.pending, c)
	f.mu.Unlock()
}

func (f *front) isClosed() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.closed
}

// classify decides which server gets c; see front.
func (f *front) classify(raw net.Conn) {
	defer f.untrack(raw)
	if f.tlsc == nil {
		f.route(raw, raw)
		return
	}
	hc := &helloConn{netConn: raw}
	tc := tls.Server(hc, f.tlsc)
	ctx, cancel := context.WithTimeout(context.Background(), classifyTimeout)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		// As etcd's "rejected connection": a refused client certificate
		// shows here. A connection closed before its hello (a TCP probe)
		// is not worth a warning.
		lv := slog.LevelWarn
		if errors.Is(err, io.EOF) || f.isClosed() {
			lv = slog.LevelDebug
		}
		f.log.Log(context.Background(), lv, "client TLS handshake failed", "remote", raw.RemoteAddr().String(), "err", err)
		raw.Close()
		return
	}
	switch tc.ConnectionState().NegotiatedProtocol {
	case alpnH2:
		if hc.grpcOnly {
			f.grpcL.put(tc)
		} else {
			f.httpL.put(tc)
		}
	case alpnHTTP1:
		f.httpL.put(tc)
	default:
		f.route(tc, raw)
	}
}

// route reads the first bytes of c (raw is what deadlines are set on)
// and hands c to grpc if they are the HTTP/2 preface, to net/http if not.
func (f *front) route(c, raw net.Conn) {
	raw.SetReadDeadline(time.Now().Add(classifyTimeout))
	buf := make([]byte, len(http2Preface))
	n := 0
	for n < len(buf) {
		m, err := c.Read(buf[n:])
		n += m
		if !bytes.Equal(buf[:n], http2Preface[:n]) {
			break
		}
		if err != nil {
			f.log.Debug("client connection closed before its first request", "remote", raw.RemoteAddr().String(), "err", err)
			c.Close()
			return
		}
	}
	raw.SetReadDeadline(time.Time{})
	pc := &prefixConn{netConn: c, r: io.MultiReader(bytes.NewReader(buf[:n]), c)}
	if n == len(http2Preface) && bytes.Equal(buf, http2Preface) {
		f.grpcL.put(pc)
		return
	}
	f.httpL.put(pc)
}

// serveHTTP serves one request that came through net/http: gRPC (only
// possible on h2 over TLS) goes to grpc.Server.ServeHTTP, the rest to the
// gateway.
func (f *front) serveHTTP(w http.ResponseWriter, r *http.Request) {
	if r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
		f.grpc.ServeHTTP(w, r)
		return
	}
	f.gw.ServeHTTP(w, r)
}

// close stops accepting, drops connections still being classified, lets
// HTTP requests finish for httpShutdownGrace, then closes the HTTP
// connections and the gateway's connection. gRPC connections are left to
// grpc.Server.GracefulStop, which closes grpcL and memL.
func (f *front) close() {
	f.mu.Lock()
	f.closed = true
	for c := range f.pending {
		c.Close()
	}
	f.mu.Unlock()
	f.ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), httpShutdownGrace)
	defer cancel()
	if err := f.http.Shutdown(ctx); err != nil {
		f.http.Close()
	}
	f.httpL.Close()
	f.gw.close()
}

// netConn is embedded by the connection wrappers.
type netConn = net.Conn

// prefixConn replays the bytes read to classify a connection.
type prefixConn struct {
	netConn
	r io.Reader
}

func (c *prefixConn) Read(b []byte) (int, error) { return c.r.Read(b) }

// connQueue is a net.Listener fed by front: Accept returns the
// connections put to it.
type connQueue struct {
	addr net.Addr
	c    chan net.Conn
	done chan struct{}
	once sync.Once
}

func newConnQueue(addr net.Addr) *connQueue {
	return &connQueue{addr: addr, c: make(chan net.Conn), done: make(chan struct{})}
}

// put hands c to Accept, or closes it if the queue is closed.
func (q *connQueue) put(c net.Conn) {
	select {
	case q.c <- c:
	case <-q.done:
		c.Close()
	}
}

func (q *connQueue) Accept() (net.Conn, error) {
	select {
	case c := <-q.c:
		return c, nil
	case <-q.done:
		return nil, net.ErrClosed
	}
}

func (q *connQueue) Close() error {
	q.once.Do(func() { close(q.done) })
	return nil
}

func (q *connQueue) Addr() net.Addr { return q.addr }

// dial returns the client end of a new in-memory connection whose server
// end Accept returns.
func (q *connQueue) dial(ctx context.Context, _ string) (net.Conn, error) {
	client, server := net.Pipe()
	select {
	case q.c <- server:
		return client, nil
	case <-q.done:
	case <-ctx.Done():
	}
	client.Close()
	server.Close()
	return nil, fmt.Errorf("server: local gRPC connection: %w", net.ErrClosed)
}

type memAddr struct{}

func (memAddr) Network() string { return "memory" }
func (memAddr) String() string  { return "ballot-local" }
