package policy

import (
	"net/netip"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

var (
	cart     = Workload{Namespace: "shop", Labels: map[string]string{"app": "cart"}}
	frontend = spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/frontend")
	batch    = spiffeid.RequireFromString("spiffe://cluster.local/ns/jobs/sa/batch")
)

func mustParse(t *testing.T, src string) *Policy {
	t.Helper()
	p, err := Parse([]byte(src))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return p
}

func TestAuthorize(t *testing.T) {
	plainFrom := func(ip string, port uint16) Request {
		return Request{Source: netip.MustParseAddr(ip), Port: port}
	}
	mtlsFrom := func(id spiffeid.ID, port uint16) Request {
		return Request{Principal: id, Source: netip.MustParseAddr("10.244.1.10"), Port: port}
	}
	for _, tc := range []struct {
		name   string
		policy string
		w      Workload
		r      Request
		allow  bool
		by     string
	}{
		{
			name: "no policy allows", w: cart, r: mtlsFrom(batch, 80),
			allow: true, by: ByNoAllowPolicy,
		},
		{
			name: "allow by principal",
			policy: `
authorizationPolicies:
  - name: frontend-only
    namespace: shop
    rules:
      - from: [{source: {principals: [cluster.local/ns/shop/sa/frontend]}}]`,
			w: cart, r: mtlsFrom(frontend, 80), allow: true, by: "ALLOW shop/frontend-only rule 0",
		},
		{
			name: "an ALLOW policy denies what it does not match",
			policy: `
authorizationPolicies:
  - name: frontend-only
    namespace: shop
    rules:
      - from: [{source: {principals: [cluster.local/ns/shop/sa/frontend]}}]`,
			w: cart, r: mtlsFrom(batch, 80), allow: false, by: ByNoAllowMatched,
		},
		{
			name: "plaintext matches no principal",
			policy: `
authorizationPolicies:
  - name: any-principal
    rules: [{from: [{source: {principals: ["*"]}}]}]`,
			w: cart, r: plainFrom("10.0.0.1", 80), allow: false, by: ByNoAllowMatched,
		},
		{
			name: "DENY before ALLOW",
			policy: `
authorizationPolicies:
  - name: all
    namespace: shop
    rules: [{}]
  - name: no-jobs
    namespace: shop
    action: DENY
    rules: [{from: [{source: {namespaces: [jobs]}}]}]`,
			w: cart, r: mtlsFrom(batch, 80), allow: false, by: "DENY shop/no-jobs rule 0",
		},
		{
			name: "DENY that does not match leaves the ALLOW",
			policy: `
authorizationPolicies:
  - name: all
    namespace: shop
    rules: [{}]
  - name: no-jobs
    namespace: shop
    action: DENY
    rules: [{from: [{source: {namespaces: [jobs]}}]}]`,
			w: cart, r: mtlsFrom(frontend, 80), allow: true, by: "ALLOW shop/all rule 0",
		},
		{
			name: "ALLOW with no rules allows nothing",
			policy: `
authorizationPolicies:
  - {name: allow-nothing, namespace: shop}`,
			w: cart, r: mtlsFrom(frontend, 80), allow: false, by: ByNoAllowMatched,
		},
		{
			name: "policy of another namespace does not apply",
			policy: `
authorizationPolicies:
  - {name: allow-nothing, namespace: jobs}`,
			w: cart, r: mtlsFrom(frontend, 80), allow: true, by: ByNoAllowPolicy,
		},
		{
			name: "selector that does not match does not apply",
			policy: `
authorizationPolicies:
  - {name: allow-nothing, namespace: shop, selector: {matchLabels: {app: db}}}`,
			w: cart, r: mtlsFrom(frontend, 80), allow: true, by: ByNoAllowPolicy,
		},
		{
			name: "mesh-wide DENY applies everywhere",
			policy: `
authorizationPolicies:
  - name: no-plaintext
    action: DENY
    rules: [{from: [{source: {notPrincipals: ["*"]}}]}]`,
			w: cart, r: plainFrom("192.0.2.1", 80), allow: false, by: "DENY mesh/no-plaintext rule 0",
		},
		{
			name: "notPrincipals lets mesh clients by",
			policy: `
authorizationPolicies:
  - name: no-plaintext
    action: DENY
    rules: [{from: [{source: {notPrincipals: ["*"]}}]}]`,
			w: cart, r: mtlsFrom(batch, 80), allow: true, by: ByNoAllowPolicy,
		},
		{
			name: "ipBlocks and a port",
			policy: `
authorizationPolicies:
  - name: lan
    namespace: shop
    rules:
      - from: [{source: {ipBlocks: [10.0.0.0/8], notIpBlocks: [10.9.0.0/16]}}]
        to: [{operation: {ports: ["8080"]}}]`,
			w: cart, r: plainFrom("10.1.2.3", 8080), allow: true, by: "ALLOW shop/lan rule 0",
		},
		{
			name: "notIpBlocks excludes",
			policy: `
authorizationPolicies:
  - name: lan
    namespace: shop
    rules:
      - from: [{source: {ipBlocks: [10.0.0.0/8], notIpBlocks: [10.9.0.0/16]}}]
        to: [{operation: {ports: ["8080"]}}]`,
			w: cart, r: plainFrom("10.9.2.3", 8080), allow: false, by: ByNoAllowMatched,
		},
		{
			name: "wrong port",
			policy: `
authorizationPolicies:
  - name: lan
    namespace: shop
    rules:
      - from: [{source: {ipBlocks: [10.0.0.0/8]}}]
        to: [{operation: {ports: ["8080"]}}]`,
			w: cart, r: plainFrom("10.1.2.3", 9090), allow: false, by: ByNoAllowMatched,
		},
		{
			name: "notPorts",
			policy: `
authorizationPolicies:
  - name: not-admin
    namespace: shop
    rules: [{to: [{operation: {notPorts: ["9000"]}}]}]`,
			w: cart, r: mtlsFrom(frontend, 9000), allow: false, by: ByNoAllowMatched,
		},
		{
			name: "an IPv4-mapped source matches an IPv4 block",
			policy: `
authorizationPolicies:
  - name: lan
    rules: [{from: [{source: {ipBlocks: [10.0.0.0/8]}}]}]`,
			w: cart, r: Request{Source: netip.MustParseAddr("::ffff:10.1.1.1"), Port: 1},
			allow: true, by: "ALLOW mesh/lan rule 0",
		},
		{
			name: "principal patterns: suffix and spiffe scheme",
			policy: `
authorizationPolicies:
  - name: p
    rules:
      - from: [{source: {principals: ["*/sa/nobody", "spiffe://cluster.local/ns/shop/*"]}}]`,
			w: cart, r: mtlsFrom(frontend, 1), allow: true, by: "ALLOW mesh/p rule 0",
		},
		{
			name: "second rule decides",
			policy: `
authorizationPolicies:
  - name: p
    namespace: shop
    rules:
      - from: [{source: {namespaces: [jobs]}}]
        to: [{operation: {ports: ["1"]}}]
      - from: [{source: {namespaces: ["sh*"]}}]`,
			w: cart, r: mtlsFrom(frontend, 80), allow: true, by: "ALLOW shop/p rule 1",
		},
		{
			name: "from entries are alternatives, fields within one all apply",
			policy: `
authorizationPolicies:
  - name: p
    namespace: shop
    rules:
      - from:
          - source: {namespaces: [jobs], ipBlocks: [10.9.0.0/16]}
          - source: {principals: [cluster.local/ns/shop/sa/nobody]}`,
			w: cart, r: mtlsFrom(batch, 80), allow: false, by: ByNoAllowMatched,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var p *Policy
			if tc.policy != "" {
				p = mustParse(t, tc.policy)
			}
			d := p.Authorize(tc.w, tc.r)
			if d.Allow != tc.allow || d.By != tc.by {
				t.Errorf("Authorize = allow %v by %q, want allow %v by %q",
					d.Allow, d.By, tc.allow, tc.by)
			}
			if d.DryRun != nil {
				t.Errorf("DryRun = %+v without dry-run policies", *d.DryRun)
			}
		})
	}
}

