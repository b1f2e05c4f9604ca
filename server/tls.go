package server

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc/credentials"
)

// TLSConfig turns on TLS for the client port, as etcd's --cert-file,
// --key-file, --trusted-ca-file and --client-cert-auth do.
type TLSConfig struct {
	// CertFile and KeyFile are the server's certificate chain and private
	// key, PEM encoded. Both are required.
	CertFile string
	KeyFile  string
	// TrustedCAFile holds the PEM certificates of the CAs that sign
	// client certificates. Required with ClientCertAuth.
	TrustedCAFile string
	// ClientCertAuth refuses every client without a certificate signed by
	// a CA in TrustedCAFile.
	ClientCertAuth bool
}

// certReloadInterval bounds how often the certificate files are read again
// for changes: at most once per interval, on a handshake.
const certReloadInterval = time.Second

// certStore holds the client port's certificate and client CA pool, read
// from the files of a TLSConfig and read again when their content changes.
//
// A handshake at least certReloadInterval after the last check reads the
// three files again (they are small); when their bytes differ from what was
// last tried, they are parsed and, if valid, replace the serving
// certificate and pool for every later handshake. A file that is missing,
// unreadable or invalid keeps the old certificate and is logged once per
// distinct content, so a certificate written in two steps (the certificate,
// then its key) is picked up once both are in place. Safe for concurrent
// use.
type certStore struct {
	cfg TLSConfig
	log *slog.Logger
	now func() time.Time

	mu sync.Mutex
	// checked is when the files were last read. REQUIRES: mu is held.
	checked time.Time
	// tried holds the files' bytes as last read (cert, key, CA), whether
	// or not they were valid; failed is the error they gave, or "".
	tried  [3][]byte
	failed string
	// cert and pool serve handshakes; never nil after newCertStore.
	cert *tls.Certificate
	pool *x509.CertPool
}

// newCertStore reads cfg's files; an error says which file is wrong.
func newCertStore(cfg TLSConfig, log *slog.Logger) (*certStore, error) {
	if cfg.CertFile == "" || cfg.KeyFile == "" {
		return nil, errors.New("server: TLS needs both a certificate file and a key file (--cert-file, --key-file)")
	}
	if cfg.ClientCertAuth && cfg.TrustedCAFile == "" {
		return nil, errors.New("server: client certificate authentication needs a trusted CA file (--trusted-ca-file)")
	}
	c := &certStore{cfg: cfg, log: log, now: time.Now}
	files, err := c.read()
	if err != nil {
		return nil, err
	}
	cert, pool, err := c.parse(files)
	if err != nil {
		return nil, err
	}
	c.tried, c.cert, c.pool, c.checked = files, cert, pool, c.now()
	return c, nil
}

// read returns the bytes of the certificate, key and CA files.
func (c *certStore) read() ([3][]byte, error) {
	var out [3][]byte
	for i, name := range []string{c.cfg.CertFile, c.cfg.KeyFile, c.cfg.TrustedCAFile} {
		if name == "" {
			continue
		}
		b, err := os.ReadFile(name)
		if err != nil {
			return out, fmt.Errorf("server: TLS: %w", err)
		}
		out[i] = b
	}
	return out, nil
}

// parse checks the files' bytes as a key pair and a CA pool.
func (c *certStore) parse(files [3][]byte) (*tls.Certificate, *x509.CertPool, error) {
	cert, err := tls.X509KeyPair(files[0], files[1])
	if err != nil {
		return nil, nil, fmt.Errorf("server: TLS: certificate %s with key %s: %w", c.cfg.CertFile, c.cfg.KeyFile, err)
	}
	if cert.Leaf == nil {
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, nil, fmt.Errorf("server: TLS: certificate %s: %w", c.cfg.CertFile, err)
		}
	}
	var pool *x509.CertPool
	if c.cfg.TrustedCAFile != "" {
		pool = x509.NewCertPool()
		if !pool.AppendCertsFromPEM(files[2]) {
			return nil, nil, fmt.Errorf("server: TLS: trusted CA file %s holds no PEM certificate", c.cfg.TrustedCAFile)
		}
	}
	return &cert, pool, nil
}

