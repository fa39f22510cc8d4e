package kubetest

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// The versions scripts/kube-bins.sh builds. TestVersionsMatchScript keeps the two in step;
// client-go in go.mod is the staging release that pairs with KubeVersion (v0.37.2).
const (
	KubeVersion = "v1.37.2"
	EtcdVersion = "v3.6.17"
)

// CacheEnv names the variable that overrides DefaultCacheDir, in the script and here.
const (
	CacheEnv        = "VEIL_KUBE_CACHE"
	DefaultCacheDir = "/var/cache/veil/kube"
)

// ErrBinariesMissing is returned by FindBinaries when a binary is not in the cache.
var ErrBinariesMissing = errors.New("kubernetes test binaries missing: run scripts/kube-bins.sh")

// Binaries are the paths of the programs a Server runs, and of kubectl for tests that
// drive it.
type Binaries struct {
	APIServer string
	Etcd      string
	Kubectl   string
}

// CacheDir is where scripts/kube-bins.sh keeps the binaries: $VEIL_KUBE_CACHE or
// DefaultCacheDir.
func CacheDir() string {
	if d := os.Getenv(CacheEnv); d != "" {
		return d
	}
	return DefaultCacheDir
}

// FindBinaries returns the cached binaries of the pinned versions, or an error wrapping
// ErrBinariesMissing that names the first one missing.
func FindBinaries() (Binaries, error) {
	dir := CacheDir()
	path := func(name, version string) string {
		return filepath.Join(dir, name+"-"+version, name)
	}
	b := Binaries{
		APIServer: path("kube-apiserver", KubeVersion),
		Etcd:      path("etcd", EtcdVersion),
		Kubectl:   path("kubectl", KubeVersion),
	}
	for _, p := range []string{b.APIServer, b.Etcd, b.Kubectl} {
		st, err := os.Stat(p)
		if err != nil || st.Mode()&0o111 == 0 {
			return Binaries{}, fmt.Errorf("%w (no executable %s)", ErrBinariesMissing, p)
		}
	}
	return b, nil
}

// RequireBinaries returns the cached binaries, or skips the test with one line saying
// how to build them.
func RequireBinaries(t testing.TB) Binaries {
	t.Helper()
	b, err := FindBinaries()
	if err != nil {
		t.Skipf("needs kube-apiserver %s, etcd %s and kubectl in %s: run scripts/kube-bins.sh "+
			"(or set %s)", KubeVersion, EtcdVersion, CacheDir(), CacheEnv)
	}
	return b
}
