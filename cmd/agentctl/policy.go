package main

import (
	"fmt"
	"io"
	"net/url"

	"github.com/spf13/cobra"

	"github.com/veil-mesh/veil/agent"
)

func newPolicyCmd(o *options) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Ask the agent's policy about connections",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(newPolicyCheckCmd(o))
	return cmd
}

func newPolicyCheckCmd(o *options) *cobra.Command {
	var from, to string
	cmd := &cobra.Command{
		Use:   "check --from <identity or ip> --to <ip:port>",
		Short: "Say whether a connection would be allowed, and which rule decides",
		Long: "Evaluate the agent's policy for a connection from a client to a workload, " +
			"as the destination's agent decides it.\n" +
			"--from is an identity (spiffe://cluster.local/ns/<ns>/sa/<sa>, or Istio's " +
			"cluster.local/ns/<ns>/sa/<sa>) or an IP address. The address of a mesh workload " +
			"stands for that workload connecting through the mesh; any other address is a " +
			"plaintext client.\n--to is the ip:port of a workload in the workload file.",
		Example: "  agentctl policy check --from 10.244.1.10 --to 10.244.2.11:8080\n" +
			"  agentctl policy check --from cluster.local/ns/shop/sa/cart --to 10.244.2.11:8080",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			q := url.Values{"from": {from}, "to": {to}}
			var pc agent.PolicyCheck
			if err := o.get(cmd.Context(), agent.PolicyCheckPath+"?"+q.Encode(), &pc); err != nil {
				return err
			}
			return o.print(cmd.OutOrStdout(), pc, func(w io.Writer) error {
				return printPolicyCheck(w, pc)
			})
		},
	}
	cmd.Flags().StringVar(&from, "from", "", "client: an identity or an IP address (required)")
	cmd.Flags().StringVar(&to, "to", "", "destination workload as ip:port (required)")
	_ = cmd.MarkFlagRequired("from")
	_ = cmd.MarkFlagRequired("to")
	return cmd
}

// printPolicyCheck prints the decision first, then what it was made about.
func printPolicyCheck(out io.Writer, pc agent.PolicyCheck) error {
	w := newTable(out)
	fmt.Fprintf(w, "DECISION\t%s\n", pc.Decision)
	fmt.Fprintf(w, "BY\t%s\n", pc.By)
	fmt.Fprintf(w, "TO\t%s (%s) port %d\n", pc.Workload, pc.Identity, pc.Port)
	switch {
	case pc.Source != "" && pc.SourceIP != "":
		fmt.Fprintf(w, "FROM\t%s at %s, over mTLS\n", pc.Source, pc.SourceIP)
	case pc.Source != "":
		fmt.Fprintf(w, "FROM\t%s, over mTLS\n", pc.Source)
	default:
		fmt.Fprintf(w, "FROM\t%s, plaintext\n", pc.SourceIP)
	}
	if pc.Mode != "" {
		by := pc.ModeBy
		if by == "" {
			by = "default"
		}
		fmt.Fprintf(w, "MODE\t%s (%s)\n", pc.Mode, by)
	}
	if pc.DryRun != nil {
		fmt.Fprintf(w, "DRY RUN\t%s by %s\n", pc.DryRun.Decision, pc.DryRun.By)
	}
	return w.Flush()
}
