package workloadfile

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

const header = "trustDomain: cluster.local\nworkloads:\n"

func TestParseValid(t *testing.T) {
	data := header + `
  - name: a1
    namespace: default
    serviceAccount: sa-a
    node: node1
    ips: [10.244.1.11, "fd00::11"]
    netns: /run/netns/veil-a1
  - name: b1
    namespace: prod
    serviceAccount: sa-b
    node: node2
    ips: [10.244.2.11]
    labels: {app: b, tier: back}
`
	f, problems, err := Parse([]byte(data))
	if err != nil || len(problems) != 0 {
		t.Fatalf("Parse: err=%v problems=%v", err, problems)
	}

	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	want := &File{TrustDomain: td, Workloads: []Workload{
		{Name: "a1", Namespace: "default", ServiceAccount: "sa-a", Node: "node1",
			IPs:   []netip.Addr{netip.MustParseAddr("10.244.1.11"), netip.MustParseAddr("fd00::11")},
			Netns: "/run/netns/veil-a1"},
		{Name: "b1", Namespace: "prod", ServiceAccount: "sa-b", Node: "node2",
			IPs:    []netip.Addr{netip.MustParseAddr("10.244.2.11")},
			Labels: map[string]string{"app": "b", "tier": "back"}},
	}, Namespaces: map[string]Namespace{}}
	if !reflect.DeepEqual(f, want) {
		t.Fatalf("Parse =\n%+v\nwant\n%+v", f, want)
	}
	if got := f.Workloads[0].ID(td).String(); got != "spiffe://cluster.local/ns/default/sa/sa-a" {
		t.Fatalf("ID = %s", got)
	}
}

func TestParseFileErrors(t *testing.T) {
	tests := []struct {
		name, data, want string
	}{
		{"empty", "", "workload file is empty; it needs at least a line like " +
			"trustDomain: cluster.local"},
		{"not yaml", "trustDomain: [", "parsing workload file: yaml: line 1: " +
			"did not find expected node content"},
		{"missing trust domain", "workloads: []\n", "line 1: trustDomain is missing; " +
			"add a top-level line like trustDomain: cluster.local"},
		{"bad trust domain", "workloads: []\ntrustDomain: Cluster Local\n",
			`line 2: trustDomain "Cluster Local" is not a valid trust domain name; ` +
				`use lower-case letters, digits, '.', '-' and '_', e.g. cluster.local`},
		{"trust domain as id", "trustDomain: spiffe://cluster.local\n",
			`line 1: trustDomain "spiffe://cluster.local" is not a valid trust domain ` +
				`name; use lower-case letters, digits, '.', '-' and '_', e.g. cluster.local`},
		{"unknown top-level field", "trustDomain: cluster.local\nworkload: []\n",
			"parsing workload file: line 2: field workload is not a top-level field " +
				"(known: trustDomain, workloads, namespaces); fix the spelling or remove it"},
		{"unknown workload field", header + "  - name: a1\n    serviceaccount: x\n",
			"parsing workload file: line 4: field serviceaccount is not a workload field " +
				"(known: name, namespace, serviceAccount, node, ips, netns, labels); " +
				"fix the spelling or remove it"},
		{"wrong type", header + "  - name: a1\n    ips: 10.244.1.11\n",
			"parsing workload file: line 4: cannot unmarshal !!str `10.244....` " +
				"into []string"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, problems, err := Parse([]byte(tt.data))
			if err == nil {
				t.Fatalf("Parse succeeded: %+v %v", f, problems)
			}
			if err.Error() != tt.want {
				t.Fatalf("error:\n got %q\nwant %q", err, tt.want)
			}
		})
	}
}

// wl renders one workload entry; fields left empty are left out of the YAML.
func wl(name, ns, sa, node, ips, netns string) string {
	var b strings.Builder
	b.WriteString("  - name: " + name + "\n")
	for _, kv := range [][2]string{
		{"namespace", ns}, {"serviceAccount", sa}, {"node", node}, {"ips", ips}, {"netns", netns},
	} {
		if kv[1] != "" {
			b.WriteString("    " + kv[0] + ": " + kv[1] + "\n")
		}
	}
	return b.String()
}

