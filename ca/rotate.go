package ca

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// Root rotation works on the CA directory while veil-ca serve runs: each step rewrites
// the state file, which the server polls (see Server.reloadAuthority). The steps, with
// the waits between them that keep every connection verifying, are:
//
//	AddRoot       a new root is trusted by every agent from its next renewal on
//	  wait one certificate lifetime: every agent has renewed and trusts the new root
//	ActivateRoot  the new root signs; the old one becomes previous and is still trusted
//	  wait one certificate lifetime: every certificate has been reissued by the new root
//	RetireRoot    the old root leaves the bundle; its key is deleted

// ListRoots describes the roots in dir, oldest first.
func ListRoots(dir string) ([]RootInfo, error) {
	rs, err := readRootSet(dir, newFileSet())
	if err != nil {
		return nil, err
	}
	return rs.infos(), nil
}

// AddRoot creates a new root in dir in state next: trusted, not signing. There can be one
// next root at a time, so that "activate the next root" is never ambiguous.
func AddRoot(dir string, now time.Time) (RootInfo, error) {
	var added RootInfo
	err := withRootSet(dir, func(rs *rootSet) error {
		for _, e := range rs.entries {
			if e.State == RootNext {
				return fmt.Errorf("root %s is already next; activate or retire it before "+
					"adding another", e.ID)
			}
		}

		r, err := newRoot(now)
		if err != nil {
			return err
		}
		id := RootID(r.cert)
		e := stateEntry{ID: id, State: RootNext, Since: now,
			Cert: filepath.Join(RootsDir, id+".crt"), Key: filepath.Join(RootsDir, id+".key")}
		if err := os.MkdirAll(filepath.Join(dir, RootsDir), 0o700); err != nil {
			return fmt.Errorf("creating roots directory: %w", err)
		}
		if err := r.save(filepath.Join(dir, e.Cert), filepath.Join(dir, e.Key)); err != nil {
			return err
		}
		re := &rootEntry{stateEntry: e, root: *r}
		rs.entries = append(rs.entries, re)
		added = re.info()
		return rs.save()
	})
	return added, err
}

// ErrAlreadyDone is returned, wrapped, by ActivateRoot for the root that is already
// active and by RetireRoot for one already retired: nothing changed, which a script
// repeating a step may treat as success.
var ErrAlreadyDone = errors.New("nothing to do")

// ActivateRoot makes root id the one that signs; the root that signed until now stays
// trusted as previous. It returns the root now active and the one it replaced.
func ActivateRoot(dir, id string, now time.Time) (active, previous RootInfo, err error) {
	err = withRootSet(dir, func(rs *rootSet) error {
		e, err := rs.find(id)
		if err != nil {
			return err
		}
		switch e.State {
		case RootActive:
			return fmt.Errorf("root %s is already active: %w", id, ErrAlreadyDone)
		case RootRetired:
			return fmt.Errorf("root %s is retired and no agent trusts it any more; add a "+
				"new root instead", id)
		}

		old := rs.active()
		old.State, old.Since = RootPrevious, now
		e.State, e.Since = RootActive, now
		active, previous = e.info(), old.info()
		return rs.save()
	})
	return active, previous, err
}

// RetireRoot takes root id out of the bundle and deletes its key. The active root cannot
// be retired: activate another first.
func RetireRoot(dir, id string, now time.Time) (RootInfo, error) {
	var retired RootInfo
	err := withRootSet(dir, func(rs *rootSet) error {
		e, err := rs.find(id)
		if err != nil {
			return err
		}
		switch e.State {
		case RootActive:
			return fmt.Errorf("root %s is the active root and signs every certificate; "+
				"activate another root first (veil-ca root add, then activate)", id)
		case RootRetired:
			return fmt.Errorf("root %s is already retired: %w", id, ErrAlreadyDone)
		}

		e.State, e.Since, e.key = RootRetired, now, nil
		retired = e.info()
		if err := rs.save(); err != nil {
			return err
		}
		// After the state is saved: until then the key is still needed to load the root.
		err = os.Remove(filepath.Join(dir, e.Key))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("deleting the key of retired root %s: %w", id, err)
		}
		return nil
	})
	return retired, err
}

// withRootSet runs change on the directory's current state while holding its lock, so
// that two root commands run at once do not overwrite each other's change.
func withRootSet(dir string, change func(*rootSet) error) error {
	unlock, err := lockDir(dir)
	if err != nil {
		return err
	}
	defer unlock()

	rs, err := readRootSet(dir, newFileSet())
	if err != nil {
		return err
	}
	return change(rs)
}

// lockDir takes an exclusive flock on LockFile in dir, waiting for another root command
// to finish. The lock goes with the process, so a crashed command never leaves it held.
func lockDir(dir string) (unlock func(), err error) {
	if _, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("opening CA directory: %w; check --dir", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, LockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening lock file: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("locking %s: %w", f.Name(), err)
	}
	return func() { f.Close() }, nil // closing releases the lock
}
