package main

import (
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"
)

// environment is the setup a report states. It is saved as run.json
// beside the raw outputs, so that --report-from can render the report
// again (with new notes) without running anything.
type environment struct {
	Commit      string        `json:"commit"`
	ShortCommit string        `json:"short_commit"`
	Dirty       bool          `json:"dirty"`
	Date        time.Time     `json:"date"`
	GoVersion   string        `json:"go_version"`
	CPUs        int           `json:"cpus"`
	GOMAXPROCS  int           `json:"gomaxprocs"`
	CPUModel    string        `json:"cpu_model"`
	Kernel      string        `json:"kernel"`
	TmpFS       string        `json:"tmp_fs"`
	LoadStart   string        `json:"load_start"`
	LoadEnd     string        `json:"load_end"`
	Quick       bool          `json:"quick"`
	RawRel      string        `json:"raw_rel"`
	Elapsed     time.Duration `json:"elapsed_ns"`
	Failures    []string      `json:"failures"`

	earlier []string
	notes   string
	repo    string
}

func describe(repo string) *environment {
	e := &environment{Date: time.Now().UTC(), GoVersion: runtime.Version(), CPUs: runtime.NumCPU(), GOMAXPROCS: runtime.GOMAXPROCS(0), repo: repo}
	if out, err := exec.Command("git", "-C", repo, "rev-parse", "HEAD").Output(); err == nil {
		e.Commit = strings.TrimSpace(string(out))
	} else {
		e.Commit = "unknown"
	}
	e.ShortCommit = e.Commit[:min(7, len(e.Commit))]
	if out, err := exec.Command("git", "-C", repo, "status", "--porcelain").Output(); err == nil && len(out) > 0 {
		e.Dirty = true
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				e.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		e.Kernel = strings.TrimSpace(string(b))
	}
	if out, err := exec.Command("df", "-T", os.TempDir()).Output(); err == nil {
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if f := strings.Fields(lines[len(lines)-1]); len(f) > 1 {
			e.TmpFS = f[1] + " (" + f[0] + ")"
		}
	}
	e.LoadStart = loadAvg()
	return e
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	return strings.Join(f[:min(3, len(f))], " ")
}

// earlier lists earlier raw outputs under docs/benchmarks (files and
// directories of other runs), relative to the report.
func earlier(outRoot, repo, current string) []string {
	var out []string
	for _, root := range []string{repo, outRoot} {
		entries, err := os.ReadDir(filepath.Join(root, "docs", "benchmarks"))
		if err != nil {
			continue
		}
		for _, e := range entries {
			rel := filepath.Join("docs", "benchmarks", e.Name())
			if rel == current || slices.Contains(out, rel) {
				continue
			}
			out = append(out, rel)
		}
	}
	slices.Sort(out)
	return out
}

// The rows the report lays out; they match the benchmark packages.
var (
	corePayloads = []int{16, 256, 4096}
	coreWindows  = []int{1, 64, 1024}
	coreEngines  = []string{"ballot-raft", "ballot-paxos", "etcd-raft", "hashicorp-raft"}
	nodeCounts   = []int{1, 16, 256}
	serviceRows  = []struct {
		members int
		op      string
		clients int
	}{
		{3, "put", 1}, {3, "put", 100}, {3, "put", 1000},
		{3, "get-linearizable", 1}, {3, "get-linearizable", 100}, {3, "get-linearizable", 1000},
		{3, "get-serializable", 1}, {3, "get-serializable", 100},
		{3, "txn", 1}, {3, "txn", 100},
		{5, "put", 1}, {5, "put", 100}, {5, "get-linearizable", 100},
	}
)

func coreName(payload, window int, engine string) string {
	return fmt.Sprintf("BenchmarkCore/payload=%dB/window=%d/engine=%s", payload, window, engine)
}

func nodeName(proposers int, system string) string {
	return fmt.Sprintf("BenchmarkNode/proposers=%d/system=%s", proposers, system)
}

func serviceName(members int, op string, clients int, system string) string {
	return fmt.Sprintf("BenchmarkService/members=%d/op=%s/clients=%d/system=%s", members, op, clients, system)
}

func memoryName(system string) string { return "BenchmarkMemory/system=" + system }

