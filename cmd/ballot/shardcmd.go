package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ballotdb/ballot/shard"
)

// shardCommand is `ballot shard`: the operator's view of a sharded
// cluster (docs/sharding.md).
func shardCommand() *cobra.Command {
	var f clientFlags
	cmd := &cobra.Command{Use: "shard", Short: "Inspect, split and move the shards of a sharded cluster"}
	addClientFlags(cmd, &f)
	run := func(call func(ctx context.Context, conn *grpc.ClientConn, args []string) (*shard.ListResponse, error)) func(*cobra.Command, []string) error {
		return func(_ *cobra.Command, args []string) error {
			c, err := f.client()
			if err != nil {
				return err
			}
			defer c.Close()
			ctx, cancel := f.ctx()
			defer cancel()
			l, err := call(ctx, c.ActiveConnection(), args)
			if status.Code(err) == codes.Unimplemented {
				return fmt.Errorf("%w (is this a sharded cluster? start it with --shards)", err)
			}
			if err != nil {
				return err
			}
			return printShards(f.output, l)
		}
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "list",
		Short: "List the shards: range, members, leader, term, revision and size",
		Args:  cobra.NoArgs,
		RunE: run(func(ctx context.Context, conn *grpc.ClientConn, _ []string) (*shard.ListResponse, error) {
			return shard.List(ctx, conn)
		}),
	}, &cobra.Command{
		Use:   "split SHARD KEY",
		Short: "Split a shard at a key, online (the key moves back to the start of its last /-delimited prefix)",
		Args:  cobra.ExactArgs(2),
		RunE: run(func(ctx context.Context, conn *grpc.ClientConn, args []string) (*shard.ListResponse, error) {
			id, err := strconv.ParseUint(args[0], 10, 64)
			if err != nil {
				return nil, fmt.Errorf("shard split: %q is not a shard number", args[0])
			}
			return shard.SplitShard(ctx, conn, id, []byte(args[1]))
		}),
	}, &cobra.Command{
		Use:   "move SHARD FROM-HOST TO-HOST",
		Short: "Move a shard's member from one host to another, online (learner, catch up, promote, remove)",
		Args:  cobra.ExactArgs(3),
		RunE: run(func(ctx context.Context, conn *grpc.ClientConn, args []string) (*shard.ListResponse, error) {
			id, err := strconv.ParseUint(args[0], 10, 64)
			if err != nil {
				return nil, fmt.Errorf("shard move: %q is not a shard number", args[0])
			}
			return shard.MoveShard(ctx, conn, id, args[1], args[2])
		}),
	})
	return cmd
}

// printShards prints a shard list as a table or JSON.
func printShards(output string, l *shard.ListResponse) error {
	if output == "json" {
		return json.NewEncoder(os.Stdout).Encode(l)
	}
	fmt.Printf("shard map version %d, as host %s sees it\n", l.Version, l.Host)
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SHARD\tSTART\tEND\tMEMBERS\tLEADER\tTERM\tREVISION\tSIZE")
	for _, s := range l.Shards {
		end := fmt.Sprintf("%q", s.End)
		if len(s.End) == 0 {
			end = "(end)"
		}
		lead := s.Leader
		if s.Err != "" {
			lead = "? " + s.Err
		}
		fmt.Fprintf(tw, "%d\t%q\t%s\t%s\t%s\t%d\t%d\t%s\n", s.ID, s.Start, end, strings.Join(s.Members, ","),
			lead, s.Term, s.Revision, humanBytes(s.DBSize))
	}
	return tw.Flush()
}
