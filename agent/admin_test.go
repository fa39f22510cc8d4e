package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/veil-mesh/veil/ca/caclient"
)

// The socket is root's only from the moment it is reachable, and a shared directory it
// lives in keeps its own permissions.
func TestListenAdminRestrictsTheSocketOnly(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "agent.sock")

	ln, err := listenPrivate(path, "unix", noGroup)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	for p, want := range map[string]os.FileMode{dir: 0o755, path: 0o600} {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if got := st.Mode().Perm(); got != want {
			t.Errorf("%s has mode %04o, want %04o", p, got, want)
		}
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("the directory holds %d entries, want the socket alone", len(entries))
	}

	go func() {
		if c, err := ln.Accept(); err == nil {
			c.Close()
		}
	}()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("the moved socket does not answer: %v", err)
	}
	c.Close()
}

// testAdminGID is the admin group of these tests. A numeric gid needs no /etc/group entry.
const testAdminGID = 4242

// requireRoot skips a test that needs to give files away to another group or to run a
// process as another user.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: chowns the admin socket to a group and runs clients as " +
			"another user")
	}
}

// fileOwner returns the mode bits and owning gid of path.
func fileOwner(t *testing.T, path string) (os.FileMode, uint32) {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Mode().Perm(), st.Sys().(*syscall.Stat_t).Gid
}

// With an admin group the socket is 0660 and the group's, and so are the directories the
// agent creates (0750), even under a umask that would narrow them; without one, both are
// root's only as before. A directory that exists keeps its mode and group either way.
func TestListenAdminGroupModes(t *testing.T) {
	requireRoot(t)
	old := syscall.Umask(0o077)
	t.Cleanup(func() { syscall.Umask(old) })

	for _, tc := range []struct {
		name              string
		gid               int
		sockMode, dirMode os.FileMode
		wantGID           uint32
	}{
		{"root only", noGroup, 0o600, 0o700, 0},
		{"admin group", testAdminGID, 0o660, 0o750, testAdminGID},
	} {
		t.Run(tc.name, func(t *testing.T) {
			base := t.TempDir()
			created := filepath.Join(base, "run", "veil") // neither exists yet
			path := filepath.Join(created, "agent.sock")
			ln, err := listenPrivate(path, "unix", tc.gid)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()

			if mode, gid := fileOwner(t, path); mode != tc.sockMode || gid != tc.wantGID {
				t.Errorf("socket: mode %04o gid %d, want %04o gid %d",
					mode, gid, tc.sockMode, tc.wantGID)
			}
			for _, dir := range []string{created, filepath.Dir(created)} {
				if mode, gid := fileOwner(t, dir); mode != tc.dirMode || gid != tc.wantGID {
					t.Errorf("created %s: mode %04o gid %d, want %04o gid %d",
						dir, mode, gid, tc.dirMode, tc.wantGID)
				}
			}
			baseMode, baseGID := fileOwner(t, base)

			// Again in a directory that exists: the agent leaves it alone.
			ln.Close()
			os.Remove(path)
			ln, err = listenPrivate(filepath.Join(base, "agent.sock"), "unix", tc.gid)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			if mode, gid := fileOwner(t, base); mode != baseMode || gid != baseGID {
				t.Errorf("existing directory changed to mode %04o gid %d from %04o gid %d",
					mode, gid, baseMode, baseGID)
			}
			mode, gid := fileOwner(t, filepath.Join(base, "agent.sock"))
			if mode != tc.sockMode || gid != tc.wantGID {
				t.Errorf("socket in an existing directory: mode %04o gid %d, want %04o gid %d",
					mode, gid, tc.sockMode, tc.wantGID)
			}
		})
	}
}

// The handoff socket beside the admin socket stays root's only when the admin socket is
// open to a group: a successor takes every listener over it.
func TestHandoffSocketIgnoresAdminGroup(t *testing.T) {
	requireRoot(t)
	a := adminAgent(t, filepath.Join(t.TempDir(), "run", "agent.sock"), fmt.Sprint(testAdminGID))
	stop, err := a.serveHandoff()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)

	if mode, gid := fileOwner(t, a.cfg.AdminSocket); mode != 0o660 || gid != testAdminGID {
		t.Errorf("admin socket: mode %04o gid %d, want 0660 gid %d", mode, gid, testAdminGID)
	}
	if mode, gid := fileOwner(t, handoffPath(a.cfg.AdminSocket)); mode != 0o600 || gid != 0 {
		t.Errorf("handoff socket: mode %04o gid %d, want 0600 gid 0", mode, gid)
	}
}