// num formats a median with a precision that suits its size.
func num(v []float64) string {
	m, ok := median(v)
	if !ok {
		return "—"
	}
	switch a := math.Abs(m); {
	case a >= 100000:
		return fmt.Sprintf("%.0fk", m/1000)
	case a >= 1000:
		return fmt.Sprintf("%.0f", m)
	case a >= 100:
		return fmt.Sprintf("%.0f", m)
	case a >= 10:
		return fmt.Sprintf("%.1f", m)
	default:
		return fmt.Sprintf("%.2f", m)
	}
}

// ratio formats the median of per-round ratios with their range.
func ratio(v []float64) string {
	m, ok := median(v)
	if !ok {
		return "—"
	}
	if len(v) == 1 {
		return fmt.Sprintf("**%.2f×**", m)
	}
	return fmt.Sprintf("**%.2f×** (%.2f–%.2f)", m, slices.Min(v), slices.Max(v))
}

func render(env *environment, res map[string]runs) string {
	var w strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&w, format, args...) }
	p("# Benchmarks\n\n")
	p("<!-- Generated by `cd bench && go run ./cmd/benchall`; do not edit by hand. The analysis section comes from bench/notes.md. -->\n\n")
	p("ballot beside etcd, etcd-io/raft and hashicorp/raft on the same machine, in the same run. ")
	p("Reproduce with `cd bench && go run ./cmd/benchall` (`--quick` for a few-minute check of the harness, `--profile` to add the write path's profiles). ")
	p("The peers are dependencies of the separate `bench/` module only, never of ballot.\n\n")
	p("## Setup\n\n")
	dirty := ""
	if env.Dirty {
		dirty = " (plus uncommitted changes in the work tree at run time)"
	}
	mode := "full"
	if env.Quick {
		mode = "**quick** (`--quick`: short runs; the figures prove the harness, not the systems)"
	}
	p("- Commit `%s`%s, run %s, %s mode, %s in all.\n", env.Commit, dirty, env.Date.Format("2006-01-02 15:04 UTC"), mode, env.Elapsed.Round(time.Second))
	p("- %s; %d CPUs (GOMAXPROCS %d); %s; Linux %s; load average at start %s, at end %s.\n",
		env.GoVersion, env.CPUs, env.GOMAXPROCS, env.CPUModel, env.Kernel, env.LoadStart, env.LoadEnd)
	p("- fsync on for every system at node and service level; data directories on the OS file system under $TMPDIR: %s.\n", env.TmpFS)
	p("- Every figure is the median over the rounds (each round a fresh process per suite; every other round measures the systems in reverse order). ")
	p("Every ratio is computed within one round, between systems measured back to back in the same process, and the median of those ratios is shown with its range over the rounds: the machine is shared (other engineers' tests run on the same 2 cores), so absolute figures move between runs and only ratios measured pairwise mean much.\n")
	p("- Raw outputs of this run: [%s](%s/).\n\n", env.RawRel, env.RawRel)
	if len(env.Failures) > 0 {
		p("**Failed runs** (their rows are missing or have fewer rounds):\n\n")
		for _, f := range env.Failures {
			p("- %s\n", f)
		}
		p("\n")
	}

	p("## Headline: ballot / peer, pairwise medians\n\n")
	p("%s\n", headline(res))

	p("## Targets (issue 12)\n\n")
	p("%s\n", targets(res))

	renderCore(p, res["core"])
	renderNodes(p, res["nodes"])
	renderService(p, res["service"])
	renderMemory(p, res["memory"])
	renderShards(p, res["shards"])

	p("## Not measured yet\n\n")
	if len(res["shards"]) == 0 {
		p("- **Write throughput as shards grow, memory per idle group**: not run in this run (`benchall --only shards`).\n")
	}
	p("- **etcd-io/raft at node level**: etcd-io/raft ships no log store and no transport, so any harness around it would be ours, not what its users run; the runtime its users run is etcd's server (its WAL, rafthttp and apply loop), which the service table measures against ballot through the same client. A minimal WAL harness would measure our harness.\n\n")

	if env.notes != "" {
		p("## Analysis\n\n%s\n", strings.TrimSpace(env.notes))
		p("\n")
	}
	p("## Earlier results\n\n")
	p("Raw outputs of earlier runs and of the per-package benchmarks, kept as they were recorded:\n\n")
	for _, e := range env.earlier {
		p("- [%s](%s)%s\n", e, e, describeEarlier(filepath.Join(env.repo, e)))
	}
	return w.String()
}

