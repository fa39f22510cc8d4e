package e2e

import (
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/veil-mesh/veil/agent"
	"github.com/veil-mesh/veil/agent/kubesource"
	"github.com/veil-mesh/veil/internal/kubetest"
	"github.com/veil-mesh/veil/redirect"
	"github.com/veil-mesh/veil/tlsengine"
)

// apiProxyAddr is where the agents reach the API server: node1's address on the link
// between the nodes. The test's API server listens on the machine's loopback, which the
// nodes' namespaces do not share, so the test forwards from there.
const apiProxyAddr = "10.200.0.1:16443"

// forwardAPI listens at apiProxyAddr inside node1's namespace and forwards each
// connection to the API server, until the test ends.
func (c *cluster) forwardAPI(t *testing.T, k *kubetest.Server) {
	t.Helper()
	ns, err := redirect.OpenNetns("/run/netns/" + c.prefix + "-node1")
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	ln, err := ns.Listen(netip.MustParseAddrPort(apiProxyAddr))
	if err != nil {
		t.Fatal(err)
	}
	target := strings.TrimPrefix(k.URL, "https://")
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	track := func(c net.Conn) {
		mu.Lock()
		conns = append(conns, c)
		mu.Unlock()
	}
	// The agents' watches stay open: close every forwarded connection, not only the
	// listener, or the wait never ends.
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			track(in)
			wg.Go(func() {
				defer in.Close()
				out, err := net.Dial("tcp", target)
				if err != nil {
					return
				}
				track(out)
				defer out.Close()
				go func() { io.Copy(out, in); out.(*net.TCPConn).CloseWrite() }()
				io.Copy(in, out)
			})
		}
	})
}

// agentKubeconfig writes a kubeconfig for the agents: the veil-agent service account's
// token, at apiProxyAddr, checking the server's certificate for its loopback name.
func agentKubeconfig(t *testing.T, k *kubetest.Server) string {
	t.Helper()
	kc := clientcmdapi.NewConfig()
	kc.Clusters["test"] = &clientcmdapi.Cluster{Server: "https://" + apiProxyAddr,
		CertificateAuthorityData: k.CAPEM, TLSServerName: "localhost"}
	kc.AuthInfos["veil-agent"] = &clientcmdapi.AuthInfo{
		Token: k.ServiceAccountToken(t, "veil-system", "veil-agent")}
	kc.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "veil-agent"}
	kc.CurrentContext = "test"
	path := filepath.Join(t.TempDir(), "agent-kubeconfig")
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// createPod tells the API server about a pod the cluster built: where it runs, as whom,
// and, as a kubelet would, its addresses.
func createPod(t *testing.T, kc kubernetes.Interface, ns, name, node, sa string,
	ips []string, labels map[string]string) {
	t.Helper()
	ctx := t.Context()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels},
		Spec: corev1.PodSpec{NodeName: node, ServiceAccountName: sa,
			Containers: []corev1.Container{{Name: "app", Image: "example.invalid/app"}}},
	}
	pod, err := kc.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating pod %s/%s: %v", ns, name, err)
	}
	pod.Status.Phase = corev1.PodRunning
	pod.Status.PodIP = ips[0]
	for _, ip := range ips {
		pod.Status.PodIPs = append(pod.Status.PodIPs, corev1.PodIP{IP: ip})
	}
	if _, err := kc.CoreV1().Pods(ns).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("setting pod %s/%s's addresses: %v", ns, name, err)
	}
}

func enrolledNames(s agent.Status) []string {
	var names []string
	for _, w := range s.Workloads {
		if w.Enrolled {
			names = append(names, w.Name)
		}
	}
	return names
}

