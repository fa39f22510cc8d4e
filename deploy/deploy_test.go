// Package deploy holds veil's Kubernetes manifests; its tests apply them to a real API
// server (internal/kubetest) and check what they grant.
package deploy

import (
	"strings"
	"testing"

	authorizationv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/veil-mesh/veil/ca/caclient"
	"github.com/veil-mesh/veil/internal/kubetest"
)

const namespace = "veil-system"

// TestApply applies the kustomization the ways an operator would check it first:
// a client-side dry run (kubectl still asks the server for discovery and schemas), then,
// with the CRDs and the namespace in place, a server-side dry run that runs admission
// and validation, then for real.
func TestApply(t *testing.T) {
	s := kubetest.Start(t)

	out := kubectl(t, s, "apply", "--dry-run=client", "-k", ".")
	for _, want := range []string{
		"namespace/veil-system", "daemonset.apps/veil-agent", "deployment.apps/veil-ca",
		"service/veil-ca", "customresourcedefinition.apiextensions.k8s.io/" +
			"peerauthentications.policy.veil.dev",
		"customresourcedefinition.apiextensions.k8s.io/authorizationpolicies.policy.veil.dev",
	} {
		if !strings.Contains(out, want+" created (dry run)") {
			t.Errorf("client dry run does not create %s; output:\n%s", want, out)
		}
	}

	// A server-side dry run creates nothing, so the objects in veil-system would fail on
	// the missing namespace; and the CRDs must be established before resources of theirs
	// could be checked.
	kubectl(t, s, "apply", "-f", "namespace.yaml", "-f", "crds/")
	kubectl(t, s, "wait", "--for=condition=Established", "--timeout=30s",
		"crd/peerauthentications.policy.veil.dev", "crd/authorizationpolicies.policy.veil.dev")
	// Warnings are how the server reports deprecated fields and Pod Security
	// violations it lets through: the manifests should draw none.
	if out := kubectl(t, s, "apply", "--dry-run=server", "-k", "."); strings.Contains(out,
		"Warning:") {
		t.Errorf("server dry run warns:\n%s", out)
	}

	kubectl(t, s, "apply", "-k", ".")
	svc, err := s.Client(t).CoreV1().Services(namespace).Get(t.Context(), "veil-ca",
		metav1.GetOptions{})
	if err != nil {
		t.Fatalf("getting the veil-ca Service: %v", err)
	}
	if got := svc.Name + "." + svc.Namespace + ".svc"; got != caclient.ServerName {
		t.Errorf("Service %s does not match the name agents check, %s", got,
			caclient.ServerName)
	}
	if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Port != 15012 {
		t.Errorf("Service veil-ca ports = %v, want 15012 alone", svc.Spec.Ports)
	}
}

// access is one question to the authorizer: may this service account do that?
type access struct {
	verb, group, resource, namespace, name string
	allowed                                bool
}

// TestLeastPrivilege applies the manifests and asks the authorizer, as each service
// account, for what it needs and for neighbouring things it must not have.
func TestLeastPrivilege(t *testing.T) {
	s := kubetest.Start(t)
	kubectl(t, s, "apply", "-k", ".")

	cases := map[string][]access{
		"veil-agent": {
			{"list", "", "pods", "", "", true},
			{"watch", "", "pods", "default", "", true},
			{"get", "", "namespaces", "", "default", true},
			{"watch", "policy.veil.dev", "peerauthentications", "", "", true},
			{"list", "policy.veil.dev", "authorizationpolicies", "shop", "", true},
			{"get", "", "secrets", namespace, "veil-ca-root", false},
			{"list", "", "secrets", "", "", false},
			{"create", "authentication.k8s.io", "tokenreviews", "", "", false},
			{"create", "", "serviceaccounts/token", namespace, "veil-ca", false},
			{"update", "", "pods", "default", "", false},
			{"list", "", "nodes", "", "", false},
			{"update", "policy.veil.dev", "peerauthentications", "default", "", false},
		},
		"veil-ca": {
			{"create", "authentication.k8s.io", "tokenreviews", "", "", true},
			{"list", "", "pods", "", "", true},
			{"watch", "", "pods", "default", "", true},
			{"get", "", "secrets", namespace, "veil-ca-root", true},
			{"update", "", "secrets", namespace, "veil-ca-root", true},
			{"create", "", "secrets", namespace, "", true},
			{"get", "", "configmaps", namespace, "veil-ca-bundle", true},
			{"update", "", "configmaps", namespace, "veil-ca-bundle", true},
			{"get", "", "secrets", namespace, "other", false},
			{"list", "", "secrets", namespace, "", false},
			{"watch", "", "secrets", namespace, "", false},
			{"delete", "", "secrets", namespace, "veil-ca-root", false},
			{"get", "", "secrets", "default", "veil-ca-root", false},
			{"create", "", "secrets", "default", "", false},
			{"update", "", "configmaps", namespace, "other", false},
			{"list", "", "namespaces", "", "", false},
			{"create", "", "serviceaccounts/token", namespace, "veil-agent", false},
			{"update", "", "pods", "default", "", false},
		},
	}
	for sa, accesses := range cases {
		for _, a := range accesses {
			if got := allowed(t, s, sa, a); got != a.allowed {
				t.Errorf("%s may %s %s: %v, want %v", sa, a.verb, describe(a), got, a.allowed)
			}
		}
	}
}

// allowed asks the authorizer with a SubjectAccessReview, as the ServiceAccount's token
// would be: its user and its groups.
func allowed(t *testing.T, s *kubetest.Server, sa string, a access) bool {
	t.Helper()
	review := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
		User: "system:serviceaccount:" + namespace + ":" + sa,
		Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + namespace,
			"system:authenticated"},
		ResourceAttributes: &authorizationv1.ResourceAttributes{
			Verb: a.verb, Group: a.group, Namespace: a.namespace, Name: a.name,
			Resource: strings.Split(a.resource, "/")[0], Subresource: subresource(a.resource),
		},
	}}
	resp, err := s.Client(t).AuthorizationV1().SubjectAccessReviews().Create(t.Context(),
		review, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("SubjectAccessReview: %v", err)
	}
	return resp.Status.Allowed
}

func subresource(resource string) string {
	if _, sub, ok := strings.Cut(resource, "/"); ok {
		return sub
	}
	return ""
}

func describe(a access) string {
	s := a.resource
	if a.group != "" {
		s += "." + a.group
	}
	if a.name != "" {
		s += " " + a.name
	}
	if a.namespace != "" {
		s += " in " + a.namespace
	} else {
		s += " cluster-wide"
	}
	return s
}

// kubectl runs kubectl as the administrator in this directory and fails the test on error.
func kubectl(t *testing.T, s *kubetest.Server, args ...string) string {
	t.Helper()
	out, err := s.Kubectl(t, args...)
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}
