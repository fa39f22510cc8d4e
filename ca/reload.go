package ca

import (
	"context"
	"fmt"
	"path/filepath"
	"time"
)

// The running CA re-reads its signing state (the directory's roots, or the plug-in files)
// every ReloadPeriod, the period it already polls the workload file with. Polling rather
// than reading at every request keeps the signing path free of file I/O, and rather than
// inotify it also sees files replaced on volumes that do not send events (a Kubernetes
// Secret is swapped by a symlink rename). A root command therefore takes effect within
// one period. Every file is read in full each time, a few kilobytes: that is how a change
// is noticed, by the digest of what was read.

// openAuthority loads the signing state at start: in plug-in mode from its files, else
// from the directory, creating a first root there if it has none. It also writes the
// bundle file, so that a directory from before rotation gains one; a directory it cannot
// write (a read-only mount of root.crt and root.key) still serves, as it did before.
func (s *Server) openAuthority() error {
	if s.cfg.Plugin.CertPath == "" {
		r, created, err := s.firstRoot()
		if err != nil {
			return fmt.Errorf("loading root: %w", err)
		}
		if created {
			s.log.Info().Str(logDir, s.cfg.Dir).Str(logRoot, RootID(r.cert)).
				Time(logExpires, r.cert.NotAfter).Msg("created root")
		}
	}
	a, err := s.loadAuthority()
	if err != nil {
		return err
	}
	if err := a.writeBundle(s.cfg.Dir); err != nil {
		s.log.Warn().Err(err).Str(logDir, s.cfg.Dir).
			Msg("writing the bundle file; give agents the trusted roots by other means")
	}
	s.auth.Store(a)
	s.logAuthority(a, "loaded signing state")
	return nil
}

// firstRoot creates the directory's first root unless the directory already has one, or
// a state file (whose first root may be retired, its key deleted; loadAuthority reports
// what is wrong with a state file).
func (s *Server) firstRoot() (*root, bool, error) {
	hasState, err := exists(filepath.Join(s.cfg.Dir, StateFile))
	if err != nil || hasState {
		return nil, false, err
	}
	return loadOrCreateRoot(s.cfg.Dir, s.now())
}

func (s *Server) loadAuthority() (*authority, error) {
	if p := s.cfg.Plugin; p.CertPath != "" {
		a, err := loadPluginAuthority(p, s.now())
		if err != nil {
			return nil, fmt.Errorf("loading plug-in signing files: %w", err)
		}
		return a, nil
	}
	a, err := loadRootsAuthority(s.cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("loading roots: %w", err)
	}
	return a, nil
}

func (s *Server) watchAuthority(ctx context.Context) {
	t := time.NewTicker(s.cfg.ReloadPeriod)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.reloadAuthority()
	}
}

// reloadAuthority takes a changed signing state. A state that cannot be used is logged,
// once for each different fault, and the previous one kept: a half-edited state file
// must not stop every renewal in the mesh.
func (s *Server) reloadAuthority() {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	cur := s.auth.Load()
	a, err := s.loadAuthority()
	if err != nil {
		if msg := err.Error(); msg != s.authErr {
			s.authErr = msg
			s.log.Error().Err(err).Str(logSigner, cur.signerID()).
				Msg("signing state unusable; still signing and trusting as before")
		}
		return
	}
	if s.authErr != "" {
		s.authErr = ""
		s.log.Info().Msg("signing state usable again")
	}
	if a.digest == cur.digest {
		return
	}

	s.auth.Store(a)
	s.logAuthority(a, "signing state changed")
	if err := a.writeBundle(s.cfg.Dir); err != nil {
		s.log.Warn().Err(err).Str(logDir, s.cfg.Dir).Msg("writing the bundle file")
	}
}

func (s *Server) logAuthority(a *authority, msg string) {
	mode := "roots"
	if s.cfg.Plugin.CertPath != "" {
		mode = "plug-in"
	}
	s.log.Info().Str(logMode, mode).Str(logSigner, a.signerID()).
		Str(logSubject, a.signer.cert.Subject.String()).
		Time(logExpires, a.notAfterLimit()).Str(logBundle, a.bundleIDs()).Msg(msg)
}
