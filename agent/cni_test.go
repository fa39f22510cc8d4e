package agent

import (
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/veil-mesh/veil/agent/cni"
)

// The CNI endpoint refuses what it cannot act on, each with what to do about it. Its
// work with a Kubernetes source is tested end to end (e2e TestKubernetesDiscovery).
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
		{"no addresses", cni.AddPath, `{"namespace": "shop", "name": "a"}`, http.StatusBadRequest,
			"put veil-cni after the plugins that give the pod its addresses"},
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