// An admin group that cannot search the directory holding the socket, which the agent
// leaves as it found it, draws a warning that names the directory.
func TestAdminGroupWarnsOfUnreachableDirectory(t *testing.T) {
	requireRoot(t)
	for _, tc := range []struct {
		name    string
		mode    os.FileMode
		groupOf bool // the directory is the admin group's
		warn    bool
	}{
		{"private directory", 0o700, false, true},
		{"searchable directory", 0o755, false, false},
		{"the group's directory", 0o750, true, false},
		// Others may search it, but the kernel asks the group bits of the group's members.
		{"the group's directory closed to it", 0o701, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := searchableTempDir(t)
			if tc.groupOf {
				if err := os.Chown(dir, -1, testAdminGID); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.Chmod(dir, tc.mode); err != nil {
				t.Fatal(err)
			}
			var logs bytes.Buffer
			a := newAgent(Config{AdminSocket: filepath.Join(dir, "agent.sock"),
				AdminGroup: fmt.Sprint(testAdminGID)}, zerolog.New(&logs))
			stop, err := a.serveAdmin(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(stop)

			warned := strings.Contains(logs.String(), `"level":"warn"`) &&
				strings.Contains(logs.String(), `"file":"`+dir+`"`)
			if warned != tc.warn {
				t.Errorf("warned %v, want %v; logs:\n%s", warned, tc.warn, logs.String())
			}
		})
	}
}

// adminAgent is an agent with nothing started but its admin API on path, open to group.
func adminAgent(t *testing.T, path, group string) *Agent {
	t.Helper()
	a := newAgent(Config{Node: "n1", AdminSocket: path, AdminGroup: group, Version: "test"},
		zerolog.Nop())
	a.signer = &trackedSigner{c: &caclient.Client{}} // status reports on the CA client
	stop, err := a.serveAdmin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return a
}

// adminChildEnv tells this test binary, run again as another user, which admin socket to
// try: TestAdminClientChild is then the client.
const adminChildEnv = "VEIL_AGENT_ADMIN_CHILD"

// forbiddenLogLevel is the refusal a non-root client gets for PUT LogLevelPath.
const forbiddenLogLevel = "changing the log level needs root; " +
	"members of the admin group may only read"

// TestAdminClientChild is the client side of TestAdminGroupReadsOnly: it is skipped unless
// that test started it. It prints one line per attempt, which the parent checks.
func TestAdminClientChild(t *testing.T) {
	sock := os.Getenv(adminChildEnv)
	if sock == "" {
		t.Skip("run by TestAdminGroupReadsOnly")
	}
	c, err := net.Dial("unix", sock)
	if errors.Is(err, os.ErrPermission) {
		fmt.Println("dial: permission denied")
		return
	}
	if err != nil {
		t.Fatalf("dialing %s: %v", sock, err)
	}
	c.Close()

	for _, req := range []struct{ method, path, body string }{
		{http.MethodGet, StatusPath, ""},
		{http.MethodPut, LogLevelPath, `{"level":"debug"}`},
	} {
		code, body, err := adminRequest(sock, req.method, req.path, req.body)
		if err != nil {
			t.Fatal(err)
		}
		line := fmt.Sprintf("%s %s %d", req.method, req.path, code)
		if code != http.StatusOK {
			line += " " + body
		}
		fmt.Println(line)
	}
}

// adminRequest makes one request to the admin API on sock and returns the status code
// and the body, trimmed.
func adminRequest(sock, method, path, body string) (int, string, error) {
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}
	req, err := http.NewRequest(method, "http://agent"+path, strings.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(bytes.TrimSpace(b)), err
}

// A member of the admin group, by its primary group or a supplementary one, reads the
// admin API and is refused a change, which root still makes; a user outside the group
// cannot connect. Each client is this test binary run as uid 65534.
func TestAdminGroupReadsOnly(t *testing.T) {
	requireRoot(t)
	base := searchableTempDir(t)
	bin := copyTestBinary(t, base)

	for _, layout := range []struct{ name, sock string }{
		// The DaemonSet's case: /run/veil is a hostPath the kubelet made 0755.
		{"existing directory", filepath.Join(base, "agent.sock")},
		{"directory made by the agent", filepath.Join(base, "run", "agent.sock")},
	} {
		t.Run(layout.name, func(t *testing.T) {
			a := adminAgent(t, layout.sock, fmt.Sprint(testAdminGID))
			before := a.level.get()

			for _, client := range []struct {
				name   string
				gid    uint32
				groups []uint32
				want   []string
			}{
				{"primary group", testAdminGID, nil, []string{
					"GET " + StatusPath + " 200",
					"PUT " + LogLevelPath + " 403 " + forbiddenLogLevel,
				}},
				{"supplementary group", testAdminGID + 1, []uint32{testAdminGID}, []string{
					"GET " + StatusPath + " 200",
					"PUT " + LogLevelPath + " 403 " + forbiddenLogLevel,
				}},
				{"another group", testAdminGID + 1, nil, []string{
					"dial: permission denied",
				}},
			} {
				out := runAdminChild(t, bin, layout.sock, client.gid, client.groups)
				for _, want := range client.want {
					if !strings.Contains(out, want+"\n") {
						t.Errorf("%s: output lacks %q:\n%s", client.name, want, out)
					}
				}
			}
			if got := a.level.get(); got != before {
				t.Errorf("log level changed to %s by a group member", got)
			}

			code, body, err := adminRequest(layout.sock, http.MethodPut, LogLevelPath,
				`{"level":"debug"}`)
			if err != nil || code != http.StatusOK || a.level.get() != zerolog.DebugLevel {
				t.Errorf("root's PUT: %d %q %v, level %s; want 200 and debug",
					code, body, err, a.level.get())
			}
		})
	}
}

// runAdminChild runs TestAdminClientChild as uid 65534 with group gid and supplementary
// groups, against sock, and returns what it printed.
func runAdminChild(t *testing.T, bin, sock string, gid uint32, groups []uint32) string {
	t.Helper()
	cmd := exec.Command(bin, "-test.run=^TestAdminClientChild$")
	cmd.Dir = filepath.Dir(bin)
	cmd.Env = append(os.Environ(), adminChildEnv+"="+sock)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{
		Uid: 65534, Gid: gid, Groups: groups,
	}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("client as 65534:%d %v: %v\n%s", gid, groups, err, out)
	}
	return string(out)
}

