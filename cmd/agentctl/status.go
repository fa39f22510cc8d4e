package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/veil-mesh/veil/agent"
)

func newStatusCmd(o *options) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Programs, workloads, identities, CA and traffic of this node",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.checkOutput(); err != nil {
				return err
			}
			var s agent.Status
			if err := o.get(cmd.Context(), agent.StatusPath, &s); err != nil {
				return err
			}
			if o.output == "json" {
				return printJSON(cmd.OutOrStdout(), s)
			}
			return printStatus(cmd.OutOrStdout(), s)
		},
	}
}

func printStatus(out io.Writer, s agent.Status) error {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "Node:\t%s\n", s.Node)
	fmt.Fprintf(w, "Version:\t%s\n", s.Version)
	fmt.Fprintf(w, "Uptime:\t%s\n", s.Uptime)
	fmt.Fprintf(w, "Trust domain:\t%s\n", s.TrustDomain)
	ca := "reachable"
	if !s.CA.Reachable {
		ca = "UNREACHABLE: " + s.CA.LastError
	}
	fmt.Fprintf(w, "CA:\t%s (%s)\n", s.CA.Addr, ca)
	if s.SoonestExpiry != nil {
		fmt.Fprintf(w, "Soonest cert expiry:\t%s (in %s)\n", s.SoonestExpiry.Format(time.RFC3339),
			time.Until(*s.SoonestExpiry).Round(time.Second))
	}
	t := s.Traffic
	fmt.Fprintf(w, "Connections:\topened %d, closed %d, failed %d\n", t.Opened, t.Closed, t.Failed)
	fmt.Fprintf(w, "Bytes:\tsent %d, received %d\n", t.BytesSent, t.BytesReceived)
	var missing []string
	for _, f := range s.Features {
		if !f.Available {
			missing = append(missing, f.Name)
		}
	}
	if len(missing) == 0 {
		fmt.Fprintf(w, "Kernel features:\tall present\n")
	} else {
		fmt.Fprintf(w, "Kernel features:\tMISSING %s\n", strings.Join(missing, ", "))
	}
	w.Flush()

	fmt.Fprintln(out, "\nPrograms:")
	w = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "  NAME\tTYPE\tID\tATTACHED TO\tPINNED AT")
	for _, p := range s.Programs {
		fmt.Fprintf(w, "  %s\t%s\t%d\t%s\t%s\n", p.Name, p.Type, p.ID, p.AttachTo, p.Pin)
	}
	w.Flush()

	fmt.Fprintln(out, "\nWorkloads:")
	w = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "  WORKLOAD\tIPS\tIDENTITY\tENROLLED\tCERT EXPIRES")
	expiry := map[string]time.Time{}
	for _, id := range s.Identities {
		expiry[id.ID] = id.NotAfter
	}
	for _, wl := range s.Workloads {
		state := "yes"
		if !wl.Enrolled {
			state = "NO: " + wl.Error
		}
		exp := "-"
		if t, ok := expiry[wl.Identity]; ok {
			exp = t.Format(time.RFC3339)
		}
		ips := make([]string, len(wl.IPs))
		for i, ip := range wl.IPs {
			ips[i] = ip.String()
		}
		fmt.Fprintf(w, "  %s/%s\t%s\t%s\t%s\t%s\n", wl.Namespace, wl.Name, strings.Join(ips, ","),
			wl.Identity, state, exp)
	}
	w.Flush()

	if len(t.Peers) > 0 {
		fmt.Fprintln(out, "\nPeers (verified identities, connections since start):")
		w = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "  WORKLOAD\tDIRECTION\tPEER\tCONNECTIONS")
		for _, p := range t.Peers {
			fmt.Fprintf(w, "  %s\t%s\t%s\t%d\n", p.Workload, p.Direction, p.Peer, p.Connections)
		}
		w.Flush()
	}

	if s.WorkloadFile.Error != "" || len(s.WorkloadFile.Problems) > 0 {
		fmt.Fprintf(out, "\nWorkload file %s:\n", s.WorkloadFile.Path)
		if s.WorkloadFile.Error != "" {
			fmt.Fprintf(out, "  %s\n", s.WorkloadFile.Error)
		}
		for _, p := range s.WorkloadFile.Problems {
			fmt.Fprintf(out, "  %s\n", p)
		}
	}
	if len(s.RecentErrors) > 0 {
		fmt.Fprintln(out, "\nRecent errors:")
		for _, e := range s.RecentErrors {
			fmt.Fprintf(out, "  %s  %s\n", e.Time.Format(time.TimeOnly), e.Message)
		}
	}
	return nil
}
