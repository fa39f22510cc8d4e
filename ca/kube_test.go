package ca

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/veil-mesh/veil/ca/caclient"
	"github.com/veil-mesh/veil/internal/kubetest"
	"github.com/veil-mesh/veil/internal/testlog"
)

// The cluster the Kubernetes-mode tests run against: the agents' service account with
// an agent pod on node1 and on node2, another service account of veil-system with a pod
// on node1, and workloads in namespace shop.
const (
	kubeNS      = "veil-system"
	shopNS      = "shop"
	idCart      = "spiffe://cluster.local/ns/shop/sa/cart"   // cart-0 on node1
	idPay       = "spiffe://cluster.local/ns/shop/sa/pay"    // pay-0 on node2
	idBatch     = "spiffe://cluster.local/ns/shop/sa/batch"  // batch-0 on node1, finished
	idNoPods    = "spiffe://cluster.local/ns/shop/sa/nobody" // no pod at all
	agentNode1  = "veil-agent-node1"
	agentNode2  = "veil-agent-node2"
	intruderPod = "intruder-node1"
)

// kubeEnv is a real API server set up as deploy/ applies it, with the pods above.
type kubeEnv struct {
	s     *kubetest.Server
	admin kubernetes.Interface
	// caConfig authenticates as the veil-ca service account: it may do exactly what
	// deploy/ca-rbac.yaml grants.
	caConfig *rest.Config
	pods     map[string]*corev1.Pod
}

func newKubeEnv(t *testing.T) *kubeEnv {
	t.Helper()
	s := kubetest.Start(t)
	e := &kubeEnv{s: s, admin: s.Client(t), pods: map[string]*corev1.Pod{}}
	if out, err := s.Kubectl(t, "apply", "-f", "../deploy/namespace.yaml",
		"-f", "../deploy/ca-rbac.yaml"); err != nil {
		t.Fatalf("applying deploy/ca-rbac.yaml: %v\n%s", err, out)
	}
	s.CreateNamespace(t, shopNS)
	for ns, accounts := range map[string][]string{
		kubeNS: {"veil-agent", "intruder"}, shopNS: {"cart", "pay", "batch"},
	} {
		for _, name := range accounts {
			sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}
			if _, err := e.admin.CoreV1().ServiceAccounts(ns).Create(t.Context(), sa,
				metav1.CreateOptions{}); err != nil {
				t.Fatalf("creating service account %s/%s: %v", ns, name, err)
			}
		}
	}
	e.createPod(t, kubeNS, agentNode1, "veil-agent", "node1")
	e.createPod(t, kubeNS, agentNode2, "veil-agent", "node2")
	e.createPod(t, kubeNS, intruderPod, "intruder", "node1")
	e.createPod(t, shopNS, "cart-0", "cart", "node1")
	e.createPod(t, shopNS, "pay-0", "pay", "node2")
	batch := e.createPod(t, shopNS, "batch-0", "batch", "node1")
	batch.Status.Phase = corev1.PodSucceeded
	if _, err := e.admin.CoreV1().Pods(shopNS).UpdateStatus(t.Context(), batch,
		metav1.UpdateOptions{}); err != nil {
		t.Fatalf("finishing pod batch-0: %v", err)
	}

	e.caConfig = s.ConfigForToken(s.ServiceAccountToken(t, kubeNS, "veil-ca"))
	e.waitForRBAC(t)
	return e
}

