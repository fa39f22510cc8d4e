package main

import (
	"bytes"
	"encoding/json"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/veil-mesh/veil/agent/cni"
)

// The tests run this test binary as the plugin, the way a container runtime runs one:
// environment variables, the configuration on stdin, the result or error on stdout.
// The agent is a stand-in on a Unix socket; e2e TestKubernetesDiscovery runs the plugin
// against a real agent, in a real CNI chain.
const pluginEnv = "VEIL_CNI_TEST_PLUGIN"

func TestMain(m *testing.M) {
	if os.Getenv(pluginEnv) != "" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

const prevResult = `{"cniVersion": "1.0.0",
  "interfaces": [{"name": "eth0", "sandbox": "/run/netns/x"}],
  "ips": [{"address": "10.244.1.200/24", "gateway": "10.244.1.1", "interface": 0},
          {"address": "fd00:10:244:1::c8/64", "interface": 0}]}`

// conf is the configuration the runtime gives veil-cni: its own and the chain's result.
func conf(socket string, extra string) []byte {
	c := `{"cniVersion": "1.0.0", "name": "k8s", "type": "veil-cni", "agentSocket": "` +
		socket + `"` + extra + `, "prevResult": ` + prevResult + `}`
	return []byte(c)
}

type outcome struct {
	stdout []byte
	err    error
}

func runPlugin(t *testing.T, command, args string, stdin []byte) outcome {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), pluginEnv+"=1", "CNI_COMMAND="+command,
		"CNI_CONTAINERID=sandbox1", "CNI_NETNS=/run/netns/x", "CNI_IFNAME=eth0",
		"CNI_PATH=/opt/cni/bin", "CNI_ARGS="+args)
	cmd.Stdin = bytes.NewReader(stdin)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if stderr.Len() > 0 {
		t.Logf("plugin stderr: %s", stderr.String())
	}
	return outcome{out, err}
}

func (o outcome) cniError(t *testing.T) types.Error {
	t.Helper()
	if o.err == nil {
		t.Fatalf("the plugin succeeded with %s, want an error", o.stdout)
	}
	var e types.Error
	if err := json.Unmarshal(o.stdout, &e); err != nil {
		t.Fatalf("the plugin failed (%v) without a CNI error on stdout: %q", o.err, o.stdout)
	}
	return e
}

// passedThrough checks that the plugin succeeded and printed the previous result.
func (o outcome) passedThrough(t *testing.T) {
	t.Helper()
	if o.err != nil {
		t.Fatalf("the plugin failed: %v: %s", o.err, o.stdout)
	}
	var got struct {
		IPs []struct{ Address string } `json:"ips"`
	}
	if err := json.Unmarshal(o.stdout, &got); err != nil || len(got.IPs) != 2 ||
		got.IPs[0].Address != "10.244.1.200/24" {
		t.Fatalf("the plugin printed %q (%v), want the previous result", o.stdout, err)
	}
}

const podArgs = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-0;K8S_POD_UID=u-1"

// fakeAgent answers the CNI paths on a Unix socket with status and body, and records
// the requests.
func fakeAgent(t *testing.T, status int, body string) (string, *requests) {
	t.Helper()
	socket := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	reqs := &requests{}
	mux := http.NewServeMux()
	handle := func(w http.ResponseWriter, r *http.Request) {
		var req cni.Request
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			t.Errorf("the plugin sent a body that is not a request: %v", err)
		}
		req.ContainerID += " " + r.URL.Path // which path it came to
		reqs.add(req)
		w.WriteHeader(status)
		_, _ = w.Write([]byte(body))
	}
	mux.HandleFunc("POST "+cni.AddPath, handle)
	mux.HandleFunc("POST "+cni.DelPath, handle)
	srv := &http.Server{Handler: mux}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return socket, reqs
}

// requests are what a fakeAgent was sent; its server's goroutines add to them.
type requests struct {
	mu   sync.Mutex
	reqs []cni.Request
}

func (r *requests) add(req cni.Request) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reqs = append(r.reqs, req)
}

func (r *requests) list() []cni.Request {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.reqs)
}

func TestAddEnrolsThroughTheAgent(t *testing.T) {
	socket, reqs := fakeAgent(t, http.StatusOK, `{"mesh": true, "identity": "spiffe://x/ns/shop/sa/cart"}`)
	runPlugin(t, "ADD", podArgs, conf(socket, "")).passedThrough(t)
	want := cni.Request{Namespace: "shop", Name: "cart-0", UID: "u-1",
		ContainerID: "sandbox1 " + cni.AddPath, Netns: "/run/netns/x",
		IPs: []netip.Addr{netip.MustParseAddr("10.244.1.200"), netip.MustParseAddr("fd00:10:244:1::c8")}}
	if got := reqs.list(); len(got) != 1 || !equalRequest(got[0], want) {
		t.Errorf("the agent got %+v, want one %+v", got, want)
	}
}

func equalRequest(a, b cni.Request) bool {
	return a.Namespace == b.Namespace && a.Name == b.Name && a.UID == b.UID &&
		a.ContainerID == b.ContainerID && a.Netns == b.Netns && slices.Equal(a.IPs, b.IPs)
}

