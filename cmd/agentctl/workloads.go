package main

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/veil-mesh/veil/agent"
	"github.com/veil-mesh/veil/tlsengine"
)

func newWorkloadsCmd(o *options) *cobra.Command {
	return &cobra.Command{
		Use:   "workloads",
		Short: "The pods of this node: identity, addresses, netns, enrollment",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var ws []agent.WorkloadStatus
			if err := o.get(cmd.Context(), agent.WorkloadsPath, &ws); err != nil {
				return err
			}
			return o.print(cmd.OutOrStdout(), ws, func(w io.Writer) error {
				return printWorkloads(w, ws, nil, "")
			})
		},
	}
}

// printWorkloads prints a table of workloads, each line starting with indent. With ids,
// it shows when each workload's certificate expires; without, its netns and since when
// it is enrolled.
func printWorkloads(out io.Writer, ws []agent.WorkloadStatus, ids []tlsengine.IdentityStatus,
	indent string) error {
	expiry := map[string]time.Time{}
	for _, id := range ids {
		expiry[id.ID] = id.NotAfter
	}
	w := newTable(out)
	if ids != nil {
		fmt.Fprintln(w, indent+"WORKLOAD\tIPS\tIDENTITY\tENROLLED\tCERT EXPIRES")
	} else {
		fmt.Fprintln(w, indent+"WORKLOAD\tIPS\tIDENTITY\tNETNS\tENROLLED\tSINCE")
	}
	for _, wl := range ws {
		state := "yes"
		if !wl.Enrolled {
			state = "NO: " + wl.Error
		}
		ips := make([]string, len(wl.IPs))
		for i, ip := range wl.IPs {
			ips[i] = ip.String()
		}
		name := wl.Namespace + "/" + wl.Name
		if ids != nil {
			exp := "-"
			if t, ok := expiry[wl.Identity]; ok {
				exp = t.Format(time.RFC3339)
			}
			fmt.Fprintf(w, "%s%s\t%s\t%s\t%s\t%s\n", indent, name, strings.Join(ips, ","),
				wl.Identity, state, exp)
			continue
		}
		since := "-"
		if wl.Since != nil {
			since = ago(*wl.Since)
		}
		fmt.Fprintf(w, "%s%s\t%s\t%s\t%s\t%s\t%s\n", indent, name, strings.Join(ips, ","),
			wl.Identity, wl.Netns, state, since)
	}
	return w.Flush()
}
