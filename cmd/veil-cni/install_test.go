package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// runInstaller runs this test binary as veil-cni from a shell: no CNI_COMMAND.
func runInstaller(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), pluginEnv+"=1")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

const bridgeList = `{
  "cniVersion": "1.0.0",
  "name": "cbr0",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local", "subnet": "10.244.1.0/24"}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}`

func readJSON(t *testing.T, path string) map[string]any {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return m
}

func pluginTypes(conf map[string]any) []string {
	var out []string
	for _, p := range conf["plugins"].([]any) {
		out = append(out, p.(map[string]any)["type"].(string))
	}
	return out
}

// install appends veil-cni to the configuration the runtime reads, keeps everything
// else in it, copies the plugin, and does nothing the second time; uninstall undoes it.
func TestInstallChainsIntoTheFirstConfiguration(t *testing.T) {
	bin, conf := t.TempDir(), t.TempDir()
	first := filepath.Join(conf, "10-flannel.conflist")
	if err := os.WriteFile(first, []byte(bridgeList), 0o644); err != nil {
		t.Fatal(err)
	}
	later := filepath.Join(conf, "99-loopback.conf")
	if err := os.WriteFile(later, []byte(`{"cniVersion": "1.0.0", "name": "lo", "type": "loopback"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"install", "--cni-bin-dir", bin, "--cni-conf-dir", conf,
		"--agent-socket", "/run/veil/agent.sock"}
	out, err := runInstaller(t, args...)
	if err != nil {
		t.Fatalf("install: %v\n%s", err, out)
	}
	got := readJSON(t, first)
	if types := strings.Join(pluginTypes(got), ","); types != "bridge,portmap,veil-cni" {
		t.Errorf("plugins after install: %s, want bridge,portmap,veil-cni", types)
	}
	bridge := got["plugins"].([]any)[0].(map[string]any)
	if got["name"] != "cbr0" || bridge["ipam"].(map[string]any)["subnet"] != "10.244.1.0/24" {
		t.Errorf("install lost the rest of the configuration: %v", got)
	}
	veil := got["plugins"].([]any)[2].(map[string]any)
	if veil["agentSocket"] != "/run/veil/agent.sock" {
		t.Errorf("veil-cni's entry: %v", veil)
	}
	if data, _ := os.ReadFile(later); !strings.Contains(string(data), "loopback") ||
		strings.Contains(string(data), "veil") {
		t.Errorf("a configuration the runtime does not use was changed: %s", data)
	}
	if st, err := os.Stat(filepath.Join(bin, "veil-cni")); err != nil || st.Mode().Perm() != 0o755 {
		t.Errorf("the plugin in --cni-bin-dir: %v, %v", st, err)
	}

	before, _ := os.ReadFile(first)
	if out, err := runInstaller(t, args...); err != nil || strings.Contains(out, "chained into") {
		t.Errorf("second install: %v\n%s", err, out)
	}
	if after, _ := os.ReadFile(first); !bytes.Equal(before, after) {
		t.Errorf("a second install rewrote the configuration")
	}

	// A network plugin that rewrites its configuration puts veil-cni out of place; a
	// new agent socket moves it too.
	moved := strings.Replace(string(before), `"type": "portmap"`, `"type": "portmap2"`, 1)
	var m map[string]any
	if err := json.Unmarshal([]byte(moved), &m); err != nil {
		t.Fatal(err)
	}
	pl := m["plugins"].([]any)
	m["plugins"] = []any{pl[2], pl[0], pl[1]} // veil-cni first
	data, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(first, data, 0o644); err != nil {
		t.Fatal(err)
	}
	args[len(args)-1] = "/var/run/veil/agent.sock"
	if out, err := runInstaller(t, args...); err != nil {
		t.Fatalf("install over a reordered chain: %v\n%s", err, out)
	}
	got = readJSON(t, first)
	if types := strings.Join(pluginTypes(got), ","); types != "bridge,portmap2,veil-cni" {
		t.Errorf("plugins: %s, want veil-cni moved back to the end, once", types)
	}
	if s := got["plugins"].([]any)[2].(map[string]any)["agentSocket"]; s != "/var/run/veil/agent.sock" {
		t.Errorf("agentSocket %v after install with a new one", s)
	}

	if out, err := runInstaller(t, "uninstall", "--cni-bin-dir", bin, "--cni-conf-dir", conf); err != nil {
		t.Fatalf("uninstall: %v\n%s", err, out)
	}
	if types := strings.Join(pluginTypes(readJSON(t, first)), ","); types != "bridge,portmap2" {
		t.Errorf("plugins after uninstall: %s", types)
	}
	if _, err := os.Stat(filepath.Join(bin, "veil-cni")); !os.IsNotExist(err) {
		t.Errorf("the plugin is still in --cni-bin-dir: %v", err)
	}
}

// A single-plugin .conf becomes a .conflist of the same name holding it and veil-cni.
func TestInstallTurnsAConfIntoAList(t *testing.T) {
	bin, conf := t.TempDir(), t.TempDir()
	single := filepath.Join(conf, "10-bridge.conf")
	if err := os.WriteFile(single, []byte(`{"cniVersion": "0.4.0", "name": "br", "type": "bridge",
	  "bridge": "cni0", "ipam": {"type": "host-local", "subnet": "10.244.1.0/24"}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := runInstaller(t, "install", "--cni-bin-dir", bin, "--cni-conf-dir", conf); err != nil {
		t.Fatalf("install: %v\n%s", err, out)
	}
	if _, err := os.Stat(single); !os.IsNotExist(err) {
		t.Errorf("the .conf is still there: %v", err)
	}
	got := readJSON(t, filepath.Join(conf, "10-bridge.conflist"))
	if got["name"] != "br" || got["cniVersion"] != "0.4.0" ||
		strings.Join(pluginTypes(got), ",") != "bridge,veil-cni" {
		t.Errorf("the list made of the .conf: %v", got)
	}
}

// With no configuration yet, install says so and, with --watch, waits for one.
func TestInstallWithoutConfiguration(t *testing.T) {
	bin, conf := t.TempDir(), t.TempDir()
	out, err := runInstaller(t, "install", "--cni-bin-dir", bin, "--cni-conf-dir", conf)
	if err == nil || !strings.Contains(out, "no CNI configuration in "+conf+
		" yet: the node's network plugin writes one") {
		t.Errorf("install with an empty --cni-conf-dir: %v\n%s", err, out)
	}
	out, err = runInstaller(t, "install", "--cni-bin-dir", filepath.Join(bin, "missing"),
		"--cni-conf-dir", conf)
	if err == nil || !strings.Contains(out, "--cni-bin-dir "+filepath.Join(bin, "missing")) {
		t.Errorf("install into a missing --cni-bin-dir: %v\n%s", err, out)
	}
}

// With --watch, install waits for the network plugin's configuration, chains into it,
// chains in again when the network plugin rewrites it, and leaves the entry in place
// when stopped.
func TestInstallWatch(t *testing.T) {
	bin, conf := t.TempDir(), t.TempDir()
	cmd := exec.Command(os.Args[0], "install", "--watch", "--every", "20ms",
		"--cni-bin-dir", bin, "--cni-conf-dir", conf)
	cmd.Env = append(os.Environ(), pluginEnv+"=1")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
	})

	list := filepath.Join(conf, "10-flannel.conflist")
	chained := func() bool {
		data, err := os.ReadFile(list)
		return err == nil && strings.Contains(string(data), `"veil-cni"`)
	}
	for round := range 2 {
		// The network plugin writes its configuration: the first time into an empty
		// directory, the second over veil-cni's entry.
		tmp := filepath.Join(conf, ".flannel-tmp")
		if err := os.WriteFile(tmp, []byte(bridgeList), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, list); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "veil-cni chained in, round "+string(rune('1'+round)), chained)
	}

	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Errorf("install --watch ended with %v on SIGINT\n%s", err, out.String())
	}
	done <- nil // for the cleanup
	if !chained() {
		t.Error("stopping install --watch took veil-cni out of the chain")
	}
	if n := strings.Count(out.String(), "chained into"); n != 2 {
		t.Errorf("install --watch logged %d chainings, want 2:\n%s", n, out.String())
	}
}

