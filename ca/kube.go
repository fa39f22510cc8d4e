package ca

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/rs/zerolog"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/client-go/kubernetes"
)

// What the CA keeps in its namespace in Kubernetes mode. deploy/ca-rbac.yaml grants
// access to these two names only.
const (
	// RootSecret holds the CA directory's roots (see rootsecret.go).
	RootSecret = "veil-ca-root"
	// BundleConfigMap holds BundleFile, the roots agents trust, for their --ca-root.
	BundleConfigMap = "veil-ca-bundle"
)

// Defaults for Kubernetes.
const (
	DefaultNamespace           = "veil-system"
	DefaultTokenAudience       = "veil-ca"
	DefaultAgentServiceAccount = "veil-system/veil-agent"
)

// kubeStartTimeout bounds how long NewKubernetesServer waits for the API server: a CA
// that cannot read its Secret or list the pods within a minute is misconfigured (RBAC,
// address) rather than slow, and says so instead of waiting for ever.
const kubeStartTimeout = time.Minute

// Kubernetes is what the CA needs to run against the Kubernetes API.
type Kubernetes struct {
	// Client acts as the CA's service account; deploy/ca-rbac.yaml says what it may do.
	Client kubernetes.Interface
	// Namespace holds RootSecret and BundleConfigMap (DefaultNamespace when empty).
	Namespace string
	// TokenAudience is the audience agents' tokens must be for (DefaultTokenAudience
	// when empty); a token for any other audience is refused.
	TokenAudience string
	// AgentServiceAccount, "<namespace>/<name>", is whose tokens are agents' tokens
	// (DefaultAgentServiceAccount when empty).
	AgentServiceAccount string
	// TrustDomain is the trust domain of every identity the CA signs.
	TrustDomain spiffeid.TrustDomain
}

// NewKubernetesServer is NewServer in Kubernetes mode: agents authenticate with their
// pod's projected service account token, checked with TokenReview; a node may obtain
// the identity of any service account with a pod scheduled to it; the roots are kept
// in the Secret RootSecret and cfg.Dir is only the working copy; and the bundle is
// published in the ConfigMap BundleConfigMap. cfg.WorkloadsPath and cfg.NodeTokensPath
// are not used. In plug-in mode (cfg.Plugin) there are no roots to keep, and no Secret.
//
// It returns once the roots are loaded, every pod has been listed and the bundle is
// published, or with an error that says what the API refused. The watch of pods runs
// until ctx ends; Serve saves root changes to the Secret and publishes the bundle.
func NewKubernetesServer(ctx context.Context, cfg Config, k Kubernetes) (*Server, error) {
	agent, err := k.fill()
	if err != nil {
		return nil, err
	}
	s, err := newServer(cfg)
	if err != nil {
		return nil, err
	}
	startCtx, cancel := context.WithTimeout(ctx, kubeStartTimeout)
	defer cancel()

	var secret *rootSecret
	if cfg.Plugin.CertPath == "" {
		secret = &rootSecret{secrets: k.Client.CoreV1().Secrets(k.Namespace),
			namespace: k.Namespace, dir: cfg.Dir}
		if err := s.restoreRoots(startCtx, secret); err != nil {
			return nil, err
		}
	}
	if err := s.openAuthority(); err != nil {
		return nil, err
	}

	place, err := newPodPlacement(k.Client, k.TrustDomain, s.log)
	if err != nil {
		return nil, err
	}
	if err := place.start(ctx, startCtx); err != nil {
		return nil, err
	}
	s.place = place
	reviewer := &tokenReviewer{reviews: k.Client.AuthenticationV1().TokenReviews(),
		audience: k.TokenAudience, agent: agent, pod: place.pod}
	s.nodes = newReviewCache(reviewer.review, reviewCacheTTL, reviewCacheSize)

	bundle := &bundleConfigMap{configMaps: k.Client.CoreV1().ConfigMaps(k.Namespace),
		namespace: k.Namespace}
	if _, err := bundle.publish(startCtx, string(s.BundlePEM())); err != nil {
		return nil, err
	}
	s.background = append(s.background, func(ctx context.Context) {
		s.syncKubernetes(ctx, secret, bundle)
	})

	s.log.Info().Str(logNamespace, k.Namespace).Str(logAudience, k.TokenAudience).
		Stringer(logAgent, agent).Str(logTrustDomain, k.TrustDomain.Name()).
		Str(logConfigMap, bundle.String()).
		Msg("Kubernetes mode: agents' tokens checked with TokenReview, workloads placed by pods")
	return s, nil
}

