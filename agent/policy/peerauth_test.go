package policy

import (
	"slices"
	"testing"
)

func TestMode(t *testing.T) {
	const layered = `
peerAuthentications:
  - name: mesh
    mtls: {mode: STRICT}
    portLevelMtls:
      "7000": {mode: DISABLE}
  - name: ns
    namespace: shop
    mtls: {mode: PERMISSIVE}
    portLevelMtls:
      9090: {mode: STRICT}
  - name: cart
    namespace: shop
    selector: {matchLabels: {app: cart}}
    portLevelMtls:
      8080: {mode: DISABLE}
  - name: cart-later
    namespace: shop
    selector: {matchLabels: {app: cart}}
    mtls: {mode: STRICT}
`
	db := Workload{Namespace: "shop", Labels: map[string]string{"app": "db"}}
	other := Workload{Namespace: "jobs"}
	for _, tc := range []struct {
		name   string
		policy string
		w      Workload
		port   uint16
		want   Mode
		by     string
	}{
		{name: "default", w: cart, port: 80, want: ModePermissive, by: ""},
		{name: "mesh-wide", policy: layered, w: other, port: 80, want: ModeStrict, by: "mesh/mesh"},
		{name: "mesh-wide port", policy: layered, w: other, port: 7000, want: ModeDisable,
			by: "mesh/mesh port 7000"},
		{name: "namespace over mesh", policy: layered, w: db, port: 80, want: ModePermissive,
			by: "shop/ns"},
		{name: "namespace port", policy: layered, w: db, port: 9090, want: ModeStrict,
			by: "shop/ns port 9090"},
		{name: "namespace mode over mesh port", policy: layered, w: db, port: 7000,
			want: ModePermissive, by: "shop/ns"},
		{name: "workload port", policy: layered, w: cart, port: 8080, want: ModeDisable,
			by: "shop/cart port 8080"},
		{name: "workload UNSET defers to the namespace, first workload policy wins",
			policy: layered, w: cart, port: 80, want: ModePermissive, by: "shop/ns"},
		{name: "workload UNSET defers to the namespace port", policy: layered, w: cart,
			port: 9090, want: ModeStrict, by: "shop/ns port 9090"},
		{name: "port 0 ignores port-level settings", policy: layered, w: other, port: 0,
			want: ModeStrict, by: "mesh/mesh"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var p *Policy
			if tc.policy != "" {
				p = mustParse(t, tc.policy)
			}
			got := p.Mode(tc.w, tc.port)
			if got.Mode != tc.want || got.By != tc.by {
				t.Errorf("Mode = %v by %q, want %v by %q", got.Mode, got.By, tc.want, tc.by)
			}
		})
	}
}

func TestDisabledPorts(t *testing.T) {
	for _, tc := range []struct {
		name   string
		policy string
		ports  []uint16
		all    bool
	}{
		{name: "none", policy: `peerAuthentications: []`},
		{name: "ports", policy: `
peerAuthentications:
  - name: a
    namespace: shop
    portLevelMtls: {"8080": {mode: DISABLE}, "9090": {mode: STRICT}, "80": {mode: DISABLE}}
`, ports: []uint16{80, 8080}},
		{name: "the whole workload", policy: `
peerAuthentications:
  - {name: a, namespace: shop, mtls: {mode: DISABLE}}
`, all: true},
		{name: "the whole workload but one port", policy: `
peerAuthentications:
  - name: a
    namespace: shop
    mtls: {mode: DISABLE}
    portLevelMtls: {"9090": {mode: STRICT}, "80": {mode: DISABLE}}
`, ports: []uint16{80}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ports, all := mustParse(t, tc.policy).DisabledPorts(cart)
			if !slices.Equal(ports, tc.ports) || all != tc.all {
				t.Errorf("DisabledPorts = %v, all %v; want %v, all %v", ports, all, tc.ports, tc.all)
			}
		})
	}
}
