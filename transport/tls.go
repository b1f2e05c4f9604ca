package transport

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"sync"
	"time"
)

// TLSConfig configures mutual TLS between peers from PEM files, reloaded
// when they change on disk (checked at most once a second, at handshakes).
type TLSConfig struct {
	CertFile, KeyFile string // this node's certificate and key
	CAFile            string // the CA that signs every peer's certificate
	// ServerName is the name peers' certificates are verified against;
	// empty skips the name check but still verifies the chain.
	ServerName string

	mu       sync.Mutex
	checked  time.Time
	modTimes [3]time.Time
	cert     *tls.Certificate
	pool     *x509.CertPool
	err      error
}

// load (re)reads the files if any changed.
func (c *TLSConfig) load() (*tls.Certificate, *x509.CertPool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if time.Since(c.checked) < time.Second && (c.cert != nil || c.err != nil) {
		return c.cert, c.pool, c.err
	}
	c.checked = time.Now()
	var mods [3]time.Time
	for i, f := range []string{c.CertFile, c.KeyFile, c.CAFile} {
		st, err := os.Stat(f)
		if err != nil {
			c.err = fmt.Errorf("transport: tls: %w", err)
			return nil, nil, c.err
		}
		mods[i] = st.ModTime()
	}
	if mods == c.modTimes && c.cert != nil {
		return c.cert, c.pool, nil
	}
	cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
	if err != nil {
		c.err = fmt.Errorf("transport: tls: load %s: %w", c.CertFile, err)
		return nil, nil, c.err
	}
	ca, err := os.ReadFile(c.CAFile)
	if err != nil {
		c.err = fmt.Errorf("transport: tls: %w", err)
		return nil, nil, c.err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		c.err = fmt.Errorf("transport: tls: no certificates in %s", c.CAFile)
		return nil, nil, c.err
	}
	c.cert, c.pool, c.modTimes, c.err = &cert, pool, mods, nil
	return c.cert, c.pool, nil
}

// verify checks a peer's chain against the current CA.
func (c *TLSConfig) verify(rawCerts [][]byte, server bool) error {
	_, pool, err := c.load()
	if err != nil {
		return err
	}
	if len(rawCerts) == 0 {
		return fmt.Errorf("transport: tls: peer sent no certificate")
	}
	leaf, err := x509.ParseCertificate(rawCerts[0])
	if err != nil {
		return err
	}
	inter := x509.NewCertPool()
	for _, raw := range rawCerts[1:] {
		if ic, err := x509.ParseCertificate(raw); err == nil {
			inter.AddCert(ic)
		}
	}
	usage := x509.ExtKeyUsageClientAuth
	if server {
		usage = x509.ExtKeyUsageServerAuth
	}
	opts := x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage}, DNSName: c.ServerName}
	_, err = leaf.Verify(opts)
	return err
}

func (c *TLSConfig) serverConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		ClientAuth: tls.RequireAnyClientCert,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			cert, _, err := c.load()
			return cert, err
		},
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error { return c.verify(raw, false) },
	}
}

func (c *TLSConfig) clientConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		// Verification is done by VerifyPeerCertificate against the
		// reloadable CA, not by the static RootCAs.
		InsecureSkipVerify: true, //nolint:gosec // verified below
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			cert, _, err := c.load()
			return cert, err
		},
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error { return c.verify(raw, true) },
	}
}
