package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ballotdb/ballot/shard"
)

// shardCommand is `ballot shard`: the operator's view of a sharded
// cluster (docs/sharding.md).
func shardCommand() *cobra.Command {
	var f clientFlags
	cmd := &cobra.Command{Use: "shard", Short: "Inspect the shards of a sharded cluster"}
	addClientFlags(cmd, &f)
	cmd.AddCommand(&cobra.Command{
		Use:   "list",
		Short: "List the shards: range, members, leader, term, revision and size",
		Args:  cobra.NoArgs,
		RunE: func(_ *cobra.Command, _ []string) error {
			c, err := f.client()
			if err != nil {
				return err
			}
			defer c.Close()
			ctx, cancel := f.ctx()
			defer cancel()
			l, err := shard.List(ctx, c.ActiveConnection())
			if status.Code(err) == codes.Unimplemented {
				return fmt.Errorf("%w (is this a sharded cluster? start it with --shards)", err)
			}
			if err != nil {
				return err
			}
			if f.output == "json" {
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
		},
	})
	return cmd
}