// searchableTempDir makes a 0755 directory that any user can reach, unlike t.TempDir,
// whose parent is 0700, and removes it when the test ends.
func searchableTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "veil-admin-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for d := filepath.Dir(dir); ; d = filepath.Dir(d) {
		if mode, _ := fileOwner(t, d); mode&0o001 == 0 {
			t.Skipf("%s is not searchable by other users; set TMPDIR to a directory "+
				"that is", d)
		}
		if d == filepath.Dir(d) {
			break
		}
	}
	return dir
}

// copyTestBinary copies this test binary into dir, where another user can run it: the
// go command builds it in a directory only its owner can enter.
func copyTestBinary(t *testing.T, dir string) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "agent.test")
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return bin
}

// A group that cannot be used stops the agent at startup, before it asks a running agent
// for its listeners, with an error that names the flag and the fix.
func TestAdminGroupStartupErrors(t *testing.T) {
	for _, tc := range []struct{ group, want string }{
		{"veil-no-such-group", `--admin-group "veil-no-such-group": no group of that name ` +
			`in /etc/group (the only place veil looks: not LDAP or sssd); create it there ` +
			`(groupadd) or give a numeric gid`},
		{"4294967295", "--admin-group 4294967295: a gid is 0 to 4294967294; " +
			"give one in that range or a group name"},
		{"-1", "--admin-group -1: a gid is 0 to 4294967294"},
		{"99999999999999999999", "--admin-group 99999999999999999999: a gid is 0 to"},
	} {
		// Paths in a directory of the test's own: were the check ever to come too late,
		// what Run made on the way would not outlive the test.
		dir := t.TempDir()
		cfg := Config{
			Node: "n1", WorkloadFile: filepath.Join(dir, "w.yaml"),
			Cgroup: filepath.Join(dir, "cgroup"), PinDir: filepath.Join(dir, "bpffs"),
			AdminSocket: filepath.Join(dir, "agent.sock"), CAAddr: "127.0.0.1:1",
			CARoot: filepath.Join(dir, "root.pem"), NodeTokenFile: filepath.Join(dir, "token"),
			AdminGroup: tc.group,
		}
		err := Run(t.Context(), cfg, zerolog.Nop())
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("--admin-group %s: Run returned %v, want an error with %q",
				tc.group, err, tc.want)
		}
	}
}

func TestAdminGroupID(t *testing.T) {
	cases := map[string]int{"": noGroup, "4242": 4242, "0": 0, "4294967294": 4294967294}
	if g, err := user.LookupGroupId("0"); err == nil {
		cases[g.Name] = 0 // by name: root's group, whatever it is called here
	}
	for group, want := range cases {
		got, err := adminGroupID(group)
		if err != nil || got != want {
			t.Errorf("adminGroupID(%q) = %d, %v; want %d", group, got, err, want)
		}
	}
}
