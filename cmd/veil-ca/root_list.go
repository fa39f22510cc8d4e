package main

import (
	"github.com/spf13/cobra"

	"github.com/veil-mesh/veil/ca"
)

func newRootListCommand(f *rootFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List the roots: ID, state (next, active, previous, retired), since, expiry",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := f.checkOutput(); err != nil {
				return err
			}
			roots, err := ca.ListRoots(f.dir)
			if err != nil {
				return err
			}
			return printRoots(cmd.OutOrStdout(), f.output, roots)
		},
	}
}
