package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// Admin API paths, served on the admin Unix socket.
const (
	StatusPath      = "/v1/status"
	ConnectionsPath = "/v1/connections"
	WorkloadsPath   = "/v1/workloads"
	CertsPath       = "/v1/certs"
	// LogLevelPath answers GET with the agent's LogLevel and takes a new one with PUT.
	LogLevelPath = "/v1/log-level"
)

// LogLevel is the body of LogLevelPath, both ways.
type LogLevel struct {
	Level string `json:"level"`
	// Previous is set in the answer to a PUT.
	Previous string `json:"previous,omitempty"`
}

// serveAdmin listens on the admin socket. The socket is root's only (0600 in a 0700
// directory): it tells which identities run on the node and what they connect to.
func (a *Agent) serveAdmin(ctx context.Context) (stop func(), err error) {
	path := a.cfg.AdminSocket
	ln, err := listenPrivate(path, "unix")
	if err != nil {
		return nil, err
	}

	mux := http.NewServeMux()
	mux.HandleFunc("GET "+StatusPath, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, a.status())
	})
	mux.HandleFunc("GET "+ConnectionsPath, func(w http.ResponseWriter, r *http.Request) {
		e := a.dataPath()
		if e == nil {
			writeJSON(w, []struct{}{})
			return
		}
		writeJSON(w, e.Connections())
	})
	mux.HandleFunc("GET "+WorkloadsPath, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, a.workloadStatuses())
	})
	mux.HandleFunc("GET "+CertsPath, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, a.certs())
	})
	mux.HandleFunc("GET "+LogLevelPath, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, LogLevel{Level: a.level.get().String()})
	})
	mux.HandleFunc("PUT "+LogLevelPath, a.putLogLevel)
	mux.HandleFunc("GET "+PolicyCheckPath, a.servePolicyCheck)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.errorEvent(err, "admin API stopped").Str(fieldSocket, path).
				Msg("admin API stopped")
		}
	}()
	stop = sync.OnceFunc(func() { srv.Close(); os.Remove(path) })
	context.AfterFunc(ctx, stop)
	a.log.Info().Str(fieldSocket, path).Msg("admin API listening")
	return stop, nil
}

// listenPrivate listens on a Unix socket (network unix or unixpacket) at path, reachable
// by root only. The socket is
// created with the mode its umask gives and only then chmod'ed, so its directory is made
// 0700 first, whether it is created here or was already there: no other user can reach
// the socket in between.
func listenPrivate(path, network string) (net.Listener, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating admin socket directory: %w", err)
	}

	// A socket file left by an agent that died is in the way; remove it, but never a
	// socket that another agent is still answering on.
	if c, err := net.Dial(network, path); err == nil {
		c.Close()
		return nil, fmt.Errorf("another agent is serving on %s; "+
			"stop it or pick another --admin-socket", path)
	}
	os.Remove(path)

	// The socket is made in a private directory, restricted to 0600 there and only then
	// moved into place, so it is never reachable with the process umask's permissions.
	// The directory it goes to is left as it is: it may be shared, such as /run.
	tmp, err := os.MkdirTemp(dir, ".veil-admin-")
	if err != nil {
		return nil, fmt.Errorf("creating a private directory for the admin socket: %w", err)
	}
	defer os.RemoveAll(tmp)
	ln, err := net.Listen(network, filepath.Join(tmp, "sock"))
	if err != nil {
		return nil, fmt.Errorf("listening on admin socket %s: %w", path, err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false) // serveAdmin removes path itself
	err = os.Chmod(filepath.Join(tmp, "sock"), 0o600)
	if err == nil {
		err = os.Rename(filepath.Join(tmp, "sock"), path)
	}
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("restricting admin socket %s: %w", path, err)
	}
	return ln, nil
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// putLogLevel changes the agent's log level. The change is logged at info level on
// whichever side of it lets the line through, so it is always on record.
func (a *Agent) putLogLevel(w http.ResponseWriter, r *http.Request) {
	var req LogLevel
	if err := json.NewDecoder(io.LimitReader(r.Body, 4096)).Decode(&req); err != nil {
		http.Error(w, "reading the body: "+err.Error(), http.StatusBadRequest)
		return
	}
	lvl, err := parseLogLevel(req.Level)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	prev := a.level.get()
	logChange := func() {
		a.log.Info().Str(fieldLogLevel, lvl.String()).Str(fieldPrevious, prev.String()).
			Msg("log level changed")
	}
	if lvl > zerolog.InfoLevel {
		logChange()
		a.level.set(lvl)
	} else {
		a.level.set(lvl)
		logChange()
	}
	writeJSON(w, LogLevel{Level: lvl.String(), Previous: prev.String()})
}

// LogLevels are the levels the agent accepts, from the most to the least verbose.
var LogLevels = []string{"trace", "debug", "info", "warn", "error"}

func parseLogLevel(s string) (zerolog.Level, error) {
	for _, name := range LogLevels {
		if s == name {
			return zerolog.ParseLevel(s)
		}
	}
	return zerolog.NoLevel, fmt.Errorf("log level %q: want one of %s",
		s, strings.Join(LogLevels, ", "))
}
