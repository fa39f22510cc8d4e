package main

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/veil-mesh/veil/ca"
)

// rootFlags are the flags every `veil-ca root` command takes.
type rootFlags struct {
	dir, output string
	certTTL     time.Duration
}

func newCARootCommand() *cobra.Command {
	f := &rootFlags{}
	cmd := &cobra.Command{
		Use:   "root",
		Short: "List and rotate the CA's roots",
		Long: "List and rotate the roots in the CA's directory. A running veil-ca serve picks " +
			"each change up within its --reload-interval.\n\n" +
			"Rotation: `root add` (a new root, trusted but not signing), then wait at least " +
			"one certificate lifetime, until every agent has renewed and trusts it " +
			"(`agentctl status` lists it under Trust bundle); `root activate <id>` (it " +
			"signs; the old root stays trusted), then wait one lifetime, until every " +
			"certificate has been reissued (`agentctl certs` shows the new ROOT); " +
			"`root retire <old id>` (out of the bundle, its key deleted).",
		Args: cobra.NoArgs,
	}
	fs := cmd.PersistentFlags()
	stringFlag(fs, &f.dir, "dir", "VEIL_CA_DIR", "/var/lib/veil-ca",
		"the CA's directory, as given to veil-ca serve")
	fs.StringVarP(&f.output, "output", "o", "table", "output format: table or json")
	cmd.AddCommand(newRootListCommand(f), newRootAddCommand(f), newRootActivateCommand(f),
		newRootRetireCommand(f))
	return cmd
}

// checkOutput refuses an output format before a command changes anything.
func (f *rootFlags) checkOutput() error {
	if f.output != "table" && f.output != "json" {
		return fmt.Errorf("--output %q: use table or json", f.output)
	}
	return nil
}

// certTTLFlag adds --cert-ttl, which activate and retire use to warn about a step taken
// before the certificates of the previous one can all have been renewed.
func (f *rootFlags) certTTLFlag(cmd *cobra.Command) error {
	return durationFlag(cmd.Flags(), &f.certTTL, "cert-ttl", "VEIL_CA_CERT_TTL",
		ca.DefaultCertTTL, "lifetime of issued certificates, as veil-ca serve has it; "+
			"a step taken sooner after the previous one is warned about")
}

// warnTooSoon writes a warning when root r entered its state less than one certificate
// lifetime ago: not every agent can have renewed since.
func (f *rootFlags) warnTooSoon(w io.Writer, r ca.RootInfo, consequence string) {
	if r.Since.IsZero() {
		return
	}
	if ago := time.Since(r.Since); ago < f.certTTL {
		fmt.Fprintf(w, "warning: root %s became %s %s ago, less than one certificate "+
			"lifetime (%s, --cert-ttl): %s\n", r.ID, r.State, ago.Round(time.Second),
			f.certTTL, consequence)
	}
}

// completeRootIDs offers the IDs of the roots in the given states.
func completeRootIDs(f *rootFlags, states ...ca.RootState) cobra.CompletionFunc {
	return func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		roots, err := ca.ListRoots(f.dir)
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		var ids []string
		for _, r := range roots {
			for _, s := range states {
				if r.State == s {
					ids = append(ids, r.ID+"\t"+string(r.State))
				}
			}
		}
		return ids, cobra.ShellCompDirectiveNoFileComp
	}
}

func findRoot(dir, id string) (ca.RootInfo, error) {
	roots, err := ca.ListRoots(dir)
	if err != nil {
		return ca.RootInfo{}, err
	}
	for _, r := range roots {
		if r.ID == id {
			return r, nil
		}
	}
	return ca.RootInfo{}, fmt.Errorf("no root %s in %s; veil-ca root list shows the IDs", id, dir)
}

// printRoots writes roots as a table or as JSON.
func printRoots(w io.Writer, output string, roots []ca.RootInfo) error {
	if output == "json" {
		return printJSON(w, roots)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATE\tSINCE\tNOT AFTER\tSUBJECT")
	for _, r := range roots {
		since := "-"
		if !r.Since.IsZero() {
			since = r.Since.Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.ID, r.State, since,
			r.NotAfter.Format(time.RFC3339), r.Subject)
	}
	return tw.Flush()
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