func TestParseWorkloadProblems(t *testing.T) {
	good := wl("a1", "default", "sa-a", "node1", "[10.244.1.11]", "/run/netns/veil-a1")
	tests := []struct {
		name  string
		entry string // follows the good entry, which starts on line 3 and ends on line 8
		want  string
		kept  int
	}{
		{"missing name", "  - namespace: default\n", "workload #2: line 9: name is missing; " +
			"add name: <the pod name>", 1},
		{"missing namespace", wl("b1", "", "sa", "node1", "[10.244.1.12]", ""),
			"workload #2: line 9: namespace is missing; add namespace: <the pod's namespace>", 1},
		{"missing service account", wl("b1", "default", "", "node1", "[10.244.1.12]", ""),
			"workload default/b1: line 9: serviceAccount is missing; " +
				"add serviceAccount: <the pod's service account>", 1},
		{"missing node", wl("b1", "default", "sa", "", "[10.244.1.12]", ""),
			"workload default/b1: line 9: node is missing; " +
				"add node: <the node the pod runs on>", 1},
		{"missing ips", wl("b1", "default", "sa", "node1", "", ""),
			"workload default/b1: line 9: ips is missing or empty; " +
				"add ips: [<pod IP>], e.g. ips: [10.244.1.11]", 1},
		{"bad ip", wl("b1", "default", "sa", "node1", "[10.244.1.12, 10.244.1.300]", ""),
			`workload default/b1: line 13: ips[1] "10.244.1.300" is not an IP address; ` +
				`write a plain IPv4 or IPv6 address, e.g. 10.244.1.11`, 1},
		{"ip with zone", wl("b1", "default", "sa", "node1", `["fe80::1%eth0"]`, ""),
			`workload default/b1: line 13: ips[0] "fe80::1%eth0" is not an IP address; ` +
				`write a plain IPv4 or IPv6 address, e.g. 10.244.1.11`, 1},
		{"relative netns", wl("b1", "default", "sa", "node1", "[10.244.1.12]", "veil-b1"),
			`workload default/b1: line 14: netns "veil-b1" is not an absolute path; ` +
				`write the full path, e.g. /run/netns/veil-b1`, 1},
		{"service account not a path segment", wl("b1", "default", "s/a", "node1",
			"[10.244.1.12]", ""), `workload default/b1: line 11: serviceAccount "s/a" ` +
			`cannot be part of a SPIFFE ID; use only letters, digits, '.', '-' and '_'`, 1},
		{"duplicate ip", wl("b1", "default", "sa", "node2", "[10.244.2.1, 10.244.1.11]", ""),
			"workload default/b1: line 9: IP 10.244.1.11 is already used by workload " +
				"default/a1; give each workload its own IPs", 1},
		{"duplicate name", wl("a1", "default", "sa", "node2", "[10.244.2.11]", ""),
			"workload default/a1: line 9: the same namespace/name is already listed at " +
				"line 3; remove or rename one of them", 1},
		{"same name in another namespace", wl("a1", "other", "sa", "node2",
			"[10.244.2.11]", ""), "", 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, problems, err := Parse([]byte(header + good + tt.entry))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if len(f.Workloads) != tt.kept || f.Workloads[0].Name != "a1" {
				t.Fatalf("kept %+v, want %d workloads starting with a1", f.Workloads, tt.kept)
			}
			var got []string
			for _, p := range problems {
				got = append(got, p.Error())
			}
			var want []string
			if tt.want != "" {
				want = []string{tt.want}
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("problems:\n got %q\nwant %q", got, want)
			}
		})
	}
}

func TestLoadNamesPath(t *testing.T) {
	path := t.TempDir() + "/workloads.yaml"
	_, _, err := Load(path)
	want := "reading workload file: open " + path + ": no such file or directory"
	if err == nil || err.Error() != want {
		t.Fatalf("Load error = %v, want %q", err, want)
	}
}

func TestParseNamespaces(t *testing.T) {
	f, _, err := Parse([]byte(header + `
namespaces:
  - name: locked
    outsideMesh: refuse
  - name: open
    outsideMesh: passthrough
`))
	if err != nil {
		t.Fatal(err)
	}
	if !f.Namespaces["locked"].RefuseOutsideMesh || f.Namespaces["open"].RefuseOutsideMesh ||
		f.Namespaces["unlisted"].RefuseOutsideMesh {
		t.Fatalf("namespaces = %+v", f.Namespaces)
	}

	for name, tc := range map[string]struct{ yaml, want string }{
		"bad value": {"namespaces:\n  - name: a\n    outsideMesh: deny\n",
			`line 3: namespace "a": outsideMesh "deny" is not passthrough or refuse`},
		"no name": {"namespaces:\n  - outsideMesh: refuse\n",
			"line 3: namespace entry without a name; add name: <namespace>"},
		"twice": {"namespaces:\n  - name: a\n  - name: a\n",
			`line 4: namespace "a" is listed twice; merge the entries`},
		"unknown field": {"namespaces:\n  - name: a\n    outside: refuse\n",
			"parsing workload file: line 4: field outside is not a namespace field " +
				"(known: name, outsideMesh); fix the spelling or remove it"},
	} {
		_, _, err := Parse([]byte("trustDomain: cluster.local\n" + tc.yaml))
		if err == nil || err.Error() != tc.want {
			t.Errorf("%s: error %v, want %q", name, err, tc.want)
		}
	}
}
