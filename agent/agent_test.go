package agent

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/veil-mesh/veil/agent/workloadfile"

	"golang.org/x/sys/unix"
)

func TestPeerTable(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	f := &workloadfile.File{TrustDomain: td, Workloads: []workloadfile.Workload{
		{Name: "a", Namespace: "default", ServiceAccount: "sa-a", Node: "n1",
			IPs: []netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("fd00::1")}},
		{Name: "b", Namespace: "prod", ServiceAccount: "sa-b", Node: "n2",
			IPs: []netip.Addr{netip.MustParseAddr("10.0.0.2")}},
	}}
	p := newPeerTable()
	if _, ok := p.IdentityFor(netip.MustParseAddr("10.0.0.1")); ok {
		t.Fatal("empty table knows an identity")
	}
	p.replace(f)
	for ip, want := range map[string]string{
		"10.0.0.1":        "spiffe://cluster.local/ns/default/sa/sa-a",
		"::ffff:10.0.0.1": "spiffe://cluster.local/ns/default/sa/sa-a",
		"fd00::1":         "spiffe://cluster.local/ns/default/sa/sa-a",
		"10.0.0.2":        "spiffe://cluster.local/ns/prod/sa/sa-b",
	} {
		id, ok := p.IdentityFor(netip.MustParseAddr(ip))
		if !ok || id.String() != want {
			t.Errorf("IdentityFor(%s) = %v %v, want %s", ip, id, ok, want)
		}
	}
	if _, ok := p.IdentityFor(netip.MustParseAddr("10.0.0.3")); ok {
		t.Error("unknown address has an identity")
	}
}

func TestSameWorkload(t *testing.T) {
	base := workloadfile.Workload{Name: "a", Namespace: "default", ServiceAccount: "sa",
		Netns: "/run/netns/a", IPs: []netip.Addr{netip.MustParseAddr("10.0.0.1")}}
	if !sameWorkload(base, base) {
		t.Fatal("a workload differs from itself")
	}
	// The CNI plugins' order, then the kubelet's, primary family first.
	v4, v6 := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("fd00::1")
	fromCNI, fromAPI := base, base
	fromCNI.IPs = []netip.Addr{v6, v4}
	fromAPI.IPs = []netip.Addr{v4, v6}
	if !sameWorkload(fromCNI, fromAPI) {
		t.Error("the same addresses in another order count as a change")
	}
	for name, change := range map[string]func(*workloadfile.Workload){
		"service account": func(w *workloadfile.Workload) { w.ServiceAccount = "other" },
		"netns":           func(w *workloadfile.Workload) { w.Netns = "/run/netns/b" },
		"ip": func(w *workloadfile.Workload) {
			w.IPs = []netip.Addr{netip.MustParseAddr("10.0.0.9")}
		},
		"extra ip": func(w *workloadfile.Workload) {
			w.IPs = append([]netip.Addr{}, w.IPs[0], netip.MustParseAddr("fd00::1"))
		},
	} {
		w := base
		change(&w)
		if sameWorkload(base, w) {
			t.Errorf("a change of %s went unnoticed", name)
		}
	}
}

func TestConfigNamesMissingFlags(t *testing.T) {
	c := Config{Node: "n1", WorkloadFile: "/w.yaml"}
	err := c.validate()
	if err == nil {
		t.Fatal("incomplete config accepted")
	}
	for _, flag := range []string{"--cgroup", "--bpffs", "--admin-socket", "--ca-addr",
		"--ca-root", "--node-token-file"} {
		if !strings.Contains(err.Error(), flag) {
			t.Errorf("error %q does not name %s", err, flag)
		}
	}
	if strings.Contains(err.Error(), "--node ") {
		t.Errorf("error %q names --node, which was given", err)
	}
}

func TestErrorRingKeepsLatest(t *testing.T) {
	r := newErrorRing(3)
	for i := range 5 {
		r.add(errors.New(string(rune('a' + i))).Error())
	}
	got := r.recent()
	if len(got) != 3 || got[0].Message != "c" || got[2].Message != "e" {
		t.Fatalf("recent = %+v, want c d e", got)
	}
}

// The agent leaves with a soft open-file limit as high as its hard limit allows.
func TestRaiseFileLimit(t *testing.T) {
	got, err := raiseFileLimit()
	if err != nil {
		t.Fatal(err)
	}
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if lim.Cur != got || lim.Cur != lim.Max {
		t.Fatalf("limit now %d/%d, reported %d; want the soft limit at the hard one", lim.Cur, lim.Max, got)
	}
}