// describeEarlier returns " — " and the first comment line of an earlier
// raw output (or of a run directory's summary), if it has one.
func describeEarlier(path string) string {
	if fi, err := os.Stat(path); err == nil && fi.IsDir() {
		return " — a benchall run (summary.md and every raw output)"
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	line, _, _ := strings.Cut(string(b), "\n")
	if t, ok := strings.CutPrefix(line, "# "); ok {
		return " — " + t
	}
	return ""
}

type printer func(format string, args ...any)

func renderCore(p printer, rs runs) {
	if len(rs) == 0 {
		return
	}
	p("## Core engines (in-process, no disk, in-memory network)\n\n")
	p("Three nodes; ballot's Raft and Multi-Paxos and etcd-io/raft driven by one goroutine that handles every Ready and delivers messages by hand; hashicorp/raft (InmemStore, InmemTransport, DefaultConfig) runs its own goroutines and is driven by Apply futures. ")
	p("A proposal counts when the leader has applied it; *window* is how many are proposed and not yet applied. Same flow-control limits for the three that have them (1 MiB per message, 256 appends in flight, 64 MiB uncommitted). %d rounds.\n\n", len(rs))
	p("Leader-applied proposals per second:\n\n")
	p("| payload | window | ballot-raft | ballot-paxos | etcd-raft | hashicorp-raft | ballot-raft / etcd-raft | ballot-raft / hashicorp | ballot-paxos / etcd-raft |\n|---|---|---|---|---|---|---|---|---|\n")
	for _, size := range corePayloads {
		for _, window := range coreWindows {
			p("| %d B | %d |", size, window)
			for _, e := range coreEngines {
				p(" %s |", num(rs.values(coreName(size, window, e), "proposals/s")))
			}
			p(" %s | %s | %s |\n",
				ratio(rs.ratios(coreName(size, window, "ballot-raft"), coreName(size, window, "etcd-raft"), "proposals/s")),
				ratio(rs.ratios(coreName(size, window, "ballot-raft"), coreName(size, window, "hashicorp-raft"), "proposals/s")),
				ratio(rs.ratios(coreName(size, window, "ballot-paxos"), coreName(size, window, "etcd-raft"), "proposals/s")))
		}
	}
	p("\nAllocations and bytes allocated per proposal (the whole process, so hashicorp/raft's goroutines are counted):\n\n")
	p("| payload | window | ballot-raft | ballot-paxos | etcd-raft | hashicorp-raft |\n|---|---|---|---|---|---|\n")
	for _, size := range corePayloads {
		for _, window := range coreWindows {
			p("| %d B | %d |", size, window)
			for _, e := range coreEngines {
				n := coreName(size, window, e)
				p(" %s allocs, %s B |", num(rs.values(n, "allocs/op")), num(rs.values(n, "B/op")))
			}
			p("\n")
		}
	}
	p("\n")
}

func renderNodes(p printer, rs runs) {
	if len(rs) == 0 {
		return
	}
	p("## Runtimes (3 nodes, fsync on, loopback TCP)\n\n")
	p("ballot's `node` (WAL, TCP transport, defaults) versus hashicorp/raft with raft-boltdb (fsync on) and its TCP transport (DefaultConfig). All three members of a cluster, and the proposers, in one process; 256-byte commands; latency from the call until the leader has applied. %d rounds.\n\n", len(rs))
	p("| proposers | ballot ops/s | p50 ms | p99 ms | p99.9 ms | hashicorp ops/s | p50 ms | p99 ms | p99.9 ms | ops/s ratio | p99 ratio |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, n := range nodeCounts {
		a, b := nodeName(n, "ballot"), nodeName(n, "hashicorp")
		p("| %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", n,
			num(rs.values(a, "ops/s")), num(rs.values(a, "p50-ms")), num(rs.values(a, "p99-ms")), num(rs.values(a, "p999-ms")),
			num(rs.values(b, "ops/s")), num(rs.values(b, "p50-ms")), num(rs.values(b, "p99-ms")), num(rs.values(b, "p999-ms")),
			ratio(rs.ratios(a, b, "ops/s")), ratio(rs.ratios(a, b, "p99-ms")))
	}
	p("\nRatios are ballot / hashicorp: ops/s above 1 and p99 below 1 favour ballot.\n\n")
}

func renderService(p printer, rs runs) {
	if len(rs) == 0 {
		return
	}
	p("## Service (etcd v3 API through clientv3; ballot vs etcd 3.7, fsync on, loopback)\n\n")
	p("Clusters of 3 and of 5 members in one process, both systems with their default timing; the same load generator (at most 100 clientv3 clients per system, each on every endpoint, shared round-robin by the row's client goroutines); 1000 keys of 16 bytes with 256-byte values; txn is If(value = v) Then(put). %d rounds.\n\n", len(rs))
	p("| members | op | clients | ballot ops/s | p50 | p99 | p99.9 | etcd ops/s | p50 | p99 | p99.9 | ops/s ratio | p50 ratio | p99 ratio |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range serviceRows {
		a, b := serviceName(r.members, r.op, r.clients, "ballot"), serviceName(r.members, r.op, r.clients, "etcd")
		p("| %d | %s | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", r.members, r.op, r.clients,
			num(rs.values(a, "ops/s")), num(rs.values(a, "p50-ms")), num(rs.values(a, "p99-ms")), num(rs.values(a, "p999-ms")),
			num(rs.values(b, "ops/s")), num(rs.values(b, "p50-ms")), num(rs.values(b, "p99-ms")), num(rs.values(b, "p999-ms")),
			ratio(rs.ratios(a, b, "ops/s")), ratio(rs.ratios(a, b, "p50-ms")), ratio(rs.ratios(a, b, "p99-ms")))
	}
	p("\nLatencies in ms. Ratios are ballot / etcd: ops/s above 1 and latency below 1 favour ballot.\n\n")
}

func renderMemory(p printer, rs runs) {
	if len(rs) == 0 {
		return
	}
	keys, _ := median(rs.values(memoryName("ballot"), "keys"))
	p("## Memory (3-member cluster in one process, %.0f keys of 256 B)\n\n", keys)
	p("Growth of the process over its state before the cluster started, after loading the keys (txns of 128 puts) and a full GC: resident set (VmRSS; for etcd it includes the pages of its bbolt file touched through mmap) and Go heap of live objects. Three replicas of every key are in the process. Each system in its own process; %d rounds.\n\n", len(rs))
	p("| system | RSS MB | RSS B/key | heap MB | heap B/key |\n|---|---|---|---|---|\n")
	for _, s := range []string{"ballot", "etcd"} {
		n := memoryName(s)
		p("| %s | %s | %s | %s | %s |\n", s, num(rs.values(n, "rss-MB")), num(rs.values(n, "rss-B/key")), num(rs.values(n, "heap-MB")), num(rs.values(n, "heap-B/key")))
	}
	p("| ballot / etcd | %s | | %s | |\n\n",
		ratio(rs.ratios(memoryName("ballot"), memoryName("etcd"), "rss-MB")),
		ratio(rs.ratios(memoryName("ballot"), memoryName("etcd"), "heap-MB")))
}

// headline is the few ratios that answer "is ballot faster", as a table.
func headline(res map[string]runs) string {
	var w strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&w, format, args...) }
	p("| level | comparison | ballot / peer (median, range) |\n|---|---|---|\n")
	if rs := res["core"]; len(rs) > 0 {
		for _, win := range coreWindows {
			p("| core | Raft proposals/s, 256 B, window %d: vs etcd-io/raft | %s |\n", win,
				ratio(rs.ratios(coreName(256, win, "ballot-raft"), coreName(256, win, "etcd-raft"), "proposals/s")))
		}
		for _, win := range coreWindows {
			p("| core | Raft proposals/s, 256 B, window %d: vs hashicorp/raft | %s |\n", win,
				ratio(rs.ratios(coreName(256, win, "ballot-raft"), coreName(256, win, "hashicorp-raft"), "proposals/s")))
		}
	}
	if rs := res["nodes"]; len(rs) > 0 {
		for _, n := range nodeCounts {
			p("| node | proposals/s, %d proposers: vs hashicorp/raft+boltdb | %s |\n", n,
				ratio(rs.ratios(nodeName(n, "ballot"), nodeName(n, "hashicorp"), "ops/s")))
		}
	}
	if rs := res["service"]; len(rs) > 0 {
		for _, r := range serviceRows {
			if r.members != 3 || (r.op != "put" && r.op != "get-linearizable") {
				continue
			}
			p("| service | %s ops/s, %d clients: vs etcd | %s |\n", r.op, r.clients,
				ratio(rs.ratios(serviceName(3, r.op, r.clients, "ballot"), serviceName(3, r.op, r.clients, "etcd"), "ops/s")))
		}
	}
	if rs := res["memory"]; len(rs) > 0 {
		p("| memory | RSS for the same keys: vs etcd (below 1 favours ballot) | %s |\n",
			ratio(rs.ratios(memoryName("ballot"), memoryName("etcd"), "rss-MB")))
	}
	return w.String()
}

