package ca

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	authenticationv1client "k8s.io/client-go/kubernetes/typed/authentication/v1"
)

// Keys of a TokenReview's status.user.extra for a service account token bound to a pod.
// The API server records the pod when it issues the token, and, since Kubernetes 1.30,
// the node that pod was scheduled to. kube-apiserver v1.37.2 answers a review of a
// token bound to pod agent-1 of veil-system on node1 with
//
//	"username": "system:serviceaccount:veil-system:veil-agent",
//	"extra": {"authentication.kubernetes.io/credential-id": ["JTI=df4f..."],
//	          "authentication.kubernetes.io/node-name": ["node1"],
//	          "authentication.kubernetes.io/pod-name": ["agent-1"],
//	          "authentication.kubernetes.io/pod-uid": ["1e42fc5c-..."]},
//	"audiences": ["veil-ca"]
//
// and of a token bound to nothing with the same, less the pod and the node.
const (
	extraNodeName = "authentication.kubernetes.io/node-name"
	extraPodName  = "authentication.kubernetes.io/pod-name"
	extraPodUID   = "authentication.kubernetes.io/pod-uid"
)

// serviceAccount names a Kubernetes ServiceAccount.
type serviceAccount struct{ namespace, name string }

// parseServiceAccount reads "<namespace>/<name>".
func parseServiceAccount(s string) (serviceAccount, error) {
	ns, name, ok := strings.Cut(s, "/")
	if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		return serviceAccount{}, fmt.Errorf("service account %q: want <namespace>/<name>, "+
			"such as %s", s, DefaultAgentServiceAccount)
	}
	return serviceAccount{ns, name}, nil
}

func (sa serviceAccount) String() string { return sa.namespace + "/" + sa.name }

// username is the user the API server authenticates the account's tokens as.
func (sa serviceAccount) username() string {
	return "system:serviceaccount:" + sa.namespace + ":" + sa.name
}

// tokenReviewer tells an agent's node from its projected service account token: the API
// server checks the token (TokenReview, for the CA's audience, so that a token meant for
// anything else is refused), it must be the agents' service account's, and it must be
// bound to a pod; the node is the one the API server recorded in the token, or failing
// that (an API server before 1.30), the one that pod is on.
type tokenReviewer struct {
	reviews  authenticationv1client.TokenReviewInterface
	audience string
	agent    serviceAccount
	// pod returns a pod of the agents' namespace, for a token that names its pod only.
	pod func(ctx context.Context, namespace, name string) (*corev1.Pod, error)
}

// review asks the API server about token and returns the agent's node.
func (r *tokenReviewer) review(ctx context.Context, token string) (string, error) {
	if token == "" {
		return "", unauthenticated("no token; send Authorization: Bearer <the agent's " +
			"projected service account token for audience " + r.audience + ">")
	}
	tr, err := r.reviews.Create(ctx, &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: []string{r.audience}},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", &authError{status: http.StatusServiceUnavailable,
			msg:   "the CA could not check the token with the Kubernetes API; retry later",
			cause: fmt.Errorf("creating TokenReview: %w%s", err, rbacHint(err))}
	}
	return r.node(ctx, tr.Status)
}

// node checks a review's answer and finds the node in it.
func (r *tokenReviewer) node(ctx context.Context, st authenticationv1.TokenReviewStatus) (
	string, error) {
	if !st.Authenticated {
		return "", unauthenticated(fmt.Sprintf("the Kubernetes API does not accept the token "+
			"for audience %s: %s", r.audience, st.Error))
	}
	// An authenticator that ignores audiences may accept a token meant for another
	// service; the answer says which audiences it checked (TokenReviewStatus.Audiences).
	if !slices.Contains(st.Audiences, r.audience) {
		return "", unauthenticated(fmt.Sprintf("the Kubernetes API accepted the token for "+
			"audiences %v, not for %s; use a projected token with audience %s",
			st.Audiences, r.audience, r.audience))
	}
	if want := r.agent.username(); st.User.Username != want {
		return "", unauthenticated(fmt.Sprintf("the token is %s's, not the agents' (%s)",
			st.User.Username, want))
	}

	// A projected token is always bound to its pod, which the API server checks at every
	// review: the token dies with the pod. A token bound to nothing, or to a Node or a
	// Secret, is not an agent's.
	podName := oneExtra(st.User.Extra, extraPodName)
	if podName == "" {
		return "", unauthenticated("the token is bound to no pod, so it names no node; " +
			"give the agent a projected service account token (a serviceAccountToken " +
			"volume source) for audience " + r.audience)
	}
	if node := oneExtra(st.User.Extra, extraNodeName); node != "" {
		return node, nil
	}
	return r.podNode(ctx, podName, oneExtra(st.User.Extra, extraPodUID))
}

// podNode is the node of the agent's pod, for an API server too old to name the node in
// its review.
func (r *tokenReviewer) podNode(ctx context.Context, name, uid string) (string, error) {
	ref := r.agent.namespace + "/" + name
	pod, err := r.pod(ctx, r.agent.namespace, name)
	switch {
	case apierrors.IsNotFound(err):
		return "", unauthenticated("the token's pod " + ref + " does not exist")
	case err != nil:
		return "", &authError{status: http.StatusServiceUnavailable,
			msg:   "the CA could not look up the token's pod; retry later",
			cause: fmt.Errorf("getting pod %s: %w%s", ref, err, rbacHint(err))}
	case uid != "" && string(pod.UID) != uid:
		return "", unauthenticated("the token's pod " + ref + " has been replaced by " +
			"another of the same name")
	case pod.Spec.NodeName == "":
		return "", unauthenticated("the token's pod " + ref + " is not scheduled to a node")
	}
	return pod.Spec.NodeName, nil
}

func oneExtra(extra map[string]authenticationv1.ExtraValue, key string) string {
	if v := extra[key]; len(v) == 1 {
		return v[0]
	}
	return ""
}

// rbacHint says where to look when the API refuses the CA something.
func rbacHint(err error) string {
	if apierrors.IsForbidden(err) {
		return "; check that deploy/ca-rbac.yaml is applied and bound to the CA's " +
			"service account"
	}
	return ""
}
