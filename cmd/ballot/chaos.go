package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/ballotdb/ballot/chaos"
)

func chaosCommand() *cobra.Command {
	var o chaos.Options
	var nemeses, unsafe, workloads string
	var verbose bool
	cmd := &cobra.Command{
		Use:   "chaos",
		Short: "Run ballot processes under a nemesis and check every history",
		Long: `Run a cluster of ballot processes on loopback under a seeded nemesis
(kill -9, SIGSTOP pauses, partitions through per-link proxies, a full disk on
a loop-mounted file system, a member's clock run fast or slow) while clients
read, write, compare-and-swap, watch and hold leases; then check the history
for linearizability (porcupine), lost acknowledged writes, watch gaps, leases
expiring early or not at all, and unexpected exits. Exits non-zero on any
violation, keeping the evidence.

The bank workload moves money between accounts with compare-and-swap Txns
(cross-shard transactions with --shards, the accounts spread over the
shards) while a reader sums every account in one read-only Txn: every read
and the final state must hold the opening total, and every transfer must be
applied to both accounts or neither — all acknowledged ones, no refused one.

The disk nemesis needs root and mkfs.ext4/mount/losetup; the clock nemesis a
binary built with -tags chaosclock (built from the source tree when this one
is not). A nemesis that cannot run is skipped with a loud message.

With --shards N every member runs 'serve --shards N' (processes only) and
the split and move nemeses change the shard map under the clients; the
nemeses sharded mode does not support yet (disk, clock, member, transfer)
are skipped loudly.`,
		Example: "  ballot chaos --nodes 3 --time 60s --nemesis partition,kill,pause,disk,clock\n" +
			"  ballot chaos --nodes 5 --shards 4 --time 60s --nemesis partition,kill,pause,split,move",
		RunE: func(cmd *cobra.Command, _ []string) error {
			if nemeses != "" && nemeses != "none" {
				o.Nemeses = strings.Split(nemeses, ",")
			}
			if unsafe != "" {
				o.Unsafe = strings.Split(unsafe, ",")
			}
			if workloads != "" {
				o.Workloads = strings.Split(workloads, ",")
			}
			if verbose {
				o.Logf = func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) }
			}
			self, err := os.Executable()
			if err != nil {
				return err
			}
			o.Binary = self
			if o.Dir != "" {
				if o.Dir, err = filepath.Abs(o.Dir); err != nil {
					return err
				}
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			where := "processes"
			if o.Containers {
				where = "containers"
			}
			if o.Shards > 0 {
				where += fmt.Sprintf(", %d shards", o.Shards)
			}
			fmt.Printf("ballot chaos: %d members (%s, %s), %v, nemesis %s, seed %d\n", o.Nodes, where, o.Engine, o.Duration, nemeses, o.Seed)
			rep, err := chaos.Run(ctx, o)
			if err != nil {
				return err
			}
			fmt.Print(rep.Summary())
			if verbose || rep.HasViolations() {
				for _, l := range rep.Schedule {
					fmt.Println("  " + l)
				}
			}
			if rep.HasViolations() {
				return chaos.ErrViolation
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.IntVar(&o.Nodes, "nodes", 3, "members")
	fl.DurationVar(&o.Duration, "time", 30*time.Second, "how long to run clients and the nemesis")
	fl.StringVar(&nemeses, "nemesis", "partition,kill,pause", "faults to inject: "+strings.Join(chaos.AllNemeses, ",")+" (or none)")
	fl.Uint64Var(&o.Seed, "seed", 0, "seed of the nemesis schedule and the clients (0: from the clock)")
	fl.IntVar(&o.Clients, "clients", 0, "register clients (default 2 per member)")
	fl.StringVar(&o.Dir, "dir", "", "keep data, logs and evidence here (default: a temporary directory, kept only on failure)")
	fl.StringVar(&workloads, "workload", strings.Join(chaos.AllWorkloads, ","), "workloads to run: "+strings.Join(chaos.AllWorkloads, ","))
	fl.StringVar(&unsafe, "unsafe", "", "BROKEN ON PURPOSE: stale-reads,early-ack,lease-early-expiry,corrupt-puts (to see the checkers bite)")
	fl.BoolVarP(&verbose, "verbose", "v", false, "print the nemesis schedule as it happens")
	fl.DurationVar(&o.CheckTimeout, "check-timeout", 2*time.Minute, "bound on the linearizability check (a check that runs out of time is a failure)")
	fl.StringVar(&o.Engine, "engine", "raft", "the members' consensus engine: raft or paxos")
	fl.IntVar(&o.Shards, "shards", 0, "run a sharded cluster: every member starts with 'serve --shards N' (processes only; enables the split and move nemeses)")
	fl.BoolVar(&o.Containers, "containers", false, "run each member in its own container on a private Docker network (needs a static binary: CGO_ENABLED=0)")
	return cmd
}
