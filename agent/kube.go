package agent

import (
	"context"
	"fmt"
	"net/netip"
	"sync"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/client-go/dynamic"

	"github.com/veil-mesh/veil/agent/kubesource"
	"github.com/veil-mesh/veil/agent/policy"
	"github.com/veil-mesh/veil/agent/workloadfile"
	"github.com/veil-mesh/veil/internal/kubeconfig"
	"github.com/veil-mesh/veil/redirect"
)

// startKube starts watching the Kubernetes API, feeding readings and policies as the
// file watches would, and returns its first reading of each: it waits until every watch
// has listed once, so no pod is enrolled under a policy not yet read.
func (a *Agent) startKube(ctx context.Context, watches *sync.WaitGroup,
	readings chan<- fileReading, policies chan<- policyReading) (*workloadfile.File, error) {
	td, err := spiffeid.TrustDomainFromString(a.cfg.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("--trust-domain %q: %w", a.cfg.TrustDomain, err)
	}
	rc, err := kubeconfig.Load(a.cfg.Kubeconfig)
	if err != nil {
		return nil, err
	}
	rc.UserAgent = "veil-agent/" + a.cfg.Version + " (" + a.cfg.Node + ")"
	core, err := kubesource.NewCoreClient(rc)
	if err != nil {
		return nil, err
	}
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("making the Kubernetes client: %w", err)
	}

	src := kubesource.New(kubesource.Config{
		Core: core, Dynamic: dyn, Node: a.cfg.Node, TrustDomain: td, Log: a.log,
		FindNetns: func(ip netip.Addr) (string, error) {
			return redirect.FindNetns(ip, redirect.NetnsDirs, a.cfg.ProcDir, a.cfg.NodeNetns)
		},
	})
	a.kube.Store(src)
	// The callbacks run on Run's goroutine, one after the other: the first of each kind
	// goes to this function, the rest to the agent's loop.
	firstFile := make(chan *workloadfile.File, 1)
	firstPolicy := make(chan struct{})
	watches.Go(func() {
		sentFirst := false
		err := src.Run(ctx,
			func(f *workloadfile.File, problems []error) {
				if !sentFirst {
					sentFirst = true
					a.mu.Lock()
					a.problems = problems
					a.mu.Unlock()
					firstFile <- f
					return
				}
				select {
				case readings <- fileReading{f, problems, nil}:
				case <-ctx.Done():
				}
			},
			func(p *policy.Policy, text []byte) {
				if p == nil {
					return // the source logged why; the policy in force stays
				}
				select {
				case <-firstPolicy:
					select {
					case policies <- policyReading{data: text, parsed: p}:
					case <-ctx.Done():
					}
				default:
					a.policy.set(p, text)
					a.logPolicy(p, "policy loaded")
					close(firstPolicy)
				}
			})
		if err != nil && ctx.Err() == nil {
			a.errorEvent(err, "Kubernetes watch stopped").Msg("Kubernetes watch stopped")
		}
	})

	a.log.Info().Str(fieldNode, a.cfg.Node).Str(fieldAddr, rc.Host).
		Msg("watching the Kubernetes API for pods and policies")
	select {
	case f := <-firstFile:
		select {
		case <-firstPolicy:
			return f, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}
