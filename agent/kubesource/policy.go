package kubesource

import (
	"cmp"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/tools/cache"

	"github.com/veil-mesh/veil/agent/policy"
)

// The policy custom resources (deploy/crds). Their spec has the fields of an entry of the
// policy file, so each resource becomes one entry: its name, its namespace (none for
// the root namespace) and its spec.
var (
	PeerAuthenticationsResource = schema.GroupVersionResource{
		Group: "policy.veil.dev", Version: "v1alpha1", Resource: "peerauthentications",
	}
	AuthorizationPoliciesResource = schema.GroupVersionResource{
		Group: "policy.veil.dev", Version: "v1alpha1", Resource: "authorizationpolicies",
	}
)

// policy assembles the policy from the resources. Each resource is checked on its own: a
// malformed one is logged once, with its name, and its last good version stays in force
// (none, if it never had one), so one bad resource neither takes down the others nor
// silently widens what they allow. text is the policy as a policy file, in a canonical
// form: equal texts are equal policies.
func (s *Source) policy() (*policy.Policy, []byte) {
	doc := map[string]any{
		"peerAuthentications": s.entries(s.pa, s.goodPA, "PeerAuthentication",
			"peerAuthentications"),
		"authorizationPolicies": s.entries(s.ap, s.goodAP, "AuthorizationPolicy",
			"authorizationPolicies"),
	}
	text, err := json.MarshalIndent(doc, "", "  ")
	if err == nil {
		var p *policy.Policy
		if p, err = policy.Parse(text); err == nil {
			return p, text
		}
	}
	// Every entry parsed on its own; together they can only clash by name, which the
	// API server's keys rule out. Deny nothing new, allow nothing new: say so and keep
	// the caller's policy, by handing it what it has.
	s.cfg.Log.Error().Err(err).Msg("policy resources could not be combined; keeping the policy in force")
	return nil, nil
}

// entries turns the resources in inf into policy file entries, oldest first, as Istio
// orders policies of equal specificity.
func (s *Source) entries(inf cache.SharedIndexInformer, good map[string]map[string]any,
	kind, list string) []any {
	var objs []*unstructured.Unstructured
	for _, obj := range inf.GetStore().List() {
		if u, ok := obj.(*unstructured.Unstructured); ok {
			objs = append(objs, u)
		}
	}
	slices.SortFunc(objs, func(a, b *unstructured.Unstructured) int {
		return cmp.Or(a.GetCreationTimestamp().Compare(b.GetCreationTimestamp().Time),
			strings.Compare(a.GetNamespace()+"/"+a.GetName(), b.GetNamespace()+"/"+b.GetName()))
	})

	s.mu.Lock()
	defer s.mu.Unlock()
	out := []any{}
	live := map[string]bool{}
	for _, u := range objs {
		key := u.GetNamespace() + "/" + u.GetName()
		live[key] = true
		entry := s.entry(u)
		if err := checkEntry(list, entry); err != nil {
			msg := fmt.Sprintf("%s %s (resourceVersion %s) rejected: %s", kind, key,
				u.GetResourceVersion(), err)
			if !s.warned[msg] {
				s.warned[msg] = true
				s.cfg.Log.Error().Str(fieldResource, kind+" "+key).Msg(msg +
					"; its previous version, if any, stays in force")
			}
			if prev, ok := good[key]; ok {
				out = append(out, prev)
			}
			continue
		}
		good[key] = entry
		out = append(out, entry)
	}
	for key := range good {
		if !live[key] {
			delete(good, key)
		}
	}
	return out
}

func (s *Source) entry(u *unstructured.Unstructured) map[string]any {
	e := map[string]any{"name": u.GetName()}
	if u.GetNamespace() != s.cfg.RootNamespace {
		e["namespace"] = u.GetNamespace()
	}
	spec, _ := u.Object["spec"].(map[string]any)
	for k, v := range spec {
		if k != "name" && k != "namespace" {
			e[k] = v
		}
	}
	return e
}

// lineRef is the file position in a policy parse error, which means nothing for a
// resource.
var lineRef = regexp.MustCompile(`line \d+: `)

// checkEntry parses one entry alone and phrases its problems in terms of the resource:
// fields under spec, no line numbers.
func checkEntry(list string, entry map[string]any) error {
	one, err := json.Marshal(map[string]any{list: []any{entry}})
	if err != nil {
		return err
	}
	if _, err := policy.Parse(one); err != nil {
		msg := lineRef.ReplaceAllString(err.Error(), "")
		msg = strings.ReplaceAll(msg, list+"[0].", "spec.")
		return fmt.Errorf("%s", strings.TrimPrefix(msg, "policy file rejected, nothing in it applied: "))
	}
	return nil
}
