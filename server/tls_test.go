package server_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ballotdb/ballot/internal/testutil"
	"github.com/ballotdb/ballot/server"
	"github.com/ballotdb/ballot/server/servertest"
)

// tlsMember starts one member whose client port serves TLS with a
// certificate from ca; it returns the member's address.
func tlsMember(t *testing.T, ca *testutil.CA, clientCertAuth bool) (addr, certFile string) {
	t.Helper()
	certFile, keyFile := ca.Issue(t, "server")
	c := servertest.New(t, 1, func(cfg *server.Config) {
		cfg.TLS = &server.TLSConfig{CertFile: certFile, KeyFile: keyFile, TrustedCAFile: ca.File, ClientCertAuth: clientCertAuth}
	})
	if u := c.Member("m1").ClientURL(); !strings.HasPrefix(u, "https://") {
		t.Fatalf("client URL with TLS on: %q", u)
	}
	return c.Endpoints("m1")[0], certFile
}

func pool(t *testing.T, files ...string) *x509.CertPool {
	t.Helper()
	p := x509.NewCertPool()
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if !p.AppendCertsFromPEM(b) {
			t.Fatalf("%s: no certificate", f)
		}
	}
	return p
}

func keyPair(t *testing.T, certFile, keyFile string) tls.Certificate {
	t.Helper()
	c, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func serialOf(t *testing.T, certFile string) *big.Int {
	t.Helper()
	b, err := os.ReadFile(certFile)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s: no PEM block", certFile)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c.SerialNumber
}

func tlsClient(t *testing.T, addr string, cfg *tls.Config) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{addr}, DialTimeout: 5 * time.Second, TLS: cfg, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// handshake dials addr with cfg and reads once, so that a client
// certificate the server refuses (reported after the handshake in TLS 1.3)
// shows as an error; it returns the server's leaf certificate.
func handshake(addr string, cfg *tls.Config) (*x509.Certificate, error) {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	leaf := c.ConnectionState().PeerCertificates[0]
	// h2 preface; the server answers with its SETTINGS frame, or with an
	// alert if it refused our certificate.
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")); err != nil {
		return nil, err
	}
	if _, err := c.Read(make([]byte, 1)); err != nil {
		return nil, err
	}
	return leaf, nil
}

// TestClientTLS: with client-cert-auth, a client with a certificate from
// the trusted CA reads and writes over TLS (gRPC fast path and the JSON
// gateway on the same port); a client without a certificate, one whose
// certificate another CA signed, one that does not trust the server, and
// a plain-text client are all refused.
func TestClientTLS(t *testing.T) {
	ca := testutil.NewCA(t, "ca")
	other := testutil.NewCA(t, "other")
	addr, _ := tlsMember(t, ca, true)
	cc, ck := ca.Issue(t, "client")
	clientCert := keyPair(t, cc, ck)
	wc, wk := other.Issue(t, "intruder")
	wrongCert := keyPair(t, wc, wk)
	roots := pool(t, ca.File)
	ctx := ctxT(t)

	good := &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{clientCert}}
	cli := tlsClient(t, addr, good)
	p, err := cli.Put(ctx, "k", "v")
	if err != nil {
		t.Fatalf("put over TLS: %v", err)
	}
	g, err := cli.Get(ctx, "k")
	if err != nil || len(g.Kvs) != 1 || string(g.Kvs[0].Value) != "v" || g.Header.Revision != p.Header.Revision {
		t.Fatalf("get over TLS: %+v %v", g, err)
	}

	// The JSON gateway on the same port, over HTTPS (HTTP/1.1 and h2).
	for _, h2 := range []bool{false, true} {
		tr := &http.Transport{TLSClientConfig: good.Clone(), ForceAttemptHTTP2: h2}
		if !h2 {
			tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
		}
		hc := &http.Client{Transport: tr, Timeout: 10 * time.Second}
		resp, err := hc.Post("https://"+addr+"/v3/kv/range", "application/json", strings.NewReader(`{"key":"aw=="}`))
		if err != nil {
			t.Fatalf("gateway over TLS (h2 %v): %v", h2, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !bytes.Contains(body, []byte(`"value":"dg=="`)) || (resp.ProtoMajor == 2) != h2 {
			t.Fatalf("gateway over TLS (h2 %v): %s %s %s", h2, resp.Proto, resp.Status, body)
		}
		tr.CloseIdleConnections()
	}

	// gRPC from a client that offers http/1.1 as well as h2 is served by
	// net/http and grpc.Server.ServeHTTP.
	mixed := good.Clone()
	mixed.NextProtos = []string{"http/1.1"} // grpc adds h2
	gc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(mixed)))
	if err != nil {
		t.Fatal(err)
	}
	defer gc.Close()
	r, err := pb.NewKVClient(gc).Range(ctx, &pb.RangeRequest{Key: []byte("k")})
	if err != nil || len(r.Kvs) != 1 {
		t.Fatalf("gRPC through ServeHTTP: %+v %v", r, err)
	}

	if _, err := handshake(addr, good); err != nil {
		t.Fatalf("raw handshake with a good client certificate: %v", err)
	}
	if _, err := handshake(addr, &tls.Config{RootCAs: roots}); err == nil {
		t.Fatal("a client without a certificate was served")
	} else {
		t.Logf("no client certificate: %v", err)
	}
	// (GetClientCertificate: with Certificates, crypto/tls would not send a
	// certificate the server's list of acceptable CAs leaves out.)
	sendWrong := func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &wrongCert, nil }
	if _, err := handshake(addr, &tls.Config{RootCAs: roots, GetClientCertificate: sendWrong}); err == nil {
		t.Fatal("a client certificate from another CA was accepted")
	} else {
		t.Logf("client certificate from another CA: %v", err)
	}
	if _, err := handshake(addr, &tls.Config{RootCAs: pool(t, other.File), Certificates: []tls.Certificate{clientCert}}); err == nil {
		t.Fatal("the server's certificate verified against the wrong CA")
	}
	// clientv3 without a certificate fails its request.
	bad := tlsClient(t, addr, &tls.Config{RootCAs: roots})
	short, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := bad.Get(short, "k"); err == nil {
		t.Fatal("clientv3 without a client certificate was served")
	}
	// Plain text to a TLS port.
	pc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	short2, cancel2 := context.WithTimeout(ctx, 2*time.Second)
	defer cancel2()
	if _, err := pb.NewKVClient(pc).Range(short2, &pb.RangeRequest{Key: []byte("k")}); err == nil {
		t.Fatal("plain-text gRPC was served on the TLS port")
	}
}

