package kubetest

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// ConfigForToken returns a client configuration that authenticates with a bearer token,
// such as a ServiceAccount token, and nothing else: what RBAC allows that identity is
// what the client can do. An empty token makes an anonymous client.
func (s *Server) ConfigForToken(token string) *rest.Config {
	return &rest.Config{
		Host:            s.URL,
		TLSClientConfig: rest.TLSClientConfig{CAData: s.CAPEM},
		BearerToken:     token,
		QPS:             100, Burst: 200,
	}
}

// WriteKubeconfig writes a kubeconfig for a bearer token into Dir and returns its path;
// name tells files apart and becomes the context's name.
func (s *Server) WriteKubeconfig(t testing.TB, name, token string) string {
	t.Helper()
	path, err := s.writeKubeconfig(name, s.ConfigForToken(token))
	if err != nil {
		t.Fatalf("writing kubeconfig %s: %v", name, err)
	}
	return path
}

func (s *Server) writeKubeconfig(name string, cfg *rest.Config) (string, error) {
	kc := clientcmdapi.NewConfig()
	kc.Clusters["kubetest"] = &clientcmdapi.Cluster{
		Server: cfg.Host, CertificateAuthorityData: cfg.CAData,
	}
	kc.AuthInfos[name] = &clientcmdapi.AuthInfo{
		Token:                 cfg.BearerToken,
		ClientCertificateData: cfg.CertData,
		ClientKeyData:         cfg.KeyData,
	}
	kc.Contexts[name] = &clientcmdapi.Context{Cluster: "kubetest", AuthInfo: name}
	kc.CurrentContext = name

	path := filepath.Join(s.Dir, "kubeconfig-"+name)
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		return "", fmt.Errorf("writing %s: %w", path, err)
	}
	return path, nil
}

// CreateNamespace creates a namespace and its "default" ServiceAccount, which a
// controller manager would add and this server has none to.
func (s *Server) CreateNamespace(t testing.TB, name string) {
	t.Helper()
	c := s.Client(t)
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if _, err := c.CoreV1().Namespaces().Create(t.Context(), ns, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating namespace %s: %v", name, err)
	}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}
	_, err := c.CoreV1().ServiceAccounts(name).Create(t.Context(), sa, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("creating service account %s/default: %v", name, err)
	}
}

// ServiceAccountToken asks the TokenRequest API for a token of the ServiceAccount,
// valid for an hour, for the given audiences (none: the API server's, Issuer).
func (s *Server) ServiceAccountToken(t testing.TB, namespace, name string,
	audiences ...string) string {
	t.Helper()
	expiry := int64(3600)
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		Audiences: audiences, ExpirationSeconds: &expiry,
	}}
	resp, err := s.Client(t).CoreV1().ServiceAccounts(namespace).
		CreateToken(t.Context(), name, req, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("requesting a token for %s/%s: %v", namespace, name, err)
	}
	return resp.Status.Token
}

// Kubectl runs the kubectl of Bins with the administrator's kubeconfig and returns its
// combined output. A --kubeconfig in args (one from WriteKubeconfig) wins: kubectl takes
// the last.
func (s *Server) Kubectl(t testing.TB, args ...string) ([]byte, error) {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), s.Bins.Kubectl,
		append([]string{"--kubeconfig=" + s.Kubeconfig}, args...)...)
	// Keep kubectl's discovery cache in Dir rather than in the home directory.
	cmd.Env = append(os.Environ(), "KUBECACHEDIR="+filepath.Join(s.Dir, "kubectl-cache"))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.Bytes(), err
}
