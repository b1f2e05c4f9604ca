package compat

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ballotdb/ballot/internal/freeport"
	"github.com/ballotdb/ballot/server/servertest"
)

// etcdctl's member list -w json, as it prints it.
type ctlMembers struct {
	Members []struct {
		ID         uint64   `json:"ID"`
		Name       string   `json:"name"`
		PeerURLs   []string `json:"peerURLs"`
		ClientURLs []string `json:"clientURLs"`
		IsLearner  bool     `json:"isLearner"`
	} `json:"members"`
}

func (c ctl) members() ctlMembers {
	c.t.Helper()
	var m ctlMembers
	if err := json.Unmarshal([]byte(c.run("", "member", "list", "-w", "json")), &m); err != nil {
		c.t.Fatal(err)
	}
	return m
}

// command is an etcdctl invocation against c's endpoints.
func (c ctl) command(args ...string) *exec.Cmd {
	return exec.Command(c.bin, append([]string{"--endpoints=" + c.eps, "--command-timeout=10s"}, args...)...)
}

// runErr runs etcdctl expecting it to fail, and returns its output.
func (c ctl) runErr(args ...string) string {
	c.t.Helper()
	out, err := c.command(args...).CombinedOutput()
	if err == nil {
		c.t.Fatalf("etcdctl %s succeeded, want a failure:\n%s", strings.Join(args, " "), out)
	}
	return string(out)
}

// TestEtcdctlMembership drives membership with etcdctl: member list, add
// as learner, promote (refused with etcd's message until caught up),
// move-leader, remove, and endpoint health, checking the outputs.
func TestEtcdctlMembership(t *testing.T) {
	c := servertest.New(t, 3, nil)
	c.Leader()
	e := ctl{t: t, bin: etcdctl(t), eps: strings.Join(c.Endpoints(), ",")}

	// member list (table): every member, named, started, with its URLs —
	// once each has published its name and client URLs through the log.
	complete := func(list string) bool {
		for _, n := range c.Names() {
			want := fmt.Sprintf(", started, %s, http://", n)
			if !strings.Contains(list, want) || !strings.Contains(list, "http://"+c.Endpoints(n)[0]+", false") {
				return false
			}
		}
		return true
	}
	list := e.run("", "member", "list")
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for deadline := time.Now().Add(10 * time.Second); !complete(list); list = e.run("", "member", "list") {
		if time.Now().After(deadline) {
			t.Fatalf("member list lacks a started member:\n%s", list)
		}
		<-tick.C
	}
	if got := len(e.members().Members); got != 3 {
		t.Fatalf("member list -w json: %d members", got)
	}

	// member add --learner: etcdctl prints the new member's environment.
	peer, err := freeport.Pick("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	out := e.run("", "member", "add", "m4", "--learner", "--peer-urls=http://"+peer)
	m := regexp.MustCompile(`Member\s+([0-9a-f]+) added as learner to cluster`).FindStringSubmatch(out)
	if m == nil || !strings.Contains(out, `ETCD_NAME="m4"`) || !strings.Contains(out, `ETCD_INITIAL_CLUSTER_STATE="existing"`) ||
		!strings.Contains(out, "m4=http://"+peer) {
		t.Fatalf("member add output:\n%s", out)
	}
	id, _ := strconv.ParseUint(m[1], 16, 64)
	ms := e.members()
	found := false
	for _, mm := range ms.Members {
		if mm.ID == id {
			found = mm.IsLearner && mm.Name == "" // not started yet
		}
	}
	if !found {
		t.Fatalf("added learner not listed as an unstarted learner: %+v", ms)
	}
	// Promoting a learner that never started is refused with etcd's error.
	if msg := e.runErr("member", "promote", m[1]); !strings.Contains(msg, "can only promote a learner member which is in sync with leader") {
		t.Fatalf("promote before catching up:\n%s", msg)
	}
	// Removing it again works; the list is back to three.
	if out := e.run("", "member", "remove", m[1]); !strings.Contains(out, fmt.Sprintf("Member %16s removed from cluster", m[1])) {
		t.Fatalf("member remove output:\n%s", out)
	}
	if got := len(e.members().Members); got != 3 {
		t.Fatalf("after remove: %d members", got)
	}

	// Grow for real through the helper, promote with etcdctl once caught up.
	id5 := c.AddMember("m5", true)
	deadline := time.Now().Add(20 * time.Second)
	for {
		out, err := e.command("member", "promote", fmt.Sprintf("%x", id5)).CombinedOutput()
		if err == nil {
			if !strings.Contains(string(out), "promoted in cluster") {
				t.Fatalf("promote output:\n%s", out)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("promote never succeeded: %s", out)
		}
		<-time.After(100 * time.Millisecond) // poll again, bounded by deadline
	}

	// move-leader to m5, through the leader's endpoint.
	lead := c.Leader()
	le := ctl{t: t, bin: e.bin, eps: c.Endpoints(lead)[0]}
	out = le.run("", "move-leader", fmt.Sprintf("%x", id5))
	if !strings.Contains(out, fmt.Sprintf("Leadership transferred from %x to %x", c.Member(lead).MemberID(), id5)) {
		t.Fatalf("move-leader output:\n%s", out)
	}
	if got := c.Leader(); got != "m5" {
		t.Fatalf("leader after move-leader: %s", got)
	}

	// endpoint health over every member.
	all := ctl{t: t, bin: e.bin, eps: strings.Join(c.Endpoints(), ",")}
	health := all.run("", "endpoint", "health")
	if strings.Count(health, "is healthy") != 4 {
		t.Fatalf("endpoint health:\n%s", health)
	}
}
