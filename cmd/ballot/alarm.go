package main

import (
	"fmt"
	"os"
	"text/tabwriter"

	"github.com/spf13/cobra"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// alarmCommand is ballot alarm list and disarm, as etcdctl's.
func alarmCommand() *cobra.Command {
	var f clientFlags
	withClient := func(run func(c *clientv3.Client) error) func(*cobra.Command, []string) error {
		return func(*cobra.Command, []string) error {
			if f.output != "table" && f.output != "json" {
				return fmt.Errorf("-o %q: want table or json", f.output)
			}
			c, err := f.client()
			if err != nil {
				return err
			}
			defer c.Close()
			return run(c)
		}
	}
	cmd := &cobra.Command{
		Use:   "alarm",
		Short: "List and disarm the cluster's alarms (NOSPACE, CORRUPT)",
		Long: `List and disarm the cluster's alarms. NOSPACE: a member's data passed
--quota-backend-bytes; free space (compact, defragment) before disarming.
CORRUPT: the consistency check found a member whose data differs; replace
that member's data before disarming. While an alarm is active, writes are
refused.`,
	}
	cmd.AddCommand(
		&cobra.Command{Use: "list", Short: "List the active alarms", Args: cobra.NoArgs,
			RunE: withClient(func(c *clientv3.Client) error {
				ctx, cancel := f.ctx()
				defer cancel()
				resp, err := c.AlarmList(ctx)
				if err != nil {
					return err
				}
				return printAlarms(f.output, resp.Alarms)
			})},
		&cobra.Command{Use: "disarm", Short: "Disarm every active alarm", Args: cobra.NoArgs,
			RunE: withClient(func(c *clientv3.Client) error {
				ctx, cancel := f.ctx()
				defer cancel()
				resp, err := c.AlarmDisarm(ctx, &clientv3.AlarmMember{})
				if err != nil {
					return err
				}
				return printAlarms(f.output, resp.Alarms)
			})},
	)
	addClientFlags(cmd, &f)
	return cmd
}

func printAlarms(output string, alarms []*pb.AlarmMember) error {
	if output == "json" {
		out := []map[string]string{}
		for _, a := range alarms {
			out = append(out, map[string]string{"member_id": fmt.Sprintf("%x", a.MemberID), "alarm": a.Alarm.String()})
		}
		return printJSON(map[string]any{"alarms": out})
	}
	if len(alarms) == 0 {
		fmt.Println("no alarms")
		return nil
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "MEMBER\tALARM")
	for _, a := range alarms {
		fmt.Fprintf(tw, "%x\t%s\n", a.MemberID, a.Alarm)
	}
	return tw.Flush()
}