// fill sets the defaults and checks the rest.
func (k *Kubernetes) fill() (serviceAccount, error) {
	if k.Client == nil {
		return serviceAccount{}, errors.New("Kubernetes mode needs an API client")
	}
	if k.TrustDomain.IsZero() {
		return serviceAccount{}, errors.New("no trust domain; set --trust-domain")
	}
	if k.Namespace == "" {
		k.Namespace = DefaultNamespace
	}
	if k.TokenAudience == "" {
		k.TokenAudience = DefaultTokenAudience
	}
	if k.AgentServiceAccount == "" {
		k.AgentServiceAccount = DefaultAgentServiceAccount
	}
	agent, err := parseServiceAccount(k.AgentServiceAccount)
	if err != nil {
		return serviceAccount{}, fmt.Errorf("agents' %w; check --agent-service-account", err)
	}
	return agent, nil
}

// restoreRoots loads the roots from their Secret into the directory, or creates the
// Secret, with a first root when the directory has none.
func (s *Server) restoreRoots(ctx context.Context, secret *rootSecret) error {
	outcome, err := secret.restore(ctx, func() error {
		r, created, err := s.firstRoot()
		if err != nil {
			return fmt.Errorf("loading root: %w", err)
		}
		if created {
			s.log.Info().Str(logDir, s.cfg.Dir).Str(logRoot, RootID(r.cert)).
				Time(logExpires, r.cert.NotAfter).Msg("created root")
		}
		// The bundle file too, so that the new Secret holds the whole state.
		a, err := loadRootsAuthority(s.cfg.Dir)
		if err != nil {
			return fmt.Errorf("loading roots: %w", err)
		}
		return a.writeBundle(s.cfg.Dir)
	})
	if err != nil {
		return err
	}
	s.log.Info().Str(logSecret, secret.String()).Str(logDir, s.cfg.Dir).Msg(string(outcome))
	return nil
}

// syncKubernetes saves root changes to their Secret (when there is one: not in plug-in
// mode) and publishes the bundle of the signing state in force, every ReloadPeriod,
// until ctx ends. A failure is logged once for each different error and retried.
func (s *Server) syncKubernetes(ctx context.Context, secret *rootSecret,
	bundle *bundleConfigMap) {
	t := time.NewTicker(s.cfg.ReloadPeriod)
	defer t.Stop()
	var secretErr, bundleErr onceError
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}

		if secret != nil {
			saved, err := secret.save(ctx)
			if ctx.Err() != nil {
				return
			}
			secretErr.log(s.log, err, "saving the roots to their Secret", logSecret, secret)
			if saved {
				s.log.Info().Str(logSecret, secret.String()).
					Msg("saved the changed roots to their Secret")
			}
		}

		changed, err := bundle.publish(ctx, string(s.BundlePEM()))
		if ctx.Err() != nil {
			return
		}
		bundleErr.log(s.log, err, "publishing the bundle", logConfigMap, bundle)
		if changed {
			s.log.Info().Str(logConfigMap, bundle.String()).
				Str(logBundle, s.auth.Load().bundleIDs()).Msg("published the bundle")
		}
	}
}

// onceError logs a repeating failure once per different error, and its end.
type onceError struct{ last string }

func (o *onceError) log(log zerolog.Logger, err error, what, field string, v fmt.Stringer) {
	if err == nil {
		if o.last != "" {
			o.last = ""
			log.Info().Stringer(field, v).Msg(what + " works again")
		}
		return
	}
	if msg := err.Error(); msg != o.last {
		o.last = msg
		log.Error().Err(err).Stringer(field, v).Msg(what)
	}
}