// TestClientTLSWithoutClientCertAuth: server TLS alone serves clients
// without certificates.
func TestClientTLSWithoutClientCertAuth(t *testing.T) {
	ca := testutil.NewCA(t, "ca")
	addr, _ := tlsMember(t, ca, false)
	cli := tlsClient(t, addr, &tls.Config{RootCAs: pool(t, ca.File)})
	if _, err := cli.Put(ctxT(t), "k", "v"); err != nil {
		t.Fatalf("put over server-only TLS: %v", err)
	}
}

// TestClientTLSReload: new certificate files on disk are served to new
// connections (checked by serial number) without a restart, and
// connections made before keep working.
func TestClientTLSReload(t *testing.T) {
	ca := testutil.NewCA(t, "ca")
	addr, certFile := tlsMember(t, ca, false)
	roots := pool(t, ca.File)
	first := serialOf(t, certFile)
	leaf, err := handshake(addr, &tls.Config{RootCAs: roots})
	if err != nil {
		t.Fatal(err)
	}
	if leaf.SerialNumber.Cmp(first) != 0 {
		t.Fatalf("served serial %v, want %v", leaf.SerialNumber, first)
	}
	cli := tlsClient(t, addr, &tls.Config{RootCAs: roots})
	if _, err := cli.Put(ctxT(t), "before", "1"); err != nil {
		t.Fatal(err)
	}

	ca.Issue(t, "server") // the same files, a new certificate and key
	second := serialOf(t, certFile)
	if second.Cmp(first) == 0 {
		t.Fatal("reissued certificate has the old serial")
	}
	testutil.Eventually(t, 10*time.Second, func() bool {
		leaf, err := handshake(addr, &tls.Config{RootCAs: roots})
		return err == nil && leaf.SerialNumber.Cmp(second) == 0
	}, "new connections still get serial %v, want %v", first, second)
	if _, err := cli.Put(ctxT(t), "after", "2"); err != nil {
		t.Fatalf("connection made before the reload: %v", err)
	}
}

// TestClientTLSBadConfig: unreadable or mismatched files stop Start with
// an error naming the file.
func TestClientTLSBadConfig(t *testing.T) {
	ca := testutil.NewCA(t, "ca")
	certFile, keyFile := ca.Issue(t, "server")
	_, otherKey := ca.Issue(t, "other")
	for _, tc := range []struct {
		cfg  server.TLSConfig
		want string
	}{
		{server.TLSConfig{CertFile: certFile}, "key file"},
		{server.TLSConfig{CertFile: certFile, KeyFile: keyFile, ClientCertAuth: true}, "trusted CA"},
		{server.TLSConfig{CertFile: certFile + ".missing", KeyFile: keyFile}, ".missing"},
		{server.TLSConfig{CertFile: certFile, KeyFile: otherKey}, "private key does not match"},
		{server.TLSConfig{CertFile: certFile, KeyFile: keyFile, TrustedCAFile: keyFile}, "no PEM certificate"},
	} {
		cl, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		pl, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		cfg := tc.cfg
		s, err := server.Start(context.Background(), server.Config{
			Name: "m1", InitialCluster: map[string]string{"m1": pl.Addr().String()},
			DataDir: t.TempDir(), ClientListener: cl, PeerListener: pl, TLS: &cfg,
		})
		if err == nil {
			s.Stop()
			t.Fatalf("Start with %+v succeeded", tc.cfg)
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Fatalf("Start with %+v: %v, want it to mention %q", tc.cfg, err, tc.want)
		}
	}
}
