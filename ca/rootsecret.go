package ca

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
)

// In Kubernetes mode the CA's directory is scratch space (an emptyDir) and the roots
// live in the Secret RootSecret: every file of the directory's state (RootCertFile,
// RootKeyFile, StateFile, BundleFile and the files of RootsDir) is one key of the
// Secret. A Secret, rather than a persistent volume, because it needs no storage class,
// does not tie the CA to one node or zone, is readable by nothing but what RBAC grants
// (and encrypted at rest where the cluster encrypts Secrets), and is where cert-manager's
// CA issuer and istiod's self-signed CA keep theirs. The directory stays
// the working copy, so the root commands work on it as anywhere else: the CA loads the
// Secret into it at start, and saves it back to the Secret when a root command has
// changed it.
//
// The Secret is authoritative. A start replaces whatever state the directory holds with
// the Secret's; one that finds no Secret creates it from the directory (making a first
// root there if there is none), and if another replica created it first, takes that
// one's. Saving is done with the resourceVersion last read, so a Secret changed by
// someone else meanwhile is never overwritten: the CA reports it and stops saving until
// it is restarted, which loads what the other writer saved.

// secretKeyOf returns the Secret key of a file of the CA directory, given relative to it.
// Keys may hold only letters, digits, '-', '_' and '.', so a file of RootsDir is kept as
// RootsDir + "_" + its name; the files at the top have no '_'.
func secretKeyOf(rel string) string {
	if dir, name := filepath.Split(rel); dir != "" {
		return strings.TrimSuffix(dir, "/") + "_" + name
	}
	return rel
}

// stateFileNames are the files at the top of the CA directory that make up its state.
var stateFileNames = []string{RootCertFile, RootKeyFile, StateFile, BundleFile}

