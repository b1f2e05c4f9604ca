package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// operatorCommands returns the operator's commands: member, leader, status
// and check. Each prints a table, or JSON with -o json.
func operatorCommands() []*cobra.Command {
	var f clientFlags
	run := func(fn func(ctx context.Context, c *clientv3.Client, args []string) error) func(*cobra.Command, []string) error {
		return func(_ *cobra.Command, args []string) error {
			if f.output != "table" && f.output != "json" {
				return fmt.Errorf("-o %q: want table or json", f.output)
			}
			c, err := f.client()
			if err != nil {
				return err
			}
			defer c.Close()
			ctx, cancel := f.ctx()
			defer cancel()
			return fn(ctx, c, args)
		}
	}
	out := func(v any, table func(w io.Writer)) {
		if f.output == "json" {
			enc := json.NewEncoder(os.Stdout)
			enc.SetIndent("", "  ")
			enc.Encode(v)
			return
		}
		tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		table(tw)
		tw.Flush()
	}
	members := func(ms []*pb.Member) {
		type row struct {
			ID         string   `json:"id"`
			Name       string   `json:"name"`
			Learner    bool     `json:"learner"`
			PeerURLs   []string `json:"peer_urls"`
			ClientURLs []string `json:"client_urls"`
		}
		rows := make([]row, len(ms))
		for i, m := range ms {
			rows[i] = row{fmt.Sprintf("%x", m.ID), m.Name, m.IsLearner, m.PeerURLs, m.ClientURLs}
		}
		out(rows, func(w io.Writer) {
			fmt.Fprintln(w, "ID\tNAME\tROLE\tPEER URLS\tCLIENT URLS")
			for _, r := range rows {
				role := "voter"
				if r.Learner {
					role = "learner"
				}
				name := r.Name
				if name == "" {
					name = "(not started)"
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", r.ID, name, role, strings.Join(r.PeerURLs, ","), strings.Join(r.ClientURLs, ","))
			}
		})
	}
	parseID := func(s string) (uint64, error) {
		id, err := strconv.ParseUint(s, 16, 64)
		if err != nil || id == 0 {
			return 0, fmt.Errorf("member ID %q: want the hexadecimal ID that `ballot member list` shows", s)
		}
		return id, nil
	}

	member := &cobra.Command{Use: "member", Short: "list and change the cluster's members"}
	member.AddCommand(&cobra.Command{
		Use: "list", Short: "list the members", Args: cobra.NoArgs,
		RunE: run(func(ctx context.Context, c *clientv3.Client, _ []string) error {
			resp, err := c.MemberList(ctx)
			if err != nil {
				return err
			}
			members(resp.Members)
			return nil
		}),
	})
	var learner bool
	add := &cobra.Command{
		Use:   "add NAME --peer-urls URL",
		Short: "add a member (then start it with --initial-cluster-state existing)",
		Args:  cobra.ExactArgs(1),
	}
	var peerURL string
	add.Flags().StringVar(&peerURL, "peer-urls", "", "the new member's peer URL (http://host:port)")
	add.Flags().BoolVar(&learner, "learner", false, "add as a learner (non-voting until promoted); recommended")
	add.RunE = run(func(ctx context.Context, c *clientv3.Client, args []string) error {
		if peerURL == "" {
			return errors.New("member add: --peer-urls is required")
		}
		urls := []string{peerURL}
		var resp *clientv3.MemberAddResponse
		var err error
		if learner {
			resp, err = c.MemberAddAsLearner(ctx, urls)
		} else {
			resp, err = c.MemberAdd(ctx, urls)
		}
		if err != nil {
			return err
		}
		var initial []string
		for _, m := range resp.Members {
			name := m.Name
			if m.ID == resp.Member.ID {
				name = args[0]
			}
			for _, u := range m.PeerURLs {
				if name != "" {
					initial = append(initial, name+"="+stripScheme(u))
				}
			}
		}
		if f.output == "json" {
			out(map[string]any{"id": fmt.Sprintf("%x", resp.Member.ID), "name": args[0], "initial_cluster": strings.Join(initial, ","),
				"initial_cluster_state": "existing"}, nil)
			return nil
		}
		fmt.Printf("Member %x added to the cluster.\n\nStart it with:\n", resp.Member.ID)
		fmt.Printf("  ballot serve --name %s --listen-peer %s --initial-cluster %s --initial-cluster-state existing --initial-cluster-token <the cluster's token> --data-dir <an empty directory>\n",
			args[0], stripScheme(peerURL), strings.Join(initial, ","))
		return nil
	})
	member.AddCommand(add)
	// byID is a member command whose one argument is a member ID.
	byID := func(use, short string, do func(ctx context.Context, c *clientv3.Client, id uint64) error, done string) *cobra.Command {
		return &cobra.Command{
			Use: use, Short: short, Args: cobra.ExactArgs(1),
			RunE: run(func(ctx context.Context, c *clientv3.Client, args []string) error {
				id, err := parseID(args[0])
				if err != nil {
					return err
				}
				if err := do(ctx, c, id); err != nil {
					return err
				}
				fmt.Printf("Member %x %s.\n", id, done)
				return nil
			}),
		}
	}
	member.AddCommand(byID("remove ID", "remove a member for good (the leader hands leadership away first)",
		func(ctx context.Context, c *clientv3.Client, id uint64) error {
			_, err := c.MemberRemove(ctx, id)
			return err
		},
		"removed from the cluster"))
	member.AddCommand(byID("promote ID", "make a caught-up learner a voter",
		func(ctx context.Context, c *clientv3.Client, id uint64) error {
			_, err := c.MemberPromote(ctx, id)
			return err
		},
		"promoted to voter"))
	update := &cobra.Command{Use: "update ID --peer-urls URL", Short: "change where a member listens for peers", Args: cobra.ExactArgs(1)}
	var newPeer string
	update.Flags().StringVar(&newPeer, "peer-urls", "", "the member's new peer URL")
	update.RunE = run(func(ctx context.Context, c *clientv3.Client, args []string) error {
		id, err := parseID(args[0])
		if err != nil {
			return err
		}
		if newPeer == "" {
			return errors.New("member update: --peer-urls is required")
		}
		if _, err := c.MemberUpdate(ctx, id, []string{newPeer}); err != nil {
			return err
		}
		fmt.Printf("Member %x now listens for peers at %s.\n", id, newPeer)
		return nil
	})
	member.AddCommand(update)

	// statuses asks every endpoint for its status.
	type memberStatus struct {
		Endpoint  string   `json:"endpoint"`
		ID        string   `json:"id,omitempty"`
		Version   string   `json:"version,omitempty"`
		DBSize    int64    `json:"db_size,omitempty"`
		Leader    string   `json:"leader,omitempty"`
		IsLeader  bool     `json:"is_leader"`
		IsLearner bool     `json:"is_learner"`
		Term      uint64   `json:"term,omitempty"`
		Commit    uint64   `json:"raft_index,omitempty"`
		Applied   uint64   `json:"applied_index,omitempty"`
		Errors    []string `json:"errors,omitempty"`
		Err       string   `json:"error,omitempty"`
	}
	statuses := func(ctx context.Context, c *clientv3.Client) []memberStatus {
		var rows []memberStatus
		for _, ep := range c.Endpoints() {
			r := memberStatus{Endpoint: ep}
			st, err := c.Status(ctx, ep)
			if err != nil {
				r.Err = err.Error()
			} else {
				r.ID, r.Version, r.DBSize = fmt.Sprintf("%x", st.Header.MemberId), st.Version, st.DbSize
				r.Leader, r.IsLeader, r.IsLearner = fmt.Sprintf("%x", st.Leader), st.Leader == st.Header.MemberId, st.IsLearner
				r.Term, r.Commit, r.Applied, r.Errors = st.RaftTerm, st.RaftIndex, st.RaftAppliedIndex, st.Errors
			}
			rows = append(rows, r)
		}
		return rows
	}
	var watch bool
	var every time.Duration
	status := &cobra.Command{
		Use:   "status",
		Short: "a table of every member: leader, term, indexes, size, errors (--watch refreshes it)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if f.output != "table" && f.output != "json" {
				return fmt.Errorf("-o %q: want table or json", f.output)
			}
			c, err := f.client()
			if err != nil {
				return err
			}
			defer c.Close()
			render := func() error {
				ctx, cancel := f.ctx()
				defer cancel()
				rows := statuses(ctx, c)
				out(rows, func(w io.Writer) {
					fmt.Fprintln(w, "ENDPOINT\tID\tVERSION\tDB SIZE\tLEADER\tLEARNER\tTERM\tRAFT INDEX\tAPPLIED\tERRORS")
					for _, r := range rows {
						if r.Err != "" {
							fmt.Fprintf(w, "%s\t-\t-\t-\t-\t-\t-\t-\t-\t%s\n", r.Endpoint, r.Err)
							continue
						}
						fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%v\t%v\t%d\t%d\t%d\t%s\n", r.Endpoint, r.ID, r.Version, humanBytes(r.DBSize),
							r.IsLeader, r.IsLearner, r.Term, r.Commit, r.Applied, strings.Join(r.Errors, "; "))
					}
				})
				if n := countErrs(rows, func(r memberStatus) bool { return r.Err != "" }); n > 0 {
					return fmt.Errorf("status: %d of %d endpoints did not answer", n, len(rows))
				}
				return nil
			}
			if !watch {
				return render()
			}
			if every <= 0 {
				return fmt.Errorf("--interval %v: want a positive duration", every)
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			tick := time.NewTicker(every)
			defer tick.Stop()
			for {
				if f.output == "table" {
					fmt.Print("\033[H\033[2J") // clear the terminal
					fmt.Printf("ballot status, every %v (Ctrl-C stops), %s\n\n", every, time.Now().Format(time.TimeOnly))
				}
				if err := render(); err != nil {
					fmt.Println(err)
				}
				select {
				case <-ctx.Done():
					return nil
				case <-tick.C:
				}
			}
		},
	}
	status.Flags().BoolVarP(&watch, "watch", "w", false, "refresh the table until Ctrl-C")
	status.Flags().DurationVar(&every, "interval", time.Second, "refresh interval with --watch")

	leader := &cobra.Command{
		Use: "leader", Short: "who leads, and in which term", Args: cobra.NoArgs,
		RunE: run(func(ctx context.Context, c *clientv3.Client, _ []string) error {
			for _, r := range statuses(ctx, c) {
				if r.Err == "" && r.Leader != "0" {
					out(map[string]any{"leader": r.Leader, "term": r.Term}, func(w io.Writer) {
						fmt.Fprintf(w, "LEADER\tTERM\n%s\t%d\n", r.Leader, r.Term)
					})
					return nil
				}
			}
			return errors.New("leader: no endpoint knows a leader")
		}),
	}
	leader.AddCommand(&cobra.Command{
		Use: "move ID", Short: "hand leadership to another voter", Args: cobra.ExactArgs(1),
		RunE: run(func(ctx context.Context, c *clientv3.Client, args []string) error {
			id, err := parseID(args[0])
			if err != nil {
				return err
			}
			// MoveLeader must reach the leader itself.
			for _, r := range statuses(ctx, c) {
				if !r.IsLeader {
					continue
				}
				lc, err := f.clientFor(r.Endpoint)
				if err != nil {
					return err
				}
				defer lc.Close()
				if _, err := lc.MoveLeader(ctx, id); err != nil {
					return err
				}
				fmt.Printf("Leadership moved from %s to %x.\n", r.ID, id)
				return nil
			}
			return errors.New("leader move: none of the endpoints is the leader; list them all with --endpoints")
		}),
	})

	check := &cobra.Command{Use: "check", Short: "check the cluster"}
	check.AddCommand(&cobra.Command{
		Use: "hash", Short: "compare every member's HashKV at one revision", Args: cobra.NoArgs,
		RunE: run(func(ctx context.Context, c *clientv3.Client, _ []string) error {
			ml, err := c.MemberList(ctx)
			if err != nil {
				return err
			}
			// One revision for all: the first endpoint's current one.
			first, err := c.HashKV(ctx, c.Endpoints()[0], 0)
			if err != nil {
				return err
			}
			rev := first.Header.Revision
			type row struct {
				Member   string `json:"member"`
				Endpoint string `json:"endpoint"`
				Hash     uint32 `json:"hash"`
				Compact  int64  `json:"compact_revision"`
				Err      string `json:"error,omitempty"`
			}
			var rows []row
			hashes := map[uint32]int{}
			for _, m := range ml.Members {
				if len(m.ClientURLs) == 0 {
					rows = append(rows, row{Member: fmt.Sprintf("%x", m.ID), Err: "no client URL published"})
					continue
				}
				ep := stripScheme(m.ClientURLs[0])
				r := row{Member: fmt.Sprintf("%x", m.ID), Endpoint: ep}
				mc, err := f.clientFor(ep)
				if err == nil {
					var h *clientv3.HashKVResponse
					h, err = mc.HashKV(ctx, ep, rev)
					mc.Close()
					if err == nil {
						r.Hash, r.Compact = h.Hash, h.CompactRevision
						hashes[h.Hash]++
					}
				}
				if err != nil {
					r.Err = err.Error()
				}
				rows = append(rows, r)
			}
			out(map[string]any{"revision": rev, "members": rows}, func(w io.Writer) {
				fmt.Fprintf(w, "REVISION %d\nMEMBER\tENDPOINT\tHASH\tCOMPACT REV\tERROR\n", rev)
				for _, r := range rows {
					fmt.Fprintf(w, "%s\t%s\t%08x\t%d\t%s\n", r.Member, r.Endpoint, r.Hash, r.Compact, r.Err)
				}
			})
			if len(hashes) > 1 {
				return fmt.Errorf("check hash: members disagree at revision %d", rev)
			}
			if n := countErrs(rows, func(r row) bool { return r.Err != "" }); n > 0 {
				return fmt.Errorf("check hash: %d members did not answer", n)
			}
			return nil
		}),
	})

	cmds := []*cobra.Command{member, status, leader, check}
	for _, c := range cmds {
		addClientFlags(c, &f)
	}
	return cmds
}

// clientFor is a client for one endpoint, with the same TLS and timeouts.
func (f *clientFlags) clientFor(ep string) (*clientv3.Client, error) {
	g := *f
	g.endpoints = []string{ep}
	return g.client()
}

func countErrs[T any](rows []T, failed func(T) bool) int {
	n := 0
	for _, r := range rows {
		if failed(r) {
			n++
		}
	}
	return n
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
