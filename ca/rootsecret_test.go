package ca

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

func TestSecretKeys(t *testing.T) {
	for rel, key := range map[string]string{
		RootCertFile: RootCertFile, StateFile: StateFile, BundleFile: BundleFile,
		filepath.Join(RootsDir, "0123456789abcdef.key"): "roots_0123456789abcdef.key",
	} {
		if got := secretKeyOf(rel); got != key {
			t.Errorf("secretKeyOf(%s) = %s, want %s", rel, got, key)
		}
		if got, err := pathOfSecretKey(key); err != nil || got != rel {
			t.Errorf("pathOfSecretKey(%s) = %s, %v; want %s", key, got, err, rel)
		}
	}
	for _, key := range []string{"..", "roots_", "roots_..", "roots_.lock", ".lock",
		"config.yaml", "roots_a/b", `roots_a\b`} {
		if got, err := pathOfSecretKey(key); err == nil {
			t.Errorf("pathOfSecretKey(%q) = %s, want an error", key, got)
		}
	}
}

// newFakeSecret is a rootSecret over a fake API with nothing in it yet.
func newFakeSecret(t *testing.T) (*rootSecret, *fake.Clientset) {
	client := fake.NewClientset()
	return &rootSecret{secrets: client.CoreV1().Secrets(kubeNS), namespace: kubeNS,
		dir: filepath.Join(t.TempDir(), "ca")}, client
}

func firstRootOf(dir string) func() error {
	return func() error {
		_, _, err := loadOrCreateRoot(dir, t0)
		return err
	}
}

func activeRoot(t *testing.T, dir string) string {
	t.Helper()
	roots, err := ListRoots(dir)
	if err != nil {
		t.Fatalf("ListRoots: %v", err)
	}
	for _, r := range roots {
		if r.State == RootActive {
			return r.ID
		}
	}
	t.Fatal("no active root")
	return ""
}

// Two replicas start at once: the one whose create fails takes the other's root.
func TestRootSecretLostCreateRace(t *testing.T) {
	theirDir, theirID := firstRootDir(t)
	theirs, err := readStateFiles(theirDir)
	if err != nil {
		t.Fatal(err)
	}
	r, client := newFakeSecret(t)
	client.PrependReactor("create", "secrets", func(k8stesting.Action) (bool, runtime.Object,
		error) {
		// The other replica's create lands between this one's get and create.
		sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: RootSecret,
			Namespace: kubeNS}, Data: theirs}
		if err := client.Tracker().Add(sec); err != nil {
			t.Fatal(err)
		}
		return true, nil, apierrors.NewAlreadyExists(schema.GroupResource{Resource: "secrets"},
			RootSecret)
	})

	outcome, err := r.restore(context.Background(), firstRootOf(r.dir))
	if err != nil || outcome != lostCreateRace {
		t.Fatalf("restore: %q, %v; want %q", outcome, err, lostCreateRace)
	}
	if got := activeRoot(t, r.dir); got != theirID {
		t.Errorf("active root %s, want the other replica's %s", got, theirID)
	}
}

// A start replaces whatever the directory holds (an emptyDir that outlived a container
// restart) with the Secret's state, files the Secret does not hold included.
func TestRootSecretRestoreReplacesDirectory(t *testing.T) {
	secretDir, secretID := firstRootDir(t)
	a, err := loadRootsAuthority(secretDir)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.writeBundle(secretDir); err != nil {
		t.Fatal(err)
	}
	files, err := readStateFiles(secretDir)
	if err != nil {
		t.Fatal(err)
	}
	r, client := newFakeSecret(t)
	if _, _, err := loadOrCreateRoot(r.dir, t0); err != nil {
		t.Fatal(err)
	}
	stale, err := AddRoot(r.dir, t0)
	if err != nil {
		t.Fatal(err)
	}
	if err := client.Tracker().Add(&corev1.Secret{ObjectMeta: metav1.ObjectMeta{
		Name: RootSecret, Namespace: kubeNS}, Data: files}); err != nil {
		t.Fatal(err)
	}

	outcome, err := r.restore(context.Background(), func() error {
		t.Error("restore made a root although the Secret exists")
		return nil
	})
	if err != nil || outcome != restoredFromSecret {
		t.Fatalf("restore: %q, %v", outcome, err)
	}
	roots, err := ListRoots(r.dir)
	if err != nil || len(roots) != 1 || roots[0].ID != secretID {
		t.Fatalf("roots after restore: %+v, %v; want %s alone", roots, err, secretID)
	}
	for _, name := range []string{StateFile, filepath.Join(RootsDir, stale.ID+".key")} {
		if _, err := os.Stat(filepath.Join(r.dir, name)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s, which the Secret does not hold, is still there (%v)", name, err)
		}
	}
	for name, want := range map[string]os.FileMode{RootKeyFile: 0o600, RootCertFile: 0o644,
		BundleFile: 0o644} {
		info, err := os.Stat(filepath.Join(r.dir, name))
		if err != nil {
			t.Errorf("%s: %v", name, err)
		} else if info.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", name, info.Mode().Perm(), want)
		}
	}
}