func TestAuthorizeDryRun(t *testing.T) {
	p := mustParse(t, `
authorizationPolicies:
  - name: would-deny-jobs
    namespace: shop
    action: DENY
    dryRun: true
    rules: [{from: [{source: {namespaces: [jobs]}}]}]
  - name: would-allow-nothing
    namespace: other
    dryRun: true
`)
	r := Request{Principal: batch, Port: 80}
	d := p.Authorize(cart, r)
	if !d.Allow || d.By != ByNoAllowPolicy {
		t.Fatalf("enforced decision = %+v, want allowed: dry-run policies are not enforced", d)
	}
	if d.DryRun == nil || d.DryRun.Allow || d.DryRun.By != "DENY shop/would-deny-jobs rule 0" {
		t.Fatalf("DryRun = %+v, want a denial by shop/would-deny-jobs", d.DryRun)
	}

	d = p.Authorize(cart, Request{Principal: frontend, Port: 80})
	if d.DryRun == nil || !d.DryRun.Allow {
		t.Fatalf("DryRun for frontend = %+v, want allowed", d.DryRun)
	}

	d = p.Authorize(Workload{Namespace: "third"}, r)
	if d.DryRun != nil {
		t.Fatalf("DryRun = %+v for a workload no dry-run policy applies to", d.DryRun)
	}
}
