package kubetest_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/veil-mesh/veil/internal/kubetest"
)

const (
	testNS   = "shop"
	testSA   = "cart"
	testPod  = "cart-0"
	testNode = "node-a"
	// caAudience is the audience veil's agents ask for when they present a token to
	// veil-ca: the API server itself refuses such a token.
	caAudience = "veil-ca"
)

// TestServiceAccountTokens walks through what veil-ca and the agent will ask of the API:
// a ServiceAccount and a pod placed on a node, a token bound to that pod for the CA's
// audience, TokenReview telling the pod and node back, and RBAC refusing what the
// ServiceAccount was not granted.
func TestServiceAccountTokens(t *testing.T) {
	s := kubetest.Start(t)
	admin := s.Client(t)
	ctx := t.Context()

	s.CreateNamespace(t, testNS)
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: testSA}}
	if _, err := admin.CoreV1().ServiceAccounts(testNS).Create(ctx, sa,
		metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating service account: %v", err)
	}
	pod := createPod(t, admin)

	token := boundToken(t, admin, pod)
	review := tokenReview(t, admin, token, caAudience)
	if !review.Authenticated {
		t.Fatalf("TokenReview for %q: not authenticated: %s", caAudience, review.Error)
	}
	if want := "system:serviceaccount:" + testNS + ":" + testSA; review.User.Username != want {
		t.Errorf("TokenReview username = %q, want %q", review.User.Username, want)
	}
	for key, want := range map[string]string{
		"authentication.kubernetes.io/pod-name": testPod,
		"authentication.kubernetes.io/pod-uid":  string(pod.UID),
		// What lets veil-ca tell which node an agent runs on.
		"authentication.kubernetes.io/node-name": testNode,
	} {
		if got := review.User.Extra[key]; len(got) != 1 || got[0] != want {
			t.Errorf("TokenReview extra %s = %v, want [%s]", key, got, want)
		}
	}

	if r := tokenReview(t, admin, token, "someone-else"); r.Authenticated {
		t.Errorf("TokenReview for another audience authenticated %s", r.User.Username)
	}
	_, err := kubernetes.NewForConfigOrDie(s.ConfigForToken(token)).CoreV1().
		Namespaces().List(ctx, metav1.ListOptions{})
	if !apierrors.IsUnauthorized(err) {
		t.Errorf("API request with a %q token: got %v, want 401 Unauthorized", caAudience, err)
	}

	checkRBAC(t, s, admin)

	// A token never reviewed before: the API server caches a successful review for
	// 10 s, so the first token could still pass for that long after its pod is gone.
	unused := boundToken(t, admin, pod)
	zero := int64(0)
	if err := admin.CoreV1().Pods(testNS).Delete(ctx, testPod,
		metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatalf("deleting pod: %v", err)
	}
	_, err = admin.CoreV1().Pods(testNS).Get(ctx, testPod, metav1.GetOptions{})
	if !apierrors.IsNotFound(err) {
		t.Errorf("pod after a zero-grace delete: got %v, want NotFound", err)
	}
	// The authenticator reads pods from a cache that learns of the delete from a watch.
	if err := eventually(ctx, func() error {
		if r := tokenReview(t, admin, unused, caAudience); r.Authenticated {
			return fmt.Errorf("authenticated as %s", r.User.Username)
		}
		return nil
	}); err != nil {
		t.Errorf("TokenReview of a token bound to a deleted pod: %v", err)
	}
}

// createPod makes a pod as the scheduler would leave it: nodeName set. No kubelet runs it.
func createPod(t *testing.T, c kubernetes.Interface) *corev1.Pod {
	t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: testPod, Labels: map[string]string{"app": testSA}},
		Spec: corev1.PodSpec{
			ServiceAccountName: testSA,
			NodeName:           testNode,
			Containers:         []corev1.Container{{Name: "app", Image: "example.invalid/cart:1"}},
		},
	}
	pod, err := c.CoreV1().Pods(testNS).Create(t.Context(), pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating pod: %v", err)
	}
	return pod
}

