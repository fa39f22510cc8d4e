package policy

import (
	"strings"
	"testing"
)

func TestParseEmpty(t *testing.T) {
	for _, src := range []string{"", "# nothing yet\n", "peerAuthentications: []\n"} {
		p, err := Parse([]byte(src))
		if err != nil || len(p.PeerAuthentications)+len(p.AuthorizationPolicies) != 0 {
			t.Errorf("Parse(%q) = %+v, %v; want an empty policy", src, p, err)
		}
	}
}

func TestParseRejects(t *testing.T) {
	for _, tc := range []struct {
		name, src string
		want      []string // every one must appear in the error
	}{
		{
			name: "not YAML",
			src:  "peerAuthentications: [",
			want: []string{"parsing policy file"},
		},
		{
			name: "L7 field",
			src: `authorizationPolicies:
  - name: a
    rules:
      - to:
          - operation: {paths: [/admin]}
`,
			want: []string{"line 5", "field paths is not an operation field",
				"veil enforces L4 policy only"},
		},
		{
			name: "misspelt top-level field",
			src:  "peerAuthentication: []\n",
			want: []string{"line 1", "is not a top-level field"},
		},
		{
			name: "bad mode",
			src: `peerAuthentications:
  - name: a
    namespace: shop
    mtls:
      mode: strict
`,
			want: []string{"line 5", "peerAuthentications[0].mtls.mode", `"strict" is not a mode`},
		},
		{
			name: "bad port key",
			src: `peerAuthentications:
  - name: a
    namespace: shop
    portLevelMtls:
      http: {mode: STRICT}
`,
			want: []string{"line 5", "portLevelMtls.http", `"http" is not a port`},
		},
		{
			name: "bad ip block among good ones",
			src: `authorizationPolicies:
  - name: a
    rules:
      - from:
          - source:
              ipBlocks:
                - 10.0.0.0/8
                - 10.0.0.0/33
`,
			want: []string{"line 8", "authorizationPolicies[0].rules[0].from[0].source.ipBlocks[1]",
				`"10.0.0.0/33" is not an IP block`},
		},
		{
			name: "bad action and missing name, both reported",
			src: `authorizationPolicies:
  - namespace: shop
    action: AUDIT
`,
			want: []string{"line 2", "name is missing", "line 3", `"AUDIT" is not an action`},
		},
		{
			name: "pattern with a star inside",
			src: `authorizationPolicies:
  - name: a
    rules: [{from: [{source: {principals: ["cluster.local/*/sa/x"]}}]}]
`,
			want: []string{"line 3", "principals[0]", "is not a pattern"},
		},
		{
			name: "port out of range",
			src: `authorizationPolicies:
  - name: a
    rules: [{to: [{operation: {ports: ["70000"]}}]}]
`,
			want: []string{"line 3", `"70000" is not a port`},
		},
		{
			name: "duplicate",
			src: `authorizationPolicies:
  - {name: a, namespace: shop}
  - {name: a, namespace: shop}
`,
			want: []string{"line 3", "shop/a is defined twice"},
		},
		{
			name: "mesh-wide selector",
			src: `peerAuthentications:
  - {name: a, selector: {matchLabels: {app: x}}}
`,
			want: []string{"line 2", "cannot select workloads"},
		},
		{
			name: "when conditions",
			src: `authorizationPolicies:
  - name: a
    rules:
      - when:
          - {key: source.ip, values: [10.0.0.1]}
`,
			want: []string{"line 4", "conditions (when) are not supported"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Parse([]byte(tc.src))
			if err == nil {
				t.Fatalf("Parse accepted it: %+v", p)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestParseLimitsProblems(t *testing.T) {
	var b strings.Builder
	b.WriteString("authorizationPolicies:\n")
	for range 25 {
		b.WriteString("  - {namespace: shop}\n")
	}
	_, err := Parse([]byte(b.String()))
	if err == nil || !strings.Contains(err.Error(), "and 15 more") {
		t.Fatalf("error = %v, want 10 problems and a count of the rest", err)
	}
}
