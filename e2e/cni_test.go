package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/veil-mesh/veil/agent"
	"github.com/veil-mesh/veil/agent/cni"
	"github.com/veil-mesh/veil/tlsengine"
)

// debianCNIDir is where Debian's containernetworking-plugins puts bridge and host-local.
const debianCNIDir = "/usr/lib/cni"

// cniChain is node1's CNI configuration as a container runtime would read it: Debian's
// bridge plugin attaches the pod to the node's cni0 with an address from host-local,
// and veil-cni, last, holds the pod until the agent has it. The addresses come from a
// corner of node1's pod range the cluster script leaves unused.
func cniChain(agentSocket, ipamDir string) []byte {
	return fmt.Appendf(nil, `{
  "cniVersion": "1.0.0",
  "name": "veil-test",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": false,
     "ipam": {"type": "host-local", "dataDir": %q,
              "ranges": [[{"subnet": "10.244.1.0/24", "rangeStart": "10.244.1.200",
                           "rangeEnd": "10.244.1.220", "gateway": "10.244.1.1"}]],
              "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}]}},
    {"type": "veil-cni", "agentSocket": %q}
  ]
}`, ipamDir, agentSocket)
}

// nodeExec runs CNI plugins in a node's network namespace, where a container runtime
// on that node would run them.
type nodeExec struct {
	invoke.DefaultExec
	netns string
}

func (e *nodeExec) ExecPlugin(ctx context.Context, plugin string, stdin []byte,
	environ []string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "nsenter", "--net="+e.netns, "--", plugin)
	cmd.Env = environ
	cmd.Stdin = bytes.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		var cniErr types.Error
		if json.Unmarshal(stdout.Bytes(), &cniErr) == nil && cniErr.Msg != "" {
			return nil, &cniErr
		}
		return nil, fmt.Errorf("%s: %w; stderr: %s", filepath.Base(plugin), err, stderr.String())
	}
	return stdout.Bytes(), nil
}

// cniRuntime sets up and tears down pod sandboxes on node1 of c with cniChain.
type cniRuntime struct {
	c    *cluster
	cfg  *libcni.CNIConfig
	list *libcni.NetworkConfigList
}