// pathOfSecretKey is the inverse of secretKeyOf. It refuses any key the CA does not write,
// so that a Secret cannot put a file anywhere else.
func pathOfSecretKey(key string) (string, error) {
	if slices.Contains(stateFileNames, key) {
		return key, nil
	}
	if name, ok := strings.CutPrefix(key, RootsDir+"_"); ok && name != "" &&
		!strings.HasPrefix(name, ".") && !strings.ContainsAny(name, `/\`) {
		return filepath.Join(RootsDir, name), nil
	}
	return "", fmt.Errorf("key %q is not one veil-ca writes (%s, or %s_<file>); remove "+
		"it from the Secret", key, strings.Join(stateFileNames, ", "), RootsDir)
}

// readStateFiles reads the directory's state, by Secret key, while holding the
// directory's lock, so that it never sees a root command half done. Only a state that
// loads is returned: a hand-edited roots.json that the CA cannot use must not reach the
// Secret, from which every later start would fail to load it.
func readStateFiles(dir string) (map[string][]byte, error) {
	unlock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if _, err := readRootSet(dir, newFileSet()); err != nil {
		return nil, err
	}

	files := map[string][]byte{}
	for _, name := range stateFileNames {
		data, err := os.ReadFile(filepath.Join(dir, name))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("reading the CA directory: %w", err)
		}
		files[name] = data
	}
	entries, err := os.ReadDir(filepath.Join(dir, RootsDir))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("reading the CA directory: %w", err)
	}
	for _, e := range entries {
		if !e.Type().IsRegular() || strings.HasPrefix(e.Name(), ".") {
			continue // a temporary file of writeFileAtomic
		}
		rel := filepath.Join(RootsDir, e.Name())
		data, err := os.ReadFile(filepath.Join(dir, rel))
		if err != nil {
			return nil, fmt.Errorf("reading the CA directory: %w", err)
		}
		files[secretKeyOf(rel)] = data
	}
	return files, nil
}

// writeStateFiles makes the directory's state that of files (by Secret key): it writes
// each file, keys and the state file 0600, and removes the state files it does not
// name. The state file is written last, as the root commands do, so a reader of the
// directory never sees it name a root whose files are not there yet.
func writeStateFiles(dir string, files map[string][]byte) error {
	paths := map[string][]byte{}
	for key, data := range files {
		rel, err := pathOfSecretKey(key)
		if err != nil {
			return err
		}
		paths[rel] = data
	}
	if err := os.MkdirAll(filepath.Join(dir, RootsDir), 0o700); err != nil {
		return fmt.Errorf("creating the CA directory: %w", err)
	}
	unlock, err := lockDir(dir)
	if err != nil {
		return err
	}
	defer unlock()

	if err := removeStaleState(dir, paths); err != nil {
		return err
	}
	rels := slices.Sorted(maps.Keys(paths))
	slices.SortStableFunc(rels, func(a, b string) int {
		return boolCmp(a == StateFile, b == StateFile)
	})
	for _, rel := range rels {
		perm := os.FileMode(0o644)
		if strings.HasSuffix(rel, ".key") || rel == StateFile {
			perm = 0o600
		}
		if err := writeFileAtomic(filepath.Join(dir, rel), paths[rel], perm); err != nil {
			return err
		}
	}
	return nil
}

func boolCmp(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}

// removeStaleState removes the state files of dir that keep has no entry for.
func removeStaleState(dir string, keep map[string][]byte) error {
	stale := slices.Clone(stateFileNames)
	entries, err := os.ReadDir(filepath.Join(dir, RootsDir))
	if err != nil {
		return fmt.Errorf("reading the CA directory: %w", err)
	}
	for _, e := range entries {
		if e.Type().IsRegular() && !strings.HasPrefix(e.Name(), ".") {
			stale = append(stale, filepath.Join(RootsDir, e.Name()))
		}
	}
	for _, rel := range stale {
		if _, ok := keep[rel]; ok {
			continue
		}
		err := os.Remove(filepath.Join(dir, rel))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("removing a file the Secret does not hold: %w", err)
		}
	}
	return nil
}

// errSecretChanged: the Secret was changed by someone else since the CA last read it.
var errSecretChanged = errors.New("changed by another writer since this CA loaded it")

// rootSecret is the Secret that holds the CA directory's state.
type rootSecret struct {
	secrets   corev1client.SecretInterface
	namespace string
	dir       string
	// secret is the Secret as last read or written; nil when it is to be read again.
	secret *corev1.Secret
	// diverged is set once someone else changed the Secret: from then on nothing is saved.
	diverged bool
}

func (r *rootSecret) String() string { return r.namespace + "/" + RootSecret }

// restoreOutcome says what restore did, for the log.
type restoreOutcome string

const (
	restoredFromSecret restoreOutcome = "loaded the roots from their Secret"
	createdSecret      restoreOutcome = "saved the roots to a new Secret"
	lostCreateRace     restoreOutcome = "another veil-ca created the Secret first; " +
		"loaded its roots in place of this one's"
)

// restore makes the directory's state the Secret's. With no Secret, it calls ensureRoot
// to give the directory a root, then creates the Secret from the directory.
func (r *rootSecret) restore(ctx context.Context, ensureRoot func() error) (restoreOutcome,
	error) {
	sec, err := r.secrets.Get(ctx, RootSecret, metav1.GetOptions{})
	switch {
	case err == nil:
		return restoredFromSecret, r.load(sec)
	case !apierrors.IsNotFound(err):
		return "", fmt.Errorf("reading Secret %s: %w%s", r, err, rbacHint(err))
	}

	if err := ensureRoot(); err != nil {
		return "", err
	}
	files, err := readStateFiles(r.dir)
	if err != nil {
		return "", fmt.Errorf("reading the roots to save to Secret %s: %w", r, err)
	}
	created, err := r.create(ctx, files)
	switch {
	case err == nil:
		r.secret = created
		return createdSecret, nil
	case !apierrors.IsAlreadyExists(err):
		return "", err
	}
	// Another replica started at the same moment and created it first.
	sec, err = r.secrets.Get(ctx, RootSecret, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("reading Secret %s: %w%s", r, err, rbacHint(err))
	}
	return lostCreateRace, r.load(sec)
}

func (r *rootSecret) load(sec *corev1.Secret) error {
	if sec.Data[StateFile] == nil && sec.Data[RootCertFile] == nil {
		return fmt.Errorf("the Secret %s holds neither %s nor %s: restore it from a backup, or "+
			"delete it so that veil-ca creates a new root (every agent then needs the new "+
			"bundle)", r, StateFile, RootCertFile)
	}
	if err := writeStateFiles(r.dir, sec.Data); err != nil {
		return fmt.Errorf("loading Secret %s into %s: %w", r, r.dir, err)
	}
	r.secret = sec
	return nil
}

func (r *rootSecret) create(ctx context.Context, files map[string][]byte) (*corev1.Secret,
	error) {
	sec := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: RootSecret, Namespace: r.namespace,
			Labels: map[string]string{"app.kubernetes.io/name": "veil-ca"}},
		Type: corev1.SecretTypeOpaque,
		Data: files,
	}
	out, err := r.secrets.Create(ctx, sec, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("creating Secret %s: %w%s", r, err, rbacHint(err))
	}
	return out, err
}

// save writes the directory's state to the Secret when it differs from what the Secret
// holds. It reports whether it wrote. A Secret that someone else changed is not
// overwritten: save returns an error wrapping errSecretChanged, and from then on does
// nothing.
func (r *rootSecret) save(ctx context.Context) (bool, error) {
	if r.diverged {
		return false, nil
	}
	files, err := readStateFiles(r.dir)
	if err != nil {
		return false, fmt.Errorf("reading the roots to save to Secret %s: %w", r, err)
	}
	if r.secret != nil && sameFiles(files, r.secret.Data) {
		return false, nil
	}

	if r.secret == nil {
		created, err := r.create(ctx, files) // it was deleted: make it again
		if err == nil {
			r.secret = created
			return true, nil
		}
		if !apierrors.IsAlreadyExists(err) {
			return false, err
		}
		r.diverged = true
		return false, fmt.Errorf("the Secret %s was created again by someone else: %w; "+
			"restart this CA to load it", r, errSecretChanged)
	}

	next := r.secret.DeepCopy()
	next.Data = files
	out, err := r.secrets.Update(ctx, next, metav1.UpdateOptions{})
	switch {
	case err == nil:
		r.secret = out
		return true, nil
	case apierrors.IsNotFound(err):
		r.secret = nil
		return r.save(ctx)
	case apierrors.IsConflict(err):
		r.diverged = true
		return false, fmt.Errorf("the Secret %s %w; this CA's roots are no longer saved. "+
			"Run root commands in one veil-ca only, and restart this one to load the "+
			"Secret", r, errSecretChanged)
	}
	return false, fmt.Errorf("updating Secret %s: %w%s", r, err, rbacHint(err))
}

func sameFiles(a, b map[string][]byte) bool { return maps.EqualFunc(a, b, bytes.Equal) }
