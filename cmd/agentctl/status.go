package main

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/veil-mesh/veil/agent"
)

func newStatusCmd(o *options) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Readiness, programs, workloads, certificates, CA and traffic of this node",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var s agent.Status
			if err := o.get(cmd.Context(), agent.StatusPath, &s); err != nil {
				return err
			}
			return o.print(cmd.OutOrStdout(), s, func(w io.Writer) error { return printStatus(w, s) })
		},
	}
}

func printStatus(out io.Writer, s agent.Status) error {
	w := newTable(out)
	fmt.Fprintf(w, "Node:\t%s\n", s.Node)
	fmt.Fprintf(w, "Version:\t%s\n", s.Version)
	fmt.Fprintf(w, "Uptime:\t%s\n", s.Uptime)
	ready := "yes"
	if !s.Ready {
		ready = "NO: " + strings.ReplaceAll(s.NotReady, "\n", "; ")
	}
	fmt.Fprintf(w, "Ready:\t%s\n", ready)
	fmt.Fprintf(w, "Log level:\t%s\n", s.LogLevel)
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
		fmt.Fprintf(w, "Kernel features:\tall %d present\n", len(s.Features))
	} else {
		fmt.Fprintf(w, "Kernel features:\tMISSING %s\n", strings.Join(missing, ", "))
	}
	w.Flush()

	fmt.Fprintln(out, "\nPrograms:")
	w = newTable(out)
	fmt.Fprintln(w, "  NAME\tTYPE\tID\tATTACHED TO\tPINNED AT")
	for _, p := range s.Programs {
		pin := p.Pin
		if !p.Pinned {
			pin = "NOT PINNED " + pin
		}
		fmt.Fprintf(w, "  %s\t%s\t%d\t%s\t%s\n", p.Name, p.Type, p.ID, p.AttachTo, pin)
	}
	w.Flush()

	if len(s.Maps) > 0 {
		fmt.Fprintln(out, "\nBPF maps:")
		w = newTable(out)
		fmt.Fprintln(w, "  NAME\tENTRIES\tMAX")
		for _, m := range s.Maps {
			fmt.Fprintf(w, "  %s\t%d\t%d\n", m.Name, m.Entries, m.MaxEntries)
		}
		w.Flush()
	}

	fmt.Fprintln(out, "\nWorkloads:")
	if err := printWorkloads(out, s.Workloads, s.Identities, "  "); err != nil {
		return err
	}

	if len(t.Peers) > 0 {
		fmt.Fprintln(out, "\nPeers (verified identities, connections since start):")
		w = newTable(out)
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
