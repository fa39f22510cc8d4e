package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"
)

// Admin API paths, served on the admin Unix socket.
const (
	StatusPath      = "/v1/status"
	ConnectionsPath = "/v1/connections"
)

// serveAdmin listens on the admin socket. The socket is root's only (0600 in a 0700
// directory): it tells which identities run on the node and what they connect to.
func (a *Agent) serveAdmin(ctx context.Context) (*http.Server, error) {
	path := a.cfg.AdminSocket
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("creating admin socket directory: %w", err)
	}
	// A socket file left by an agent that died is in the way; remove it, but never a
	// socket that another agent is still answering on.
	if c, err := net.Dial("unix", path); err == nil {
		c.Close()
		return nil, fmt.Errorf("another agent is serving on %s; stop it or pick another --admin-socket", path)
	}
	os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listening on admin socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("restricting admin socket %s: %w", path, err)
	}

	mux := http.NewServeMux()
	mux.HandleFunc("GET "+StatusPath, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, a.status())
	})
	mux.HandleFunc("GET "+ConnectionsPath, func(w http.ResponseWriter, r *http.Request) {
		if a.engine == nil {
			writeJSON(w, []struct{}{})
			return
		}
		writeJSON(w, a.engine.Connections())
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.errorEvent(err, "admin API stopped").Str(fieldSocket, path).Msg("admin API stopped")
		}
	}()
	context.AfterFunc(ctx, func() { srv.Close(); os.Remove(path) })
	a.log.Info().Str(fieldSocket, path).Msg("admin API listening")
	return srv, nil
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}
