// Command benchall runs every side-by-side benchmark of the bench module
// and writes BENCHMARKS.md from what they printed.
//
//	cd bench && go run ./cmd/benchall          # full run (≤ 30 min on 2 cores)
//	cd bench && go run ./cmd/benchall --quick  # a few minutes: proves the harness
//
// It builds each benchmark package's test binary once, then runs the
// suites in rounds: core engines (package core), runtimes with fsync
// (package nodes), the etcd-v3 service against etcd (package service,
// BenchmarkService), memory per key (BenchmarkMemory, one process per
// system) and sharded mode (package shards: write throughput as shards
// grow, and the cost of idle groups, one process per shard count and
// quiescence setting). Each round is a fresh process per suite, and every
// other round visits the systems in reverse order (BALLOT_BENCH_REVERSE=1), so that
// neither is always measured first. A figure in the report is the median
// over the rounds; a ratio is computed within each round, from systems
// measured back to back in the same process, and then the median of those
// ratios is taken, so that the load of the moment cancels.
//
// A full run saves every raw output under docs/benchmarks/<date>-<commit>/
// and regenerates BENCHMARKS.md at the repository root; earlier outputs
// under docs/benchmarks/ are linked, never rewritten. --quick writes to a
// directory under $TMPDIR instead (print its path with the summary), unless
// --out says where. --profile adds CPU and allocation profiles of ballot's
// node-level write path to the saved outputs.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

// invocation is one run of a test binary.
type invocation struct {
	label string   // names the saved output: <label>-r<round>.txt
	args  []string // after -test.run '^$'
	env   []string
}

// suite is one benchmark package and how each round runs it.
type suite struct {
	name   string
	pkg    string
	rounds int
	runs   func(round int) []invocation
}

type options struct {
	quick   bool
	profile bool
	rounds  int
	only    string
	out     string
	keys    int
	from    string
}

func main() {
	var o options
	flag.BoolVar(&o.quick, "quick", false, "short runs, fewer rounds and 20k keys: proves the harness in a few minutes")
	flag.BoolVar(&o.profile, "profile", false, "also profile ballot's node-level write path (CPU and allocations)")
	flag.IntVar(&o.rounds, "rounds", 0, "rounds of every suite (default: core 4, nodes and service 3, memory 1; with --quick core 2, the others 1)")
	flag.IntVar(&o.keys, "keys", 0, "keys the memory suite loads (default 250000, or 20000 with --quick; the issue's figure is 1000000, about 12 minutes more on 2 cores)")
	flag.StringVar(&o.only, "only", "", "comma-separated suites to run: core,nodes,service,memory,shards (default all)")
	flag.StringVar(&o.out, "out", "", "directory for BENCHMARKS.md and the raw outputs (default: the repository, or a temporary directory with --quick)")
	flag.StringVar(&o.from, "report-from", "", "render BENCHMARKS.md again from the raw outputs of an earlier run in this directory (with the current bench/notes.md), running nothing")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "benchall:", err)
		os.Exit(1)
	}
}