// target is one goal of the issue, checked against the medians.
type target struct {
	goal  string
	check func(res map[string]runs) (met bool, detail string, ok bool)
}

// atLeast reports whether the median ratio v is ≥ want and by how much it
// misses.
func atLeast(v []float64, want float64) (bool, string, bool) {
	m, ok := median(v)
	if !ok {
		return false, "", false
	}
	if m >= want {
		return true, fmt.Sprintf("%.2f× ≥ %.2f×", m, want), true
	}
	return false, fmt.Sprintf("%.2f×, %.0f%% short of %.2f×", m, 100*(want-m)/want, want), true
}

// atMost reports whether the median ratio v is ≤ want and by how much it
// exceeds.
func atMost(v []float64, want float64) (bool, string, bool) {
	m, ok := median(v)
	if !ok {
		return false, "", false
	}
	if m <= want {
		return true, fmt.Sprintf("%.2f× ≤ %.2f×", m, want), true
	}
	return false, fmt.Sprintf("%.2f×, %.0f%% over %.2f×", m, 100*(m-want)/want, want), true
}

func targets(res map[string]runs) string {
	var list []target
	for _, size := range corePayloads {
		for _, win := range coreWindows {
			list = append(list, target{fmt.Sprintf("core: ballot Raft ≥ etcd-io/raft, %d B, window %d", size, win), func(res map[string]runs) (bool, string, bool) {
				return atLeast(res["core"].ratios(coreName(size, win, "ballot-raft"), coreName(size, win, "etcd-raft"), "proposals/s"), 1)
			}})
		}
	}
	for _, win := range coreWindows {
		list = append(list, target{fmt.Sprintf("core: ballot Raft ≥ 3× hashicorp/raft, 256 B, window %d", win), func(res map[string]runs) (bool, string, bool) {
			return atLeast(res["core"].ratios(coreName(256, win, "ballot-raft"), coreName(256, win, "hashicorp-raft"), "proposals/s"), 3)
		}})
	}
	for _, c := range []int{100, 1000} {
		a, b := serviceName(3, "put", c, "ballot"), serviceName(3, "put", c, "etcd")
		list = append(list,
			target{fmt.Sprintf("service: put ≥ 1.5× etcd's throughput, %d clients", c), func(res map[string]runs) (bool, string, bool) {
				return atLeast(res["service"].ratios(a, b, "ops/s"), 1.5)
			}},
			target{fmt.Sprintf("service: put p99 no worse than etcd's, %d clients", c), func(res map[string]runs) (bool, string, bool) {
				return atMost(res["service"].ratios(a, b, "p99-ms"), 1)
			}})
	}
	list = append(list, target{"service: 1-client put latency (p50) below etcd's", func(res map[string]runs) (bool, string, bool) {
		return atMost(res["service"].ratios(serviceName(3, "put", 1, "ballot"), serviceName(3, "put", 1, "etcd"), "p50-ms"), 1)
	}})
	for _, c := range []int{1, 100, 1000} {
		list = append(list, target{fmt.Sprintf("service: linearizable reads ≥ etcd's, %d clients", c), func(res map[string]runs) (bool, string, bool) {
			return atLeast(res["service"].ratios(serviceName(3, "get-linearizable", c, "ballot"), serviceName(3, "get-linearizable", c, "etcd"), "ops/s"), 1)
		}})
	}
	list = append(list, target{"memory: RSS no more than etcd's for the same data", func(res map[string]runs) (bool, string, bool) {
		return atMost(res["memory"].ratios(memoryName("ballot"), memoryName("etcd"), "rss-MB"), 1)
	}})

	var w strings.Builder
	met, missed := 0, 0
	w.WriteString("Each target is judged on the median of its pairwise ratio in this run.\n\n| target | result | ballot / peer |\n|---|---|---|\n")
	for _, t := range list {
		ok, detail, have := t.check(res)
		switch {
		case !have:
			fmt.Fprintf(&w, "| %s | not measured in this run | |\n", t.goal)
		case ok:
			met++
			fmt.Fprintf(&w, "| %s | met | %s |\n", t.goal, detail)
		default:
			missed++
			fmt.Fprintf(&w, "| %s | **missed** | %s |\n", t.goal, detail)
		}
	}
	fmt.Fprintf(&w, "\n%d met, %d missed.\n", met, missed)
	return w.String()
}
