package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ballotdb/ballot/recipes/election"
	"github.com/ballotdb/ballot/recipes/lock"
	"github.com/ballotdb/ballot/recipes/poll"
)

// recipeCommands returns elect, lock and poll: the coordination recipes of
// recipes/ from the command line.
func recipeCommands() []*cobra.Command {
	var f clientFlags
	withClient := func(run func(ctx context.Context, c *clientv3.Client, args []string) error) func(*cobra.Command, []string) error {
		return func(_ *cobra.Command, args []string) error {
			if f.output != "table" && f.output != "json" {
				return fmt.Errorf("-o %q: want table or json", f.output)
			}
			c, err := f.client()
			if err != nil {
				return err
			}
			defer c.Close()
			// Ctrl-C ends what blocks (a campaign, a wait for a lock, a
			// watch); each command cleans up after it.
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return run(ctx, c, args)
		}
	}
	cmds := []*cobra.Command{electCommand(&f, withClient), lockCommand(&f, withClient), pollCommand(&f, withClient)}
	for _, c := range cmds {
		addClientFlags(c, &f)
	}
	return cmds
}

type clientRun = func(run func(ctx context.Context, c *clientv3.Client, args []string) error) func(*cobra.Command, []string) error

func electCommand(f *clientFlags, withClient clientRun) *cobra.Command {
	var observe bool
	var ttlSeconds int
	cmd := &cobra.Command{
		Use:   "elect NAME VALUE | elect --observe NAME",
		Short: "Campaign in an election and lead until Ctrl-C, or observe its leaders",
		Long: `elect NAME VALUE campaigns in the election NAME, announcing VALUE; it prints
when it is elected, with the term's fencing token, and leads until Ctrl-C
(then it resigns) or until its lease is lost (then it exits with an error).

elect --observe NAME prints the leader of NAME and every change of leader.`,
		Args: func(_ *cobra.Command, args []string) error {
			if observe && len(args) != 1 {
				return errors.New("elect --observe takes NAME")
			}
			if !observe && len(args) != 2 {
				return errors.New("elect takes NAME VALUE")
			}
			return nil
		},
		RunE: withClient(func(ctx context.Context, c *clientv3.Client, args []string) error {
			el := election.New(c, election.WithTTL(ttlSeconds))
			if observe {
				for l := range el.Observe(ctx, args[0]) {
					if f.output == "json" {
						if err := printJSON(map[string]any{"election": l.Name, "leader": l.Key != "", "value": l.Value,
							"token": l.Token, "revision": l.Revision}); err != nil {
							return err
						}
						continue
					}
					if l.Key == "" {
						fmt.Printf("no leader of %s\n", l.Name)
					} else {
						fmt.Printf("leader of %s: %s (token %d)\n", l.Name, l.Value, l.Token)
					}
				}
				return nil
			}
			if f.output == "table" {
				fmt.Printf("campaigning in %s as %s...\n", args[0], args[1])
			}
			term, err := el.Campaign(ctx, args[0], args[1])
			if err != nil {
				if ctx.Err() != nil {
					return nil // Ctrl-C before being elected
				}
				return err
			}
			if f.output == "json" {
				_ = printJSON(map[string]any{"event": "elected", "election": term.Name, "value": term.Value, "token": term.Token})
			} else {
				fmt.Printf("elected: %s leads %s (token %d); Ctrl-C resigns\n", term.Value, term.Name, term.Token)
			}
			select {
			case <-ctx.Done():
			case <-term.Done():
				return fmt.Errorf("lost leadership of %s (token %d): the lease was not renewed in time", term.Name, term.Token)
			}
			rctx, cancel := f.ctx()
			defer cancel()
			if err := term.Resign(rctx); err != nil {
				return err
			}
			if f.output == "json" {
				return printJSON(map[string]any{"event": "resigned", "election": term.Name, "token": term.Token})
			}
			fmt.Printf("resigned from %s\n", term.Name)
			return nil
		}),
	}
	cmd.Flags().BoolVar(&observe, "observe", false, "print the leader and every change of leader instead of campaigning")
	cmd.Flags().IntVar(&ttlSeconds, "ttl", election.DefaultTTLSeconds, "lease TTL in seconds: how long a crashed leader keeps leadership")
	return cmd
}