func run(o options) error {
	start := time.Now()
	benchDir, err := findBenchDir()
	if err != nil {
		return err
	}
	repo := filepath.Dir(benchDir)
	if o.from != "" {
		return rerender(benchDir, repo, o)
	}
	env := describe(repo)
	env.Quick = o.quick

	// Where the report and the raw outputs go.
	outRoot := repo
	if o.out != "" {
		outRoot = o.out
	} else if o.quick {
		if outRoot, err = os.MkdirTemp("", "ballot-bench-quick-"); err != nil {
			return err
		}
	}
	env.RawRel = filepath.Join("docs", "benchmarks", env.Date.Format("2006-01-02")+"-"+env.ShortCommit)
	if o.quick {
		env.RawRel += "-quick"
	}
	// A second run of the same commit on the same day gets a directory of
	// its own: earlier outputs are never overwritten.
	base := env.RawRel
	for i := 2; ; i++ {
		if _, err := os.Stat(filepath.Join(outRoot, env.RawRel)); errors.Is(err, os.ErrNotExist) {
			break
		}
		env.RawRel = fmt.Sprintf("%s-%d", base, i)
	}
	rawDir := filepath.Join(outRoot, env.RawRel)
	if err := os.MkdirAll(rawDir, 0o755); err != nil {
		return err
	}

	suites := plan(o)
	binDir, err := os.MkdirTemp("", "ballot-bench-bin-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(binDir)
	results := map[string]runs{}
	var failures []string
	for _, s := range suites {
		bin := filepath.Join(binDir, s.name+".test")
		logf("build %s (%s)", s.name, s.pkg)
		if out, err := command(benchDir, nil, "go", "test", "-c", "-o", bin, s.pkg); err != nil {
			return fmt.Errorf("build %s: %v\n%s", s.pkg, err, out)
		}
		rs := runs{}
		for round := 1; round <= s.rounds; round++ {
			for _, inv := range s.runs(round) {
				t0 := time.Now()
				args := append([]string{"-test.run", "^$"}, inv.args...)
				out, err := command(filepath.Join(benchDir, strings.TrimPrefix(s.pkg, "./")), inv.env, bin, args...)
				file := fmt.Sprintf("%s-r%d.txt", inv.label, round)
				header := fmt.Sprintf("# %s round %d of %d: %s %s\n# commit %s, %s, %s, %d CPUs, GOMAXPROCS %d, fsync on\n\n",
					s.name, round, s.rounds, strings.Join(inv.env, " "), strings.Join(append([]string{filepath.Base(bin)}, args...), " "),
					env.Commit, env.Date.Format(time.RFC3339), env.GoVersion, env.CPUs, runtime.GOMAXPROCS(0))
				if werr := os.WriteFile(filepath.Join(rawDir, file), append([]byte(header), out...), 0o644); werr != nil {
					return werr
				}
				logf("%s round %d/%d %s: %s", s.name, round, s.rounds, inv.label, time.Since(t0).Round(time.Second))
				if err != nil {
					failures = append(failures, fmt.Sprintf("%s (%s, round %d): %v; see %s", s.name, inv.label, round, err, file))
					logf("FAILED: %v\n%s", err, tail(out, 20))
				}
				rs.add(parse(bytes.NewReader(out)))
			}
			// The memory suite's rounds are merged per round across its
			// two processes.
			if len(rs) > round {
				merged := map[string]map[string]float64{}
				for _, m := range rs[round-1:] {
					for k, v := range m {
						merged[k] = v
					}
				}
				rs = append(rs[:round-1], merged)
			}
		}
		results[s.name] = rs
	}
	if o.profile {
		if err := profile(benchDir, binDir, rawDir); err != nil {
			failures = append(failures, "profile: "+err.Error())
		}
	}
	env.Elapsed = time.Since(start)
	env.Failures = failures
	env.LoadEnd = loadAvg()
	js, err := json.MarshalIndent(env, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(rawDir, "run.json"), js, 0o644); err != nil {
		return err
	}
	reportPath, err := writeReport(env, results, benchDir, repo, outRoot, rawDir)
	if err != nil {
		return err
	}
	fmt.Print(headline(results))
	logf("wrote %s and %s in %s", reportPath, rawDir, env.Elapsed.Round(time.Second))
	if len(failures) > 0 {
		return fmt.Errorf("%d benchmark runs failed:\n  %s", len(failures), strings.Join(failures, "\n  "))
	}
	return nil
}

// writeReport renders the report into outRoot/BENCHMARKS.md and a copy
// into rawDir/summary.md, and returns the former's path.
func writeReport(env *environment, results map[string]runs, benchDir, repo, outRoot, rawDir string) (string, error) {
	env.earlier = earlier(outRoot, repo, env.RawRel)
	env.notes = readNotes(benchDir)
	report := render(env, results)
	reportPath := filepath.Join(outRoot, "BENCHMARKS.md")
	if err := os.WriteFile(reportPath, []byte(report), 0o644); err != nil {
		return "", err
	}
	return reportPath, os.WriteFile(filepath.Join(rawDir, "summary.md"), []byte(report), 0o644)
}

// rawFile names a saved output: <label>-r<round>.txt.
var rawFile = regexp.MustCompile(`^(core|nodes|service|memory|shards)(-[a-z0-9-]+)?-r(\d+)\.txt$`)

// rerender reads the raw outputs and run.json of an earlier run from
// o.from and writes its report again, into the repository (or --out).
func rerender(benchDir, repo string, o options) error {
	rawDir, err := filepath.Abs(o.from)
	if err != nil {
		return err
	}
	js, err := os.ReadFile(filepath.Join(rawDir, "run.json"))
	if err != nil {
		return err
	}
	env := &environment{repo: repo}
	if err := json.Unmarshal(js, env); err != nil {
		return fmt.Errorf("%s: %w", filepath.Join(rawDir, "run.json"), err)
	}
	entries, err := os.ReadDir(rawDir)
	if err != nil {
		return err
	}
	// byRound[suite][round] collects the results of every process of
	// that suite's round.
	byRound := map[string]map[int][]result{}
	for _, e := range entries {
		m := rawFile.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		f, err := os.Open(filepath.Join(rawDir, e.Name()))
		if err != nil {
			return err
		}
		res := parse(f)
		f.Close()
		round, _ := strconv.Atoi(m[3])
		if byRound[m[1]] == nil {
			byRound[m[1]] = map[int][]result{}
		}
		byRound[m[1]][round] = append(byRound[m[1]][round], res...)
	}
	results := map[string]runs{}
	for suite, rounds := range byRound {
		var rs runs
		for _, r := range slices.Sorted(maps.Keys(rounds)) {
			rs.add(rounds[r])
		}
		results[suite] = rs
	}
	outRoot := repo
	if o.out != "" {
		outRoot = o.out
		if err := os.MkdirAll(outRoot, 0o755); err != nil {
			return err
		}
	}
	reportPath, err := writeReport(env, results, benchDir, repo, outRoot, rawDir)
	if err != nil {
		return err
	}
	fmt.Print(headline(results))
	logf("wrote %s from %s", reportPath, rawDir)
	return nil
}

// plan returns the suites to run with their settings for o.
func plan(o options) []suite {
	// Full: about 25 minutes on a shared 2-core machine. Quick: a few.
	coreRounds, rounds, memRounds := 4, 3, 1
	coreTime, nodeTime, serviceOps, keys := "500ms", "2s", "1000", "250000"
	if o.quick {
		coreRounds, rounds, memRounds = 2, 1, 1
		coreTime, nodeTime, serviceOps, keys = "50ms", "300ms", "100", "20000"
	}
	if o.rounds > 0 {
		coreRounds, rounds, memRounds = o.rounds, o.rounds, o.rounds
	}
	if o.keys > 0 {
		keys = fmt.Sprint(o.keys)
	}
	reverse := func(round int) []string {
		if round%2 == 0 {
			return []string{"BALLOT_BENCH_REVERSE=1"}
		}
		return nil
	}
	all := []suite{
		{name: "core", pkg: "./core", rounds: coreRounds, runs: func(r int) []invocation {
			return []invocation{{label: "core", env: reverse(r),
				args: []string{"-test.bench", "BenchmarkCore", "-test.benchmem", "-test.benchtime", coreTime, "-test.timeout", "20m"}}}
		}},
		{name: "nodes", pkg: "./nodes", rounds: rounds, runs: func(r int) []invocation {
			return []invocation{{label: "nodes", env: reverse(r),
				args: []string{"-test.bench", "BenchmarkNode", "-test.benchtime", nodeTime, "-test.timeout", "20m"}}}
		}},
		{name: "service", pkg: "./service", rounds: rounds, runs: func(r int) []invocation {
			return []invocation{{label: "service", env: append(reverse(r), "BALLOT_BENCH_OPS="+serviceOps),
				args: []string{"-test.bench", "BenchmarkService", "-test.benchtime", "1x", "-test.timeout", "30m"}}}
		}},
		{name: "memory", pkg: "./service", rounds: memRounds, runs: func(r int) []invocation {
			var invs []invocation
			systems := []string{"ballot", "etcd"}
			if r%2 == 0 {
				systems = []string{"etcd", "ballot"}
			}
			for _, sys := range systems {
				invs = append(invs, invocation{label: "memory-" + sys, env: []string{"BALLOT_BENCH_KEYS=" + keys},
					args: []string{"-test.bench", "BenchmarkMemory/system=" + sys + "$", "-test.benchtime", "1x", "-test.timeout", "20m"}})
			}
			return invs
		}},
	}
	// Sharded mode (about 8 minutes more on a quiet machine): puts as
	// shards grow (one process per round; every other round runs
	// quiescence off first), then, in the first round only, the idle cost
	// of N shards (one process per N and quiescence setting, so that no
	// cluster inherits another's memory). 1000 shards run with quiescence
	// on only: growing them takes minutes, and 256 shards already show
	// what quiescence saves.
	shardCounts, shardClients, shardOps, idleShards, idleSecs := "1,2,4,8", "64,256", "10000", []string{"1", "64", "256", "1000"}, "10"
	shardQuiesce := "on,off"
	if o.quick {
		shardCounts, shardClients, shardOps, idleShards, idleSecs = "1,2", "64", "300", []string{"1", "16"}, "2"
		shardQuiesce = "on"
	}
	all = append(all, suite{name: "shards", pkg: "./shards", rounds: rounds, runs: func(r int) []invocation {
		order := shardQuiesce
		if r%2 == 0 && order == "on,off" {
			order = "off,on"
		}
		invs := []invocation{{label: "shards-puts",
			env:  []string{"BALLOT_BENCH_SHARDS=" + shardCounts, "BALLOT_BENCH_CLIENTS=" + shardClients, "BALLOT_BENCH_SHARD_OPS=" + shardOps, "BALLOT_BENCH_QUIESCE=" + order},
			args: []string{"-test.bench", "BenchmarkShardPuts", "-test.benchtime", "1x", "-test.timeout", "30m"}}}
		if r > 1 {
			return invs
		}
		for _, n := range idleShards {
			for _, q := range strings.Split(shardQuiesce, ",") {
				if n == "1000" && q == "off" {
					continue
				}
				invs = append(invs, invocation{label: "shards-idle-" + n + "-" + q,
					env:  []string{"BALLOT_BENCH_IDLE_SHARDS=" + n, "BALLOT_BENCH_IDLE_SECONDS=" + idleSecs, "BALLOT_BENCH_QUIESCE=" + q},
					args: []string{"-test.bench", "BenchmarkIdleGroups/shards=" + n + "/quiesce=" + q + "$", "-test.benchtime", "1x", "-test.timeout", "30m"}})
			}
		}
		return invs
	}})
	if o.only == "" {
		return all
	}
	var out []suite
	for _, s := range all {
		for _, name := range strings.Split(o.only, ",") {
			if strings.TrimSpace(name) == s.name {
				out = append(out, s)
			}
		}
	}
	return out
}

// profile runs the node-level benchmark for ballot alone at 256 proposers
// under the CPU and allocation profilers and saves the profiles with their
// top functions as text.
func profile(benchDir, binDir, rawDir string) error {
	bin := filepath.Join(binDir, "nodes.test")
	if _, err := os.Stat(bin); err != nil {
		if out, err := command(benchDir, nil, "go", "test", "-c", "-o", bin, "./nodes"); err != nil {
			return fmt.Errorf("build ./nodes: %v\n%s", err, out)
		}
	}
	cpu, mem := filepath.Join(rawDir, "node-put.cpu.pprof"), filepath.Join(rawDir, "node-put.alloc.pprof")
	logf("profile: ballot node-level put, 256 proposers")
	out, err := command(filepath.Join(benchDir, "nodes"), nil, bin, "-test.run", "^$",
		"-test.bench", "BenchmarkNode/proposers=256/system=ballot$", "-test.benchtime", "10s",
		"-test.cpuprofile", cpu, "-test.memprofile", mem, "-test.memprofilerate", "65536")
	if err := os.WriteFile(filepath.Join(rawDir, "node-put.profile-run.txt"), out, 0o644); err != nil {
		return err
	}
	if err != nil {
		return fmt.Errorf("%v\n%s", err, tail(out, 20))
	}
	for _, p := range []struct {
		file    string
		profile string
		flags   []string
	}{
		{"node-put.cpu.top.txt", cpu, []string{"-top", "-nodecount=45"}},
		{"node-put.cpu.cum.txt", cpu, []string{"-top", "-cum", "-nodecount=60"}},
		{"node-put.alloc.top.txt", mem, []string{"-top", "-sample_index=alloc_space", "-nodecount=30"}},
	} {
		args := append(append([]string{"tool", "pprof"}, p.flags...), bin, p.profile)
		out, err := command(benchDir, nil, "go", args...)
		if err != nil {
			return fmt.Errorf("pprof %s: %v\n%s", p.file, err, out)
		}
		if err := os.WriteFile(filepath.Join(rawDir, p.file), out, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// command runs name with args in dir, with extra environment, and returns
// its combined output.
func command(dir string, extraEnv []string, name string, args ...string) ([]byte, error) {
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), extraEnv...)
	var buf bytes.Buffer
	cmd.Stdout = &buf
	cmd.Stderr = &buf
	err := cmd.Run()
	return buf.Bytes(), err
}

// findBenchDir returns the bench module's directory: ./bench from the
// repository root, or the nearest directory upwards whose go.mod declares
// the bench module.
func findBenchDir() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	isBench := func(dir string) bool {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		return err == nil && strings.HasPrefix(string(b), "module github.com/ballotdb/ballot/bench\n")
	}
	if isBench(filepath.Join(wd, "bench")) {
		return filepath.Join(wd, "bench"), nil
	}
	for dir := wd; ; dir = filepath.Dir(dir) {
		if isBench(dir) {
			return dir, nil
		}
		if filepath.Dir(dir) == dir {
			return "", fmt.Errorf("run from the repository root or inside bench/ (no bench go.mod above %s)", wd)
		}
	}
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

// tail returns the last n lines of out.
func tail(out []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(out), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// readNotes returns bench/notes.md, the hand-written analysis that the
// report carries verbatim (what the profile shows, what was tried), or "".
func readNotes(benchDir string) string {
	b, err := os.ReadFile(filepath.Join(benchDir, "notes.md"))
	if err != nil {
		return ""
	}
	return string(b)
}
