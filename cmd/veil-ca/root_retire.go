package main

import (
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/veil-mesh/veil/ca"
)

func newRootRetireCommand(f *rootFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "retire ID",
		Short: "Take root ID out of the trust bundle and delete its key (not the active root)",
		Long: "Take root ID out of the trust bundle and delete its key. Agents drop it at " +
			"their next renewal; from then on they refuse new handshakes with certificates " +
			"it signed, while connections already open carry on. The active root cannot " +
			"be retired: activate another first.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := f.checkOutput(); err != nil {
				return err
			}
			if r, err := findRoot(f.dir, args[0]); err == nil && r.State == ca.RootPrevious {
				f.warnTooSoon(cmd.ErrOrStderr(), r, "certificates it signed may still be "+
					"in use, and peers will refuse them")
			}

			r, err := ca.RetireRoot(f.dir, args[0], time.Now())
			if errors.Is(err, ca.ErrAlreadyDone) {
				fmt.Fprintf(cmd.OutOrStdout(), "root %s is already retired\n", args[0])
				return nil
			}
			if err != nil {
				return err
			}
			if f.output == "json" {
				return printJSON(cmd.OutOrStdout(), r)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "root %s is retired: out of the bundle the CA "+
				"sends, its key deleted. Agents drop it as they renew.\n", r.ID)
			return nil
		},
		ValidArgsFunction: completeRootIDs(f, ca.RootNext, ca.RootPrevious),
	}
	if err := f.certTTLFlag(cmd); err != nil {
		cmd.PreRunE = func(*cobra.Command, []string) error { return err }
	}
	return cmd
}
