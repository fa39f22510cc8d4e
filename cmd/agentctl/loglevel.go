package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/veil-mesh/veil/agent"
)

func newLogLevelCmd(o *options) *cobra.Command {
	return &cobra.Command{
		Use:   "log-level [LEVEL]",
		Short: "Show the agent's log level, or change it while the agent runs",
		Long: "Show the agent's log level, or set it to one of: trace, debug, info, warn, " +
			"error.\nThe change lasts until the agent restarts, which goes back to --log-level.",
		Args:      cobra.MatchAll(cobra.MaximumNArgs(1), cobra.OnlyValidArgs),
		ValidArgs: agent.LogLevels,
		RunE: func(cmd *cobra.Command, args []string) error {
			var lvl agent.LogLevel
			var err error
			if len(args) == 0 {
				err = o.get(cmd.Context(), agent.LogLevelPath, &lvl)
			} else {
				err = o.put(cmd.Context(), agent.LogLevelPath, agent.LogLevel{Level: args[0]}, &lvl)
			}
			if err != nil {
				return err
			}
			return o.print(cmd.OutOrStdout(), lvl, func(w io.Writer) error {
				if lvl.Previous != "" {
					_, err := fmt.Fprintf(w, "log level %s (was %s)\n", lvl.Level, lvl.Previous)
					return err
				}
				_, err := fmt.Fprintf(w, "log level %s\n", lvl.Level)
				return err
			})
		},
	}
}
