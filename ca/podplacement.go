package ca

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/rs/zerolog"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// podPlacement places workloads where the API server says their pods run: a node may
// obtain spiffe://<td>/ns/N/sa/S while a pod of namespace N with service account S is
// scheduled to it and has not finished. It does not ask whether the pod is in the mesh:
// the identity is the service account's, and a certificate nobody enrols is harmless.
//
// A pod counts from the moment it is scheduled, not only once its phase is Running: the
// agent enrols a pod once it has an address, which it has while its init containers
// still run (phase Pending), and its connections need a certificate from then on.
//
// One informer watches every pod of the cluster, keeping only the fields used here, and
// indexes them by node and identity, so each request is one map lookup.
type podPlacement struct {
	td       spiffeid.TrustDomain
	client   kubernetes.Interface
	factory  informers.SharedInformerFactory
	informer cache.SharedIndexInformer
	log      zerolog.Logger

	mu     sync.Mutex
	logged map[string]bool // watch errors logged already, by text
}

// podsByPlacement is the index of pods by placementKey.
const podsByPlacement = "veil.dev/node-identity"

func newPodPlacement(client kubernetes.Interface, td spiffeid.TrustDomain,
	log zerolog.Logger) (*podPlacement, error) {
	p := &podPlacement{td: td, client: client, log: log, logged: map[string]bool{}}
	p.factory = informers.NewSharedInformerFactoryWithOptions(client, 0,
		informers.WithTransform(trimPod))
	p.informer = p.factory.Core().V1().Pods().Informer()
	if err := p.informer.AddIndexers(cache.Indexers{podsByPlacement: placementIndex}); err != nil {
		return nil, fmt.Errorf("indexing pods: %w", err)
	}
	if err := p.informer.SetWatchErrorHandlerWithContext(p.watchError); err != nil {
		return nil, fmt.Errorf("watching pods: %w", err)
	}
	return p, nil
}

// start runs the watch until ctx ends, and returns once every pod has been listed, or
// with an error when that has not happened by the end of startCtx.
func (p *podPlacement) start(ctx, startCtx context.Context) error {
	p.factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(startCtx.Done(), p.informer.HasSynced) {
		return fmt.Errorf("listing pods: %w; see the watch errors logged before, and check "+
			"that deploy/ca-rbac.yaml lets the CA list and watch pods", startCtx.Err())
	}
	return nil
}

func (p *podPlacement) trustDomain() spiffeid.TrustDomain { return p.td }

func (p *podPlacement) refusal(node string, id spiffeid.ID) string {
	ns, sa := identityParts(id)
	pods, err := p.informer.GetIndexer().ByIndex(podsByPlacement, placementKey(node, ns, sa))
	if err == nil && len(pods) > 0 {
		return ""
	}
	return fmt.Sprintf("no pod of service account %s in namespace %s runs on node %s "+
		"according to the Kubernetes API", sa, ns, node)
}

// pod returns a pod from the watch's cache, or from the API when the watch has not seen
// it yet (an agent pod that has just started).
func (p *podPlacement) pod(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
	obj, ok, err := p.informer.GetStore().GetByKey(namespace + "/" + name)
	if err == nil && ok {
		if pod, isPod := obj.(*corev1.Pod); isPod {
			return pod, nil
		}
	}
	return p.client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
}

// watchError logs a failing watch once per distinct error: the reflector retries every
// second or so, and would otherwise fill the log with the same line.
func (p *podPlacement) watchError(_ context.Context, _ *cache.Reflector, err error) {
	msg := err.Error()
	p.mu.Lock()
	seen := p.logged[msg]
	p.logged[msg] = true
	p.mu.Unlock()
	if seen {
		return
	}
	if apierrors.IsForbidden(err) || strings.Contains(msg, "forbidden") {
		p.log.Error().Err(err).Str(logResource, "pods").Msg("the API refuses the CA's " +
			"watch of pods; check that deploy/ca-rbac.yaml is applied")
		return
	}
	if !errors.Is(err, context.Canceled) {
		p.log.Warn().Err(err).Str(logResource, "pods").Msg("watching pods failed; retrying")
	}
}

// placementKey is the index key of a pod of namespace ns and service account sa on node.
// None of the three names can hold a '/'.
func placementKey(node, ns, sa string) string { return node + "/" + ns + "/" + sa }

// placementIndex indexes a pod that is scheduled and not finished.
func placementIndex(obj any) ([]string, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok || pod.Spec.NodeName == "" || pod.Status.Phase == corev1.PodSucceeded ||
		pod.Status.Phase == corev1.PodFailed {
		return nil, nil
	}
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default" // what the ServiceAccount admission plugin would set
	}
	return []string{placementKey(pod.Spec.NodeName, pod.Namespace, sa)}, nil
}

// trimPod keeps what the CA reads of a pod, so that a cluster's worth of pods costs
// little memory: no labels, containers, volumes, conditions or managed fields.
func trimPod(obj any) (any, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil // a tombstone of a deleted pod: the cache handles it
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: pod.Name, Namespace: pod.Namespace, UID: pod.UID,
			ResourceVersion: pod.ResourceVersion},
		Spec: corev1.PodSpec{NodeName: pod.Spec.NodeName,
			ServiceAccountName: pod.Spec.ServiceAccountName},
		Status: corev1.PodStatus{Phase: pod.Status.Phase},
	}, nil
}

// identityParts returns the namespace and service account of an ID that checkCSR
// accepted: spiffe://<td>/ns/<namespace>/sa/<service-account>.
func identityParts(id spiffeid.ID) (ns, sa string) {
	seg := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
	if len(seg) != 4 {
		return "", ""
	}
	return seg[1], seg[3]
}
