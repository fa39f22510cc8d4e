package ca

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
)

// bundleConfigMap publishes the roots agents are to trust in the ConfigMap
// BundleConfigMap, under the key BundleFile: the agent DaemonSet mounts it as its
// --ca-root, and the kubelet brings each change into the agents' pods. It holds
// certificates only, never a key.
type bundleConfigMap struct {
	configMaps corev1client.ConfigMapInterface
	namespace  string
	// cm is the ConfigMap as last read or written; nil when it is to be read again.
	cm *corev1.ConfigMap
	// sent is the bundle last published. Only a change of this CA's own bundle is
	// published, so that a second replica that has not loaded a root change yet does not
	// take the bundle back, and two CAs never take turns at rewriting it.
	sent string
}

func (b *bundleConfigMap) String() string { return b.namespace + "/" + BundleConfigMap }

// publish makes the ConfigMap hold bundle, creating it if need be, unless bundle is what
// it published last; it reports whether it changed the ConfigMap. Labels and annotations
// others gave it are kept.
func (b *bundleConfigMap) publish(ctx context.Context, bundle string) (bool, error) {
	if bundle == b.sent {
		return false, nil
	}
	changed, err := b.write(ctx, bundle)
	if err == nil {
		b.sent = bundle
	}
	return changed, err
}

func (b *bundleConfigMap) write(ctx context.Context, bundle string) (bool, error) {
	if b.cm == nil {
		cm, err := b.configMaps.Get(ctx, BundleConfigMap, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			changed, err := b.create(ctx, bundle)
			if !apierrors.IsAlreadyExists(err) {
				return changed, err
			}
			// Another veil-ca created it first: compare with theirs.
			cm, err = b.configMaps.Get(ctx, BundleConfigMap, metav1.GetOptions{})
			if err != nil {
				return false, fmt.Errorf("reading ConfigMap %s: %w%s", b, err, rbacHint(err))
			}
		case err != nil:
			return false, fmt.Errorf("reading ConfigMap %s: %w%s", b, err, rbacHint(err))
		}
		b.cm = cm
	}
	if b.cm.Data[BundleFile] == bundle {
		return false, nil
	}

	next := b.cm.DeepCopy()
	if next.Data == nil {
		next.Data = map[string]string{}
	}
	next.Data[BundleFile] = bundle
	out, err := b.configMaps.Update(ctx, next, metav1.UpdateOptions{})
	if err != nil {
		b.cm = nil // changed or deleted meanwhile: read it again next time
		return false, fmt.Errorf("updating ConfigMap %s: %w%s", b, err, rbacHint(err))
	}
	b.cm = out
	return true, nil
}

func (b *bundleConfigMap) create(ctx context.Context, bundle string) (bool, error) {
	cm := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: BundleConfigMap, Namespace: b.namespace,
			Labels: map[string]string{"app.kubernetes.io/name": "veil-ca"}},
		Data: map[string]string{BundleFile: bundle},
	}
	out, err := b.configMaps.Create(ctx, cm, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return false, err
	}
	if err != nil {
		return false, fmt.Errorf("creating ConfigMap %s: %w%s", b, err, rbacHint(err))
	}
	b.cm = out
	return true, nil
}
