package compat

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/ballotdb/ballot/internal/testutil"
	"github.com/ballotdb/ballot/server"
	"github.com/ballotdb/ballot/server/servertest"
)

// tlsCluster starts three members whose client ports serve TLS, each with
// its own certificate from ca; clientCertAuth turns on client-cert-auth.
func tlsCluster(t *testing.T, ca *testutil.CA, clientCertAuth bool) *servertest.Cluster {
	t.Helper()
	return servertest.New(t, 3, func(cfg *server.Config) {
		cert, key := ca.Issue(t, cfg.Name)
		cfg.TLS = &server.TLSConfig{CertFile: cert, KeyFile: key, TrustedCAFile: ca.File, ClientCertAuth: clientCertAuth}
	})
}

func certPool(t *testing.T, file string) *x509.CertPool {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(b) {
		t.Fatalf("%s: no certificate", file)
	}
	return p
}

func tlsClientv3(t *testing.T, eps []string, cfg *tls.Config) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 5 * time.Second, TLS: cfg, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// TestTLSClientv3 drives a three-member cluster with client-cert-auth
// through clientv3: with a certificate from the trusted CA it writes and
// reads through every member; without a certificate, with one from another
// CA, or trusting another CA than the server's, every request fails.
func TestTLSClientv3(t *testing.T) {
	ca := testutil.NewCA(t, "ca")
	other := testutil.NewCA(t, "other")
	c := tlsCluster(t, ca, true)
	roots := certPool(t, ca.File)
	cert, key := ca.Issue(t, "client")
	good, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	wcert, wkey := other.Issue(t, "intruder")
	wrong, err := tls.LoadX509KeyPair(wcert, wkey)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	for i, name := range c.Names() {
		cli := tlsClientv3(t, c.Endpoints(name), &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{good}})
		key := fmt.Sprintf("k%d", i)
		if _, err := cli.Put(ctx, key, name); err != nil {
			t.Fatalf("put through %s over TLS: %v", name, err)
		}
		g, err := cli.Get(ctx, key)
		if err != nil || len(g.Kvs) != 1 || string(g.Kvs[0].Value) != name {
			t.Fatalf("get through %s over TLS: %v %v", name, g, err)
		}
	}

	refused := map[string]*tls.Config{
		"no client certificate": {RootCAs: roots},
		"a client certificate from another CA": {RootCAs: roots,
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &wrong, nil }},
		"trusting another CA": {RootCAs: certPool(t, other.File), Certificates: []tls.Certificate{good}},
	}
	for what, cfg := range refused {
		cli := tlsClientv3(t, c.Endpoints(), cfg)
		short, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := cli.Get(short, "k0")
		cancel()
		if err == nil {
			t.Fatalf("clientv3 with %s was served", what)
		}
		t.Logf("%s: refused: %v", what, err)
	}
}

// TestTLSServerOnly: TLS without client-cert-auth serves clients that
// bring no certificate, over gRPC and the JSON gateway (as curl --cacert).
func TestTLSServerOnly(t *testing.T) {
	ca := testutil.NewCA(t, "ca")
	c := tlsCluster(t, ca, false)
	roots := certPool(t, ca.File)
	cli := tlsClientv3(t, c.Endpoints(), &tls.Config{RootCAs: roots})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, "k", "v"); err != nil {
		t.Fatalf("put over TLS without a client certificate: %v", err)
	}
	g := newGW(t, "https://"+c.Endpoints()[1], &http.Client{Timeout: 30 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}})
	if r := g.ok("/v3/kv/range", fmt.Sprintf(`{"key":%q}`, b64("k"))); r.bytes("kvs.0.value") != "v" {
		t.Fatalf("gateway over TLS: %v", r)
	}
	// Every member publishes an https client URL.
	testutil.Eventually(t, 20*time.Second, func() bool {
		ml := g.ok("/v3/cluster/member/list", `{}`)
		for i := range ml.len("members") {
			u, _ := ml.get(fmt.Sprintf("members.%d.clientURLs.0", i)).(string)
			if !strings.HasPrefix(u, "https://") {
				return false
			}
		}
		return ml.len("members") == 3
	}, "member list over TLS: not three members with https client URLs")
}

// TestTLSEtcdctl: etcdctl with --cacert, --cert and --key writes and reads
// through a cluster with client-cert-auth, and is refused without --cert;
// curl's view (HTTPS JSON with a client certificate) sees its write.
func TestTLSEtcdctl(t *testing.T) {
	ca := testutil.NewCA(t, "ca")
	c := tlsCluster(t, ca, true)
	cert, key := ca.Issue(t, "client")
	e := ctl{t: t, bin: etcdctl(t), eps: strings.Join(c.Endpoints(), ",")}
	tlsArgs := []string{"--cacert=" + ca.File, "--cert=" + cert, "--key=" + key}

	e.expect(append(tlsArgs, "put", "greeting", "hello over tls"), "OK\n")
	e.expect(append(tlsArgs, "get", "greeting"), "greeting\nhello over tls\n")
	if h := e.run("", append(tlsArgs, "endpoint", "health")...); strings.Count(h, "is healthy") != 3 {
		t.Fatalf("endpoint health over TLS printed %q", h)
	}
	var st []struct {
		Endpoint string `json:"Endpoint"`
	}
	if err := json.Unmarshal([]byte(e.run("", append(tlsArgs, "endpoint", "status", "-w", "json")...)), &st); err != nil || len(st) != 3 {
		t.Fatalf("endpoint status over TLS: %v %+v", err, st)
	}

	// Without a client certificate etcdctl fails.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, e.bin, "--endpoints="+e.eps, "--cacert="+ca.File,
		"--dial-timeout=2s", "--command-timeout=3s", "get", "greeting").CombinedOutput()
	if err == nil {
		t.Fatalf("etcdctl without --cert was served: %s", out)
	}

	// curl --cacert --cert --key.
	kp, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	g := newGW(t, "https://"+c.Endpoints()[0], &http.Client{Timeout: 30 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: certPool(t, ca.File), Certificates: []tls.Certificate{kp}}}})
	if r := g.ok("/v3/kv/range", fmt.Sprintf(`{"key":%q}`, b64("greeting"))); r.bytes("kvs.0.value") != "hello over tls" {
		t.Fatalf("gateway over TLS with a client certificate: %v", r)
	}
}