func newCNIRuntime(t *testing.T, c *cluster) *cniRuntime {
	t.Helper()
	if _, err := os.Stat(filepath.Join(debianCNIDir, "bridge")); err != nil {
		t.Skipf("no CNI bridge plugin in %s: install containernetworking-plugins "+
			"(scripts/install-deps.sh does)", debianCNIDir)
	}
	list, err := libcni.ConfListFromBytes(cniChain(filepath.Join(c.state, "node1", "agent.sock"),
		t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	exe := &nodeExec{netns: "/run/netns/" + c.prefix + "-node1",
		DefaultExec: invoke.DefaultExec{RawExec: &invoke.RawExec{}}}
	cfg := libcni.NewCNIConfigWithCacheDir([]string{c.bin, debianCNIDir}, t.TempDir(), exe)
	return &cniRuntime{c: c, cfg: cfg, list: list}
}

func (r *cniRuntime) conf(pod *corev1.Pod) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{
		ContainerID: "sandbox-" + string(pod.UID), IfName: "eth0",
		NetNS: "/run/netns/" + r.c.prefix + "-" + pod.Name,
		Args: [][2]string{
			{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", pod.Namespace},
			{"K8S_POD_NAME", pod.Name}, {"K8S_POD_UID", string(pod.UID)},
		},
	}
}

// add sets up pod's sandbox as a runtime would, and returns the address it got, or the
// error the chain failed with.
func (r *cniRuntime) add(t *testing.T, pod *corev1.Pod) (netip.Addr, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	res, err := r.cfg.AddNetworkList(ctx, r.list, r.conf(pod))
	if err != nil {
		return netip.Addr{}, err
	}
	t.Cleanup(func() { r.del(t, pod) })
	cur, err := current.NewResultFromResult(res)
	if err != nil || len(cur.IPs) == 0 {
		t.Fatalf("the CNI chain's result for %s: %v, %v", pod.Name, res, err)
	}
	ip, _ := netip.AddrFromSlice(cur.IPs[0].Address.IP)
	return ip.Unmap(), nil
}

func (r *cniRuntime) del(t *testing.T, pod *corev1.Pod) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := r.cfg.DelNetworkList(ctx, r.list, r.conf(pod)); err != nil {
		t.Errorf("CNI DEL of %s: %v", pod.Name, err)
	}
}

// createPendingPod tells the API server about a pod the kubelet has not started yet:
// scheduled to node1, no address.
func createPendingPod(t *testing.T, kc kubernetes.Interface, ns, name, sa string,
	labels map[string]string) *corev1.Pod {
	t.Helper()
	pod, err := kc.CoreV1().Pods(ns).Create(t.Context(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels},
		Spec: corev1.PodSpec{NodeName: "node1", ServiceAccountName: sa,
			Containers: []corev1.Container{{Name: "app", Image: "example.invalid/app"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating pod %s/%s: %v", ns, name, err)
	}
	return pod
}

// checkCNI starts pods through a CNI chain ending in veil-cni, as a container runtime
// would, with node1's agent watching the API: by the time the chain returns, a mesh pod
// is enrolled, so the first connection it makes is carried with its identity; a pod
// outside the mesh is let through at once. whoami is a server in the mesh, on node2.
func checkCNI(t *testing.T, c *cluster, kc kubernetes.Interface, whoami string) {
	rt := newCNIRuntime(t, c)

	// The API has the pod before the kubelet sets up its sandbox, but no address. Its
	// service account is kclient's, which the cluster's CA already signs for on node1.
	const client = "spiffe://cluster.local/ns/shop/sa/client"
	carried := func(s agent.Status) uint64 {
		for _, p := range s.Traffic.Peers {
			if p.Peer.String() == client && p.Direction == tlsengine.Inbound {
				return p.Connections
			}
		}
		return 0
	}
	before := carried(c.status(t, "node2"))
	pod := createPendingPod(t, kc, "shop", "kcni", "client", map[string]string{"app": "kcni"})
	start := time.Now()
	ip, err := rt.add(t, pod)
	if err != nil {
		t.Fatalf("CNI ADD of a mesh pod: %v", err)
	}
	t.Logf("CNI ADD of kcni: %s, address %s", time.Since(start), ip)

	// No waiting: this is where the runtime starts the pod's containers.
	s := c.status(t, "node1")
	i := slices.IndexFunc(s.Workloads, func(w agent.WorkloadStatus) bool { return w.Name == "kcni" })
	if i < 0 || !s.Workloads[i].Enrolled || !slices.Contains(s.Workloads[i].IPs, ip) {
		t.Fatalf("when CNI ADD returned, node1's workloads were %+v; want kcni enrolled at %s",
			s.Workloads, ip)
	}
	out := c.run(t, "kcni", "read-one", whoami)
	if !strings.Contains(out, ip.String()) {
		t.Fatalf("kcni's first connection to %s: %q, want its address %s", whoami, out, ip)
	}
	c.waitStatus(t, "node2", "the server's agent carrying kcni's connection with its identity",
		func(s agent.Status) bool { return carried(s) == before+1 })

	// A pod that opted out is not held, and not enrolled.
	plain := createPendingPod(t, kc, "shop", "kcnip", "plain",
		map[string]string{"veil.dev/mesh": "disabled"})
	if _, err := rt.add(t, plain); err != nil {
		t.Fatalf("CNI ADD of a pod outside the mesh: %v", err)
	}
	if slices.ContainsFunc(c.status(t, "node1").Workloads, func(w agent.WorkloadStatus) bool {
		return w.Name == "kcnip"
	}) {
		t.Error("node1 took up kcnip, which opted out of the mesh")
	}

	// A chain that gives a sandbox no address holds a mesh pod, saying why, and lets a
	// pod outside the mesh start.
	sock := filepath.Join(c.state, "node1", "agent.sock")
	noAddr := func(pod *corev1.Pod) cni.Request {
		return cni.Request{Namespace: pod.Namespace, Name: pod.Name, UID: string(pod.UID),
			ContainerID: "no-addresses"}
	}
	if resp, err := cni.Post(sock, cni.AddPath, noAddr(plain)); err != nil || resp.Mesh {
		t.Errorf("CNI ADD of kcnip without addresses: %+v, %v; want it let through", resp, err)
	}
	_, err = cni.Post(sock, cni.AddPath, noAddr(pod))
	if want := "put veil-cni after the plugins that give the pod its addresses"; err == nil ||
		!strings.Contains(err.Error(), "400 Bad Request") || !strings.Contains(err.Error(), want) {
		t.Errorf("CNI ADD of kcni without addresses: %v; want a 400 that says to %q", err, want)
	}
}
