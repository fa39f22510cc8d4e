package kubetest

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// Issuer is the iss claim of the ServiceAccount tokens the server signs, and the audience
// they get when a TokenRequest names none.
const Issuer = "https://kubernetes.default.svc.cluster.local"

// ServiceCIDR is the range Services get their cluster IPs from.
const ServiceCIDR = "10.96.0.0/16"

// startTimeout bounds Start: etcd and kube-apiserver are ready in about 3 s on the build
// machines, so a minute means something is wrong rather than slow.
const startTimeout = time.Minute

// startAttempts is how often Start tries again when another process took a port between
// freePorts and the bind.
const startAttempts = 3

// Server is a running etcd and kube-apiserver.
type Server struct {
	// Config is an administrator's client configuration (group system:masters).
	Config *rest.Config
	// Kubeconfig is the path of a kubeconfig file with the same credentials, for kubectl.
	Kubeconfig string
	// URL is the server's https address on 127.0.0.1.
	URL string
	// CAPEM is the CA that the server's certificate chains to.
	CAPEM []byte
	// Bins are the binaries in use; Bins.Kubectl matches the server's version.
	Bins Binaries
	// Dir is the temporary directory holding the data, certificates and logs
	// (etcd.log, kube-apiserver.log). Stop removes it.
	Dir string

	etcd, apiserver *process
	apiserverArgs   []string
	stopOnce        sync.Once
}

// Start runs etcd and kube-apiserver and returns once /readyz answers ok. It skips the
// test when the binaries are missing and fails it when the server does not come up.
// Stop runs when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	bins := RequireBinaries(t)

	begin := time.Now()
	var err error
	for range startAttempts {
		var s *Server
		s, err = start(t.Context(), bins)
		if err == nil {
			t.Cleanup(func() {
				if t.Failed() {
					t.Logf("end of kube-apiserver.log:\n%s", s.apiserver.logTail(20))
				}
				s.Stop()
			})
			t.Logf("kube-apiserver %s ready at %s in %s", KubeVersion, s.URL,
				time.Since(begin).Round(10*time.Millisecond))
			return s
		}
		if !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	t.Fatalf("starting kube-apiserver: %v", err)
	return nil
}

func start(ctx context.Context, bins Binaries) (s *Server, err error) {
	dir, err := os.MkdirTemp("", "kubetest-")
	if err != nil {
		return nil, fmt.Errorf("creating temporary directory: %w", err)
	}
	s = &Server{Bins: bins, Dir: dir}
	defer func() {
		if err != nil {
			s.Stop()
		}
	}()
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()

	pki, err := newPKI(dir)
	if err != nil {
		return nil, err
	}
	s.CAPEM = pki.caPEM
	ports, err := freePorts(3)
	if err != nil {
		return nil, err
	}

	var etcdURL string
	s.etcd, etcdURL, err = startEtcd(dir, bins.Etcd, ports[0], ports[1])
	if err != nil {
		return nil, err
	}
	if err := waitEtcd(ctx, s.etcd, etcdURL); err != nil {
		return nil, err
	}

	s.URL = "https://127.0.0.1:" + ports[2]
	s.apiserverArgs = apiserverArgs(dir, pki, etcdURL, ports[2])
	s.apiserver, err = startProcess(dir, "kube-apiserver", bins.APIServer, s.apiserverArgs...)
	if err != nil {
		return nil, err
	}
	s.Config = &rest.Config{
		Host: s.URL,
		TLSClientConfig: rest.TLSClientConfig{
			CAData: pki.caPEM, CertData: pki.adminCertPEM, KeyData: pki.adminKeyPEM,
		},
		QPS: 100, Burst: 200,
	}
	if err := waitReady(ctx, s.apiserver, s.Config); err != nil {
		return nil, err
	}
	if s.Kubeconfig, err = s.writeKubeconfig("admin", s.Config); err != nil {
		return nil, err
	}
	return s, nil
}

// apiserverArgs are kube-apiserver's flags for a single server on loopback.
func apiserverArgs(dir string, pki *pki, etcdURL, port string) []string {
	return []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=" + port,
		"--cert-dir=" + dir,
		"--tls-cert-file=" + pki.servingCert,
		"--tls-private-key-file=" + pki.servingKey,
		"--client-ca-file=" + pki.caFile,
		// ServiceAccount tokens: signed with this key, verified with its public half;
		// api-audiences defaults to the issuer.
		"--service-account-issuer=" + Issuer,
		"--service-account-signing-key-file=" + pki.saKey,
		"--service-account-key-file=" + pki.saKey,
		"--authorization-mode=RBAC",
		"--service-cluster-ip-range=" + ServiceCIDR,
		// The default reconciler writes this server's address into the kubernetes
		// Endpoints and waits for it to be routable, which 127.0.0.1 never is.
		"--endpoint-reconciler-type=none",
		// veil's agent runs privileged; without this the server refuses its DaemonSet.
		"--allow-privileged=true",
		"--profiling=false",
		// API priority and fairness queues requests by tenant, of which a test has one;
		// its start-up work costs about 0.4 s of the server's 4.
		"--enable-priority-and-fairness=false",
	}
}

// waitReady polls /readyz as the administrator until it answers 200.
func waitReady(ctx context.Context, p *process, cfg *rest.Config) error {
	cfg = rest.CopyConfig(cfg)
	cfg.Timeout = time.Second
	client, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return fmt.Errorf("building client: %w", err)
	}
	ready := func() bool {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, cfg.Host+"/readyz", nil)
		if err != nil {
			return false
		}
		resp, err := client.Do(req)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}
	return poll(ctx, p, "kube-apiserver", ready)
}

// Stop kills kube-apiserver and etcd, by the pids Start got, and removes Dir. It is safe
// to call more than once; Start registers it with t.Cleanup.
func (s *Server) Stop() {
	s.stopOnce.Do(func() {
		for _, p := range []*process{s.apiserver, s.etcd} {
			if p != nil {
				p.kill()
			}
		}
		if s.Dir != "" {
			_ = os.RemoveAll(s.Dir)
		}
	})
}

// RestartAPIServer kills kube-apiserver, by its pid, and starts it again on the same
// address with the same etcd: an API server that goes away and comes back. down runs in
// between, while nothing answers; RestartAPIServer returns once the new one is ready.
func (s *Server) RestartAPIServer(t testing.TB, down func()) {
	t.Helper()
	s.apiserver.kill()
	down()
	var err error
	s.apiserver, err = startProcess(s.Dir, "kube-apiserver", s.Bins.APIServer,
		s.apiserverArgs...)
	if err != nil {
		t.Fatalf("starting kube-apiserver again: %v", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), startTimeout)
	defer cancel()
	if err := waitReady(ctx, s.apiserver, s.Config); err != nil {
		t.Fatalf("kube-apiserver after a restart: %v", err)
	}
}

// Client returns an administrator's clientset.
func (s *Server) Client(t testing.TB) kubernetes.Interface {
	t.Helper()
	c, err := kubernetes.NewForConfig(s.Config)
	if err != nil {
		t.Fatalf("building admin client: %v", err)
	}
	return c
}