// boundToken asks TokenRequest for a token of the pod's ServiceAccount, bound to the pod
// (it dies with the pod) and for the CA's audience: the token a kubelet projects into a
// veil-agent pod.
func boundToken(t *testing.T, c kubernetes.Interface, pod *corev1.Pod) string {
	t.Helper()
	expiry := int64(600)
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		Audiences:         []string{caAudience},
		ExpirationSeconds: &expiry,
		BoundObjectRef: &authenticationv1.BoundObjectReference{
			Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID,
		},
	}}
	resp, err := c.CoreV1().ServiceAccounts(testNS).CreateToken(t.Context(), testSA, req,
		metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("TokenRequest: %v", err)
	}
	if resp.Status.Token == "" {
		t.Fatal("TokenRequest returned an empty token")
	}
	return resp.Status.Token
}

func tokenReview(t *testing.T, c kubernetes.Interface, token, audience string,
) authenticationv1.TokenReviewStatus {
	t.Helper()
	tr := &authenticationv1.TokenReview{Spec: authenticationv1.TokenReviewSpec{
		Token: token, Audiences: []string{audience},
	}}
	resp, err := c.AuthenticationV1().TokenReviews().Create(t.Context(), tr,
		metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("TokenReview: %v", err)
	}
	return resp.Status
}

// checkRBAC grants the ServiceAccount reading pods in its namespace and checks that a
// token for the API server's own audience may do that and nothing else tried here.
func checkRBAC(t *testing.T, s *kubetest.Server, admin kubernetes.Interface) {
	t.Helper()
	ctx := t.Context()
	role := &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "pod-reader"},
		Rules: []rbacv1.PolicyRule{{
			APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list"},
		}},
	}
	if _, err := admin.RbacV1().Roles(testNS).Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating role: %v", err)
	}
	binding := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "cart-reads-pods"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role.Name},
		Subjects: []rbacv1.Subject{{
			Kind: rbacv1.ServiceAccountKind, Name: testSA, Namespace: testNS,
		}},
	}
	if _, err := admin.RbacV1().RoleBindings(testNS).Create(ctx, binding,
		metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating role binding: %v", err)
	}

	sa := kubernetes.NewForConfigOrDie(s.ConfigForToken(s.ServiceAccountToken(t, testNS, testSA)))
	// The authorizer learns of the binding from a watch: give it a moment, not a sleep.
	if err := eventually(ctx, func() error {
		_, err := sa.CoreV1().Pods(testNS).List(ctx, metav1.ListOptions{})
		return err
	}); err != nil {
		t.Fatalf("listing pods in %s as %s (granted): %v", testNS, testSA, err)
	}

	denied := map[string]func() error{
		"list pods in kube-system": func() error {
			_, err := sa.CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{})
			return err
		},
		"list secrets in " + testNS: func() error {
			_, err := sa.CoreV1().Secrets(testNS).List(ctx, metav1.ListOptions{})
			return err
		},
		"delete pod " + testPod: func() error {
			return sa.CoreV1().Pods(testNS).Delete(ctx, testPod, metav1.DeleteOptions{})
		},
	}
	for what, do := range denied {
		if err := do(); !apierrors.IsForbidden(err) {
			t.Errorf("%s as %s: got %v, want 403 Forbidden", what, testSA, err)
		}
	}

	// The same denial through kubectl and a kubeconfig made for the token.
	kubeconfig := s.WriteKubeconfig(t, testSA, s.ServiceAccountToken(t, testNS, testSA))
	out, err := s.Kubectl(t, "--kubeconfig="+kubeconfig, "get", "secrets", "-n", testNS)
	if err == nil || !strings.Contains(string(out), "forbidden") {
		t.Errorf("kubectl get secrets as %s: err %v, output %q; want forbidden", testSA, err, out)
	}
}

// eventually retries f every 50 ms for up to 10 s and returns its last error.
func eventually(ctx context.Context, f func() error) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for {
		err := f()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(50 * time.Millisecond):
		}
	}
}
