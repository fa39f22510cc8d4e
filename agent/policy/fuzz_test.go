package policy

import (
	"net/netip"
	"testing"
)

// FuzzParse checks that no input panics the parser, and that whatever it accepts can be
// evaluated.
func FuzzParse(f *testing.F) {
	f.Add([]byte(`peerAuthentications: [{name: a, namespace: shop, mtls: {mode: STRICT},
  portLevelMtls: {"80": {mode: DISABLE}}}]`))
	f.Add([]byte(`authorizationPolicies: [{name: a, action: DENY, dryRun: true,
  rules: [{from: [{source: {principals: ["*"], notIpBlocks: [10.0.0.0/8]}}],
  to: [{operation: {ports: ["80"]}}]}]}]`))
	f.Add([]byte("authorizationPolicies:\n  - {name: a}\n  - {name: a}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Parse(data)
		if err != nil {
			return
		}
		p.Authorize(cart, Request{Principal: frontend, Source: netip.MustParseAddr("10.0.0.1"),
			Port: 80})
		p.Mode(cart, 80)
		p.DisabledPorts(cart)
	})
}
