package kubesource

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	listerscorev1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"github.com/veil-mesh/veil/agent/policy"
	"github.com/veil-mesh/veil/agent/workloadfile"
)

// Config configures a Source.
type Config struct {
	// Core reads pods and namespaces: a client of the core API group, as NewCoreClient
	// makes.
	Core    rest.Interface
	Dynamic dynamic.Interface
	// Node is this node's name, as pods' spec.nodeName gives it.
	Node        string
	TrustDomain spiffeid.TrustDomain
	// RootNamespace holds mesh-wide policies; empty: DefaultRootNamespace.
	RootNamespace string
	// FindNetns returns a path to the network namespace of a pod of this node with ip.
	FindNetns func(ip netip.Addr) (string, error)
	// Rescan is how often pods of this node whose namespace was not found are looked
	// for again; 0: 5 s.
	Rescan time.Duration
	Log    zerolog.Logger
}

// Source watches the API. Its methods are safe for concurrent use.
type Source struct {
	cfg  Config
	kick chan struct{}

	cluster, local, namespaces cache.SharedIndexInformer
	pa, ap                     cache.SharedIndexInformer

	mu    sync.Mutex
	netns map[podKey]string // found namespaces of this node's pods
	// cniAddrs are the addresses the CNI plugins gave this node's pods, by UID, for
	// those the API has none for yet (see cni.go).
	cniAddrs map[string]cniSandbox
	cniSeq   uint64          // counts SetCNIAddrs calls, to date cniAddrs entries
	warned   map[string]bool // problems logged already, by text
	goodPA   map[string]map[string]any
	goodAP   map[string]map[string]any
	synced   bool
}

// podKey is a pod at one address: the same name with a new UID or IP is another pod.
type podKey struct {
	uid string
	ip  netip.Addr
}

// New makes a source; Run starts it.
func New(cfg Config) *Source {
	if cfg.RootNamespace == "" {
		cfg.RootNamespace = DefaultRootNamespace
	}
	if cfg.Rescan == 0 {
		cfg.Rescan = 5 * time.Second
	}
	return &Source{
		cfg: cfg, kick: make(chan struct{}, 1), netns: map[podKey]string{},
		cniAddrs: map[string]cniSandbox{},
		warned:   map[string]bool{}, goodPA: map[string]map[string]any{},
		goodAP: map[string]map[string]any{},
	}
}

// Synced reports whether every watch has listed once and the first snapshot was made.
func (s *Source) Synced() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.synced
}

// Run watches until ctx ends. Once every watch has listed, and then after each change,
// it calls onWorkloads with the mesh's workloads and the problems of the pods left out,
// and onPolicy with the policy and its canonical text (for a digest), each only when
// it changed. Both run on Run's goroutine.
func (s *Source) Run(ctx context.Context, onWorkloads func(*workloadfile.File, []error),
	onPolicy func(*policy.Policy, []byte)) error {
	s.cluster = s.coreInformer("pods", &corev1.Pod{}, nil)
	s.local = s.coreInformer("pods", &corev1.Pod{}, func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", s.cfg.Node).String()
	})
	s.namespaces = s.coreInformer("namespaces", &corev1.Namespace{}, nil)
	s.pa = s.customInformer(PeerAuthenticationsResource)
	s.ap = s.customInformer(AuthorizationPoliciesResource)
	for _, inf := range []cache.SharedIndexInformer{s.cluster, s.local} {
		if err := inf.SetTransform(trimPod); err != nil {
			return fmt.Errorf("trimming the pods kept in memory: %w", err)
		}
	}
	for name, inf := range s.informers() {
		if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    func(any) { s.poke() },
			UpdateFunc: func(any, any) { s.poke() },
			DeleteFunc: func(any) { s.poke() },
		}); err != nil {
			return fmt.Errorf("watching %s: %w", name, err)
		}
		if err := inf.SetWatchErrorHandlerWithContext(s.watchError(name)); err != nil {
			return fmt.Errorf("watching %s: %w", name, err)
		}
	}

	var running sync.WaitGroup
	defer running.Wait()
	ctx, stop := context.WithCancel(ctx)
	defer stop() // before Wait: the informers stop when Run returns
	for _, inf := range s.informers() {
		running.Go(func() { inf.RunWithContext(ctx) })
	}

	syncs := []cache.InformerSynced{}
	for _, inf := range s.informers() {
		syncs = append(syncs, inf.HasSynced)
	}
	if !cache.WaitForCacheSync(ctx.Done(), syncs...) {
		return ctx.Err()
	}
	s.loop(ctx, listerscorev1.NewNamespaceLister(s.namespaces.GetIndexer()), onWorkloads, onPolicy)
	return nil
}

// coreInformer watches resource of the core API group, objects like example, with
// tweak applied to its list and watch options if not nil.
func (s *Source) coreInformer(resource string, example runtime.Object,
	tweak func(*metav1.ListOptions)) cache.SharedIndexInformer {
	if tweak == nil {
		tweak = func(*metav1.ListOptions) {}
	}
	lw := cache.NewFilteredListWatchFromClient(s.cfg.Core, resource, metav1.NamespaceAll, tweak)
	return cache.NewSharedIndexInformer(lw, example, 0, cache.Indexers{})
}

