package main

import (
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/veil-mesh/veil/ca"
)

func newRootActivateCommand(f *rootFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "activate ID",
		Short: "Sign with root ID from now on; the root signing until now stays trusted",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := f.checkOutput(); err != nil {
				return err
			}
			if r, err := findRoot(f.dir, args[0]); err == nil && r.State == ca.RootNext {
				f.warnTooSoon(cmd.ErrOrStderr(), r, "agents that have not renewed since "+
					"do not trust it yet and will refuse the certificates it signs")
			}

			active, previous, err := ca.ActivateRoot(f.dir, args[0], time.Now())
			if errors.Is(err, ca.ErrAlreadyDone) {
				fmt.Fprintf(cmd.OutOrStdout(), "root %s is already active\n", args[0])
				return nil
			}
			if err != nil {
				return err
			}
			if f.output == "json" {
				return printJSON(cmd.OutOrStdout(), []ca.RootInfo{active, previous})
			}
			fmt.Fprintf(cmd.OutOrStdout(), "root %s is active: the CA signs with it within "+
				"its --reload-interval.\nroot %s is previous: still trusted. Wait one "+
				"certificate lifetime, until `agentctl certs` on every node shows ROOT %s, "+
				"then run\n  veil-ca root retire %s\n", active.ID, previous.ID, active.ID,
				previous.ID)
			return nil
		},
		ValidArgsFunction: completeRootIDs(f, ca.RootNext, ca.RootPrevious),
	}
	if err := f.certTTLFlag(cmd); err != nil {
		cmd.PreRunE = func(*cobra.Command, []string) error { return err }
	}
	return cmd
}
