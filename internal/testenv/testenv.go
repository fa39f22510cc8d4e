// Package testenv builds the throwaway kernel state that veil's privileged tests need:
// network namespaces joined by veth pairs, cgroup v2 directories and bpffs pin
// directories. Everything it makes is removed by t.Cleanup, also when the test fails.
//
// RequirePrivileged is the one gate for such tests: it skips, saying why, when the test
// is not root or the kernel lacks what veil needs. CI runs as root, so there they run.
package testenv

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/veil-mesh/veil/redirect"
)

// RequirePrivileged skips the test unless it runs as root on a kernel with the BPF
// features veil uses, bpffs mounted and cgroup v2 available.
func RequirePrivileged(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces and loads BPF programs")
	}
	if err := redirect.Probe(); err != nil {
		t.Skipf("kernel cannot run veil: %v", err)
	}
	if _, err := redirect.Cgroup2Root(); err != nil {
		t.Skipf("no cgroup v2 hierarchy: %v", err)
	}
	if err := redirect.EnsureBPFFS("/sys/fs/bpf"); err != nil {
		t.Skipf("no bpffs: %v", err)
	}
	for _, tool := range []string{"nsenter", "bash"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (scripts/install-deps.sh installs it)", tool)
		}
	}
}

// RequireTools skips the test unless every named program is on PATH.
func RequireTools(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (scripts/install-deps.sh installs it)", tool)
		}
	}
}

// Name returns a short random name with the given prefix, unique enough that tests
// running at once (or a leftover from a killed run) never collide.
func Name(prefix string) string {
	b := make([]byte, 3)
	rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// Cgroup makes a cgroup v2 directory for the test and removes it afterwards; processes
// the test put in it must have exited by then.
func Cgroup(t testing.TB) string {
	t.Helper()
	root, err := redirect.Cgroup2Root()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, Name("veil-test-"))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatalf("creating cgroup: %v", err)
	}
	t.Cleanup(func() { removeCgroup(t, dir) })
	return dir
}

// SubCgroup makes a child of parent, removed before parent is.
func SubCgroup(t testing.TB, parent, name string) string {
	t.Helper()
	dir := filepath.Join(parent, name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatalf("creating cgroup: %v", err)
	}
	t.Cleanup(func() { removeCgroup(t, dir) })
	return dir
}

func removeCgroup(t testing.TB, dir string) {
	// A process left behind by a failed test would keep the directory busy: kill the ones
	// still inside, which the test itself put there.
	os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0)
	// Killed processes leave the cgroup asynchronously.
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		if err := os.Remove(dir); err == nil || os.IsNotExist(err) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("warning: cgroup %s not removed", dir)
}

// PinDir returns a fresh directory in bpffs for the test's pins, removed afterwards.
func PinDir(t testing.TB) string {
	t.Helper()
	dir := filepath.Join("/sys/fs/bpf", Name("veil-test-"))
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// Command prepares a command that runs inside the network namespace ns (a path) and, when
// cgroup is not empty, inside that cgroup, entered before the command starts so that the
// cgroup's BPF hooks apply to every socket it opens.
func Command(ns, cgroup string, args ...string) *exec.Cmd {
	script := `exec nsenter --net="$VEIL_NETNS" -- "$@"`
	if cgroup != "" {
		script = `echo $$ > "$VEIL_CGROUP/cgroup.procs" && ` + script
	}
	cmd := exec.Command("bash", append([]string{"-c", script, "veil-test"}, args...)...)
	cmd.Env = append(os.Environ(), "VEIL_NETNS="+ns, "VEIL_CGROUP="+cgroup)
	return cmd
}

// Run runs Command and returns its combined output, failing the test on error.
func Run(t testing.TB, ns, cgroup string, args ...string) string {
	t.Helper()
	out, err := Command(ns, cgroup, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%v in %s: %v\n%s", args, ns, err, out)
	}
	return string(out)
}

// must is for fixture steps that cannot sensibly fail.
func must(t testing.TB, err error, what string, args ...any) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", fmt.Sprintf(what, args...), err)
	}
}