func TestRootSecretRefusesBadSecret(t *testing.T) {
	for name, tt := range map[string]struct {
		data map[string][]byte
		want string
	}{
		"empty": {nil, "the Secret veil-system/veil-ca-root holds neither roots.json nor " +
			"root.crt: restore it from a backup, or delete it so that veil-ca creates a " +
			"new root (every agent then needs the new bundle)"},
		"unknown key": {map[string][]byte{RootCertFile: []byte("x"), "../evil": []byte("x")},
			"loading Secret veil-system/veil-ca-root into %DIR%: key \"../evil\" is not one " +
				"veil-ca writes (root.crt, root.key, roots.json, bundle.crt, or roots_<file>); " +
				"remove it from the Secret"},
	} {
		t.Run(name, func(t *testing.T) {
			r, client := newFakeSecret(t)
			if err := client.Tracker().Add(&corev1.Secret{ObjectMeta: metav1.ObjectMeta{
				Name: RootSecret, Namespace: kubeNS}, Data: tt.data}); err != nil {
				t.Fatal(err)
			}
			_, err := r.restore(context.Background(), firstRootOf(r.dir))
			wantErr(t, "restore", err, strings.ReplaceAll(tt.want, "%DIR%", r.dir))
		})
	}
}

// save writes root changes, and only changes, to the Secret; it recreates a deleted
// Secret, and never overwrites one that someone else changed.
func TestRootSecretSave(t *testing.T) {
	r, client := newFakeSecret(t)
	ctx := context.Background()
	outcome, err := r.restore(ctx, firstRootOf(r.dir))
	if err != nil || outcome != createdSecret {
		t.Fatalf("restore: %q, %v; want %q", outcome, err, createdSecret)
	}
	matchesDir := func(what string) {
		t.Helper()
		s, err := client.CoreV1().Secrets(kubeNS).Get(ctx, RootSecret, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		files, err := readStateFiles(r.dir)
		if err != nil {
			t.Fatal(err)
		}
		if !sameFiles(s.Data, files) {
			t.Fatalf("%s: the Secret does not hold the directory's state", what)
		}
	}
	matchesDir("created")

	if saved, err := r.save(ctx); saved || err != nil {
		t.Fatalf("save with nothing changed: %v, %v; want false, nil", saved, err)
	}
	if _, err := AddRoot(r.dir, t0); err != nil {
		t.Fatal(err)
	}
	if saved, err := r.save(ctx); !saved || err != nil {
		t.Fatalf("save after root add: %v, %v; want true, nil", saved, err)
	}
	matchesDir("after root add")

	// Deleted by someone: made again at the next change.
	if err := client.CoreV1().Secrets(kubeNS).Delete(ctx, RootSecret,
		metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := RetireRoot(r.dir, nextRoot(t, r.dir), t0.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if saved, err := r.save(ctx); !saved || err != nil {
		t.Fatalf("save after the Secret was deleted: %v, %v; want true, nil", saved, err)
	}
	matchesDir("after root retire, the Secret deleted")

	// Changed by someone else: reported once, then nothing more is written.
	updates := 0
	client.PrependReactor("update", "secrets", func(k8stesting.Action) (bool, runtime.Object,
		error) {
		updates++
		return true, nil, apierrors.NewConflict(schema.GroupResource{Resource: "secrets"},
			RootSecret, errors.New("the object has been modified"))
	})
	if _, err := AddRoot(r.dir, t0.Add(2*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if saved, err := r.save(ctx); saved || !errors.Is(err, errSecretChanged) {
		t.Fatalf("save over a Secret changed by someone else: %v, %v; want false, "+
			"errSecretChanged", saved, err)
	}
	if saved, err := r.save(ctx); saved || err != nil || updates != 1 {
		t.Fatalf("save after that: %v, %v, %d updates; want false, nil and no new update",
			saved, err, updates)
	}
}

// nextRoot returns the root in state next.
func nextRoot(t *testing.T, dir string) string {
	t.Helper()
	roots, err := ListRoots(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range roots {
		if r.State == RootNext {
			return r.ID
		}
	}
	t.Fatal("no next root")
	return ""
}

// A state the CA could not load is not saved.
func TestReadStateFilesRefusesUnusableState(t *testing.T) {
	dir, _ := firstRootDir(t)
	writeFile(t, filepath.Join(dir, StateFile), "{not json")
	if _, err := readStateFiles(dir); err == nil ||
		!strings.HasPrefix(err.Error(), "parsing "+filepath.Join(dir, StateFile)) {
		t.Errorf("readStateFiles with a broken %s: %v", StateFile, err)
	}
}
