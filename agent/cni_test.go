package agent

import (
	"context"
	"errors"
	"net/http"
	"net/netip"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/veil-mesh/veil/agent/cni"
	"github.com/veil-mesh/veil/agent/kubesource"
)

// The CNI endpoint refuses what it cannot act on, each with what to do about it. Its
// work with a Kubernetes source, a request without addresses included, is tested end to
// end (e2e TestKubernetesDiscovery).
func TestCNIEndpointRefusals(t *testing.T) {
	requireRoot(t) // the endpoint answers root only, as the kubelet's runtime is
	sock := filepath.Join(t.TempDir(), "agent.sock")
	adminAgent(t, sock, "")
	for _, tc := range []struct {
		name, path, body string
		code             int
		want             string
	}{
		{"not JSON", cni.AddPath, `{"namespace": `, http.StatusBadRequest, "reading the CNI request"},
		{"no pod", cni.AddPath, `{"ips": ["10.0.0.1"]}`, http.StatusBadRequest,
			"K8S_POD_NAMESPACE and K8S_POD_NAME"},
		{"no Kubernetes", cni.AddPath, `{"namespace": "shop", "name": "a", "ips": ["10.0.0.1"]}`,
			http.StatusNotImplemented, "does not run with --kubernetes"},
		{"DEL without Kubernetes", cni.DelPath, `{"namespace": "shop", "name": "a"}`,
			http.StatusOK, "{"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body, err := adminRequest(sock, http.MethodPost, tc.path, tc.body)
			if err != nil {
				t.Fatal(err)
			}
			if code != tc.code || !strings.Contains(body, tc.want) {
				t.Errorf("%s: %d %q, want %d and %q", tc.path, code, body, tc.code, tc.want)
			}
		})
	}
}

// A pod the agent leaves out of the mesh is held no longer than the ADD's deadline, and
// the runtime hears why: the problem of that pod, not of a pod whose name starts alike.
func TestCNIWaitNamesWhyNotEnrolled(t *testing.T) {
	a := &Agent{workloads: map[string]*workload{}, problems: []error{
		&kubesource.PodError{Namespace: "shop", Name: "ab",
			Err: errors.New("pod shop/ab has no IP yet")},
		&kubesource.PodError{Namespace: "shop", Name: "a",
			Err: errors.New("pod shop/a: address 10.0.0.1 is pod shop/b's too")},
	}}
	ctx, cancel := context.WithTimeout(t.Context(), 3*enrollPollEvery)
	defer cancel()
	_, err := a.waitEnrolled(ctx, cni.Request{Namespace: "shop", Name: "a",
		IPs: []netip.Addr{netip.MustParseAddr("10.0.0.1")}})
	if err == nil || !strings.Contains(err.Error(), "is pod shop/b's too") {
		t.Errorf("waiting for shop/a: %v, want the address it shares with shop/b", err)
	}
}

// A CNI ADD is answered only for the sandbox's own network namespace, which the plugin
// names by inode.
func TestInSandbox(t *testing.T) {
	const self = "/proc/self/ns/net"
	var st syscall.Stat_t
	if err := syscall.Stat(self, &st); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		path string
		ino  uint64
		want bool
	}{
		{self, st.Ino, true},
		{self, st.Ino + 1, false},       // another sandbox
		{self, 0, true},                 // a plugin that could not read the inode
		{"/nonexistent", st.Ino, false}, // a namespace that is gone
	} {
		if got := inSandbox(tc.path, tc.ino); got != tc.want {
			t.Errorf("inSandbox(%s, %d) = %v, want %v", tc.path, tc.ino, got, tc.want)
		}
	}
}
