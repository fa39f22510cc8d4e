package kubesource

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
)

// cniSource is a source whose watches have listed (their caches are filled by hand):
// what PodFromCNI reads. The watches themselves run against a real API server in e2e
// TestKubernetesDiscovery.
func cniSource(t *testing.T) *Source {
	t.Helper()
	s := New(Config{Node: "n1"})
	s.local = cache.NewSharedIndexInformer(&cache.ListWatch{}, &corev1.Pod{}, 0, cache.Indexers{})
	s.namespaces = cache.NewSharedIndexInformer(&cache.ListWatch{}, &corev1.Namespace{}, 0,
		cache.Indexers{})
	s.synced = true
	return s
}

func addObj(t *testing.T, inf cache.SharedIndexInformer, obj any) {
	t.Helper()
	if err := inf.GetStore().Add(obj); err != nil {
		t.Fatal(err)
	}
}

func cniPod(labels map[string]string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "cart-0",
		UID: "u-1", Labels: labels}, Spec: corev1.PodSpec{NodeName: "n1"}}
}

func TestPodFromCNI(t *testing.T) {
	meshNS := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop",
		Labels: map[string]string{MeshLabel: MeshEnabled}}}
	short := func() context.Context {
		ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
		t.Cleanup(cancel)
		return ctx
	}

	t.Run("in the mesh by its namespace", func(t *testing.T) {
		s := cniSource(t)
		addObj(t, s.local, cniPod(nil))
		addObj(t, s.namespaces, meshNS)
		pod, mesh, err := s.PodFromCNI(short(), "shop", "cart-0", "u-1")
		if err != nil || !mesh || pod.UID != "u-1" {
			t.Errorf("PodFromCNI = %v, %v, %v; want the pod, in the mesh", pod, mesh, err)
		}
	})
	t.Run("another pod of that name", func(t *testing.T) {
		s := cniSource(t)
		addObj(t, s.local, cniPod(nil))
		addObj(t, s.namespaces, meshNS)
		if _, _, err := s.PodFromCNI(short(), "shop", "cart-0", "u-2"); !errors.Is(err, ErrUnknownPod) {
			t.Errorf("a UID the cache does not have: %v, want ErrUnknownPod", err)
		}
	})
	t.Run("namespace not in the cache yet", func(t *testing.T) {
		s := cniSource(t)
		addObj(t, s.local, cniPod(nil))
		if _, mesh, err := s.PodFromCNI(short(), "shop", "cart-0", ""); !errors.Is(err, ErrUnknownPod) {
			t.Errorf("PodFromCNI = mesh %v, %v; want ErrUnknownPod, not a guess", mesh, err)
		}
		// The namespace's watch delivers it while the plugin waits.
		go func() {
			time.Sleep(3 * cniPollEvery)
			_ = s.namespaces.GetStore().Add(meshNS)
		}()
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		if _, mesh, err := s.PodFromCNI(ctx, "shop", "cart-0", ""); err != nil || !mesh {
			t.Errorf("once the namespace came: mesh %v, %v", mesh, err)
		}
	})
	t.Run("the pod's label decides alone", func(t *testing.T) {
		s := cniSource(t)
		addObj(t, s.local, cniPod(map[string]string{MeshLabel: MeshDisabled}))
		if _, mesh, err := s.PodFromCNI(short(), "shop", "cart-0", ""); err != nil || mesh {
			t.Errorf("a pod that opted out: mesh %v, %v", mesh, err)
		}
	})
}

// A DEL of an older sandbox of the pod leaves the current sandbox's addresses.
func TestForgetCNIOnlyItsSandbox(t *testing.T) {
	s := cniSource(t)
	ip := []netip.Addr{netip.MustParseAddr("10.244.1.200")}
	s.SetCNIAddrs("u-1", "sandbox-2", ip)
	s.ForgetCNI("u-1", "sandbox-1")
	if got := s.cniAddrsOf("u-1"); !slices.Equal(got, ip) {
		t.Errorf("after a DEL of an older sandbox: %v, want %v", got, ip)
	}
	s.ForgetCNI("u-1", "sandbox-2")
	if got := s.cniAddrsOf("u-1"); got != nil {
		t.Errorf("after the sandbox's own DEL: %v", got)
	}
}

// A new sandbox of a pod has a new network namespace, even at the same address: the
// namespace found for the pod's earlier sandbox is forgotten, and looked for again.
func TestNewSandboxForgetsTheFoundNetns(t *testing.T) {
	s := cniSource(t)
	ip := netip.MustParseAddr("10.244.1.200")
	s.SetCNIAddrs("u-1", "sandbox-1", []netip.Addr{ip})
	s.mu.Lock()
	s.netns[podKey{"u-1", ip}] = "/run/netns/sandbox-1"
	s.netns[podKey{"u-2", ip}] = "/run/netns/other"
	s.mu.Unlock()

	found := func(uid string) bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		_, ok := s.netns[podKey{uid, ip}]
		return ok
	}
	s.SetCNIAddrs("u-1", "sandbox-1", []netip.Addr{ip}) // the runtime repeating an ADD
	if !found("u-1") {
		t.Error("an ADD repeated for the same sandbox forgot its netns")
	}
	s.SetCNIAddrs("u-1", "sandbox-2", []netip.Addr{ip})
	if found("u-1") {
		t.Error("a new sandbox at the same address kept the earlier sandbox's netns")
	}
	if !found("u-2") {
		t.Error("a new sandbox of one pod forgot another pod's netns")
	}
}

// The CNI plugins may give a sandbox several addresses of a family, in any order; the
// kubelet reports the first of each. The pod's addresses from the plugins are those, so
// they do not change when the API's take over.
func TestCNIAddrsFirstOfEachFamily(t *testing.T) {
	s := cniSource(t)
	a := func(s string) netip.Addr { return netip.MustParseAddr(s) }
	s.SetCNIAddrs("u-1", "sandbox-1", []netip.Addr{a("10.244.1.7"), a("fd00::7"),
		a("10.244.1.8"), a("fd00::8")})
	want := []netip.Addr{a("10.244.1.7"), a("fd00::7")}
	if got := s.cniAddrsOf("u-1"); !slices.Equal(got, want) {
		t.Errorf("addresses from the CNI plugins: %v, want %v", got, want)
	}
}

// A snapshot forgets what the CNI plugins said of pods it did not list, but not of a pod
// whose ADD came while it was being taken: the listing was too early to see that pod,
// and its ADD waits for it to be enrolled.
func TestSnapshotKeepsAddressesItWasTooEarlyFor(t *testing.T) {
	s := cniSource(t)
	ip := []netip.Addr{netip.MustParseAddr("10.244.1.200")}
	s.SetCNIAddrs("gone", "sandbox-1", ip)
	s.mu.Lock()
	listed := s.cniSeq
	s.mu.Unlock()
	s.SetCNIAddrs("new", "sandbox-1", ip) // after the listing, before its end

	s.forgetNetns(nil, listed)
	if s.cniAddrsOf("gone") != nil {
		t.Error("the addresses of a pod gone before the listing were kept")
	}
	if s.cniAddrsOf("new") == nil {
		t.Error("the addresses of a pod added during the listing were forgotten")
	}
	s.mu.Lock()
	listed = s.cniSeq
	s.mu.Unlock()
	s.forgetNetns(nil, listed)
	if s.cniAddrsOf("new") != nil {
		t.Error("the addresses of a pod no later listing found were kept")
	}
}