// Without an agent, a pod is held: the runtime gets an error it retries on, naming the
// socket and what to look at.
func TestAddWithoutAgentHoldsThePod(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "agent.sock")
	e := runPlugin(t, "ADD", podArgs, conf(socket, "")).cniError(t)
	if e.Code != types.ErrTryAgainLater || !strings.Contains(e.Msg, "pod shop/cart-0 held") ||
		!strings.Contains(e.Details, "no veil agent answers at "+socket) {
		t.Errorf("error %+v, want code %d naming the pod and the socket", e, types.ErrTryAgainLater)
	}
}

// An agent that cannot enroll the pod fails the ADD with the agent's reason.
func TestAddFailsWithTheAgentsReason(t *testing.T) {
	socket, _ := fakeAgent(t, http.StatusServiceUnavailable,
		"pod shop/cart-0 not enrolled within 30s: no network namespace on this node holds its address yet\n")
	e := runPlugin(t, "ADD", podArgs, conf(socket, "")).cniError(t)
	if e.Code != types.ErrTryAgainLater ||
		!strings.Contains(e.Details, "503 Service Unavailable: pod shop/cart-0 not enrolled within 30s: no network namespace") {
		t.Errorf("error %+v, want the agent's reason", e)
	}
}

// The agent's own namespace, a namespace the configuration excludes and a sandbox that
// is not a Kubernetes pod's are let through without asking the agent, which is down.
func TestAddLetsThroughWhatItDoesNotHold(t *testing.T) {
	down := filepath.Join(t.TempDir(), "agent.sock")
	for _, tc := range []struct{ name, args, extra string }{
		{"agent's namespace", "K8S_POD_NAMESPACE=veil-system;K8S_POD_NAME=veil-agent-x", ""},
		{"kube-system", "K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns-1", ""},
		{"configured", podArgs, `, "excludeNamespaces": ["shop"]`},
		{"not a pod", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			runPlugin(t, "ADD", tc.args, conf(down, tc.extra)).passedThrough(t)
		})
	}
}

func TestAddNeedsThePreviousResult(t *testing.T) {
	socket, reqs := fakeAgent(t, http.StatusOK, `{"mesh": true}`)
	noPrev := []byte(`{"cniVersion": "1.0.0", "name": "k8s", "type": "veil-cni", "agentSocket": "` +
		socket + `"}`)
	e := runPlugin(t, "ADD", podArgs, noPrev).cniError(t)
	if !strings.Contains(e.Details, "chained plugin") {
		t.Errorf("error %+v, want one saying veil-cni goes after the plugins that give addresses", e)
	}
	if got := reqs.list(); len(got) != 0 {
		t.Errorf("the agent was asked %+v", got)
	}
	e = runPlugin(t, "ADD", podArgs, []byte(`{"cniVersion": "1.0.0", "type": `)).cniError(t)
	if e.Code != types.ErrDecodingFailure {
		t.Errorf("a broken configuration: %+v, want code %d", e, types.ErrDecodingFailure)
	}
}

// DEL tells the agent, and succeeds whether or not the agent is there.
func TestDel(t *testing.T) {
	socket, reqs := fakeAgent(t, http.StatusOK, `{}`)
	if o := runPlugin(t, "DEL", podArgs, conf(socket, "")); o.err != nil {
		t.Fatalf("DEL: %v: %s", o.err, o.stdout)
	}
	if got := reqs.list(); len(got) != 1 || got[0].ContainerID != "sandbox1 "+cni.DelPath ||
		got[0].UID != "u-1" {
		t.Errorf("the agent got %+v, want one DEL for u-1", got)
	}
	if o := runPlugin(t, "DEL", podArgs, conf(filepath.Join(t.TempDir(), "none"), "")); o.err != nil {
		t.Errorf("DEL with no agent: %v: %s", o.err, o.stdout)
	}
}

func TestVersion(t *testing.T) {
	o := runPlugin(t, "VERSION", "", []byte(`{"cniVersion": "1.0.0"}`))
	if o.err != nil || !strings.Contains(string(o.stdout), `"1.1.0"`) {
		t.Errorf("VERSION: %v: %s", o.err, o.stdout)
	}
}

// Chains that network plugins still write in CNI 0.3.1 are served, excluded
// namespaces included, ADD and DEL alike.
func TestVersion031(t *testing.T) {
	socket, reqs := fakeAgent(t, http.StatusOK, `{"mesh": true}`)
	conf031 := func(sock string) []byte {
		return []byte(`{"cniVersion": "0.3.1", "name": "k8s", "type": "veil-cni", "agentSocket": "` +
			sock + `", "prevResult": {"cniVersion": "0.3.1", "interfaces": [{"name": "eth0"}],
			"ips": [{"version": "4", "address": "10.244.1.200/24", "interface": 0}]}}`)
	}
	o := runPlugin(t, "ADD", podArgs, conf031(socket))
	if o.err != nil || !strings.Contains(string(o.stdout), "10.244.1.200/24") {
		t.Fatalf("ADD with 0.3.1: %v: %s", o.err, o.stdout)
	}
	if got := reqs.list(); len(got) != 1 || got[0].IPs[0].String() != "10.244.1.200" {
		t.Errorf("the agent got %+v", got)
	}
	down := filepath.Join(t.TempDir(), "none")
	for _, cmd := range []string{"ADD", "DEL"} {
		o := runPlugin(t, cmd, "K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns-1", conf031(down))
		if o.err != nil {
			t.Errorf("%s of a kube-system pod with 0.3.1: %v: %s", cmd, o.err, o.stdout)
		}
	}
}
