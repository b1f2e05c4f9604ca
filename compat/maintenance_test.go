package compat

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/ballotdb/ballot/server"
	"github.com/ballotdb/ballot/server/servertest"
)

// fail runs etcdctl expecting it to fail, and returns its output.
func (c ctl) fail(args ...string) string {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, c.bin, append([]string{"--endpoints=" + c.eps}, args...)...).CombinedOutput()
	if err == nil {
		c.t.Fatalf("etcdctl %s succeeded, want a failure:\n%s", strings.Join(args, " "), out)
	}
	return string(out)
}

// poll retries cond until it holds or timeout passes.
func poll(t *testing.T, timeout time.Duration, cond func() bool, msg string, args ...any) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline.C:
			t.Fatalf("not within %v: "+msg, append([]any{timeout}, args...)...)
		case <-tick.C:
		}
	}
}

// TestEtcdctlMaintenance drives the Maintenance service with etcdctl:
// endpoint status and hashkv, alarm list and disarm around a filled
// quota, compaction and defrag, and snapshot save, checking what it
// prints.
func TestEtcdctlMaintenance(t *testing.T) {
	const quota = 256 << 10
	c := servertest.New(t, 3, func(cfg *server.Config) { cfg.QuotaBackendBytes = quota })
	eps := c.Endpoints()
	e := ctl{t: t, bin: etcdctl(t), eps: strings.Join(eps, ",")}
	for i := range 10 {
		e.expect([]string{"put", fmt.Sprintf("k%d", i), "v"}, "OK\n")
	}
	lead := c.Member(c.Leader()).MemberID()
	ids := map[string]uint64{}
	for _, n := range c.Names() {
		ids[c.Endpoints(n)[0]] = c.Member(n).MemberID()
	}

	// endpoint status: one line per member, etcd's columns.
	status := func() [][]string {
		var rows [][]string
		for _, l := range strings.Split(strings.TrimSpace(e.run("", "endpoint", "status")), "\n") {
			rows = append(rows, strings.Split(l, ", "))
		}
		return rows
	}
	rows := status()
	t.Logf("etcdctl endpoint status:\n%s", e.run("", "endpoint", "status", "-w", "table"))
	if len(rows) != 3 {
		t.Fatalf("endpoint status printed %d lines: %v", len(rows), rows)
	}
	leaders := 0
	for _, r := range rows {
		// endpoint, ID, version, storage version, db size, in use, % not in use, quota, is leader, is learner, term, index, applied, errors, ...
		if len(r) < 14 || r[1] != fmt.Sprintf("%x", ids[r[0]]) || r[2] != server.Version || r[7] != "262 kB" ||
			r[9] != "false" || r[13] != "" {
			t.Fatalf("endpoint status row %q", r)
		}
		if r[8] == "true" {
			leaders++
			if r[1] != fmt.Sprintf("%x", lead) {
				t.Fatalf("endpoint status names %s leader, the cluster %x", r[1], lead)
			}
		}
		if idx, err := strconv.Atoi(r[11]); err != nil || idx < 10 {
			t.Fatalf("endpoint status raft index %q", r[11])
		}
	}
	if leaders != 1 {
		t.Fatalf("endpoint status shows %d leaders: %v", leaders, rows)
	}

	// endpoint hashkv: every member the same hash at the same revision.
	cli := newClient(t, eps)
	ctx := testCtx(t, time.Minute)
	put, err := cli.Put(ctx, "last", "v")
	if err != nil {
		t.Fatal(err)
	}
	rev := put.Header.Revision
	var hashes []string
	poll(t, 10*time.Second, func() bool {
		hashes = nil
		for _, l := range strings.Split(strings.TrimSpace(e.run("", "endpoint", "hashkv", fmt.Sprintf("--rev=%d", rev))), "\n") {
			f := strings.Split(l, ", ")
			if len(f) != 3 || f[2] != strconv.FormatInt(rev, 10) {
				t.Fatalf("endpoint hashkv line %q", l)
			}
			hashes = append(hashes, f[1])
		}
		return len(hashes) == 3 && hashes[0] == hashes[1] && hashes[1] == hashes[2]
	}, "endpoint hashkv: members differ: %v", hashes)
	t.Logf("etcdctl endpoint hashkv --rev=%d:\n%s", rev, e.run("", "endpoint", "hashkv", fmt.Sprintf("--rev=%d", rev)))

	// No alarm yet.
	e.expect([]string{"alarm", "list"}, "")

	// Fill the quota.
	val := strings.Repeat("x", 4096)
	for i := 0; ; i++ {
		if _, err := cli.Put(ctx, "big", val); err != nil {
			if !errors.Is(err, rpctypes.ErrNoSpace) {
				t.Fatalf("put %d: %v", i, err)
			}
			break
		}
		if i > 1000 {
			t.Fatal("quota never hit")
		}
	}
	alarm := regexp.MustCompile(`^memberID:\s*(\d+)\s+alarm:\s*NOSPACE\s*$`)
	var list string
	poll(t, 10*time.Second, func() bool {
		list = e.run("", "alarm", "list")
		return list != ""
	}, "no alarm listed")
	t.Logf("etcdctl alarm list:\n%s", list)
	m := alarm.FindStringSubmatch(strings.TrimSpace(list))
	if m == nil || m[1] != strconv.FormatUint(lead, 10) {
		t.Fatalf("alarm list printed %q, want NOSPACE for the leader %d", list, lead)
	}
	failed := e.fail("put", "more", "x")
	t.Logf("etcdctl put under NOSPACE:\n%s", failed)
	if !strings.Contains(failed, "etcdserver: mvcc: database space exceeded") {
		t.Fatalf("put under NOSPACE printed %q", failed)
	}
	t.Logf("etcdctl endpoint status under NOSPACE:\n%s", e.run("", "endpoint", "status"))
	e.expect([]string{"get", "k1", "--print-value-only"}, "v\n")
	for _, r := range status() {
		if !strings.Contains(r[13], "alarm:") || !strings.Contains(r[13], "NOSPACE") {
			t.Fatalf("endpoint status errors under NOSPACE: %q", r)
		}
	}

	// Compact, defragment every member, disarm: writes resume.
	g, err := cli.Get(ctx, "big")
	if err != nil {
		t.Fatal(err)
	}
	e.expect([]string{"compaction", strconv.FormatInt(g.Header.Revision, 10)}, fmt.Sprintf("compacted revision %d\n", g.Header.Revision))
	poll(t, 10*time.Second, func() bool {
		out := e.run("", "defrag")
		if strings.Count(out, "Finished defragmenting etcd member[") != 3 {
			t.Fatalf("defrag printed %q", out)
		}
		for _, ep := range eps {
			st, err := cli.Status(ctx, ep)
			if err != nil || st.DbSize > quota/2 {
				return false
			}
		}
		return true
	}, "members not under the quota after compaction and defrag")
	disarm := e.run("", "alarm", "disarm")
	t.Logf("etcdctl alarm disarm:\n%s", disarm)
	if alarm.FindStringSubmatch(strings.TrimSpace(disarm)) == nil {
		t.Fatalf("alarm disarm printed %q", disarm)
	}
	e.expect([]string{"alarm", "list"}, "")
	e.expect([]string{"put", "more", "x"}, "OK\n")

	// snapshot save, from one member: etcdctl accepts the stream and its
	// checksum, and the file is a good ballot backup.
	file := filepath.Join(t.TempDir(), "backup.db")
	one := ctl{t: t, bin: e.bin, eps: eps[0]}
	out := one.run("", "snapshot", "save", file)
	t.Logf("etcdctl snapshot save:\n%s", out)
	if !strings.Contains(out, "Snapshot saved at "+file+"\n") || !strings.Contains(out, "Server version "+server.Version) {
		t.Fatalf("snapshot save printed %q", out)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	_, info, err := server.ReadBackup(b)
	if err != nil {
		t.Fatal(err)
	}
	now, err := cli.Get(ctx, "more")
	if err != nil {
		t.Fatal(err)
	}
	if info.Revision != now.Header.Revision || info.Keys != 13 {
		t.Fatalf("saved backup %+v; the cluster is at revision %d", info.Stats, now.Header.Revision)
	}
	if _, err := os.Stat(file + ".part"); !os.IsNotExist(err) {
		t.Fatalf("%s.part left behind: %v", file, err)
	}
}