// current returns the certificate and CA pool to serve a handshake with,
// first reading the files again if the last check is old enough.
func (c *certStore) current() (*tls.Certificate, *x509.CertPool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if now := c.now(); now.Sub(c.checked) >= certReloadInterval {
		c.checked = now
		c.reloadLocked()
	}
	return c.cert, c.pool
}

// reloadLocked reads the files and takes them if they changed and are
// valid. REQUIRES: c.mu is held.
func (c *certStore) reloadLocked() {
	files, err := c.read()
	if err == nil {
		if bytes.Equal(files[0], c.tried[0]) && bytes.Equal(files[1], c.tried[1]) && bytes.Equal(files[2], c.tried[2]) {
			return
		}
		c.tried = files
		var cert *tls.Certificate
		var pool *x509.CertPool
		if cert, pool, err = c.parse(files); err == nil {
			c.cert, c.pool, c.failed = cert, pool, ""
			c.log.Info("TLS certificate reloaded", "cert_file", c.cfg.CertFile,
				"serial", fmt.Sprintf("%X", cert.Leaf.SerialNumber), "not_after", cert.Leaf.NotAfter)
			return
		}
	}
	if msg := err.Error(); msg != c.failed {
		c.failed = msg
		c.log.Error("TLS certificate files changed but cannot be used; serving the previous certificate",
			"cert_file", c.cfg.CertFile, "key_file", c.cfg.KeyFile, "trusted_ca_file", c.cfg.TrustedCAFile, "err", err)
	}
}

// ClientTLS reports whether the client port serves TLS.
func (s *Server) ClientTLS() bool { return s.certs != nil }

// clientTLSCredentials are what this member presents when it calls another
// member's client port: the other member is verified against the trusted
// CA file (the system's roots without one), and this member's own current
// certificate is offered as its client certificate, as etcd does, so with
// client-cert-auth the certificate must also allow client authentication.
// nil when the client port is plain text.
func (s *Server) clientTLSCredentials() credentials.TransportCredentials {
	if s.certs == nil {
		return nil
	}
	c := s.certs
	return credentials.NewTLS(&tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{alpnH2},
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			cert, _ := c.current()
			return cert, nil
		},
		// Verified by hand so that a reloaded CA file applies at once.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, pool := c.current()
			opts := x509.VerifyOptions{DNSName: cs.ServerName, Roots: pool, Intermediates: x509.NewCertPool()}
			if len(cs.PeerCertificates) == 0 {
				return errors.New("server: member presented no certificate")
			}
			for _, ic := range cs.PeerCertificates[1:] {
				opts.Intermediates.AddCert(ic)
			}
			if _, err := cs.PeerCertificates[0].Verify(opts); err != nil {
				return fmt.Errorf("server: member certificate: %w", err)
			}
			return nil
		},
	})
}

// ALPN protocol names.
const (
	alpnH2    = "h2"
	alpnHTTP1 = "http/1.1"
)

// serverConfig returns the tls.Config of the client port: each handshake
// gets the current certificate and pool, and an ALPN choice that the
// listener reads back through the *helloConn the handshake runs on (see
// front.classifyTLS).
func (c *certStore) serverConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			cert, pool := c.current()
			cfg := &tls.Config{
				MinVersion:   tls.VersionTLS12,
				Certificates: []tls.Certificate{*cert},
				ClientCAs:    pool,
			}
			if c.cfg.ClientCertAuth {
				cfg.ClientAuth = tls.RequireAndVerifyClientCert
			}
			h2 := slices.Contains(hello.SupportedProtos, alpnH2)
			h1 := slices.Contains(hello.SupportedProtos, alpnHTTP1)
			switch {
			case h2 && !h1:
				// gRPC clients offer h2 alone: theirs is the fast path,
				// grpc.Server.Serve on the connection.
				cfg.NextProtos = []string{alpnH2}
				if hc, ok := hello.Conn.(*helloConn); ok {
					hc.grpcOnly = true
				}
			case h2 || h1:
				// curl and browsers offer both; net/http serves them and
				// hands any gRPC request on h2 to grpc.Server.ServeHTTP.
				cfg.NextProtos = []string{alpnH2, alpnHTTP1}
			}
			return cfg, nil
		},
	}
}

// helloConn is the raw connection a TLS handshake runs on; the handshake
// records on it whether the client offered h2 alone.
type helloConn struct {
	netConn
	grpcOnly bool // written by the handshake, read after it
}
