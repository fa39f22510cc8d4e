package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/veil-mesh/veil/ca"
)

// caDir makes a CA directory the way a first `veil-ca serve` does.
func caDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	files := map[string]string{
		"workloads.yaml": "trustDomain: cluster.local\nworkloads: []\n",
		"tokens":         "node1 token-one\n",
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	_, err := ca.NewServer(ca.Config{Dir: filepath.Join(dir, "ca"),
		WorkloadsPath: filepath.Join(dir, "workloads.yaml"), Log: zerolog.Nop(),
		NodeTokensPath: filepath.Join(dir, "tokens")})
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, "ca")
}

// run runs veil-ca with args and returns its stdout and stderr.
func run(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errOut bytes.Buffer
	cmd := newRootCommand()
	cmd.SetArgs(args)
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	err = cmd.Execute()
	return out.String(), errOut.String(), err
}

func listRoots(t *testing.T, dir string) []ca.RootInfo {
	t.Helper()
	out, _, err := run(t, "root", "list", "--dir", dir, "-o", "json")
	if err != nil {
		t.Fatalf("root list: %v", err)
	}
	var roots []ca.RootInfo
	if err := json.Unmarshal([]byte(out), &roots); err != nil {
		t.Fatalf("root list -o json: %v\n%s", err, out)
	}
	return roots
}

// The rotation procedure through the commands an operator types.
func TestRootCommands(t *testing.T) {
	dir := caDir(t)
	roots := listRoots(t, dir)
	if len(roots) != 1 || roots[0].State != ca.RootActive {
		t.Fatalf("new directory: %+v", roots)
	}
	first := roots[0].ID

	out, _, err := run(t, "root", "add", "--dir", dir)
	if err != nil || !strings.HasPrefix(out, "added root ") {
		t.Fatalf("root add: %v\n%s", err, out)
	}
	next := listRoots(t, dir)[1].ID
	if !strings.Contains(out, "veil-ca root activate "+next) {
		t.Errorf("root add does not say what to run next:\n%s", out)
	}

	out, stderr, err := run(t, "root", "activate", next, "--dir", dir, "--cert-ttl", "1h")
	if err != nil || !strings.Contains(out, "veil-ca root retire "+first) {
		t.Fatalf("root activate: %v\n%s", err, out)
	}
	if !strings.HasPrefix(stderr, "warning: root "+next+" became next ") {
		t.Errorf("activating a root added just now gave no warning: %q", stderr)
	}
	if out, _, err := run(t, "root", "activate", next, "--dir", dir); err != nil ||
		out != "root "+next+" is already active\n" {
		t.Errorf("activating again: %v %q", err, out)
	}

	_, _, err = run(t, "root", "retire", next, "--dir", dir)
	if err == nil || !strings.Contains(err.Error(), "is the active root") {
		t.Errorf("retiring the active root: %v", err)
	}
	if _, _, err := run(t, "root", "retire", first, "--dir", dir); err != nil {
		t.Fatalf("root retire: %v", err)
	}
	roots = listRoots(t, dir)
	if roots[0].State != ca.RootRetired || roots[1].State != ca.RootActive {
		t.Errorf("after the rotation: %+v", roots)
	}

	out, _, err = run(t, "root", "list", "--dir", dir)
	if err != nil || !strings.HasPrefix(out, "ID                STATE    SINCE") ||
		!strings.Contains(out, first+"  retired  ") {
		t.Errorf("root list table: %v\n%s", err, out)
	}
	if _, _, err := run(t, "root", "add", "--dir", dir, "-o", "xml"); err == nil ||
		err.Error() != `--output "xml": use table or json` || len(listRoots(t, dir)) != 2 {
		t.Errorf("a bad --output must fail before anything changes: %v", err)
	}
}