// createPod makes a pod as the scheduler leaves it; no kubelet runs it.
func (e *kubeEnv) createPod(t *testing.T, ns, name, sa, node string) *corev1.Pod {
	t.Helper()
	pod, err := e.admin.CoreV1().Pods(ns).Create(t.Context(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{ServiceAccountName: sa, NodeName: node,
			Containers: []corev1.Container{{Name: "app", Image: "example.invalid/app:1"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating pod %s/%s: %v", ns, name, err)
	}
	e.pods[name] = pod
	return pod
}

func (e *kubeEnv) deletePod(t *testing.T, ns, name string) {
	t.Helper()
	zero := int64(0)
	if err := e.admin.CoreV1().Pods(ns).Delete(t.Context(), name,
		metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatalf("deleting pod %s/%s: %v", ns, name, err)
	}
}

// waitForRBAC waits until the authorizer has learnt both of deploy/ca-rbac.yaml's
// bindings, which it does from a watch.
func (e *kubeEnv) waitForRBAC(t *testing.T) {
	t.Helper()
	for _, attrs := range []authorizationv1.ResourceAttributes{
		{Verb: "create", Group: "authentication.k8s.io", Resource: "tokenreviews"},
		{Verb: "update", Resource: "secrets", Namespace: kubeNS, Name: RootSecret},
	} {
		eventually(t, "RBAC allows veil-ca to "+attrs.Verb+" "+attrs.Resource, func() error {
			review, err := e.admin.AuthorizationV1().SubjectAccessReviews().Create(t.Context(),
				&authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
					User:               "system:serviceaccount:" + kubeNS + ":veil-ca",
					Groups:             []string{"system:serviceaccounts", "system:authenticated"},
					ResourceAttributes: &attrs,
				}}, metav1.CreateOptions{})
			if err != nil {
				return err
			}
			if !review.Status.Allowed {
				return errors.New("not allowed yet")
			}
			return nil
		})
	}
}

// token asks TokenRequest for a token of the pod's service account, bound to the pod
// when bind is set, for audience (none: the API server's own).
func (e *kubeEnv) token(t *testing.T, podName string, bind bool, audience ...string) string {
	t.Helper()
	pod := e.pods[podName]
	expiry := int64(600)
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		Audiences: audience, ExpirationSeconds: &expiry}}
	if bind {
		req.Spec.BoundObjectRef = &authenticationv1.BoundObjectReference{
			Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}
	}
	resp, err := e.admin.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(t.Context(),
		pod.Spec.ServiceAccountName, req, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("TokenRequest for pod %s: %v", podName, err)
	}
	return resp.Status.Token
}

// kubeCA is a CA in Kubernetes mode serving on loopback.
type kubeCA struct {
	srv     *Server
	dir     string
	addr    string
	logs    *testlog.Buffer
	reviews *atomic.Int32 // TokenReviews sent
}

// startCA starts a CA in Kubernetes mode with its directory in dir, acting as the
// veil-ca service account, and serves until the test ends.
func (e *kubeEnv) startCA(t *testing.T, dir string) *kubeCA {
	t.Helper()
	c, err := e.newCA(t, dir)
	if err != nil {
		t.Fatalf("NewKubernetesServer: %v", err)
	}
	c.serve(t)
	return c
}

func (e *kubeEnv) newCA(t *testing.T, dir string) (*kubeCA, error) {
	c := &kubeCA{dir: dir, logs: &testlog.Buffer{}, reviews: &atomic.Int32{}}
	rc := rest.CopyConfig(e.caConfig)
	rc.WrapTransport = func(rt http.RoundTripper) http.RoundTripper {
		return countReviews{rt, c.reviews}
	}
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	c.srv, err = NewKubernetesServer(t.Context(), Config{
		Dir: dir, ReloadPeriod: 20 * time.Millisecond, CertTTL: time.Hour,
		Log: zerolog.New(c.logs),
	}, Kubernetes{Client: client, TrustDomain: spiffeid.RequireTrustDomainFromString(
		"cluster.local")})
	return c, err
}

func (c *kubeCA) serve(t *testing.T) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c.addr = ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
}

// countReviews counts the TokenReviews a client sends.
type countReviews struct {
	next http.RoundTripper
	n    *atomic.Int32
}

func (c countReviews) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Method == http.MethodPost && strings.HasSuffix(req.URL.Path, "/tokenreviews") {
		c.n.Add(1)
	}
	return c.next.RoundTrip(req)
}

// client is an agent's client presenting token.
func (c *kubeCA) client(t *testing.T, token string) *caclient.Client {
	t.Helper()
	cl, err := caclient.NewClient(c.addr, filepath.Join(c.dir, BundleFile),
		writeToken(t, token))
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	t.Cleanup(cl.CloseIdleConnections)
	return cl
}

func sign(t *testing.T, cl *caclient.Client, id string) error {
	t.Helper()
	chain, _, err := cl.Sign(context.Background(), newCSR(t, p256(t), id))
	if err == nil && (len(chain[0].URIs) != 1 || chain[0].URIs[0].String() != id) {
		t.Fatalf("asked for %s, got a certificate for %v", id, chain[0].URIs)
	}
	return err
}

