package sim

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
)

// SweepOptions configures a sweep over many seeds.
type SweepOptions struct {
	Run   Options // the template; Seed is set per run
	Start uint64  // first seed
	Seeds int     // how many seeds
	// NodeCounts, when set, cycles the cluster size over the seeds (3 and
	// 5, say); otherwise Run.Nodes is used for all.
	NodeCounts []int
	// Parallel runs this many seeds at once. Default GOMAXPROCS.
	Parallel int
	// TraceDir receives a trace file for each failed seed. Default: the
	// system's temporary directory.
	TraceDir string
	// TraceTail is how many events before a violation a trace keeps.
	// Default 4000.
	TraceTail int
	// Minimums, when set, are per-run activity floors: the sweep fails if
	// the average run did less.
	Minimums *Stats
	// Out receives the report.
	Out io.Writer
}

// SweepResult summarises a sweep.
type SweepResult struct {
	Passed, Failed int
	Failures       []Result
	Stats          Stats
	// GroupStats adds up each group's stats over the runs (one entry in a
	// single-group sweep, equal to Stats).
	GroupStats []Stats
	// MinimumsMissed lists activity below the floor; a sweep with any is a
	// failed sweep.
	MinimumsMissed []string
}

// OK reports whether every seed passed and the activity minimums were met.
func (r SweepResult) OK() bool { return r.Failed == 0 && len(r.MinimumsMissed) == 0 }

// ReplayCommand is the command line that replays one seed with its trace.
func ReplayCommand(o Options) string {
	s := fmt.Sprintf("go run ./cmd/ballot sim --engine %s --nodes %d --seed %d --trace", o.Engine, o.Nodes, o.Seed)
	if o.Variant != Correct {
		s += " --broken " + string(o.Variant)
	}
	if o.SafetyTicks != 0 && o.SafetyTicks != 500 {
		s += fmt.Sprintf(" --ticks %d", o.SafetyTicks)
	}
	if o.Groups > 1 {
		s += fmt.Sprintf(" --groups %d", o.Groups)
	}
	if o.BrokenGroup > 0 {
		s += fmt.Sprintf(" --broken-group %d", o.BrokenGroup)
	}
	return s
}

// Sweep runs many seeds, in parallel, and reports each failure with the
// command that replays it and a trace file of the events before it. Runs are
// independent and each is a function of its seed, so the order they finish
// in changes nothing.
func Sweep(so SweepOptions) SweepResult {
	if so.Out == nil {
		so.Out = io.Discard
	}
	if so.Run.Engine == "" {
		so.Run.Engine = "raft"
	}
	if so.Parallel <= 0 {
		so.Parallel = runtime.GOMAXPROCS(0)
	}
	if so.TraceDir == "" {
		so.TraceDir = filepath.Join(os.TempDir(), "ballot-sim")
	}
	if so.TraceTail <= 0 {
		so.TraceTail = 4000
	}
	results := make([]Result, so.Seeds)
	optsOf := func(i int) Options {
		o := so.Run
		o.Seed = so.Start + uint64(i)
		if len(so.NodeCounts) > 0 {
			o.Nodes = so.NodeCounts[i%len(so.NodeCounts)]
		}
		o.Trace, o.TraceTail = nil, 0
		return o
	}
	var wg sync.WaitGroup
	next := make(chan int)
	for range so.Parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				results[i] = Run(optsOf(i))
			}
		}()
	}
	for i := range so.Seeds {
		next <- i
	}
	close(next)
	wg.Wait()

	var sr SweepResult
	for i, r := range results {
		sr.Stats.Add(r.Stats)
		for len(sr.GroupStats) < len(r.GroupStats) {
			sr.GroupStats = append(sr.GroupStats, Stats{})
		}
		for g, gs := range r.GroupStats {
			sr.GroupStats[g].Add(gs)
		}
		if r.Violation == nil {
			sr.Passed++
			continue
		}
		sr.Failed++
		o := optsOf(i)
		// Runs are deterministic: replay the seed to capture its trace.
		o.TraceTail = so.TraceTail
		rr := Run(o)
		sr.Failures = append(sr.Failures, rr)
		fmt.Fprintf(so.Out, "FAIL seed %d (%d nodes): %s\n", o.Seed, o.Nodes, firstLine(r.Violation.Error()))
		if path, err := writeTrace(so.TraceDir, o, rr); err == nil {
			fmt.Fprintf(so.Out, "  trace: %s\n", path)
		} else {
			fmt.Fprintf(so.Out, "  trace not written: %v\n", err)
		}
		fmt.Fprintf(so.Out, "  replay: %s\n", ReplayCommand(o))
	}
	multi := len(sr.GroupStats) > 1
	if so.Minimums != nil && sr.Stats.Runs > 0 {
		if !multi {
			sr.MinimumsMissed = belowMinimums(sr.Stats, *so.Minimums)
		} else {
			// Every group must reach the floors on its own: one busy
			// group cannot hide an idle one.
			for g, gs := range sr.GroupStats {
				for _, m := range belowMinimums(gs, *so.Minimums) {
					sr.MinimumsMissed = append(sr.MinimumsMissed, fmt.Sprintf("group %d: %s", g+1, m))
				}
			}
		}
	}
	fmt.Fprintf(so.Out, "exercised: %s\n", sr.Stats)
	if multi {
		for g, gs := range sr.GroupStats {
			fmt.Fprintf(so.Out, "exercised by group %d: %s\n", g+1, gs)
		}
	}
	if so.Minimums != nil {
		if len(sr.MinimumsMissed) == 0 {
			fmt.Fprintf(so.Out, "activity minimums met\n")
		} else {
			fmt.Fprintf(so.Out, "activity minimums MISSED: %s\n", strings.Join(sr.MinimumsMissed, "; "))
		}
	}
	fmt.Fprintf(so.Out, "%d passed, %d failed\n", sr.Passed, sr.Failed)
	return sr
}

