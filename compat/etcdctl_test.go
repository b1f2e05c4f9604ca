package compat

import (
	"bufio"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ballotdb/ballot/server/servertest"
)

var (
	etcdctlOnce sync.Once
	etcdctlPath string
	etcdctlErr  error
)

// etcdctl builds etcdctl from its own module (the version compat's go.mod
// names as a tool) once per test binary; it is never committed.
func etcdctl(t *testing.T) string {
	t.Helper()
	etcdctlOnce.Do(func() {
		dir, err := os.MkdirTemp("", "ballot-etcdctl-")
		if err != nil {
			etcdctlErr = err
			return
		}
		etcdctlPath = filepath.Join(dir, "etcdctl")
		cmd := exec.Command("go", "build", "-o", etcdctlPath, "go.etcd.io/etcd/etcdctl/v3")
		if out, err := cmd.CombinedOutput(); err != nil {
			etcdctlErr = err
			etcdctlPath = string(out)
		}
	})
	if etcdctlErr != nil {
		t.Fatalf("build etcdctl: %v\n%s", etcdctlErr, etcdctlPath)
	}
	return etcdctlPath
}

type ctl struct {
	t   *testing.T
	bin string
	eps string
}

func (c ctl) run(stdin string, args ...string) string {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.bin, append([]string{"--endpoints=" + c.eps}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		c.t.Fatalf("etcdctl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func (c ctl) expect(args []string, want string) {
	c.t.Helper()
	if got := c.run("", args...); got != want {
		c.t.Fatalf("etcdctl %s:\n got %q\nwant %q", strings.Join(args, " "), got, want)
	}
}

// TestEtcdctl drives a ballot cluster with etcdctl, built from etcd's own
// module, and checks its output.
func TestEtcdctl(t *testing.T) {
	c := servertest.New(t, 3, nil)
	e := ctl{t: t, bin: etcdctl(t), eps: strings.Join(c.Endpoints(), ",")}

	e.expect([]string{"put", "greeting", "hello"}, "OK\n")
	e.expect([]string{"get", "greeting"}, "greeting\nhello\n")
	e.expect([]string{"put", "fruit/apple", "red"}, "OK\n")
	e.expect([]string{"put", "fruit/banana", "yellow"}, "OK\n")
	e.expect([]string{"get", "fruit/", "--prefix", "--keys-only"}, "fruit/apple\n\nfruit/banana\n\n")
	// JSON output: etcd's header fields and base64 keys.
	var resp struct {
		Header struct {
			ClusterID uint64 `json:"cluster_id"`
			Revision  int64  `json:"revision"`
		} `json:"header"`
		Kvs []struct {
			Key     []byte `json:"key"`
			Value   []byte `json:"value"`
			Version int64  `json:"version"`
		} `json:"kvs"`
		Count int64 `json:"count"`
	}
	if err := json.Unmarshal([]byte(e.run("", "get", "greeting", "-w", "json")), &resp); err != nil {
		t.Fatal(err)
	}
	if resp.Header.Revision != 4 || resp.Count != 1 || string(resp.Kvs[0].Value) != "hello" || resp.Header.ClusterID == 0 {
		t.Fatalf("get -w json: %+v", resp)
	}
	// A transaction, etcdctl's non-interactive format.
	out := e.run("value(\"greeting\") = \"hello\"\n\nput greeting hi\nget greeting\n\nget greeting\n\n", "txn")
	if out != "SUCCESS\n\nOK\n\ngreeting\nhi\n" {
		t.Fatalf("txn: %q", out)
	}
	e.expect([]string{"del", "fruit/", "--prefix"}, "2\n")
	e.expect([]string{"get", "fruit/", "--prefix"}, "")

	// Watch: start it, write, read the events it prints.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	w := exec.CommandContext(ctx, e.bin, "--endpoints="+e.eps, "watch", "w/", "--prefix")
	stdout, err := w.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { w.Process.Kill(); w.Wait() }()
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	// Write until the watcher shows the first event (it may start late).
	var got []string
	deadline := time.After(20 * time.Second)
	e.run("", "put", "w/1", "one")
	for len(got) < 3 {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("watch ended early after %v", got)
			}
			got = append(got, l)
		case <-deadline:
			t.Fatalf("watch printed only %v", got)
		case <-time.After(500 * time.Millisecond):
			if len(got) == 0 {
				e.run("", "put", "w/1", "one") // the watch was not up yet
			}
		}
	}
	if got[0] != "PUT" || got[1] != "w/1" || got[2] != "one" {
		t.Fatalf("watch printed %q", got)
	}

	// Leases.
	grant := e.run("", "lease", "grant", "100")
	m := regexp.MustCompile(`^lease ([0-9a-f]+) granted with TTL\((\d+)s\)\n$`).FindStringSubmatch(grant)
	if m == nil {
		t.Fatalf("lease grant printed %q", grant)
	}
	id := m[1]
	e.expect([]string{"put", "leased", "v", "--lease=" + id}, "OK\n")
	ttl := e.run("", "lease", "timetolive", id, "--keys")
	if !regexp.MustCompile(`^lease ` + id + ` granted with TTL\(100s\), remaining\(\d+s\), attached keys\(\[leased\]\)\n$`).MatchString(ttl) {
		t.Fatalf("lease timetolive printed %q", ttl)
	}
	if ka := e.run("", "lease", "keep-alive", "--once", id); !strings.HasPrefix(ka, "lease "+id+" keepalived with TTL(100)") {
		t.Fatalf("lease keep-alive --once printed %q", ka)
	}
	if l := e.run("", "lease", "list"); l != "found 1 leases\n"+id+"\n" {
		t.Fatalf("lease list printed %q", l)
	}
	e.expect([]string{"lease", "revoke", id}, "lease "+id+" revoked\n")
	e.expect([]string{"get", "leased"}, "")

	// Compaction, then a read behind it fails as etcd's does.
	e.expect([]string{"compaction", "3"}, "compacted revision 3\n")
	cmd := exec.Command(e.bin, "--endpoints="+e.eps, "get", "greeting", "--rev=2")
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "required revision has been compacted") {
		t.Fatalf("get behind the compaction: %v %s", err, out)
	}
	// Cluster views.
	if h := e.run("", "endpoint", "health"); strings.Count(h, "is healthy") != 3 {
		t.Fatalf("endpoint health printed %q", h)
	}
	if s := e.run("", "endpoint", "status", "-w", "table"); strings.Count(s, "127.0.0.1") != 3 {
		t.Fatalf("endpoint status printed %q", s)
	}
	if ml := e.run("", "member", "list"); strings.Count(ml, "started") != 3 {
		t.Fatalf("member list printed %q", ml)
	}
}
