// Command ballot is ballot's one binary. Today it runs the seeded simulator
// (ballot sim); the service (serve, dev), the client commands and the chaos
// rig join it as they land.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

func main() {
	root := &cobra.Command{
		Use:           "ballot",
		Short:         "ballot: consensus you can embed, run and watch",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(simCommand(), serveCommand(), devCommand(), chaosCommand())
	root.AddCommand(clientCommands()...)
	root.AddCommand(snapshotCommand())
	root.AddCommand(alarmCommand())
	root.AddCommand(operatorCommands()...)
	root.AddCommand(recipeCommands()...)
	root.AddCommand(shardCommand())
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "ballot:", err)
		os.Exit(1)
	}
}
