package policy

import (
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// The CRDs in deploy/ and the policy file describe the same objects: an entry of the file
// is a resource's name and namespace beside its spec. This test keeps the two from
// drifting apart: every spec field of a CRD is a field of the file, and the other way
// round, all the way down.
func TestCRDsMirrorThePolicyFile(t *testing.T) {
	for _, tc := range []struct {
		file string
		raw  any
	}{
		{"peerauthentications.yaml", rawPeerAuth{}},
		{"authorizationpolicies.yaml", rawAuthz{}},
	} {
		t.Run(tc.file, func(t *testing.T) {
			data, err := os.ReadFile("../../deploy/crds/" + tc.file)
			if err != nil {
				t.Fatal(err)
			}
			var crd map[string]any
			if err := yaml.Unmarshal(data, &crd); err != nil {
				t.Fatal(err)
			}
			spec := dig(t, crd, "spec", "versions", 0, "schema", "openAPIV3Schema",
				"properties", "spec")
			compareSchema(t, "spec", spec, reflect.TypeOf(tc.raw), "name", "namespace")
		})
	}
}

// compareSchema checks that schema describes the YAML of typ, leaving out its fields
// named in skip (those are the resource's metadata).
func compareSchema(t *testing.T, at string, schema any, typ reflect.Type, skip ...string) {
	t.Helper()
	for typ.Kind() == reflect.Pointer {
		typ = typ.Elem()
	}
	node, _ := schema.(map[string]any)
	switch typ.Kind() {
	case reflect.Struct:
		props, _ := node["properties"].(map[string]any)
		var want []string
		for i := range typ.NumField() {
			f := typ.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if slices.Contains(skip, name) {
				continue
			}
			want = append(want, name)
			if _, ok := props[name]; !ok {
				t.Errorf("%s: the policy file has %s, the CRD does not", at, name)
				continue
			}
			compareSchema(t, at+"."+name, props[name], f.Type)
		}
		for name := range props {
			if !slices.Contains(want, name) {
				t.Errorf("%s: the CRD has %s, the policy file does not", at, name)
			}
		}
	case reflect.Slice:
		compareSchema(t, at+"[]", node["items"], typ.Elem())
	case reflect.Map:
		if typ.Elem().Kind() == reflect.Struct {
			compareSchema(t, at+"{}", node["additionalProperties"], typ.Elem())
		}
	}
}

func dig(t *testing.T, v any, path ...any) any {
	t.Helper()
	for _, p := range path {
		switch p := p.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok {
				t.Fatalf("no %s in the CRD", p)
			}
			v = m[p]
		case int:
			l, ok := v.([]any)
			if !ok || len(l) <= p {
				t.Fatalf("no item %d in the CRD", p)
			}
			v = l[p]
		}
	}
	return v
}
