package kubetest

import (
	"errors"
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestVersionsMatchScript keeps the versions here, in scripts/kube-bins.sh and client-go's
// in go.mod in step: a server of one release and a client of another would test neither.
func TestVersionsMatchScript(t *testing.T) {
	script := readFile(t, "../../scripts/kube-bins.sh")
	for name, want := range map[string]string{
		"KUBE_VERSION":    KubeVersion,
		"ETCD_VERSION":    EtcdVersion,
		"STAGING_VERSION": stagingVersion(),
	} {
		m := regexp.MustCompile(`(?m)^` + name + `=(\S+)$`).FindStringSubmatch(script)
		if m == nil {
			t.Errorf("scripts/kube-bins.sh sets no %s", name)
			continue
		}
		if m[1] != want {
			t.Errorf("scripts/kube-bins.sh: %s=%s, package kubetest: %s", name, m[1], want)
		}
	}

	gomod := readFile(t, "../../go.mod")
	m := regexp.MustCompile(`(?m)^\s*k8s\.io/client-go (\S+)`).FindStringSubmatch(gomod)
	if m == nil {
		t.Fatal("go.mod does not require k8s.io/client-go")
	}
	if m[1] != stagingVersion() {
		t.Errorf("go.mod has k8s.io/client-go %s; kube-apiserver %s pairs with %s",
			m[1], KubeVersion, stagingVersion())
	}
}

// TestStartSkipsWithoutBinaries checks that a machine without the binaries skips the
// tests that need them instead of failing.
func TestStartSkipsWithoutBinaries(t *testing.T) {
	t.Setenv(CacheEnv, t.TempDir())
	if _, err := FindBinaries(); !errors.Is(err, ErrBinariesMissing) {
		t.Fatalf("FindBinaries in an empty cache: got %v, want ErrBinariesMissing", err)
	}

	var skipped bool
	t.Run("empty-cache", func(t *testing.T) {
		defer func() { skipped = t.Skipped() }()
		Start(t)
		t.Error("Start returned without the binaries")
	})
	if !skipped {
		t.Error("Start did not skip the test")
	}
}

// stagingVersion is the k8s.io/* library release of KubeVersion: v1.37.2 -> v0.37.2.
func stagingVersion() string {
	return "v0." + strings.TrimPrefix(KubeVersion, "v1.")
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading %s: %v", path, err)
	}
	return string(b)
}