// eventually retries f every 20 ms until it succeeds, for up to 10 s.
func eventually(t *testing.T, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still not after 10s: %v", what, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestKubernetesMode runs CAs in Kubernetes mode against a real API server with the
// RBAC of deploy/ca-rbac.yaml and nothing more.
func TestKubernetesMode(t *testing.T) {
	e := newKubeEnv(t)

	// Two replicas starting at once on a cluster with no Secret yet: whichever creates
	// it, both end up with the same root.
	var (
		wg      sync.WaitGroup
		started [2]*kubeCA
		errs    [2]error
	)
	for i := range started {
		wg.Go(func() { started[i], errs[i] = e.newCA(t, t.TempDir()) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("CA %d: NewKubernetesServer: %v", i, err)
		}
	}
	if a, b := started[0].srv.BundlePEM(), started[1].srv.BundlePEM(); !bytes.Equal(a, b) {
		t.Fatalf("two CAs started together have different roots:\n%s\n%s", a, b)
	}
	ca := started[0]
	ca.serve(t)
	agent1Token := e.token(t, agentNode1, true, DefaultTokenAudience)
	agent1 := ca.client(t, agent1Token)

	t.Run("signs-for-pods-on-the-agents-node", func(t *testing.T) {
		if err := sign(t, agent1, idCart); err != nil {
			t.Fatalf("node1's agent, cart-0 on node1: %v", err)
		}
	})

	t.Run("refuses-pods-elsewhere", func(t *testing.T) {
		for id, why := range map[string]string{
			idPay: "pay-0 runs on node2", idBatch: "batch-0 has finished",
			idNoPods: "no pod at all",
		} {
			err := sign(t, agent1, id)
			ns, sa := identityParts(spiffeid.RequireFromString(id))
			want := fmt.Sprintf("no pod of service account %s in namespace %s runs on node "+
				"node1 according to the Kubernetes API", sa, ns)
			if !errors.Is(err, caclient.ErrForbidden) || !strings.Contains(err.Error(), want) {
				t.Errorf("%s (%s): got %v, want ErrForbidden: %s", id, why, err, want)
			}
		}
		if !strings.Contains(ca.logs.String(), `"node":"node1","identity":"`+idPay+`"`) {
			t.Errorf("the refusal is not logged with node and identity:\n%s", ca.logs)
		}
	})

	t.Run("follows-pods", func(t *testing.T) {
		e.createPod(t, shopNS, "pay-1", "pay", "node1")
		eventually(t, "pay-1 scheduled to node1 lets node1 obtain pay's identity",
			func() error { return sign(t, agent1, idPay) })
		e.deletePod(t, shopNS, "pay-1")
		eventually(t, "pay-1 deleted stops it", func() error {
			if err := sign(t, agent1, idPay); !errors.Is(err, caclient.ErrForbidden) {
				return fmt.Errorf("got %v, want ErrForbidden", err)
			}
			return nil
		})
	})

	t.Run("refuses-tokens", func(t *testing.T) {
		tests := []struct{ name, token, want string }{
			{"not a token", "not-a-token", "the Kubernetes API does not accept the token for " +
				"audience veil-ca: invalid bearer token"},
			{"the API server's audience", e.token(t, agentNode1, true),
				"the Kubernetes API does not accept the token for audience veil-ca: " +
					"[invalid bearer token, token audiences"},
			{"bound to no pod", e.token(t, agentNode1, false, DefaultTokenAudience),
				"the token is bound to no pod, so it names no node"},
			{"another service account", e.token(t, intruderPod, true, DefaultTokenAudience),
				"the token is system:serviceaccount:veil-system:intruder's, not the agents' " +
					"(system:serviceaccount:veil-system:veil-agent)"},
		}
		for _, tt := range tests {
			err := sign(t, ca.client(t, tt.token), idCart)
			if !errors.Is(err, caclient.ErrUnauthenticated) ||
				!strings.Contains(err.Error(), tt.want) {
				t.Errorf("%s: got %v, want ErrUnauthenticated: %s", tt.name, err, tt.want)
			}
		}

		// A caclient.Client always sends a token; without one, the handler answers.
		rec := httptest.NewRecorder()
		ca.srv.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodPost,
			caclient.SignPath, strings.NewReader(`{}`)))
		var got caclient.ErrorResponse
		_ = json.Unmarshal(rec.Body.Bytes(), &got)
		want := "no token; send Authorization: Bearer <the agent's projected service " +
			"account token for audience veil-ca>"
		if rec.Code != http.StatusUnauthorized || got.Error != want {
			t.Errorf("no token: got %d %s, want 401 %q", rec.Code, rec.Body, want)
		}
	})

	t.Run("one-review-per-token", func(t *testing.T) {
		agent2 := ca.client(t, e.token(t, agentNode2, true, DefaultTokenAudience))
		before := ca.reviews.Load()
		var wg sync.WaitGroup
		errs := make(chan error, 20)
		for range 20 {
			wg.Go(func() { errs <- sign(t, agent2, idPay) })
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatalf("node2's agent, pay-0 on node2: %v", err)
			}
		}
		if n := ca.reviews.Load() - before; n != 1 {
			t.Errorf("20 requests with one token made %d TokenReviews, want 1", n)
		}
	})

	t.Run("root-in-secret", func(t *testing.T) {
		secret, err := e.admin.CoreV1().Secrets(kubeNS).Get(t.Context(), RootSecret,
			metav1.GetOptions{})
		if err != nil {
			t.Fatalf("reading the Secret: %v", err)
		}
		keys := slices.Sorted(func(yield func(string) bool) {
			for k := range secret.Data {
				if !yield(k) {
					return
				}
			}
		})
		if want := []string{BundleFile, RootCertFile, RootKeyFile}; !slices.Equal(keys, want) {
			t.Errorf("Secret keys %v, want %v", keys, want)
		}

		// A restart, in a new pod with an empty directory, has the same root.
		again := e.startCA(t, t.TempDir())
		if !bytes.Equal(again.srv.BundlePEM(), ca.srv.BundlePEM()) {
			t.Fatal("a CA started again with the same Secret has another root")
		}

		// A root command on the running CA's directory reaches the Secret, and so the
		// next start.
		added, err := AddRoot(ca.dir, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		eventually(t, "the added root is saved to the Secret", func() error {
			s, err := e.admin.CoreV1().Secrets(kubeNS).Get(t.Context(), RootSecret,
				metav1.GetOptions{})
			if err != nil {
				return err
			}
			if s.Data[StateFile] == nil || s.Data[secretKeyOf(filepath.Join(RootsDir,
				added.ID+".key"))] == nil {
				return fmt.Errorf("Secret keys: %d", len(s.Data))
			}
			return nil
		})
		third := e.startCA(t, t.TempDir())
		got, err := ListRoots(third.dir)
		if err != nil || len(got) != 2 || got[1].ID != added.ID || got[1].State != RootNext {
			t.Fatalf("roots of a CA started after root add: %+v, %v", got, err)
		}
	})

	t.Run("bundle-configmap", func(t *testing.T) {
		eventually(t, "the ConfigMap holds the bundle with both roots", func() error {
			cm, err := e.admin.CoreV1().ConfigMaps(kubeNS).Get(t.Context(), BundleConfigMap,
				metav1.GetOptions{})
			if err != nil {
				return err
			}
			if got := cm.Data[BundleFile]; got != string(ca.srv.BundlePEM()) ||
				strings.Count(got, "BEGIN CERTIFICATE") != 2 {
				return fmt.Errorf("it holds %d certificates",
					strings.Count(got, "BEGIN CERTIFICATE"))
			}
			return nil
		})
	})

	t.Run("logs-no-secrets", func(t *testing.T) {
		key, err := os.ReadFile(filepath.Join(ca.dir, RootKeyFile))
		if err != nil {
			t.Fatal(err)
		}
		logs := ca.logs.String()
		for what, s := range map[string]string{
			"a private key": "PRIVATE KEY", "the root key": string(key[40:80]),
			"a token": agent1Token,
		} {
			if strings.Contains(logs, s) {
				t.Errorf("the CA's log holds %s", what)
			}
		}
		for _, want := range []string{`"message":"certificate issued"`,
			`"message":"saved the changed roots to their Secret"`,
			`"message":"published the bundle"`} {
			if !strings.Contains(logs, want) {
				t.Errorf("the CA's log has no %s", want)
			}
		}
	})
}
