package agent

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/rs/zerolog"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/veil-mesh/veil/agent/policy"
	"github.com/veil-mesh/veil/agent/workloadfile"
)

// checkAgent is an agent with a workload file and a policy in force, and nothing started.
func checkAgent(t testing.TB, policyYAML string) *Agent {
	t.Helper()
	a := newAgent(Config{Node: "n1"}, zerolog.Nop())
	f, problems, err := workloadfile.Parse([]byte(`
trustDomain: cluster.local
workloads:
  - {name: cart, namespace: shop, serviceAccount: cart, node: n2, ips: [10.0.0.2],
     labels: {app: cart}}
  - {name: web, namespace: shop, serviceAccount: web, node: n1, ips: [10.0.0.1]}
`))
	if err != nil || len(problems) > 0 {
		t.Fatal(err, problems)
	}
	a.file.Store(f)
	p, err := policy.Parse([]byte(policyYAML))
	if err != nil {
		t.Fatal(err)
	}
	a.policy.set(p, []byte(policyYAML))
	return a
}

func TestPolicyCheck(t *testing.T) {
	a := checkAgent(t, `
peerAuthentications:
  - {name: strict, namespace: shop, mtls: {mode: STRICT}}
authorizationPolicies:
  - name: web-only
    namespace: shop
    selector: {matchLabels: {app: cart}}
    rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/web]}}]}]
  - name: would-deny-web
    namespace: shop
    action: DENY
    dryRun: true
    rules: [{to: [{operation: {ports: ["9090"]}}]}]
`)
	for _, tc := range []struct {
		from, to string
		want     PolicyCheck
	}{
		{
			from: "10.0.0.1", to: "10.0.0.2:8080",
			want: PolicyCheck{Workload: "shop/cart", Identity: "spiffe://cluster.local/ns/shop/sa/cart",
				Port: 8080, Source: "spiffe://cluster.local/ns/shop/sa/web", SourceIP: "10.0.0.1",
				Decision: "allow", By: "ALLOW shop/web-only rule 0",
				DryRun: &DryRunCheck{Decision: "allow", By: "ALLOW shop/web-only rule 0"}},
		},
		{
			from: "192.0.2.7", to: "10.0.0.2:8080",
			want: PolicyCheck{Workload: "shop/cart", Identity: "spiffe://cluster.local/ns/shop/sa/cart",
				Port: 8080, SourceIP: "192.0.2.7", Mode: "STRICT", ModeBy: "shop/strict",
				Decision: "deny", By: "peer authentication STRICT (shop/strict)"},
		},
		{
			from: "cluster.local/ns/other/sa/x", to: "10.0.0.2:8080",
			want: PolicyCheck{Workload: "shop/cart", Identity: "spiffe://cluster.local/ns/shop/sa/cart",
				Port: 8080, Source: "spiffe://cluster.local/ns/other/sa/x",
				Decision: "deny", By: policy.ByNoAllowMatched,
				DryRun: &DryRunCheck{Decision: "deny", By: policy.ByNoAllowMatched}},
		},
		{
			from: "spiffe://cluster.local/ns/shop/sa/web", to: "10.0.0.2:9090",
			want: PolicyCheck{Workload: "shop/cart", Identity: "spiffe://cluster.local/ns/shop/sa/cart",
				Port: 9090, Source: "spiffe://cluster.local/ns/shop/sa/web",
				Decision: "allow", By: "ALLOW shop/web-only rule 0",
				DryRun: &DryRunCheck{Decision: "deny", By: "DENY shop/would-deny-web rule 0"}},
		},
	} {
		got, err := a.policyCheck(tc.from, tc.to)
		if err != nil {
			t.Errorf("check %s -> %s: %v", tc.from, tc.to, err)
			continue
		}
		if !equalCheck(got, tc.want) {
			t.Errorf("check %s -> %s =\n%+v\nwant\n%+v", tc.from, tc.to, got, tc.want)
		}
	}
}

func equalCheck(a, b PolicyCheck) bool {
	if (a.DryRun == nil) != (b.DryRun == nil) || (a.DryRun != nil && *a.DryRun != *b.DryRun) {
		return false
	}
	a.DryRun, b.DryRun = nil, nil
	return a == b
}

func TestPolicyCheckBadInput(t *testing.T) {
	a := checkAgent(t, "")
	for _, tc := range []struct{ from, to, want string }{
		{"10.0.0.1", "10.0.0.2", "is not ip:port"},
		{"10.0.0.1", "10.9.9.9:80", "is no workload's address"},
		{"not an id", "10.0.0.2:80", "is neither an IP address nor an identity"},
		{"", "10.0.0.2:80", "is neither an IP address nor an identity"},
	} {
		_, err := a.policyCheck(tc.from, tc.to)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("check %q -> %q: error %v, want one saying %q", tc.from, tc.to, err, tc.want)
		}
	}
}

func TestEvaluatePlaintextToStrict(t *testing.T) {
	p, err := policy.Parse([]byte(`peerAuthentications: [{name: s, mtls: {mode: STRICT}}]`))
	if err != nil {
		t.Fatal(err)
	}
	w := policy.Workload{Namespace: "shop"}
	src := netip.MustParseAddr("10.0.0.9")
	if v := evaluate(p, w, spiffeid.ID{}, src, 80); v.err == nil ||
		v.refusedBy != labelPeerAuthentication {
		t.Errorf("plaintext to a STRICT port: %+v", v)
	}
	peer := spiffeid.RequireFromString("spiffe://cluster.local/ns/a/sa/b")
	if v := evaluate(p, w, peer, src, 80); v.err != nil {
		t.Errorf("mTLS to a STRICT port: %+v", v)
	}
}

// FuzzPolicyCheck feeds the admin API's policy check arbitrary queries: each must give an
// answer or an error, never a panic.
func FuzzPolicyCheck(f *testing.F) {
	f.Add("10.0.0.1", "10.0.0.2:8080")
	f.Add("cluster.local/ns/shop/sa/web", "[::ffff:10.0.0.2]:1")
	f.Add("spiffe://x/y", "10.0.0.2:0")
	a := checkAgent(f, `
peerAuthentications: [{name: s, namespace: shop, portLevelMtls: {"80": {mode: STRICT}}}]
authorizationPolicies: [{name: a, dryRun: true, rules: [{from: [{source: {ipBlocks: [10.0.0.0/8]}}]}]}]
`)
	f.Fuzz(func(t *testing.T, from, to string) {
		pc, err := a.policyCheck(from, to)
		if err == nil && pc.Decision != "allow" && pc.Decision != "deny" {
			t.Fatalf("decision %q", pc.Decision)
		}
	})
}
