package kubesource

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

func TestInMesh(t *testing.T) {
	enabled := map[string]string{MeshLabel: MeshEnabled}
	pod := func(labels map[string]string, host bool) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Labels: labels},
			Spec: corev1.PodSpec{HostNetwork: host}}
	}
	for _, tc := range []struct {
		name     string
		pod      *corev1.Pod
		nsLabels map[string]string
		want     bool
	}{
		{"namespace enabled", pod(nil, false), enabled, true},
		{"namespace not labelled", pod(nil, false), nil, false},
		{"namespace disabled", pod(nil, false), map[string]string{MeshLabel: MeshDisabled}, false},
		{"pod opts out", pod(map[string]string{MeshLabel: MeshDisabled}, false), enabled, false},
		{"pod opts in", pod(map[string]string{MeshLabel: MeshEnabled}, false), nil, true},
		{"pod label with another value", pod(map[string]string{MeshLabel: "yes"}, false), enabled, false},
		{"host network", pod(map[string]string{MeshLabel: MeshEnabled}, true), enabled, false},
	} {
		if got := inMesh(tc.pod, tc.nsLabels); got != tc.want {
			t.Errorf("%s: inMesh = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestPodIPs(t *testing.T) {
	p := &corev1.Pod{Status: corev1.PodStatus{PodIP: "10.0.0.1",
		PodIPs: []corev1.PodIP{{IP: "10.0.0.1"}, {IP: "fd00::1"}, {IP: "junk"}}}}
	want := []netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("fd00::1")}
	if got := podIPs(p); !slices.Equal(got, want) {
		t.Errorf("podIPs = %v, want %v", got, want)
	}
	p.Status.PodIPs = nil
	if got := podIPs(p); !slices.Equal(got, want[:1]) {
		t.Errorf("podIPs from podIP only = %v", got)
	}
}

func TestTrimPodKeepsWhatIsRead(t *testing.T) {
	full := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "a", Namespace: "shop", UID: "u1",
			Labels: map[string]string{"app": "a"}, Annotations: map[string]string{"big": "x"}},
		Spec: corev1.PodSpec{NodeName: "n1", ServiceAccountName: "sa",
			Containers: []corev1.Container{{Name: "c", Image: "i"}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.0.0.1",
			PodIPs: []corev1.PodIP{{IP: "10.0.0.1"}}},
	}
	obj, err := trimPod(full)
	if err != nil {
		t.Fatal(err)
	}
	p := obj.(*corev1.Pod)
	if p.Name != "a" || p.Namespace != "shop" || p.UID != "u1" || p.Labels["app"] != "a" ||
		p.Spec.NodeName != "n1" || serviceAccount(p) != "sa" || !running(p) ||
		len(podIPs(p)) != 1 {
		t.Errorf("trimPod lost something the source reads: %+v", p)
	}
	if p.Annotations != nil || p.Spec.Containers != nil {
		t.Errorf("trimPod kept what the source never reads: %+v", p)
	}
}

func TestEntryFromResource(t *testing.T) {
	s := New(Config{})
	u := &unstructured.Unstructured{Object: map[string]any{
		"metadata": map[string]any{"name": "strict", "namespace": DefaultRootNamespace},
		"spec":     map[string]any{"mtls": map[string]any{"mode": "STRICT"}},
	}}
	e := s.entry(u)
	if _, ok := e["namespace"]; ok || e["name"] != "strict" || e["mtls"] == nil {
		t.Errorf("entry of a root-namespace resource = %v, want a mesh-wide entry", e)
	}
	u.SetNamespace("shop")
	if e := s.entry(u); e["namespace"] != "shop" {
		t.Errorf("entry = %v, want namespace shop", e)
	}
}

func TestCheckEntryNamesTheSpecField(t *testing.T) {
	err := checkEntry("authorizationPolicies", map[string]any{
		"name": "a", "namespace": "shop",
		"rules": []any{map[string]any{"from": []any{map[string]any{
			"source": map[string]any{"ipBlocks": []any{"10.0.0.0/33"}}}}}},
	})
	if err == nil || !strings.Contains(err.Error(), "spec.rules[0].from[0].source.ipBlocks[0]") ||
		strings.Contains(err.Error(), "line ") {
		t.Errorf("checkEntry error %v: want the spec field and no line number", err)
	}
}
