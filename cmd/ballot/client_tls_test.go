package main

import (
	"strings"
	"testing"

	"github.com/ballotdb/ballot/internal/testutil"
	"github.com/ballotdb/ballot/server"
	"github.com/ballotdb/ballot/server/servertest"
)

// TestClientTLSFlags: put and get with etcdctl's --cacert, --cert and --key
// against a member with client-cert-auth; without --cert the request
// fails, and --cert without --key is refused before dialing.
func TestClientTLSFlags(t *testing.T) {
	ca := testutil.NewCA(t, "ca")
	c := servertest.New(t, 1, func(cfg *server.Config) {
		cert, key := ca.Issue(t, cfg.Name)
		cfg.TLS = &server.TLSConfig{CertFile: cert, KeyFile: key, TrustedCAFile: ca.File, ClientCertAuth: true}
	})
	cert, key := ca.Issue(t, "client")
	ep := "https://" + c.Endpoints()[0]
	command := func(name string) interface {
		SetArgs([]string)
		Execute() error
	} {
		for _, cmd := range clientCommands() {
			if cmd.Name() == name {
				cmd.SilenceUsage, cmd.SilenceErrors = true, true
				return cmd
			}
		}
		t.Fatalf("no %s command", name)
		return nil
	}
	tlsArgs := []string{"--endpoints", ep, "--cacert", ca.File, "--cert", cert, "--key", key}
	runCmd(t, command("put"), append([]string{"k", "v"}, tlsArgs...)...)
	runCmd(t, command("get"), append([]string{"k", "-o", "json"}, tlsArgs...)...)

	get := command("get")
	get.SetArgs([]string{"k", "--endpoints", ep, "--cacert", ca.File, "--command-timeout", "2s"})
	if err := get.Execute(); err == nil {
		t.Fatal("get without a client certificate succeeded")
	}
	get = command("get")
	get.SetArgs([]string{"k", "--endpoints", ep, "--cacert", ca.File, "--cert", cert})
	if err := get.Execute(); err == nil || !strings.Contains(err.Error(), "--cert and --key") {
		t.Fatalf("--cert without --key: %v", err)
	}
}
