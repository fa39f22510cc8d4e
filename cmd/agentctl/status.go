package main

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/veil-mesh/veil/agent"
	"github.com/veil-mesh/veil/redirect"
	"github.com/veil-mesh/veil/tlsengine"
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
			return o.print(cmd.OutOrStdout(), s,
				func(w io.Writer) error { return printStatus(w, s) })
		},
	}
}

// printStatus prints s as sections: a summary, then one table or list per part of the
// node. Empty optional sections are left out.
func printStatus(out io.Writer, s agent.Status) error {
	printSummary(out, s)
	printPrograms(out, s.Programs)
	printMaps(out, s.Maps)

	fmt.Fprintln(out, "\nWorkloads:")
	if err := printWorkloads(out, s.Workloads, s.Identities, "  "); err != nil {
		return err
	}

	printPeers(out, s.Traffic.Peers)
	printFileProblems(out, s.WorkloadFile)
	printRecentErrors(out, s.RecentErrors)
	return nil
}

// printSummary prints the node-wide facts as an aligned "Key: value" block.
func printSummary(out io.Writer, s agent.Status) {
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
	fmt.Fprintf(w, "CA:\t%s (%s)\n", s.CA.Addr, caState(s.CA))
	fmt.Fprintf(w, "Trust bundle:\t%s\n", trustBundle(s.TrustBundle))
	if s.SoonestExpiry != nil {
		fmt.Fprintf(w, "Soonest cert expiry:\t%s (in %s)\n",
			s.SoonestExpiry.Format(time.RFC3339),
			time.Until(*s.SoonestExpiry).Round(time.Second))
	}

	t := s.Traffic
	fmt.Fprintf(w, "Connections:\topened %d, closed %d, failed %d\n",
		t.Opened, t.Closed, t.Failed)
	fmt.Fprintf(w, "Bytes:\tsent %d, received %d\n", t.BytesSent, t.BytesReceived)
	fmt.Fprintf(w, "Kernel features:\t%s\n", features(s.Features))
	fmt.Fprintf(w, "Policy:\t%s\n", policyState(s.Policy))
	g := s.EgressGuard
	fmt.Fprintf(w, "Egress guard:\tdropped %d, accepted %d, reader errors %d\n",
		g.Dropped, g.Accepted, g.Errors)
	w.Flush()
}

// caState says whether the CA answers: since when it has not, and why, or what it
// refused last time if it answered with a refusal.
func caState(ca agent.CAStatus) string {
	switch {
	case ca.Reachable && ca.LastError != "":
		return "reachable; last request failed: " + ca.LastError
	case ca.Reachable:
		return "reachable"
	case ca.UnreachableSince != nil:
		return fmt.Sprintf("UNREACHABLE since %s (for %s): %s",
			ca.UnreachableSince.Format(time.RFC3339),
			time.Since(*ca.UnreachableSince).Round(time.Second), ca.LastError)
	case ca.LastError != "":
		return "UNREACHABLE: " + ca.LastError
	}
	return "not asked yet"
}

// trustBundle lists the IDs of the roots this node trusts.
func trustBundle(roots []agent.TrustedRoot) string {
	if len(roots) == 0 {
		return "none yet (the CA has not answered)"
	}
	ids := make([]string, len(roots))
	for i, r := range roots {
		ids[i] = r.ID
	}
	return fmt.Sprintf("%d root(s): %s", len(roots), strings.Join(ids, ", "))
}

// features says whether every kernel feature the agent probes for is present, and
// names those missing if not.
func features(fs []redirect.Feature) string {
	var missing []string
	for _, f := range fs {
		if !f.Available {
			missing = append(missing, f.Name)
		}
	}
	if len(missing) == 0 {
		return fmt.Sprintf("all %d present", len(fs))
	}
	return "MISSING " + strings.Join(missing, ", ")
}

func printPrograms(out io.Writer, progs []agent.ProgramStatus) {
	fmt.Fprintln(out, "\nPrograms:")
	w := newTable(out)
	fmt.Fprintln(w, "  NAME\tTYPE\tID\tATTACHED TO\tPINNED AT")
	for _, p := range progs {
		pin := p.Pin
		if !p.Pinned {
			pin = "NOT PINNED " + pin
		}
		fmt.Fprintf(w, "  %s\t%s\t%d\t%s\t%s\n", p.Name, p.Type, p.ID, p.AttachTo, pin)
	}
	w.Flush()
}

func printMaps(out io.Writer, maps []redirect.MapUsage) {
	if len(maps) == 0 {
		return
	}
	fmt.Fprintln(out, "\nBPF maps:")
	w := newTable(out)
	fmt.Fprintln(w, "  NAME\tENTRIES\tMAX")
	for _, m := range maps {
		fmt.Fprintf(w, "  %s\t%d\t%d\n", m.Name, m.Entries, m.MaxEntries)
	}
	w.Flush()
}

func printPeers(out io.Writer, peers []tlsengine.PeerCount) {
	if len(peers) == 0 {
		return
	}
	fmt.Fprintln(out, "\nPeers (verified identities, connections since start):")
	w := newTable(out)
	fmt.Fprintln(w, "  WORKLOAD\tDIRECTION\tPEER\tCONNECTIONS")
	for _, p := range peers {
		fmt.Fprintf(w, "  %s\t%s\t%s\t%d\n", p.Workload, p.Direction, p.Peer, p.Connections)
	}
	w.Flush()
}

func printFileProblems(out io.Writer, f agent.FileStatus) {
	if f.Error == "" && len(f.Problems) == 0 {
		return
	}
	fmt.Fprintf(out, "\nWorkload file %s:\n", f.Path)
	if f.Error != "" {
		fmt.Fprintf(out, "  %s\n", f.Error)
	}
	for _, p := range f.Problems {
		fmt.Fprintf(out, "  %s\n", p)
	}
}

func printRecentErrors(out io.Writer, errs []agent.RecentError) {
	if len(errs) == 0 {
		return
	}
	fmt.Fprintln(out, "\nRecent errors:")
	for _, e := range errs {
		fmt.Fprintf(out, "  %s  %s\n", e.Time.Format(time.TimeOnly), e.Message)
	}
}

// policyState sums up the policy in force, and says so when the file's latest version
// was rejected.
func policyState(p agent.PolicyStatus) string {
	if p.File == "" {
		return "none (every port PERMISSIVE, every connection allowed)"
	}
	st := fmt.Sprintf("%s: %d peer authentications, %d authorization policies",
		p.File, p.PeerAuthentications, p.AuthorizationPolicies)
	if p.Error != "" {
		st += "; LATEST VERSION REJECTED, previous one in force (see Recent errors)"
	}
	return st
}