// waitFor polls ok for up to 10 s.
func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within 10s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// install edits what the runtime reads and nothing else of it: through a symbolic link,
// keeping the file's mode, numbers as written and the settings of a veil-cni entry an
// operator changed, and leaving one entry where it found two.
func TestInstallKeepsWhatItFinds(t *testing.T) {
	bin, conf, store := t.TempDir(), t.TempDir(), t.TempDir()
	real := filepath.Join(store, "calico.conflist")
	body := `{"cniVersion": "0.3.1", "name": "k8s-pod-network", "plugins": [
	  {"type": "calico", "mtu": 9007199254740993},
	  {"type": "veil-cni", "agentSocket": "/old.sock", "excludeNamespaces": ["batch"]},
	  {"type": "portmap"},
	  {"type": "veil-cni"}]}`
	if err := os.WriteFile(real, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(conf, "10-calico.conflist")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(conf, "99-loopback.conf"),
		[]byte(`{"cniVersion": "1.0.0", "name": "lo", "type": "loopback"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := runInstaller(t, "install", "--cni-bin-dir", bin, "--cni-conf-dir", conf,
		"--agent-socket", "/run/veil/agent.sock")
	if err != nil {
		t.Fatalf("install: %v\n%s", err, out)
	}
	if st, err := os.Lstat(link); err != nil || st.Mode()&os.ModeSymlink == 0 {
		t.Errorf("the link was replaced: %v, %v", st, err)
	}
	data, err := os.ReadFile(real)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), "9007199254740993") {
		t.Errorf("a large number changed:\n%s", data)
	}
	got := readJSON(t, real)
	if types := strings.Join(pluginTypes(got), ","); types != "calico,portmap,veil-cni" {
		t.Errorf("plugins: %s, want one veil-cni, last", types)
	}
	veil := got["plugins"].([]any)[2].(map[string]any)
	if veil["agentSocket"] != "/run/veil/agent.sock" || len(veil["excludeNamespaces"].([]any)) != 1 {
		t.Errorf("veil-cni's entry: %v, want the operator's excludeNamespaces kept", veil)
	}
	if st, _ := os.Stat(real); st.Mode().Perm() != 0o600 {
		t.Errorf("the file's mode became %v", st.Mode().Perm())
	}
	if d, _ := os.ReadFile(filepath.Join(conf, "99-loopback.conf")); strings.Contains(string(d), "veil") {
		t.Errorf("install chained into a file the runtime does not use")
	}
}

// A configuration in a CNI version veil-cni does not speak is left alone, with an
// error that says pods are not held.
func TestInstallRefusesAnUnknownVersion(t *testing.T) {
	bin, conf := t.TempDir(), t.TempDir()
	path := filepath.Join(conf, "10-x.conflist")
	if err := os.WriteFile(path, []byte(`{"cniVersion": "0.2.0", "name": "x", "plugins": [{"type": "x"}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := runInstaller(t, "install", "--cni-bin-dir", bin, "--cni-conf-dir", conf)
	if err == nil || !strings.Contains(out, `declares cniVersion "0.2.0", which veil-cni does not speak`) ||
		!strings.Contains(out, "pods are not held") {
		t.Errorf("install over a 0.2.0 configuration: %v\n%s", err, out)
	}
	if d, _ := os.ReadFile(path); strings.Contains(string(d), "veil") {
		t.Errorf("the configuration was changed: %s", d)
	}
}