// customInformer watches a custom resource, in every namespace.
func (s *Source) customInformer(gvr schema.GroupVersionResource) cache.SharedIndexInformer {
	res := s.cfg.Dynamic.Resource(gvr)
	listAll := func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
		return res.List(ctx, o)
	}
	watchAll := func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
		return res.Watch(ctx, o)
	}
	lw := &cache.ListWatch{ListWithContextFunc: listAll, WatchFuncWithContext: watchAll}
	// Named, or client-go's log lines would call both resources *unstructured.Unstructured.
	return cache.NewSharedIndexInformerWithOptions(lw, &unstructured.Unstructured{},
		cache.SharedIndexInformerOptions{ObjectDescription: gvr.String()})
}

func (s *Source) informers() map[string]cache.SharedIndexInformer {
	return map[string]cache.SharedIndexInformer{
		"pods": s.cluster, "pods of " + s.cfg.Node: s.local, "namespaces": s.namespaces,
		PeerAuthenticationsResource.Resource: s.pa, AuthorizationPoliciesResource.Resource: s.ap,
	}
}

func (s *Source) poke() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// watchError logs a failing watch once per distinct error, with what to do about the
// usual causes, instead of the reflector's line every retry.
func (s *Source) watchError(what string) cache.WatchErrorHandlerWithContext {
	return func(_ context.Context, _ *cache.Reflector, err error) {
		msg := fmt.Sprintf("watching %s: %v", what, err)
		if !s.firstTime(msg) {
			return
		}
		ev := s.cfg.Log.Error().Str(fieldResource, what).Err(err)
		switch {
		case strings.Contains(err.Error(), "forbidden"):
			ev.Msg("the API refuses the agent's watch; check the RBAC rules in deploy/")
		case strings.Contains(err.Error(), "the server could not find the requested resource"):
			ev.Msg("a resource is not known to the API; install the CRDs: kubectl apply -k deploy/")
		default:
			ev.Msg("watch failed; retrying")
		}
	}
}

// firstTime reports whether msg has not been logged yet, and remembers it.
func (s *Source) firstTime(msg string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.warned[msg] {
		return false
	}
	s.warned[msg] = true
	return true
}

// debounce gathers a burst of events, a rollout's worth of pods, into one snapshot.
const debounce = 100 * time.Millisecond

func (s *Source) loop(ctx context.Context, namespaces listerscorev1.NamespaceLister,
	onWorkloads func(*workloadfile.File, []error), onPolicy func(*policy.Policy, []byte)) {
	var (
		lastFile     *workloadfile.File
		lastProblems string
		lastPolicy   []byte
	)
	rescan := time.NewTicker(s.cfg.Rescan)
	defer rescan.Stop()
	publish := func() {
		f, problems, missing := s.workloads(namespaces)
		// A pod left out changes only the problems, and they are news too.
		left := errorsText(problems)
		if lastFile == nil || !reflect.DeepEqual(f, lastFile) || left != lastProblems {
			lastFile, lastProblems = f, left
			onWorkloads(f, problems)
		}
		p, text := s.policy()
		if lastPolicy == nil || string(text) != string(lastPolicy) {
			lastPolicy = text
			onPolicy(p, text)
		}
		s.mu.Lock()
		s.synced = true
		s.mu.Unlock()
		if !missing {
			rescan.Reset(time.Hour) // nothing to look for
		} else {
			rescan.Reset(s.cfg.Rescan)
		}
	}

	publish()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.kick:
			select {
			case <-time.After(debounce):
			case <-ctx.Done():
				return
			}
			publish()
		case <-rescan.C:
			publish()
		}
	}
}

// workloads builds the mesh's workloads from the caches. missing says that a pod of this
// node has no namespace found yet, so the caller looks again later.
func (s *Source) workloads(namespaces listerscorev1.NamespaceLister) (
	f *workloadfile.File, problems []error, missing bool) {
	f = &workloadfile.File{TrustDomain: s.cfg.TrustDomain,
		Namespaces: map[string]workloadfile.Namespace{}}
	taken := map[netip.Addr]string{}
	s.mu.Lock()
	listed := s.cniSeq
	s.mu.Unlock()
	pods := s.meshPods(namespaces)
	defer s.forgetNetns(pods, listed)
	for _, pod := range pods {
		w, err := s.workload(pod)
		if err == nil {
			err = claim(taken, w)
		}
		if err != nil {
			problems = append(problems, &PodError{Namespace: pod.Namespace, Name: pod.Name,
				Err: err})
			missing = missing || (pod.Spec.NodeName == s.cfg.Node && errors.Is(err, errNoNetns))
			continue
		}
		f.Workloads = append(f.Workloads, w)
	}
	return f, problems, missing
}

