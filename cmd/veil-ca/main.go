// Command veil-ca is veil's certificate authority: it signs the X509-SVIDs node agents ask
// for, for the workloads the workload file places on their node (veil-ca serve), and
// rotates the roots it signs with (veil-ca root).
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/veil-mesh/veil/agent/harden"
)

func main() {
	// Before anything else: the CA holds its signing keys in memory, and no core file may
	// carry them off.
	if err := harden.Process(); err != nil {
		fmt.Fprintln(os.Stderr, "veil-ca: turning off core dumps:", err)
		os.Exit(1)
	}
	if err := newRootCommand().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "veil-ca:", err)
		os.Exit(1)
	}
}

func newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "veil-ca",
		Short:         "veil's certificate authority for node agents",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newServeCommand(), newCARootCommand())
	return root
}
