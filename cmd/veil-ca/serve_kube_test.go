package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/veil-mesh/veil/ca"
	"github.com/veil-mesh/veil/ca/caclient"
	"github.com/veil-mesh/veil/internal/kubetest"
)

// Flags of one mode given to the other are refused, not ignored.
func TestServeFlagsByMode(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"serve", "--namespace", "x", "--kubeconfig", "k"}, "--kubeconfig, " +
			"--namespace: used only with --kubernetes; remove it, or add --kubernetes"},
		{[]string{"serve", "--kubernetes", "--node-tokens", "f"}, "--node-tokens: not used " +
			"with --kubernetes, which learns nodes and workloads from the Kubernetes API; " +
			"remove it"},
	} {
		if _, _, err := run(t, tt.args...); err == nil || err.Error() != tt.want {
			t.Errorf("veil-ca %s: got %v, want %q", strings.Join(tt.args, " "), err, tt.want)
		}
	}

	t.Setenv("VEIL_CA_KUBERNETES", "yes please")
	_, _, err := run(t, "serve")
	if err == nil || !strings.HasPrefix(err.Error(), `VEIL_CA_KUBERNETES="yes please": `) ||
		!strings.HasSuffix(err.Error(), "; use true or false") {
		t.Errorf("a malformed VEIL_CA_KUBERNETES: %v", err)
	}
}

// veil-ca serve --kubernetes as deploy/ runs it: the CA's service account with the rules
// of deploy/ca-rbac.yaml, here through a kubeconfig, signs for a pod on the agent's node.
func TestServeKubernetes(t *testing.T) {
	s := kubetest.Start(t)
	admin := s.Client(t)
	ctx := t.Context()
	if out, err := s.Kubectl(t, "apply", "-f", "../../deploy/namespace.yaml",
		"-f", "../../deploy/ca-rbac.yaml"); err != nil {
		t.Fatalf("applying deploy/ca-rbac.yaml: %v\n%s", err, out)
	}
	_, err := admin.CoreV1().ServiceAccounts("veil-system").Create(ctx,
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "veil-agent"}},
		metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s.CreateNamespace(t, "shop")
	agent := createPod(t, admin, "veil-system", "veil-agent-a", "veil-agent", "node1")
	createPod(t, admin, "shop", "web-0", "default", "node1")

	caToken := s.ServiceAccountToken(t, "veil-system", "veil-ca")
	asCA := kubernetes.NewForConfigOrDie(s.ConfigForToken(caToken))
	// The authorizer learns deploy/ca-rbac.yaml's bindings from a watch.
	eventually(t, "the CA's RBAC in force", func() error {
		_, err := asCA.CoreV1().Secrets("veil-system").Get(ctx, ca.RootSecret,
			metav1.GetOptions{})
		if !apierrors.IsNotFound(err) {
			return errors.New("not yet")
		}
		_, err = asCA.AuthenticationV1().TokenReviews().Create(ctx,
			&authenticationv1.TokenReview{Spec: authenticationv1.TokenReviewSpec{Token: "x"}},
			metav1.CreateOptions{})
		return err
	})

	dir := filepath.Join(t.TempDir(), "ca")
	listen := freeAddr(t)
	serveCtx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		cmd := newRootCommand()
		cmd.SetArgs([]string{"serve", "--kubernetes", "--listen", listen, "--dir", dir,
			"--kubeconfig", s.WriteKubeconfig(t, "veil-ca", caToken), "--log-level", "error"})
		done <- cmd.ExecuteContext(serveCtx)
	}()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("veil-ca serve: %v", err)
		}
	})

	tokenPath := filepath.Join(t.TempDir(), "token")
	expiry := int64(600)
	tr, err := admin.CoreV1().ServiceAccounts("veil-system").CreateToken(ctx, "veil-agent",
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
			Audiences: []string{ca.DefaultTokenAudience}, ExpirationSeconds: &expiry,
			BoundObjectRef: &authenticationv1.BoundObjectReference{Kind: "Pod",
				APIVersion: "v1", Name: agent.Name, UID: agent.UID},
		}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tokenPath, []byte(tr.Status.Token), 0o600); err != nil {
		t.Fatal(err)
	}
	eventually(t, "veil-ca serve signs for web-0 on node1", func() error {
		select {
		case err := <-done:
			done <- err // for the cleanup
			t.Fatalf("veil-ca serve stopped: %v", err)
		default:
		}
		cl, err := caclient.NewClient(listen, filepath.Join(dir, ca.BundleFile), tokenPath)
		if err != nil {
			return err
		}
		defer cl.CloseIdleConnections()
		_, _, err = cl.Sign(ctx, newCSR(t, "spiffe://cluster.local/ns/shop/sa/default"))
		return err
	})

	cm, err := admin.CoreV1().ConfigMaps("veil-system").Get(ctx, ca.BundleConfigMap,
		metav1.GetOptions{})
	bundle, _ := os.ReadFile(filepath.Join(dir, ca.BundleFile))
	if err != nil || cm.Data[ca.BundleFile] != string(bundle) || len(bundle) == 0 {
		t.Errorf("ConfigMap %s does not hold the CA's %s (err %v)", ca.BundleConfigMap,
			ca.BundleFile, err)
	}
}

func createPod(t *testing.T, c kubernetes.Interface, ns, name, sa, node string) *corev1.Pod {
	t.Helper()
	pod, err := c.CoreV1().Pods(ns).Create(t.Context(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{ServiceAccountName: sa, NodeName: node,
			Containers: []corev1.Container{{Name: "app", Image: "example.invalid/app:1"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating pod %s/%s: %v", ns, name, err)
	}
	return pod
}

// freeAddr returns a loopback address with a port nothing listens on right now.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// eventually retries f every 20 ms until it succeeds, for up to 20 s.
func eventually(t *testing.T, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still not after 20s: %v", what, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// newCSR is a DER CSR for a new P-256 key with id as its one URI SAN.
func newCSR(t *testing.T, id string) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(id)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader,
		&x509.CertificateRequest{URIs: []*url.URL{u}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}
