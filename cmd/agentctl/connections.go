package main

import (
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/veil-mesh/veil/agent"
)

func newConnectionsCmd(o *options) *cobra.Command {
	return &cobra.Command{
		Use:   "connections",
		Short: "Live connections through the agent",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.checkOutput(); err != nil {
				return err
			}
			var conns []json.RawMessage
			if err := o.get(cmd.Context(), agent.ConnectionsPath, &conns); err != nil {
				return err
			}
			if o.output == "json" {
				return printJSON(cmd.OutOrStdout(), conns)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%d live connections (use -o json for details)\n", len(conns))
			return nil
		},
	}
}