func lockCommand(f *clientFlags, withClient clientRun) *cobra.Command {
	var ttlSeconds int
	var wait time.Duration
	cmd := &cobra.Command{
		Use:   "lock NAME -- COMMAND [ARGS...]",
		Short: "Run a command while holding a lock",
		Long: `lock NAME -- COMMAND runs COMMAND while holding the lock NAME, then releases
it. The command finds the lock's fencing token in BALLOT_LOCK_TOKEN (and the
lock key in BALLOT_LOCK_KEY): pass it with every write to a resource that
checks tokens, so a holder that was paused past its lease is refused. If the
lock is lost while the command runs, the command is sent SIGTERM. ballot
exits with the command's exit code.`,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if cmd.ArgsLenAtDash() != 1 {
				return errors.New("usage: ballot lock NAME -- COMMAND [ARGS...]")
			}
			code := 0
			err := withClient(func(ctx context.Context, c *clientv3.Client, args []string) error {
				l := lock.New(c, lock.WithTTL(ttlSeconds))
				var h *lock.Held
				var err error
				if wait > 0 {
					h, err = l.TryLock(ctx, args[0], wait)
				} else {
					h, err = l.Lock(ctx, args[0])
				}
				if err != nil {
					return err
				}
				defer func() {
					uctx, cancel := f.ctx()
					defer cancel()
					if err := h.Unlock(uctx); err != nil {
						fmt.Fprintln(os.Stderr, "ballot lock:", err)
					}
				}()
				fmt.Fprintf(os.Stderr, "ballot lock: holding %s (token %d)\n", h.Name, h.Token)
				code, err = runLocked(h, args[1], args[2:])
				return err
			})(cmd, args)
			if err != nil {
				return err
			}
			if code != 0 {
				os.Exit(code)
			}
			return nil
		},
	}
	cmd.Flags().IntVar(&ttlSeconds, "ttl", lock.DefaultTTLSeconds, "lease TTL in seconds: how long a crashed holder keeps the lock")
	cmd.Flags().DurationVar(&wait, "wait", 0, "give up if the lock is not free within this long (0: wait as long as it takes)")
	return cmd
}

// runLocked runs name with args while h is held and returns its exit code.
// Ctrl-C reaches the command through the terminal's process group; ballot
// itself waits for the command to exit, then releases the lock.
func runLocked(h *lock.Held, name string, args []string) (int, error) {
	c := exec.Command(name, args...)
	c.Stdin, c.Stdout, c.Stderr = os.Stdin, os.Stdout, os.Stderr
	c.Env = append(os.Environ(), fmt.Sprintf("BALLOT_LOCK_TOKEN=%d", h.Token), "BALLOT_LOCK_KEY="+h.Key)
	if err := c.Start(); err != nil {
		return 0, fmt.Errorf("lock %s: start %s: %w", h.Name, name, err)
	}
	done := make(chan struct{})
	go func() {
		select {
		case <-h.Done():
			fmt.Fprintf(os.Stderr, "ballot lock: lost %s (token %d); stopping %s\n", h.Name, h.Token, name)
			_ = c.Process.Signal(syscall.SIGTERM)
		case <-done:
		}
	}()
	err := c.Wait()
	close(done)
	if err == nil {
		return 0, nil
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return 0, fmt.Errorf("lock %s: %s: %w", h.Name, name, err)
	}
	if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal()), nil
	}
	return ee.ExitCode(), nil
}

