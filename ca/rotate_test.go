package ca

import (
	"crypto/x509"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// t0 is the fake clock's start; the rotation functions take the time as an argument.
var t0 = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

// firstRootDir makes a CA directory as a first start does: root.crt and root.key only.
func firstRootDir(t *testing.T) (dir, firstID string) {
	t.Helper()
	dir = filepath.Join(t.TempDir(), "ca")
	r, created, err := loadOrCreateRoot(dir, t0)
	if err != nil || !created {
		t.Fatalf("creating first root: %v (created %v)", err, created)
	}
	return dir, RootID(r.cert)
}

func states(t *testing.T, dir string) map[string]RootState {
	t.Helper()
	roots, err := ListRoots(dir)
	if err != nil {
		t.Fatalf("ListRoots: %v", err)
	}
	out := map[string]RootState{}
	for _, r := range roots {
		out[r.ID] = r.State
	}
	return out
}

// bundleIDs reads the bundle file and the authority a running CA would load, and checks
// that they agree.
func bundleIDs(t *testing.T, dir string) (signer string, bundle []string) {
	t.Helper()
	a, err := loadRootsAuthority(dir)
	if err != nil {
		t.Fatalf("loading authority: %v", err)
	}
	file, err := os.ReadFile(filepath.Join(dir, BundleFile))
	if err != nil || string(file) != certsPEM(a.bundle) {
		t.Fatalf("%s does not hold the bundle the CA sends (err %v)", BundleFile, err)
	}
	for _, c := range a.bundle {
		bundle = append(bundle, RootID(c))
	}
	return a.signerID(), bundle
}

func wantErr(t *testing.T, what string, err error, want string) {
	t.Helper()
	if err == nil || err.Error() != want {
		t.Errorf("%s: got error %v, want %q", what, err, want)
	}
}

// One full rotation, with every step that is refused along the way.
func TestRootRotationSteps(t *testing.T) {
	dir, first := firstRootDir(t)
	if got := states(t, dir); len(got) != 1 || got[first] != RootActive {
		t.Fatalf("first root: %v, want %s active", got, first)
	}
	if ok, _ := exists(filepath.Join(dir, StateFile)); ok {
		t.Fatal("listing wrote a state file; a directory must stay as it was until changed")
	}

	added, err := AddRoot(dir, t0.Add(time.Minute))
	if err != nil {
		t.Fatalf("AddRoot: %v", err)
	}
	second := added.ID
	if added.State != RootNext || !added.Since.Equal(t0.Add(time.Minute)) {
		t.Errorf("added root: %+v, want next since t0+1m", added)
	}
	if signer, bundle := bundleIDs(t, dir); signer != first ||
		strings.Join(bundle, ",") != first+","+second {
		t.Errorf("after add: signer %s bundle %v, want %s and both", signer, bundle, first)
	}
	_, err = AddRoot(dir, t0)
	wantErr(t, "second add", err, "root "+second+" is already next; activate or retire it "+
		"before adding another")
	_, err = RetireRoot(dir, first, t0)
	wantErr(t, "retiring the active root", err, "root "+first+" is the active root and "+
		"signs every certificate; activate another root first (veil-ca root add, then "+
		"activate)")
	_, _, err = ActivateRoot(dir, "0123456789abcdef", t0)
	wantErr(t, "unknown root", err, "no root 0123456789abcdef in "+dir+"; veil-ca root list "+
		"shows the IDs")

	active, previous, err := ActivateRoot(dir, second, t0.Add(time.Hour))
	if err != nil || active.ID != second || previous.ID != first ||
		previous.State != RootPrevious || !active.Since.Equal(t0.Add(time.Hour)) {
		t.Fatalf("ActivateRoot: %+v, %+v, %v", active, previous, err)
	}
	if signer, bundle := bundleIDs(t, dir); signer != second || len(bundle) != 2 {
		t.Errorf("after activate: signer %s bundle %v, want %s and both", signer, bundle,
			second)
	}
	if _, _, err := ActivateRoot(dir, second, t0); !errors.Is(err, ErrAlreadyDone) {
		t.Errorf("activating the active root again: %v, want ErrAlreadyDone", err)
	}

	if _, err := RetireRoot(dir, first, t0.Add(2*time.Hour)); err != nil {
		t.Fatalf("RetireRoot: %v", err)
	}
	if got := states(t, dir); got[first] != RootRetired || got[second] != RootActive {
		t.Errorf("after retire: %v", got)
	}
	if signer, bundle := bundleIDs(t, dir); signer != second || len(bundle) != 1 {
		t.Errorf("after retire: signer %s bundle %v, want %s alone", signer, bundle, second)
	}
	if ok, _ := exists(filepath.Join(dir, RootKeyFile)); ok {
		t.Error("the retired root's key is still there")
	}
	if ok, _ := exists(filepath.Join(dir, RootCertFile)); !ok {
		t.Error("the retired root's certificate is gone; it is kept for the record")
	}
	_, _, err = ActivateRoot(dir, first, t0)
	wantErr(t, "activating a retired root", err, "root "+first+" is retired and no agent "+
		"trusts it any more; add a new root instead")
	if _, err := RetireRoot(dir, first, t0); !errors.Is(err, ErrAlreadyDone) {
		t.Errorf("retiring again: %v, want ErrAlreadyDone", err)
	}

	for path, want := range map[string]os.FileMode{
		filepath.Join(dir, RootsDir):                0o700 | os.ModeDir,
		filepath.Join(dir, RootsDir, second+".key"): 0o600,
		filepath.Join(dir, StateFile):               0o600,
	} {
		if info, err := os.Stat(path); err != nil || info.Mode() != want {
			t.Errorf("%s: mode %v, want %v (err %v)", path, info.Mode(), want, err)
		}
	}
}

// A next root can be retired before it ever signed, and a previous root activated again:
// both undo a rotation half way.
func TestRootRotationUndo(t *testing.T) {
	dir, first := firstRootDir(t)
	added, err := AddRoot(dir, t0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := RetireRoot(dir, added.ID, t0); err != nil {
		t.Fatalf("retiring a next root: %v", err)
	}
	if signer, bundle := bundleIDs(t, dir); signer != first || len(bundle) != 1 {
		t.Errorf("after abandoning: signer %s bundle %v", signer, bundle)
	}

	added, err = AddRoot(dir, t0)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := ActivateRoot(dir, added.ID, t0); err != nil {
		t.Fatal(err)
	}
	if _, _, err := ActivateRoot(dir, first, t0); err != nil {
		t.Fatalf("activating the previous root again: %v", err)
	}
	if got := states(t, dir); got[first] != RootActive || got[added.ID] != RootPrevious {
		t.Errorf("after rolling back: %v", got)
	}
}

// Every way a CA directory can be broken gives an error that names the file and the fix.
func TestRootStateProblems(t *testing.T) {
	tests := []struct {
		name string
		// breakIt damages a directory holding an active first root and a next one.
		breakIt func(t *testing.T, dir, first, next string)
		want    string // with DIR for the directory
	}{
		{"not JSON", func(t *testing.T, dir, _, _ string) {
			writeFile(t, filepath.Join(dir, StateFile), "{roots: oops")
		}, "parsing DIR/roots.json: invalid character 'r' looking for beginning of object " +
			"key string; restore it from a backup, or fix it by hand (veil-ca root commands " +
			"write it)"},
		{"unknown field", func(t *testing.T, dir, _, _ string) {
			editState(t, dir, func(s string) string {
				return strings.Replace(s, `"roots"`, `"ttl": 1, "roots"`, 1)
			})
		}, `parsing DIR/roots.json: json: unknown field "ttl"; restore it from a backup, ` +
			"or fix it by hand (veil-ca root commands write it)"},
		{"two active", func(t *testing.T, dir, _, _ string) {
			editEntries(t, dir, func(e []stateEntry) []stateEntry {
				e[1].State = RootActive
				return e
			})
		}, "DIR/roots.json: 2 roots are active [FIRST NEXT]; exactly one must be: set the " +
			"others to previous"},
		{"none active", func(t *testing.T, dir, _, _ string) {
			editEntries(t, dir, func(e []stateEntry) []stateEntry {
				e[0].State = RootPrevious
				return e
			})
		}, "DIR/roots.json: 0 roots are active []; exactly one must be: set the others to " +
			"previous"},
		{"unknown state", func(t *testing.T, dir, _, _ string) {
			editEntries(t, dir, func(e []stateEntry) []stateEntry {
				e[1].State = "standby"
				return e
			})
		}, `DIR/roots.json: root NEXT: unknown state "standby"; use next, active, previous ` +
			"or retired"},
		{"path outside", func(t *testing.T, dir, _, next string) {
			editEntries(t, dir, func(e []stateEntry) []stateEntry {
				e[1].Key = "../" + next + ".key"
				return e
			})
		}, `DIR/roots.json: root NEXT: paths "roots/NEXT.crt" and "../NEXT.key" must be ` +
			"relative and inside DIR"},
		{"wrong ID", func(t *testing.T, dir, first, next string) {
			editEntries(t, dir, func(e []stateEntry) []stateEntry {
				e[1].ID = first[:8] + next[8:]
				return e
			})
		}, "DIR/roots.json: root FIRST8NEXT8: DIR/roots/NEXT.crt is root NEXT, not " +
			"FIRST8NEXT8; restore the certificate or correct the ID"},
		{"listed twice", func(t *testing.T, dir, _, _ string) {
			editEntries(t, dir, func(e []stateEntry) []stateEntry { return append(e, e[1]) })
		}, "DIR/roots.json: root NEXT is listed twice; keep one entry"},
		{"certificate missing", func(t *testing.T, dir, _, next string) {
			if err := os.Remove(filepath.Join(dir, RootsDir, next+".crt")); err != nil {
				t.Fatal(err)
			}
		}, "DIR/roots.json: root NEXT: reading root certificate: open DIR/roots/NEXT.crt: " +
			"no such file or directory"},
		{"key readable by others", func(t *testing.T, dir, _, next string) {
			if err := os.Chmod(filepath.Join(dir, RootsDir, next+".key"), 0o640); err != nil {
				t.Fatal(err)
			}
		}, "DIR/roots.json: root NEXT: root key DIR/roots/NEXT.key has mode 0640 and is " +
			"readable by others; run chmod 600 DIR/roots/NEXT.key"},
		{"key of another root", func(t *testing.T, dir, _, next string) {
			other, err := newRoot(t0)
			if err != nil {
				t.Fatal(err)
			}
			if err := other.save(filepath.Join(t.TempDir(), "x.crt"),
				filepath.Join(dir, RootsDir, next+".key")); err != nil {
				t.Fatal(err)
			}
		}, "DIR/roots.json: root NEXT: DIR/roots/NEXT.crt is not a CA certificate for the " +
			"key in DIR/roots/NEXT.key; restore the matching pair"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir, first := firstRootDir(t)
			added, err := AddRoot(dir, t0)
			if err != nil {
				t.Fatal(err)
			}
			tt.breakIt(t, dir, first, added.ID)

			want := strings.NewReplacer("DIR", dir, "FIRST8", first[:8], "NEXT8",
				added.ID[8:], "FIRST", first, "NEXT", added.ID).Replace(tt.want)
			_, err = ListRoots(dir)
			wantErr(t, "ListRoots", err, want)
			_, err = loadRootsAuthority(dir)
			wantErr(t, "loading for serve", err, want)
			_, err = AddRoot(dir, t0)
			wantErr(t, "AddRoot", err, want)
		})
	}
}

// editEntries rewrites the state file's entries through edit.
func editEntries(t *testing.T, dir string, edit func([]stateEntry) []stateEntry) {
	t.Helper()
	editState(t, dir, func(s string) string {
		var sf stateFile
		if err := json.Unmarshal([]byte(s), &sf); err != nil {
			t.Fatal(err)
		}
		sf.Roots = edit(sf.Roots)
		data, err := json.Marshal(sf)
		if err != nil {
			t.Fatal(err)
		}
		return string(data)
	})
}

// editState rewrites the state file through edit.
func editState(t *testing.T, dir string, edit func(string) string) {
	t.Helper()
	path := filepath.Join(dir, StateFile)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, path, edit(string(data)))
}

