package ca

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// How a review's answer becomes a node, including for API servers older than 1.30,
// whose answer names the agent's pod but not its node.
func TestTokenReviewNode(t *testing.T) {
	agentPod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "agent-a", UID: "uid-a"},
		Spec: corev1.PodSpec{NodeName: "node7"}}
	unscheduled := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "agent-u", UID: "uid-u"}}
	pods := map[string]*corev1.Pod{"agent-a": agentPod, "agent-u": unscheduled}
	r := &tokenReviewer{audience: "veil-ca",
		agent: serviceAccount{"veil-system", "veil-agent"},
		pod: func(_ context.Context, ns, name string) (*corev1.Pod, error) {
			if ns != "veil-system" {
				t.Errorf("pod looked up in namespace %s, want the agents' veil-system", ns)
			}
			if name == "agent-forbidden" {
				return nil, apierrors.NewForbidden(schema.GroupResource{Resource: "pods"}, name,
					errors.New("RBAC"))
			}
			if p, ok := pods[name]; ok {
				return p, nil
			}
			return nil, apierrors.NewNotFound(schema.GroupResource{Resource: "pods"}, name)
		}}
	agent := "system:serviceaccount:veil-system:veil-agent"
	status := func(user string, extra map[string]string, audiences ...string,
	) authenticationv1.TokenReviewStatus {
		st := authenticationv1.TokenReviewStatus{Authenticated: true, Audiences: audiences,
			User: authenticationv1.UserInfo{Username: user,
				Extra: map[string]authenticationv1.ExtraValue{}}}
		for k, v := range extra {
			st.User.Extra[k] = authenticationv1.ExtraValue{v}
		}
		return st
	}
	bound := func(pod, uid string) map[string]string {
		return map[string]string{extraPodName: pod, extraPodUID: uid}
	}

	tests := []struct {
		name   string
		st     authenticationv1.TokenReviewStatus
		node   string
		status int
		want   string
	}{
		{"node named", status(agent, map[string]string{extraNodeName: "node1",
			extraPodName: "agent-x"}, "veil-ca"), "node1", 0, ""},
		{"pod named, node looked up", status(agent, bound("agent-a", "uid-a"), "veil-ca"),
			"node7", 0, ""},
		{"not authenticated", authenticationv1.TokenReviewStatus{Error: "invalid bearer token"},
			"", 401, "the Kubernetes API does not accept the token for audience veil-ca: " +
				"invalid bearer token"},
		{"audience not checked", status(agent, bound("agent-a", "uid-a")), "", 401,
			"the Kubernetes API accepted the token for audiences [], not for veil-ca; use a " +
				"projected token with audience veil-ca"},
		{"another service account", status("system:serviceaccount:shop:cart",
			bound("agent-a", "uid-a"), "veil-ca"), "", 401, "the token is " +
			"system:serviceaccount:shop:cart's, not the agents' (" + agent + ")"},
		{"bound to no pod", status(agent, nil, "veil-ca"), "", 401, "the token is bound to " +
			"no pod, so it names no node; give the agent a projected service account token " +
			"(a serviceAccountToken volume source) for audience veil-ca"},
		{"bound to a node", status(agent, map[string]string{extraNodeName: "node1"},
			"veil-ca"), "", 401, "the token is bound to no pod, so it names no node; give " +
			"the agent a projected service account token (a serviceAccountToken volume " +
			"source) for audience veil-ca"},
		{"pod gone", status(agent, bound("agent-gone", "uid-g"), "veil-ca"), "", 401,
			"the token's pod veil-system/agent-gone does not exist"},
		{"pod replaced", status(agent, bound("agent-a", "uid-old"), "veil-ca"), "", 401,
			"the token's pod veil-system/agent-a has been replaced by another of the same name"},
		{"pod not scheduled", status(agent, bound("agent-u", "uid-u"), "veil-ca"), "", 401,
			"the token's pod veil-system/agent-u is not scheduled to a node"},
		{"pod lookup forbidden", status(agent, bound("agent-forbidden", ""), "veil-ca"), "",
			503, "the CA could not look up the token's pod; retry later"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			node, err := r.node(context.Background(), tt.st)
			if tt.status == 0 {
				if err != nil || node != tt.node {
					t.Fatalf("got %q, %v; want %q", node, err, tt.node)
				}
				return
			}
			var ae *authError
			if !errors.As(err, &ae) || ae.status != tt.status || ae.msg != tt.want {
				t.Fatalf("got %q, %v; want %d %q", node, err, tt.status, tt.want)
			}
			if ae.status == http.StatusServiceUnavailable && (ae.cause == nil ||
				!strings.Contains(ae.cause.Error(), "check that deploy/ca-rbac.yaml is applied")) {
				t.Errorf("the cause logged does not point at the RBAC rules: %v", ae.cause)
			}
		})
	}
}

func TestParseServiceAccount(t *testing.T) {
	if sa, err := parseServiceAccount("veil-system/veil-agent"); err != nil ||
		sa.username() != "system:serviceaccount:veil-system:veil-agent" {
		t.Errorf("parseServiceAccount: %v, %v", sa, err)
	}
	for _, bad := range []string{"", "veil-agent", "/veil-agent", "veil-system/", "a/b/c"} {
		if _, err := parseServiceAccount(bad); err == nil {
			t.Errorf("parseServiceAccount(%q) accepted it", bad)
		}
	}
}
