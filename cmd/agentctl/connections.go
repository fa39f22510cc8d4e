package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/veil-mesh/veil/agent"
	"github.com/veil-mesh/veil/tlsengine"
)

func newConnectionsCmd(o *options) *cobra.Command {
	return &cobra.Command{
		Use:   "connections",
		Short: "Live connections through the agent, with peer identities and bytes",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var conns []tlsengine.ConnInfo
			if err := o.get(cmd.Context(), agent.ConnectionsPath, &conns); err != nil {
				return err
			}
			return o.print(cmd.OutOrStdout(), conns, func(w io.Writer) error {
				return printConnections(w, conns)
			})
		},
	}
}

// printConnections prints one line per connection. Bytes are from the workload's side:
// SENT is what its app wrote, RECEIVED what was delivered to it.
func printConnections(out io.Writer, conns []tlsengine.ConnInfo) error {
	w := newTable(out)
	fmt.Fprintln(w, "WORKLOAD\tDIRECTION\tLOCAL\tREMOTE\tPEER\tSENT\tRECEIVED\tAGE")
	for _, c := range conns {
		peer := "-"
		if !c.Peer.IsZero() {
			peer = c.Peer.String()
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\n", c.Workload, c.Direction, c.Local,
			c.Remote, peer, c.BytesSent, c.BytesReceived, ago(c.Start))
	}
	return w.Flush()
}
