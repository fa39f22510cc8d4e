package ca

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// RootState is where a root of the CA directory is in its rotation. A root goes
// next -> active -> previous -> retired; a next root may also be retired directly, which
// abandons a rotation before it signed anything.
type RootState string

// Root states.
const (
	// RootNext is trusted (in every bundle the CA sends) but does not sign yet.
	RootNext RootState = "next"
	// RootActive signs every certificate; exactly one root is active.
	RootActive RootState = "active"
	// RootPrevious no longer signs but is still trusted, so certificates it issued keep
	// verifying until they have all been renewed under the active root.
	RootPrevious RootState = "previous"
	// RootRetired is in no bundle; its key is deleted and its certificate kept for the
	// record.
	RootRetired RootState = "retired"
)

// RootInfo describes one root of a CA directory, as `veil-ca root list` prints it.
type RootInfo struct {
	ID          string    `json:"id"`
	Fingerprint string    `json:"sha256"`
	Subject     string    `json:"subject"`
	NotAfter    time.Time `json:"notAfter"`
	State       RootState `json:"state"`
	// Since is when the root entered its state; zero for a first root that has not
	// changed state since the directory was created.
	Since time.Time `json:"since,omitzero"`
}

// stateFile is the content of StateFile. Paths are relative to the CA directory. A
// directory without a state file holds one root, root.crt and root.key, and it is
// active: that is how every directory starts, and how one from before rotation looks.
type stateFile struct {
	Roots []stateEntry `json:"roots"`
}

type stateEntry struct {
	ID    string    `json:"id"`
	Cert  string    `json:"cert"`
	Key   string    `json:"key"`
	State RootState `json:"state"`
	Since time.Time `json:"since,omitzero"`
}

// rootSet is one reading of a CA directory: its roots, oldest first.
type rootSet struct {
	dir     string
	entries []*rootEntry
}

type rootEntry struct {
	stateEntry
	root // key is nil for a retired root
}

func (e *rootEntry) info() RootInfo {
	return RootInfo{ID: e.ID, Fingerprint: fingerprint(e.cert), Subject: e.cert.Subject.String(),
		NotAfter: e.cert.NotAfter, State: e.State, Since: e.Since}
}

// readRootSet reads the CA directory's state file, or its first root when there is no
// state file yet, and checks every root it names.
func readRootSet(dir string, files *fileSet) (*rootSet, error) {
	path := filepath.Join(dir, StateFile)
	data, err := files.read(path)
	if errors.Is(err, fs.ErrNotExist) {
		return readFirstRootOnly(dir, files)
	}
	if err != nil {
		return nil, fmt.Errorf("reading root state: %w", err)
	}

	var sf stateFile
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&sf); err != nil {
		return nil, fmt.Errorf("parsing %s: %w; restore it from a backup, or fix it by hand "+
			"(veil-ca root commands write it)", path, err)
	}
	rs := &rootSet{dir: dir}
	for _, e := range sf.Roots {
		re, err := loadEntry(dir, files, e)
		if err != nil {
			return nil, fmt.Errorf("%s: root %s: %w", path, e.ID, err)
		}
		rs.entries = append(rs.entries, re)
	}
	if err := rs.check(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return rs, nil
}

func readFirstRootOnly(dir string, files *fileSet) (*rootSet, error) {
	r, found, err := loadFirstRoot(dir, files)
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, fmt.Errorf("no root in %s: veil-ca serve --dir %s creates the first one "+
			"when it starts", dir, dir)
	}
	e := stateEntry{ID: RootID(r.cert), Cert: RootCertFile, Key: RootKeyFile, State: RootActive}
	return &rootSet{dir: dir, entries: []*rootEntry{{stateEntry: e, root: *r}}}, nil
}

// loadEntry loads the files of one state file entry. A retired root needs only its
// certificate: its key has been deleted.
func loadEntry(dir string, files *fileSet, e stateEntry) (*rootEntry, error) {
	if !slices.Contains([]RootState{RootNext, RootActive, RootPrevious, RootRetired}, e.State) {
		return nil, fmt.Errorf("unknown state %q; use next, active, previous or retired", e.State)
	}
	if !filepath.IsLocal(e.Cert) || !filepath.IsLocal(e.Key) {
		return nil, fmt.Errorf("paths %q and %q must be relative and inside %s",
			e.Cert, e.Key, dir)
	}

	certPath, keyPath := filepath.Join(dir, e.Cert), filepath.Join(dir, e.Key)
	var r *root
	if e.State == RootRetired {
		certs, err := readCerts(files, certPath, "root certificate")
		if err != nil {
			return nil, err
		}
		r = &root{cert: certs[0]}
	} else {
		var err error
		if r, err = loadRoot(files, certPath, keyPath); err != nil {
			return nil, err
		}
	}
	if id := RootID(r.cert); id != e.ID {
		return nil, fmt.Errorf("%s is root %s, not %s; restore the certificate or correct "+
			"the ID", certPath, id, e.ID)
	}
	return &rootEntry{stateEntry: e, root: *r}, nil
}

// check holds the rules every state obeys: unique IDs and exactly one active root.
func (rs *rootSet) check() error {
	var active []string
	seen := map[string]bool{}
	for _, e := range rs.entries {
		if seen[e.ID] {
			return fmt.Errorf("root %s is listed twice; keep one entry", e.ID)
		}
		seen[e.ID] = true
		if e.State == RootActive {
			active = append(active, e.ID)
		}
	}
	if len(active) != 1 {
		return fmt.Errorf("%d roots are active %v; exactly one must be: set the others to "+
			"previous", len(active), active)
	}
	return nil
}

func (rs *rootSet) find(id string) (*rootEntry, error) {
	for _, e := range rs.entries {
		if e.ID == id {
			return e, nil
		}
	}
	return nil, fmt.Errorf("no root %s in %s; veil-ca root list shows the IDs", id, rs.dir)
}

func (rs *rootSet) active() *rootEntry {
	for _, e := range rs.entries {
		if e.State == RootActive {
			return e
		}
	}
	return nil // check() rules this out for a set that was read
}

// bundle is every root agents must trust: all but the retired ones.
func (rs *rootSet) bundle() []*rootEntry {
	var out []*rootEntry
	for _, e := range rs.entries {
		if e.State != RootRetired {
			out = append(out, e)
		}
	}
	return out
}

func (rs *rootSet) infos() []RootInfo {
	out := make([]RootInfo, len(rs.entries))
	for i, e := range rs.entries {
		out[i] = e.info()
	}
	return out
}

// save writes the state file and then the bundle file, each atomically. The state file
// is written last of everything a change makes (new roots' files come first), so a
// running CA that reads the directory at any moment sees a whole state.
func (rs *rootSet) save() error {
	sf := stateFile{}
	for _, e := range rs.entries {
		sf.Roots = append(sf.Roots, e.stateEntry)
	}
	data, err := json.MarshalIndent(sf, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding root state: %w", err)
	}
	if err := writeFileAtomic(filepath.Join(rs.dir, StateFile), append(data, '\n'),
		0o600); err != nil {
		return err
	}
	var certs []*x509.Certificate
	for _, e := range rs.bundle() {
		certs = append(certs, e.cert)
	}
	return writeBundleFile(rs.dir, certs)
}

// writeBundleFile keeps BundleFile equal to the roots agents should trust, for operators
// to hand to agents as --ca-root. It is not rewritten when it already holds them.
func writeBundleFile(dir string, certs []*x509.Certificate) error {
	data := []byte(certsPEM(certs))
	path := filepath.Join(dir, BundleFile)
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
		return nil
	}
	return writeFileAtomic(path, data, 0o644)
}
