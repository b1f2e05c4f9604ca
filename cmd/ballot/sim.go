package main

import (
	"errors"
	"fmt"
	"os"
	"slices"

	"github.com/spf13/cobra"

	"github.com/ballotdb/ballot/sim"
)

func simCommand() *cobra.Command {
	var (
		engine    string
		nodes     []int
		seeds     int
		start     uint64
		seed      uint64
		trace     bool
		broken    string
		ticks     int
		bound     int
		parallel  int
		traceDir  string
		noMinimum bool
		groups    int
		brokenGrp int
	)
	cmd := &cobra.Command{
		Use:   "sim",
		Short: "Run the deterministic simulator over many seeds, or replay one",
		Long: `sim drives several engine instances through a hostile virtual network,
crashes that lose unsynced writes, partitions, membership changes and
leadership transfers, checking every invariant after every step and the
client history for linearizability. One seed fixes a whole run.

A sweep ends with "N passed, M failed"; each failed seed is printed with the
command that replays it and the path of a trace of the events before the
violation. --seed S --trace replays one seed and prints every event.`,
		Example: `  ballot sim --engine raft --nodes 5 --seeds 1000
  ballot sim --engine raft --nodes 3,5 --seeds 500
  ballot sim --engine raft --nodes 5 --seed 42 --trace
  ballot sim --engine raft --nodes 3 --seeds 200 --broken forget-vote
  ballot sim --engine paxos --seeds 500
  ballot sim --groups 3 --seeds 200
  ballot sim --groups 3 --nodes 3 --seeds 50 --broken stale-commit --broken-group 2
  ballot sim --engine paxos --nodes 3 --seeds 300 --broken omit-decided-through`,
		RunE: func(cmd *cobra.Command, args []string) error {
			v, err := sim.ParseVariant(broken)
			if err != nil {
				return err
			}
			for _, n := range nodes {
				if n < 1 || n > 9 {
					return fmt.Errorf("--nodes: %d is not between 1 and 9", n)
				}
			}
			opts := sim.Options{Engine: engine, Nodes: nodes[0], SafetyTicks: ticks, LivenessBound: bound, Variant: v,
				Groups: groups, BrokenGroup: brokenGrp}
			if _, ok := sim.Engines[engine]; !ok {
				return fmt.Errorf("--engine: unknown engine %q (known: %v)", engine, sim.EngineNames())
			}
			if err := sim.CheckVariant(engine, v); err != nil {
				return fmt.Errorf("--broken: %w", err)
			}
			out := cmd.OutOrStdout()
			if cmd.Flags().Changed("seed") {
				if len(nodes) != 1 {
					return errors.New("--seed replays one run: give one --nodes value")
				}
				opts.Seed = seed
				if trace {
					opts.Trace = out
				}
				r := sim.Run(opts)
				fmt.Fprintf(out, "exercised: %s\n", r.Stats)
				if r.Violation != nil {
					fmt.Fprintf(out, "FAIL seed %d: %s\n", seed, r.Violation)
					fmt.Fprintf(out, "0 passed, 1 failed\n")
					return errors.New("invariant violated")
				}
				fmt.Fprintf(out, "1 passed, 0 failed\n")
				return nil
			}
			so := sim.SweepOptions{Run: opts, Start: start, Seeds: seeds, Parallel: parallel, TraceDir: traceDir, Out: out}
			if len(nodes) > 1 {
				so.NodeCounts = slices.Clone(nodes)
			}
			if !noMinimum && v == sim.Correct {
				m := sim.DefaultMinimums
				so.Minimums = &m
			}
			res := sim.Sweep(so)
			if !res.OK() {
				os.Exit(1)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&engine, "engine", "raft", fmt.Sprintf("engine to simulate (%v)", sim.EngineNames()))
	f.IntSliceVar(&nodes, "nodes", []int{5}, "cluster size; a list (3,5) cycles through the sizes over the seeds")
	f.IntVar(&seeds, "seeds", 100, "how many seeds to run")
	f.Uint64Var(&start, "start", 1, "first seed of the sweep")
	f.Uint64Var(&seed, "seed", 0, "replay this one seed")
	f.BoolVar(&trace, "trace", false, "with --seed: print every event")
	f.StringVar(&broken, "broken", "", fmt.Sprintf("switch on a deliberately broken variant (%v)", sim.Variants))
	f.IntVar(&ticks, "ticks", 0, "length of the faulty phase in ticks (default 500)")
	f.IntVar(&bound, "liveness-bound", 0, "ticks the healed cluster has to converge (default 250)")
	f.IntVar(&parallel, "parallel", 0, "seeds run at once (default GOMAXPROCS)")
	f.StringVar(&traceDir, "trace-dir", "", "where failed seeds' traces go (default $TMPDIR/ballot-sim)")
	f.BoolVar(&noMinimum, "no-minimums", false, "do not enforce the activity minimums of a sweep")
	f.IntVar(&groups, "groups", 1, "consensus groups sharing the virtual nodes, their links and each node's log")
	f.IntVar(&brokenGrp, "broken-group", 0, "with --broken: break only this group (from 1; default every group)")
	return cmd
}