// PodError is why a pod is left out of the mesh. Its message names the pod already.
type PodError struct {
	Namespace, Name string
	Err             error
}

func (e *PodError) Error() string { return e.Err.Error() }
func (e *PodError) Unwrap() error { return e.Err }

var errNoNetns = errors.New("no network namespace on this node holds its address yet")

// meshPods lists the running mesh pods, this node's from the node's own watch, sorted
// by namespace and name.
func (s *Source) meshPods(namespaces listerscorev1.NamespaceLister) []*corev1.Pod {
	var out []*corev1.Pod
	add := func(obj any, local bool) {
		pod, ok := obj.(*corev1.Pod)
		if !ok || !running(pod) || (pod.Spec.NodeName == s.cfg.Node) != local {
			return
		}
		var nsLabels map[string]string
		if ns, err := namespaces.Get(pod.Namespace); err == nil {
			nsLabels = ns.Labels
		}
		if inMesh(pod, nsLabels) {
			out = append(out, pod)
		}
	}
	for _, obj := range s.cluster.GetStore().List() {
		add(obj, false)
	}
	for _, obj := range s.local.GetStore().List() {
		add(obj, true)
	}
	slices.SortFunc(out, func(a, b *corev1.Pod) int {
		return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
	})
	return out
}

// workload describes a mesh pod as the workload file would.
func (s *Source) workload(pod *corev1.Pod) (workloadfile.Workload, error) {
	name := "pod " + pod.Namespace + "/" + pod.Name
	w := workloadfile.Workload{
		Name: pod.Name, Namespace: pod.Namespace, ServiceAccount: serviceAccount(pod),
		Node: pod.Spec.NodeName, IPs: podIPs(pod), Labels: pod.Labels,
	}
	if w.Node == "" {
		return w, fmt.Errorf("%s is not scheduled yet", name)
	}
	if len(w.IPs) == 0 && w.Node == s.cfg.Node {
		w.IPs = s.cniAddrsOf(string(pod.UID))
	}
	if len(w.IPs) == 0 {
		return w, fmt.Errorf("%s has no IP yet; it joins the mesh once it has one", name)
	}
	if w.ID(s.cfg.TrustDomain).IsZero() {
		return w, fmt.Errorf("%s: namespace %q or service account %q cannot be part of "+
			"a SPIFFE ID", name, w.Namespace, w.ServiceAccount)
	}
	if w.Node == s.cfg.Node {
		path, err := s.netnsOf(pod, w.IPs[0])
		if err != nil {
			return w, fmt.Errorf("%s (%s): %w", name, w.IPs[0], errNoNetns)
		}
		w.Netns = path
	}
	return w, nil
}

func (s *Source) netnsOf(pod *corev1.Pod, ip netip.Addr) (string, error) {
	k := podKey{string(pod.UID), ip}
	s.mu.Lock()
	path, ok := s.netns[k]
	s.mu.Unlock()
	if ok {
		return path, nil
	}
	path, err := s.cfg.FindNetns(ip)
	if err != nil {
		return "", err
	}
	s.mu.Lock()
	s.netns[k] = path
	s.mu.Unlock()
	return path, nil
}

// forgetNetns drops what was found, and what the CNI plugins said, for pods that are
// gone: not in pods, listed when SetCNIAddrs had been called listed times. What the
// plugins said of a pod since may be of a pod the listing was too early to see, which
// the pod's ADD is waiting to see enrolled.
func (s *Source) forgetNetns(pods []*corev1.Pod, listed uint64) {
	live := map[string]bool{}
	for _, pod := range pods {
		live[string(pod.UID)] = true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for k := range s.netns {
		if !live[k.uid] {
			delete(s.netns, k)
		}
	}
	for uid, sb := range s.cniAddrs {
		if !live[uid] && sb.seq <= listed {
			delete(s.cniAddrs, uid)
		}
	}
}

// claim gives w's addresses to w, or says which pod has one of them: two running pods
// cannot have one address, and the first, by name, keeps it.
func claim(taken map[netip.Addr]string, w workloadfile.Workload) error {
	name := w.Namespace + "/" + w.Name
	for _, ip := range w.IPs {
		if other, ok := taken[ip]; ok {
			return fmt.Errorf("pod %s: address %s is pod %s's too; left out until one of "+
				"them goes", name, ip, other)
		}
	}
	for _, ip := range w.IPs {
		taken[ip] = name
	}
	return nil
}

func metaOf(pod *corev1.Pod) metav1.ObjectMeta {
	return metav1.ObjectMeta{
		Name: pod.Name, Namespace: pod.Namespace, UID: pod.UID, Labels: pod.Labels,
		ResourceVersion: pod.ResourceVersion, DeletionTimestamp: pod.DeletionTimestamp,
	}
}

func errorsText(errs []error) string {
	var b strings.Builder
	for _, err := range errs {
		b.WriteString(err.Error())
		b.WriteByte('\n')
	}
	return b.String()
}