// A directory with no root at all is not one veil-ca made: the root commands refuse it
// rather than creating a root that no agent trusts.
func TestRootCommandsNeedAFirstRoot(t *testing.T) {
	dir := t.TempDir()
	_, err := AddRoot(dir, t0)
	wantErr(t, "AddRoot", err, "no root in "+dir+": veil-ca serve --dir "+dir+" creates the "+
		"first one when it starts")
	_, err = AddRoot(filepath.Join(dir, "missing"), t0)
	if err == nil || !strings.HasPrefix(err.Error(), "opening CA directory: ") ||
		!strings.HasSuffix(err.Error(), "; check --dir") {
		t.Errorf("AddRoot on a missing directory: %v", err)
	}
}

// A new root's subject tells it from the others, so two roots trusted at once differ in
// more than their keys.
func TestNewRootSubject(t *testing.T) {
	r, err := newRoot(t0)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := r.cert.Subject.CommonName, "veil root CA 2030-01-02T03:04:05Z"; got != want {
		t.Errorf("common name %q, want %q", got, want)
	}
	if !r.cert.IsCA || r.cert.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign {
		t.Errorf("new root is not a CA for signing certificates")
	}
}

// A directory from before rotation, root.crt and root.key alone, serves unchanged: the
// same root signs and is the whole bundle, neither file is touched and no state file
// appears until the first root command, which keeps that root active.
func TestFirstRootDirectoryMigrates(t *testing.T) {
	dir := t.TempDir()
	caDir := filepath.Join(dir, "ca")
	r, _, err := loadOrCreateRoot(caDir, t0)
	if err != nil {
		t.Fatal(err)
	}
	first := RootID(r.cert)
	files := map[string][]byte{}
	for _, name := range []string{RootCertFile, RootKeyFile} {
		data, err := os.ReadFile(filepath.Join(caDir, name))
		if err != nil {
			t.Fatal(err)
		}
		files[name] = data
	}

	c := startCA(t, dir)
	chain, bundle := signWith(t, c.srv)
	if len(bundle) != 1 || RootID(bundle[0]) != first || !signedBy(chain[0], bundle, first) {
		t.Fatalf("the first root does not sign alone")
	}
	for name, data := range files {
		if now, err := os.ReadFile(filepath.Join(caDir, name)); err != nil ||
			string(now) != string(data) {
			t.Errorf("%s changed (err %v)", name, err)
		}
	}
	if ok, _ := exists(filepath.Join(caDir, StateFile)); ok {
		t.Errorf("serving wrote %s", StateFile)
	}
	if data, err := os.ReadFile(filepath.Join(caDir, BundleFile)); err != nil ||
		string(data) != string(files[RootCertFile]) {
		t.Errorf("%s is not root.crt (err %v)", BundleFile, err)
	}

	if _, err := AddRoot(caDir, t0); err != nil {
		t.Fatal(err)
	}
	if got := states(t, caDir); got[first] != RootActive || len(got) != 2 {
		t.Errorf("after the first add: %v, want %s still active", got, first)
	}
}
