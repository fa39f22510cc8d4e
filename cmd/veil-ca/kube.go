package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/spf13/pflag"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/client-go/kubernetes"

	"github.com/veil-mesh/veil/ca"
	"github.com/veil-mesh/veil/internal/kubeconfig"
)

// kubeFlags are veil-ca serve's flags for Kubernetes mode.
type kubeFlags struct {
	enabled                                  bool
	kubeconfig, namespace, audience, agentSA string
	trustDomain                              string
}

// kubeOnly are the flags that mean nothing without --kubernetes, and fileOnly those that
// mean nothing with it.
var (
	kubeOnly = []string{"kubeconfig", "namespace", "token-audience", "agent-service-account",
		"trust-domain"}
	fileOnly = []string{"workloads", "node-tokens"}
)

func (k *kubeFlags) add(fs *pflag.FlagSet) error {
	err := boolFlag(fs, &k.enabled, "kubernetes", "VEIL_CA_KUBERNETES", false,
		"authenticate agents with TokenReview, place workloads by their pods, keep the roots "+
			"in Secret "+ca.RootSecret+" and publish the bundle in ConfigMap "+
			ca.BundleConfigMap+", instead of --workloads and --node-tokens")
	stringFlag(fs, &k.kubeconfig, "kubeconfig", "VEIL_CA_KUBECONFIG", "",
		"kubeconfig file for --kubernetes outside a pod; empty: the pod's service account")
	stringFlag(fs, &k.namespace, "namespace", "VEIL_CA_NAMESPACE", ca.DefaultNamespace,
		"namespace of the CA's Secret and ConfigMap")
	stringFlag(fs, &k.audience, "token-audience", "VEIL_CA_TOKEN_AUDIENCE",
		ca.DefaultTokenAudience, "audience the agents' tokens must be for")
	stringFlag(fs, &k.agentSA, "agent-service-account", "VEIL_CA_AGENT_SERVICE_ACCOUNT",
		ca.DefaultAgentServiceAccount, "the agents' service account, <namespace>/<name>: "+
			"only its tokens are accepted")
	stringFlag(fs, &k.trustDomain, "trust-domain", "VEIL_TRUST_DOMAIN", "cluster.local",
		"trust domain of the identities signed in Kubernetes mode (the agents' "+
			"--trust-domain)")
	return err
}

// check refuses flags given on the command line that the mode does not use, rather than
// ignoring them.
func (k *kubeFlags) check(fs *pflag.FlagSet) error {
	unused, why := kubeOnly, "used only with --kubernetes; remove it, or add --kubernetes"
	if k.enabled {
		unused, why = fileOnly, "not used with --kubernetes, which learns nodes and "+
			"workloads from the Kubernetes API; remove it"
	}
	var set []string
	for _, name := range unused {
		if fs.Changed(name) {
			set = append(set, "--"+name)
		}
	}
	if len(set) > 0 {
		return fmt.Errorf("%s: %s", strings.Join(set, ", "), why)
	}
	return nil
}

func newKubernetesServer(ctx context.Context, k kubeFlags, cfg ca.Config) (*ca.Server, error) {
	td, err := spiffeid.TrustDomainFromString(k.trustDomain)
	if err != nil {
		return nil, fmt.Errorf("--trust-domain %q: %w", k.trustDomain, err)
	}
	rc, err := kubeconfig.Load(k.kubeconfig)
	if err != nil {
		return nil, err
	}
	rc.UserAgent = "veil-ca"
	// client-go's default, 5 requests a second, would take minutes to review the tokens
	// of a few hundred agents that all renew at once after the CA restarts (each review
	// waits at most 10 s, then the agent retries later); the API server takes far more.
	rc.QPS, rc.Burst = 50, 100
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("making the Kubernetes client: %w", err)
	}
	return ca.NewKubernetesServer(ctx, cfg, ca.Kubernetes{
		Client: client, Namespace: k.namespace, TokenAudience: k.audience,
		AgentServiceAccount: k.agentSA, TrustDomain: td,
	})
}