func pollCommand(f *clientFlags, withClient clientRun) *cobra.Command {
	cmd := &cobra.Command{Use: "poll", Short: "Majority polls: create, vote, watch, result"}
	var voters, options []string
	var deadline string
	create := &cobra.Command{
		Use: "create NAME --voters A,B,C --options X,Y [--deadline 30s]", Short: "Create a poll", Args: cobra.ExactArgs(1),
		RunE: withClient(func(ctx context.Context, c *clientv3.Client, a []string) error {
			spec := poll.Spec{Voters: voters, Options: options}
			if deadline != "" {
				if d, err := time.ParseDuration(deadline); err == nil {
					spec.Deadline = time.Now().Add(d).UTC()
				} else if t, err := time.Parse(time.RFC3339, deadline); err == nil {
					spec.Deadline = t
				} else {
					return fmt.Errorf("--deadline %q: want a duration (30s) or an RFC 3339 time", deadline)
				}
			}
			rctx, cancel := f.ctx()
			defer cancel()
			if err := poll.New(c).Create(rctx, a[0], spec); err != nil {
				return err
			}
			if f.output == "json" {
				return printJSON(map[string]any{"poll": a[0], "voters": spec.Voters, "options": spec.Options,
					"majority": spec.Majority(), "deadline": spec.Deadline})
			}
			fmt.Printf("created poll %s: %d voters, options %s; %d votes win\n", a[0], len(spec.Voters),
				strings.Join(spec.Options, ", "), spec.Majority())
			if !spec.Deadline.IsZero() {
				fmt.Printf("closes by plurality at %s\n", spec.Deadline.Format(time.RFC3339))
			}
			return nil
		}),
	}
	create.Flags().StringSliceVar(&voters, "voters", nil, "the voters, comma-separated")
	create.Flags().StringSliceVar(&options, "options", nil, "the options, comma-separated, in order of precedence for ties")
	create.Flags().StringVar(&deadline, "deadline", "", "close by plurality after this long (30s) or at this time (RFC 3339)")

	vote := &cobra.Command{
		Use: "vote NAME VOTER OPTION", Short: "Cast a vote (once per voter)", Args: cobra.ExactArgs(3),
		RunE: withClient(func(ctx context.Context, c *clientv3.Client, a []string) error {
			rctx, cancel := f.ctx()
			defer cancel()
			b := poll.New(c)
			rec, err := b.Vote(rctx, a[0], a[1], a[2])
			if errors.Is(err, poll.ErrAlreadyVoted) {
				return fmt.Errorf("%s already voted for %s; the first vote stands", rec.Voter, rec.Option)
			}
			if err != nil {
				return err
			}
			out, oerr := b.Result(rctx, a[0])
			if f.output == "json" {
				m := map[string]any{"poll": a[0], "voter": rec.Voter, "option": rec.Option, "revision": rec.Revision}
				if oerr == nil {
					m["outcome"] = out
				}
				return printJSON(m)
			}
			fmt.Printf("counted: %s votes %s (revision %d)\n", rec.Voter, rec.Option, rec.Revision)
			if oerr == nil {
				fmt.Println(describeOutcome(out))
			}
			return nil
		}),
	}
	watch := &cobra.Command{
		Use: "watch NAME", Short: "Print the votes and then the outcome of a poll", Args: cobra.ExactArgs(1),
		RunE: withClient(func(ctx context.Context, c *clientv3.Client, a []string) error {
			for ev := range poll.New(c).Watch(ctx, a[0]) {
				switch {
				case ev.Err != nil:
					return ev.Err
				case f.output == "json" && ev.Vote != nil:
					_ = printJSON(map[string]any{"event": "vote", "voter": ev.Vote.Voter, "option": ev.Vote.Option, "revision": ev.Vote.Revision})
				case f.output == "json":
					_ = printJSON(map[string]any{"event": "outcome", "outcome": ev.Outcome})
				case ev.Vote != nil:
					fmt.Printf("vote: %s → %s (revision %d)\n", ev.Vote.Voter, ev.Vote.Option, ev.Vote.Revision)
				default:
					fmt.Println(describeOutcome(*ev.Outcome))
				}
			}
			return nil
		}),
	}
	result := &cobra.Command{
		Use: "result NAME", Short: "Print a poll's outcome (deciding it if its rules allow now)", Args: cobra.ExactArgs(1),
		RunE: withClient(func(ctx context.Context, c *clientv3.Client, a []string) error {
			rctx, cancel := f.ctx()
			defer cancel()
			b := poll.New(c)
			out, err := b.Decide(rctx, a[0])
			if errors.Is(err, poll.ErrUndecided) {
				recs, verr := b.Votes(rctx, a[0])
				if verr != nil {
					return verr
				}
				if f.output == "json" {
					return printJSON(map[string]any{"poll": a[0], "decided": false, "votes": recs})
				}
				fmt.Printf("undecided: %d votes so far\n", len(recs))
				for _, r := range recs {
					fmt.Printf("  %s → %s\n", r.Voter, r.Option)
				}
				return nil
			}
			if err != nil {
				return err
			}
			if f.output == "json" {
				return printJSON(map[string]any{"poll": a[0], "decided": true, "outcome": out, "revision": out.Revision})
			}
			fmt.Println(describeOutcome(out))
			return nil
		}),
	}
	cmd.AddCommand(create, vote, watch, result)
	return cmd
}

func describeOutcome(o poll.Outcome) string {
	var counts []string
	for opt, n := range o.Counts {
		counts = append(counts, fmt.Sprintf("%s %d", opt, n))
	}
	sort.Strings(counts)
	winner := o.Winner
	if winner == "" {
		winner = "no winner"
	}
	return fmt.Sprintf("outcome: %s by %s (%s; %d of %d voted)", winner, o.Reason, strings.Join(counts, ", "), o.Voted, o.Voters)
}
