package server

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"

	"github.com/ballotdb/ballot/internal/testutil"
)

// TestCertStoreReload drives certStore's clock: files are read again only
// once certReloadInterval has passed; a broken file keeps the previous
// certificate and is logged once; a certificate written before its key is
// taken once the key follows.
func TestCertStoreReload(t *testing.T) {
	ca := testutil.NewCA(t, "ca")
	certFile, keyFile := ca.Issue(t, "server")
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	now := time.Unix(1_000_000, 0)
	store, err := newCertStore(TLSConfig{CertFile: certFile, KeyFile: keyFile}, log)
	if err != nil {
		t.Fatal(err)
	}
	store.now = func() time.Time { return now }
	store.checked = now
	serial := func() string {
		c, _ := store.current()
		return c.Leaf.SerialNumber.String()
	}
	first := serial()

	// A new pair: not read before the interval has passed, read after.
	oldCert, oldKey := read(t, certFile), read(t, keyFile)
	ca.Issue(t, "server")
	now = now.Add(certReloadInterval / 2)
	if got := serial(); got != first {
		t.Fatalf("files read again after %v: serial %s", certReloadInterval/2, got)
	}
	now = now.Add(certReloadInterval / 2)
	second := serial()
	if second == first {
		t.Fatal("new files not taken after the reload interval")
	}

	// A broken certificate: the old one stays, one error is logged.
	newCert := read(t, certFile)
	write(t, certFile, []byte("not a certificate"))
	for range 3 {
		now = now.Add(certReloadInterval)
		if got := serial(); got != second {
			t.Fatalf("broken file replaced the certificate: serial %s", got)
		}
	}
	if n := strings.Count(logs.String(), "cannot be used"); n != 1 {
		t.Fatalf("broken file logged %d times, want once:\n%s", n, logs.String())
	}

	// The old certificate back without its key: a mismatch, still the
	// second pair served; then the old key too: the first pair again.
	write(t, certFile, oldCert)
	now = now.Add(certReloadInterval)
	if got := serial(); got != second {
		t.Fatalf("certificate without its key was taken: serial %s", got)
	}
	write(t, keyFile, oldKey)
	now = now.Add(certReloadInterval)
	if got := serial(); got != first {
		t.Fatalf("the first pair put back: serial %s, want %s", got, first)
	}
	// And the second pair again.
	write(t, certFile, newCert)
	ca.Issue(t, "server")
	now = now.Add(certReloadInterval)
	if got := serial(); got == first || got == second {
		t.Fatalf("a third pair not taken: serial %s", got)
	}
	if !strings.Contains(logs.String(), "TLS certificate reloaded") {
		t.Fatalf("reloads not logged:\n%s", logs.String())
	}
}

func read(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func write(t *testing.T, name string, b []byte) {
	t.Helper()
	if err := os.WriteFile(name, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestClientTLSCredentials: what a member presents to another member's
// client port passes client-cert-auth and verifies the other member
// against the trusted CA.
func TestClientTLSCredentials(t *testing.T) {
	ca := testutil.NewCA(t, "ca")
	certFile, keyFile := ca.Issue(t, "m1")
	cl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s, err := Start(context.Background(), Config{
		Name: "m1", InitialCluster: map[string]string{"m1": pl.Addr().String()},
		DataDir: t.TempDir(), ClientListener: cl, PeerListener: pl,
		TickInterval: 10 * time.Millisecond, ElectionTicks: 10,
		TLS: &TLSConfig{CertFile: certFile, KeyFile: keyFile, TrustedCAFile: ca.File, ClientCertAuth: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	creds := s.clientTLSCredentials()
	if creds == nil || !s.ClientTLS() {
		t.Fatal("no client TLS credentials with TLS on")
	}
	conn, err := grpc.NewClient(cl.Addr().String(), grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := pb.NewMaintenanceClient(conn).Status(ctx, &pb.StatusRequest{}); err != nil {
		t.Fatalf("member-to-member call over client TLS: %v", err)
	}
}
