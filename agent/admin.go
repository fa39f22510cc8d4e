package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"net"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"github.com/veil-mesh/veil/agent/cni"
	"golang.org/x/sys/unix"
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

// serveAdmin listens on the admin socket. It tells which identities run on the node and
// what they connect to, so it is root's only (0600), unless AdminGroup names a group whose
// members may read it too (0660, owned by the group). Whatever changes the agent needs
// root either way: the group is for monitoring.
func (a *Agent) serveAdmin(ctx context.Context) (stop func(), err error) {
	path := a.cfg.AdminSocket
	gid, err := adminGroupID(a.cfg.AdminGroup)
	if err != nil {
		return nil, err
	}
	ln, err := listenPrivate(path, "unix", gid)
	if err != nil {
		return nil, err
	}
	if gid != noGroup {
		a.warnUnreachable(path, gid)
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
	mux.HandleFunc("PUT "+LogLevelPath, needsRoot("changing the log level", a.putLogLevel))
	mux.HandleFunc("GET "+PolicyCheckPath, a.servePolicyCheck)
	mux.HandleFunc("POST "+cni.AddPath, needsRoot("enrolling a pod", a.cniAdd))
	mux.HandleFunc("POST "+cni.DelPath, needsRoot("forgetting a pod's sandbox", a.cniDel))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second,
		ConnContext: withPeerCred}
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

// noGroup is listenPrivate's gid for a socket that no group may use: root's only.
const noGroup = -1

// adminGroupID resolves --admin-group: a numeric gid as it is, which needs no entry in
// /etc/group, or a group name looked up in /etc/group alone: the binaries are built
// without cgo, so NSS sources such as LDAP or sssd are not asked. Empty is noGroup.
func adminGroupID(group string) (int, error) {
	if group == "" {
		return noGroup, nil
	}
	n, err := strconv.ParseInt(group, 10, 64)
	if err == nil || errors.Is(err, strconv.ErrRange) {
		// gid_t is 32 bits, and its all-ones value means "leave the group as it is" to
		// chown(2), so it names no group.
		if err != nil || n < 0 || n >= math.MaxUint32 {
			return 0, fmt.Errorf("--admin-group %s: a gid is 0 to %d; give one in that "+
				"range or a group name", group, uint32(math.MaxUint32-1))
		}
		return int(n), nil
	}

	g, err := user.LookupGroup(group)
	var unknown user.UnknownGroupError
	if errors.As(err, &unknown) {
		return 0, fmt.Errorf("--admin-group %q: no group of that name in /etc/group (the only "+
			"place veil looks: not LDAP or sssd); create it there (groupadd) or give a "+
			"numeric gid, which needs no entry",
			group)
	}
	if err != nil {
		return 0, fmt.Errorf("--admin-group %q: looking up the group: %w; "+
			"a numeric gid needs no lookup", group, err)
	}
	gid, err := strconv.Atoi(g.Gid)
	if err != nil {
		return 0, fmt.Errorf("--admin-group %q: the group database gives gid %q: %w",
			group, g.Gid, err)
	}
	return gid, nil
}

// warnUnreachable warns when the admin group cannot reach the socket at path because a
// directory on the way denies it search permission. Such a directory existed before the
// agent (those it creates are the group's) and is left as it is, being perhaps shared.
// Only the mode bits are read: an ACL that lets the group through still draws the warning.
func (a *Agent) warnUnreachable(path string, gid int) {
	for dir := filepath.Dir(path); ; dir = filepath.Dir(dir) {
		st, err := os.Stat(dir)
		if err != nil {
			return
		}
		// The group's members are not the owner (root), and the kernel asks the group
		// bits of a directory the group owns, the others' bits of any other.
		perm := st.Mode().Perm()
		searchable := perm&0o001 != 0
		if sys, ok := st.Sys().(*syscall.Stat_t); ok && int(sys.Gid) == gid {
			searchable = perm&0o010 != 0
		}
		if !searchable {
			a.log.Warn().Str(fieldSocket, path).Str(fieldFile, dir).
				Msg("the admin group cannot reach the admin socket: make the directory " +
					"searchable by it (chgrp and chmod g+x, or chmod o+x)")
			return
		}
		if dir == filepath.Dir(dir) {
			return
		}
	}
}

// listenPrivate listens on a Unix socket (network unix or unixpacket) at path: root's
// only (0600) with gid noGroup, or root's and gid's (0660, owned by gid). Directories it
// creates on the way are 0700, or 0750 and owned by gid; directories that exist are left
// as they are, since they may be shared, such as /run. The socket is never reachable with
// looser permissions than these, not even for a moment: see below.
func listenPrivate(path, network string, gid int) (net.Listener, error) {
	dir := filepath.Dir(path)
	if err := makeSocketDir(dir, gid); err != nil {
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

	// A socket is created with the permissions the process umask leaves. So it is made in
	// a private directory, restricted there, and only then moved into place.
	tmp, err := os.MkdirTemp(dir, ".veil-admin-")
	if err != nil {
		return nil, fmt.Errorf("creating a private directory for the admin socket: %w", err)
	}
	defer os.RemoveAll(tmp)
	sock := filepath.Join(tmp, "sock")
	ln, err := net.Listen(network, sock)
	if err != nil {
		return nil, fmt.Errorf("listening on admin socket %s: %w", path, err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false) // the caller removes path itself
	err = restrictSocket(sock, gid)
	if err == nil {
		err = os.Rename(sock, path)
	}
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("restricting admin socket %s: %w", path, err)
	}
	return ln, nil
}

// restrictSocket gives the socket file its final owner and mode; see listenPrivate.
func restrictSocket(sock string, gid int) error {
	if gid == noGroup {
		return os.Chmod(sock, 0o600)
	}
	if err := os.Chown(sock, -1, gid); err != nil {
		return err
	}
	return os.Chmod(sock, 0o660)
}

// makeSocketDir creates dir and its missing parents as listenPrivate says. Each is made
// 0700 and opened to the group only once it is the group's: a mode given to mkdir would
// be narrowed by the umask, and would open the directory to root's group first.
func makeSocketDir(dir string, gid int) error {
	if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
		return err // nil: it exists, and stays as it is
	}
	if err := makeSocketDir(filepath.Dir(dir), gid); err != nil {
		return err
	}
	err := os.Mkdir(dir, 0o700)
	if errors.Is(err, fs.ErrExist) {
		return nil // made by someone else meanwhile, so not this agent's to change
	}
	if err != nil || gid == noGroup {
		return err
	}
	if err := os.Chown(dir, -1, gid); err != nil {
		return err
	}
	return os.Chmod(dir, 0o750)
}

// peerCredKey is the request context key of the peer's credentials, a *unix.Ucred.
type peerCredKey struct{}

// withPeerCred is the admin server's ConnContext: it records who opened the connection,
// as the kernel saw them at connect (SO_PEERCRED). A connection whose credentials cannot
// be read gets none, and so is refused whatever needs root.
func withPeerCred(ctx context.Context, c net.Conn) context.Context {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return ctx
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return ctx
	}
	var cred *unix.Ucred
	var credErr error
	err = raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	})
	if err != nil || credErr != nil {
		return ctx
	}
	return context.WithValue(ctx, peerCredKey{}, cred)
}

// needsRoot lets h answer root alone; what names what h does, for the refusal. Who may
// connect at all is up to the socket's permissions, checked by the kernel at connect;
// this is what keeps the admin group to reading. The group itself is not checked here:
// SO_PEERCRED gives a peer's primary gid only, not the supplementary groups the kernel
// let in.
func needsRoot(what string, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		cred, _ := r.Context().Value(peerCredKey{}).(*unix.Ucred)
		if cred == nil || cred.Uid != 0 {
			http.Error(w, what+" needs root; members of the admin group may only read",
				http.StatusForbidden)
			return
		}
		h(w, r)
	}
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
