package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/ballotdb/ballot/server/servertest"
)

// opRun runs one operator command with args and returns what it printed.
func opRun(t *testing.T, eps string, args ...string) (string, error) {
	t.Helper()
	var cmd *cobra.Command
	for _, c := range operatorCommands() {
		if c.Name() == args[0] {
			cmd = c
		}
	}
	if cmd == nil {
		t.Fatalf("no command %q", args[0])
	}
	cmd.SetArgs(append(args[1:], "--endpoints", eps))
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout := os.Stdout
	os.Stdout = w
	done := make(chan string)
	go func() { b, _ := io.ReadAll(r); done <- string(b) }()
	err = cmd.Execute()
	os.Stdout = stdout
	w.Close()
	return <-done, err
}

func TestOperatorCommands(t *testing.T) {
	c := servertest.New(t, 3, nil)
	c.Leader()
	eps := strings.Join(c.Endpoints(), ",")

	var members []struct {
		ID, Name   string
		Learner    bool
		ClientURLs []string `json:"client_urls"`
	}
	// Members publish their client URLs through the log once they run:
	// wait (with a deadline) until member list shows all three's.
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	poll := time.NewTicker(50 * time.Millisecond)
	defer poll.Stop()
	for {
		out, err := opRun(t, eps, "member", "list", "-o", "json")
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal([]byte(out), &members); err != nil || len(members) != 3 {
			t.Fatalf("member list -o json: %v\n%s", err, out)
		}
		published := 0
		for _, m := range members {
			if len(m.ClientURLs) > 0 {
				published++
			}
		}
		if published == 3 {
			break
		}
		select {
		case <-deadline.C:
			t.Fatalf("member list never showed every client URL:\n%s", out)
		case <-poll.C:
		}
	}

	out, err := opRun(t, eps, "status")
	if err != nil || strings.Count(out, "true ") < 1 || !strings.Contains(out, "RAFT INDEX") || len(strings.Split(strings.TrimSpace(out), "\n")) != 4 {
		t.Fatalf("status: %v\n%s", err, out)
	}

	out, err = opRun(t, eps, "check", "hash", "-o", "json")
	var hashes struct {
		Members []struct {
			Hash uint32
			Err  string `json:"error"`
		}
	}
	if err != nil || json.Unmarshal([]byte(out), &hashes) != nil || len(hashes.Members) != 3 {
		t.Fatalf("check hash: %v\n%s", err, out)
	}

	// Move leadership to a follower by ID, as an operator would.
	fol := c.Follower()
	id := c.Member(fol).MemberID()
	if out, err = opRun(t, eps, "leader", "move", strings.TrimLeft(hexID(id), "0")); err != nil {
		t.Fatalf("leader move: %v\n%s", err, out)
	}
	if got := c.Leader(); got != fol {
		t.Fatalf("leader is %s after leader move to %s", got, fol)
	}

	// Refusals are etcd's, and exit non-zero.
	if _, err := opRun(t, eps, "member", "promote", hexID(id)); err == nil || !strings.Contains(err.Error(), "can only promote a learner") {
		t.Fatalf("promoting a voter: %v", err)
	}
	if _, err := opRun(t, eps, "member", "remove", "not-hex"); err == nil {
		t.Fatal("a bad ID was accepted")
	}
}

func hexID(id uint64) string { return fmt.Sprintf("%016x", id) }