// DefaultMinimums are the per-run floors a sweep of the correct engine must
// reach on average: every run elects, commits, reads, crashes, partitions,
// reconfigures, transfers leadership and ships snapshots. They sit well
// under what an average run does (see docs/simulator.md), so they catch a
// simulator that stopped exercising something, not noise.
var DefaultMinimums = Stats{
	Elections:   2,
	Commits:     50,
	Writes:      40,
	Reads:       40,
	Crashes:     2,
	Partitions:  2,
	ConfChanges: 1,
	Transfers:   1,
	Compactions: 2,
	Snapshots:   1,
}

func belowMinimums(s, min Stats) []string {
	var out []string
	check := func(name string, got int, per int) {
		if per > 0 && got < per*s.Runs {
			out = append(out, fmt.Sprintf("%s %d < %d (%d per run)", name, got, per*s.Runs, per))
		}
	}
	check("elections", s.Elections, min.Elections)
	check("commits", s.Commits, min.Commits)
	check("writes", s.Writes, min.Writes)
	check("reads", s.Reads, min.Reads)
	check("crashes", s.Crashes, min.Crashes)
	check("partitions", s.Partitions, min.Partitions)
	check("conf-changes", s.ConfChanges, min.ConfChanges)
	check("transfers", s.Transfers, min.Transfers)
	check("compactions", s.Compactions, min.Compactions)
	check("snapshots-installed", s.Snapshots, min.Snapshots)
	return out
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i] + " …"
	}
	return s
}

func writeTrace(dir string, o Options, r Result) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("sim: trace dir: %w", err)
	}
	name := fmt.Sprintf("%s-n%d-seed%d", o.Engine, o.Nodes, o.Seed)
	if o.Groups > 1 {
		name += fmt.Sprintf("-g%d", o.Groups)
	}
	if o.Variant != Correct {
		name += "-" + string(o.Variant)
	}
	path := filepath.Join(dir, name+".trace")
	var b strings.Builder
	fmt.Fprintf(&b, "# replay: %s\n", ReplayCommand(o))
	if r.Violation != nil {
		fmt.Fprintf(&b, "# violation: %s\n", r.Violation)
	}
	fmt.Fprintf(&b, "# the last %d events before it:\n", len(r.Trace))
	for _, l := range r.Trace {
		b.WriteString(l)
		b.WriteByte('\n')
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		return "", fmt.Errorf("sim: write trace: %w", err)
	}
	return path, nil
}
