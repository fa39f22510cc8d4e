package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/veil-mesh/veil/ca"
)

func newRootAddCommand(f *rootFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "add",
		Short: "Create a new root: trusted by agents from their next renewal, not signing yet",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := f.checkOutput(); err != nil {
				return err
			}
			r, err := ca.AddRoot(f.dir, time.Now())
			if err != nil {
				return err
			}
			if f.output == "json" {
				return printJSON(cmd.OutOrStdout(), r)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "added root %s (%s), state next: every bundle the "+
				"CA sends now holds it.\nWait at least one certificate lifetime, until "+
				"`agentctl status` on every node lists it under Trust bundle, then run\n"+
				"  veil-ca root activate %s\n", r.ID, r.Subject, r.ID)
			return nil
		},
	}
}
