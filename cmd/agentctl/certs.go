package main

import (
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/veil-mesh/veil/agent"
)

func newCertsCmd(o *options) *cobra.Command {
	return &cobra.Command{
		Use:   "certs",
		Short: "The certificate held for each identity of this node, and its state",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var cs []agent.CertStatus
			if err := o.get(cmd.Context(), agent.CertsPath, &cs); err != nil {
				return err
			}
			return o.print(cmd.OutOrStdout(), cs, func(w io.Writer) error { return printCerts(w, cs) })
		},
	}
}

func printCerts(out io.Writer, cs []agent.CertStatus) error {
	w := newTable(out)
	fmt.Fprintln(w, "IDENTITY\tSERIAL\tROOT\tNOT BEFORE\tNOT AFTER\tSTATE\tNEXT RENEWAL")
	for _, c := range cs {
		state := c.State
		if c.LastError != "" {
			state += ": " + c.LastError
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", c.Identity, c.Serial, c.Root,
			c.NotBefore.Format(time.RFC3339), c.NotAfter.Format(time.RFC3339), state,
			c.NextRenewal.Format(time.RFC3339))
	}
	return w.Flush()
}
