package agent

import (
	"context"
	"errors"
	"net/http"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/veil-mesh/veil/agent/cni"
	"github.com/veil-mesh/veil/agent/kubesource"
	"github.com/veil-mesh/veil/agent/workloadfile"
	"github.com/veil-mesh/veil/redirect"
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

// A CNI ADD is answered only once the pod is enrolled in the sandbox's own network
// namespace, which the plugin names by inode: not for an earlier sandbox of the pod at
// the same address.
func TestCNIWaitsForTheSandboxsNamespace(t *testing.T) {
	ip := netip.MustParseAddr("10.0.0.1")
	wl := &workload{
		spec: workloadfile.Workload{Namespace: "shop", Name: "a", IPs: []netip.Addr{ip}},
		id:   spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/a"),
		enr:  &redirect.Enrollment{}, nsInode: 4026532001,
	}
	a := &Agent{workloads: map[string]*workload{"shop/a": wl}}
	for _, tc := range []struct {
		name  string
		inode uint64
		want  string // the identity, or what the refusal says
	}{
		{"its sandbox", 4026532001, "spiffe://cluster.local/ns/shop/sa/a"},
		{"a plugin that could not read the inode", 0, "spiffe://cluster.local/ns/shop/sa/a"},
		{"an earlier sandbox", 4026532999, "not in the new sandbox's"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 3*enrollPollEvery)
			defer cancel()
			id, err := a.waitEnrolled(ctx, cni.Request{Namespace: "shop", Name: "a",
				Netns: "/run/netns/new", NetnsInode: tc.inode, IPs: []netip.Addr{ip}})
			got := id
			if err != nil {
				got = err.Error()
			}
			if !strings.Contains(got, tc.want) {
				t.Errorf("waiting for shop/a: %q, want %q", got, tc.want)
			}
		})
	}
}