// The agents learn everything from the Kubernetes API: which pods are in the mesh (by
// namespace label, overridden by a pod label), where they run and as whom, their
// network namespaces (found by address), and the policy resources; a pod started
// through veil-cni is enrolled before its containers start. They enroll and
// unenroll pods as the API says, and enforce the policies it holds, while a malformed
// resource is set aside without disturbing the rest.
func TestKubernetesDiscovery(t *testing.T) {
	k := kubetest.Start(t)
	topology, err := filepath.Abs("testdata/kube-topology")
	if err != nil {
		t.Fatal(err)
	}
	c := ownCluster(t, "vkube", "NOAGENT=1", "TOPOLOGY="+topology, "LOG_FORMAT=json")
	c.forwardAPI(t, k)

	// What deploy/ gives the agent: its namespace, service account, RBAC and the CRDs.
	for _, f := range []string{"namespace.yaml", "agent-rbac.yaml", "crds"} {
		if out, err := k.Kubectl(t, "apply", "-f", filepath.Join(c.repo, "deploy", f)); err != nil {
			t.Fatalf("kubectl apply %s: %v\n%s", f, err, out)
		}
	}
	kc := k.Client(t)
	ctx := t.Context()
	k.CreateNamespace(t, "shop")
	nsObj, err := kc.CoreV1().Namespaces().Get(ctx, "shop", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	nsObj.Labels = map[string]string{kubesource.MeshLabel: kubesource.MeshEnabled}
	if _, err := kc.CoreV1().Namespaces().Update(ctx, nsObj, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, sa := range []string{"client", "plain", "server", "other"} {
		_, err := kc.CoreV1().ServiceAccounts("shop").Create(ctx,
			&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []struct {
		name, node, sa string
		labels         map[string]string
	}{
		{"kclient", "node1", "client", map[string]string{"app": "kclient"}},
		{"kplain", "node1", "plain", map[string]string{kubesource.MeshLabel: kubesource.MeshDisabled}},
		{"kserver", "node2", "server", map[string]string{"app": "kserver"}},
		{"kother", "node2", "other", map[string]string{"app": "kother"}},
	} {
		createPod(t, kc, "shop", p.name, p.node, p.sa, []string{c.ip(t, p.name), c.ip6(t, p.name)},
			p.labels)
	}

	if out, err := c.script("start-ca").CombinedOutput(); err != nil {
		t.Fatalf("start-ca: %v\n%s", err, out)
	}
	kubeconfig := agentKubeconfig(t, k)
	for _, node := range []string{"node1", "node2"} {
		start := c.script("start-agent", node)
		start.Env = append(start.Env, "AGENT_ARGS=--kubernetes --kubeconfig "+kubeconfig)
		if out, err := start.CombinedOutput(); err != nil {
			t.Fatalf("start-agent %s: %v\n%s", node, err, out)
		}
	}
	s1 := c.status(t, "node1")
	if got := enrolledNames(s1); !slices.Equal(got, []string{"kclient"}) {
		t.Errorf("node1 enrolled %v, want [kclient]: kplain opted out by its label", got)
	}
	if got := s1.Workloads[0].Netns; got != "/run/netns/"+c.prefix+"-kclient" {
		t.Errorf("kclient's netns was found at %q", got)
	}

	// A pod with no address yet, and one whose address no namespace of the node holds:
	// each is reported and left out, and the others are served on.
	noIP := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "knoip", Namespace: "shop"},
		Spec: corev1.PodSpec{NodeName: "node1", ServiceAccountName: "client",
			Containers: []corev1.Container{{Name: "app", Image: "example.invalid/app"}}},
	}
	if _, err := kc.CoreV1().Pods("shop").Create(ctx, noIP, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	createPod(t, kc, "shop", "knons", "node1", "client", []string{"10.244.1.99"}, nil)
	c.waitStatus(t, "node1", "both problem pods reported", func(s agent.Status) bool {
		p := strings.Join(s.WorkloadFile.Problems, "\n")
		return strings.Contains(p, "pod shop/knoip has no IP yet") &&
			strings.Contains(p, "pod shop/knons (10.244.1.99): no network namespace on this node")
	})
	if got := enrolledNames(c.status(t, "node1")); !slices.Equal(got, []string{"kclient"}) {
		t.Errorf("node1 enrolled %v beside the problem pods, want [kclient]", got)
	}

	// Through the mesh, with the identity the API gave the client.
	server := c.ip(t, "kserver")
	whoami := server + ":7860"
	c.server(t, "kserver", "whoami", whoami)
	if !c.reaches(t, "kclient", whoami) {
		t.Fatal("kclient did not reach kserver")
	}
	c.waitStatus(t, "node2", "kserver seeing kclient's identity", func(s agent.Status) bool {
		return slices.ContainsFunc(s.Traffic.Peers, func(p tlsengine.PeerCount) bool {
			return p.Peer.String() == "spiffe://cluster.local/ns/shop/sa/client"
		})
	})

	// Pods started by a container runtime, through a CNI chain that ends in veil-cni.
	checkCNI(t, c, kc, whoami)

	// The API server goes away and comes back: the agents serve on meanwhile, and their
	// watches pick up again, which the policy below then shows.
	k.RestartAPIServer(t, func() {
		if !c.reaches(t, "kclient", whoami) {
			t.Error("kclient did not reach kserver while the API server was down")
		}
	})

	// A policy resource, and a malformed one beside it.
	dyn, err := dynamic.NewForConfig(k.Config)
	if err != nil {
		t.Fatal(err)
	}
	aps := dyn.Resource(kubesource.AuthorizationPoliciesResource).Namespace("shop")
	create := func(name string, spec map[string]any) {
		u := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "policy.veil.dev/v1alpha1", "kind": "AuthorizationPolicy",
			"metadata": map[string]any{"name": name}, "spec": spec,
		}}
		if _, err := aps.Create(ctx, u, metav1.CreateOptions{}); err != nil {
			t.Fatalf("creating AuthorizationPolicy %s: %v", name, err)
		}
	}
	create("bad", map[string]any{"rules": []any{map[string]any{"from": []any{
		map[string]any{"source": map[string]any{"ipBlocks": []any{"10.0.0.0/33"}}}}}}})
	create("only-other", map[string]any{
		"selector": map[string]any{"matchLabels": map[string]any{"app": "kserver"}},
		"rules": []any{map[string]any{"from": []any{map[string]any{
			"source": map[string]any{"principals": []any{"*/sa/other"}}}}}},
	})
	c.waitStatus(t, "node2", "the good policy in force, the bad one set aside",
		func(s agent.Status) bool { return s.Policy.AuthorizationPolicies == 1 })
	if c.reaches(t, "kclient", whoami) {
		t.Error("kclient reached kserver although the AuthorizationPolicy admits only sa/other")
	}
	log, err := os.ReadFile(filepath.Join(c.state, "node2", "agent.log"))
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(log), "AuthorizationPolicy shop/bad (resourceVersion"); n != 1 {
		t.Errorf("the malformed resource was logged %d times, want once", n)
	}

	// A pod that opts out leaves the mesh; a pod that is deleted too.
	patch := []byte(`{"metadata":{"labels":{"veil.dev/mesh":"disabled"}}}`)
	if _, err := kc.CoreV1().Pods("shop").Patch(ctx, "kother", types.MergePatchType, patch,
		metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	zero := int64(0)
	if err := kc.CoreV1().Pods("shop").Delete(ctx, "kserver",
		metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatal(err)
	}
	c.waitStatus(t, "node2", "kother and kserver unenrolled", func(s agent.Status) bool {
		return len(enrolledNames(s)) == 0 && len(s.Workloads) == 0
	})
}
