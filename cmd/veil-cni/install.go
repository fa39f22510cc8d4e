package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
)

// pluginType is the name the plugin goes by in a CNI configuration and in the runtime's
// plugin directory.
const pluginType = "veil-cni"

// installOpts are the flags of `veil-cni install` and `veil-cni uninstall`.
type installOpts struct {
	binDir, confDir string
	agentSocket     string
	watch           bool
	every           time.Duration
}

// installCommand is veil-cni's command line when it is not run by a container runtime:
// the DaemonSet runs `veil-cni install --watch` beside the agent to put the plugin on its
// node.
func installCommand() *cobra.Command {
	o := installOpts{}
	root := &cobra.Command{
		Use:   "veil-cni",
		Short: "The veil CNI plugin, and its installer",
		Long: "Run by a container runtime (CNI_COMMAND set), veil-cni holds each pod's sandbox " +
			"until the node's veil agent has enrolled the pod. From a shell, it installs " +
			"itself into the node's CNI chain.",
		SilenceUsage: true,
	}
	install := &cobra.Command{
		Use:   "install",
		Short: "Copy veil-cni into the CNI plugin directory and chain it into the node's network",
		Long: "install copies this binary to --cni-bin-dir and appends veil-cni to the " +
			"plugins of the CNI configuration the runtime uses: the first file in " +
			"--cni-conf-dir, in name order, as containerd and CRI-O pick it. A single-plugin " +
			".conf is replaced by a .conflist of the same name holding it and veil-cni. " +
			"With --watch it then checks every --every that the entry is still there, and " +
			"puts it back when the node's network plugin rewrote its configuration.",
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return runInstall(ctx, o, cmd.ErrOrStderr())
		},
	}
	uninstall := &cobra.Command{
		Use:   "uninstall",
		Short: "Take veil-cni out of the node's CNI chain and plugin directory",
		Long: "uninstall removes the veil-cni entry from the CNI configuration and the binary " +
			"from --cni-bin-dir. Until it runs, the node's mesh pods start only once its agent " +
			"has them: removing the agent alone leaves them waiting, by design.",
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runUninstall(o, cmd.ErrOrStderr())
		},
	}
	for _, c := range []*cobra.Command{install, uninstall} {
		f := c.Flags()
		f.StringVar(&o.binDir, "cni-bin-dir", "/opt/cni/bin", "the runtime's CNI plugin directory")
		f.StringVar(&o.confDir, "cni-conf-dir", "/etc/cni/net.d",
			"the runtime's CNI configuration directory")
	}
	install.Flags().StringVar(&o.agentSocket, "agent-socket", defaultAgentSocket,
		"the agent's admin socket, as the plugin sees it on the node")
	install.Flags().BoolVar(&o.watch, "watch", false,
		"keep the entry in place until stopped")
	install.Flags().DurationVar(&o.every, "every", 5*time.Second, "how often --watch checks")
	root.AddCommand(install, uninstall)
	return root
}

func runInstall(ctx context.Context, o installOpts, log io.Writer) error {
	if err := copySelf(o.binDir); err != nil {
		return err
	}
	fmt.Fprintf(log, "veil-cni: installed %s\n", filepath.Join(o.binDir, pluginType))
	var lastErr string
	for {
		path, changed, err := chainInto(o.confDir, o.agentSocket)
		switch {
		case err != nil && !o.watch:
			return err
		case err != nil && err.Error() != lastErr:
			fmt.Fprintf(log, "veil-cni: %v; trying again every %s\n", err, o.every)
		case changed:
			fmt.Fprintf(log, "veil-cni: chained into %s\n", path)
		}
		lastErr = ""
		if err != nil {
			lastErr = err.Error()
		}
		if !o.watch {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil // the entry stays: pods keep waiting for the agent, not leaking
		case <-time.After(o.every):
		}
	}
}

func runUninstall(o installOpts, log io.Writer) error {
	path, err := primaryConf(o.confDir)
	if err == nil {
		var conf map[string]any
		conf, err = readConf(path)
		if err == nil {
			plugins, _ := conf["plugins"].([]any)
			kept := slices.DeleteFunc(slices.Clone(plugins), isVeil)
			if len(kept) != len(plugins) {
				conf["plugins"] = kept
				if err = writeConf(path, conf); err == nil {
					fmt.Fprintf(log, "veil-cni: removed from %s\n", path)
				}
			}
		}
	}
	if err != nil && !errors.Is(err, errNoConf) {
		return err
	}
	bin := filepath.Join(o.binDir, pluginType)
	if err := os.Remove(bin); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	fmt.Fprintf(log, "veil-cni: removed %s\n", bin)
	return nil
}

// copySelf puts this binary in dir as veil-cni, replacing any older one in one rename:
// a runtime running the plugin meanwhile runs the old file or the new, never half of one.
func copySelf(dir string) error {
	if err := copyFile(dir); err != nil {
		return fmt.Errorf("copying veil-cni into --cni-bin-dir %s: %w", dir, err)
	}
	return nil
}

func copyFile(dir string) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	src, err := os.Open(self)
	if err != nil {
		return err
	}
	defer src.Close()
	tmp, err := os.CreateTemp(dir, ".veil-cni-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := io.Copy(tmp, src); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o755); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), filepath.Join(dir, pluginType))
}

var errNoConf = errors.New("no CNI configuration")

// primaryConf returns the configuration file the runtime uses: the first, by name, of
// the .conf, .conflist and .json files in dir, as containerd picks it (CRI-O too,
// unless its cni_default_network names another). A symbolic link counts, as it does
// for the runtime.
func primaryConf(dir string) (string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return "", fmt.Errorf("--cni-conf-dir: %w", err)
	}
	for _, e := range entries { // ReadDir sorts by name
		switch filepath.Ext(e.Name()) {
		case ".conf", ".conflist", ".json":
			path := filepath.Join(dir, e.Name())
			if st, err := os.Stat(path); err == nil && !st.IsDir() {
				return path, nil
			}
		}
	}
	return "", fmt.Errorf("%w in %s yet: the node's network plugin writes one", errNoConf, dir)
}

// chainInto makes sure the runtime's configuration in dir ends with veil-cni, asking
// the agent at agentSocket, and returns the file and whether it changed it. An entry
// already there keeps its other settings (excludeNamespaces) wherever it was.
func chainInto(dir, agentSocket string) (string, bool, error) {
	path, err := primaryConf(dir)
	if err != nil {
		return "", false, err
	}
	conf, err := readConf(path)
	if err != nil {
		return path, false, err
	}
	v, _ := conf["cniVersion"].(string)
	if !slices.Contains(supportedVersions, v) {
		return path, false, fmt.Errorf("%s declares cniVersion %q, which veil-cni does not "+
			"speak (it speaks %s): veil-cni was not chained, so pods are not held for the "+
			"agent", path, v, strings.Join(supportedVersions, ", "))
	}
	out := path
	plugins, isList := conf["plugins"].([]any)
	if !isList {
		// A single plugin's configuration: the list keeps its name and version.
		single := conf
		conf = map[string]any{"cniVersion": single["cniVersion"], "name": single["name"]}
		delete(single, "name")
		plugins = []any{single}
		out = strings.TrimSuffix(path, filepath.Ext(path)) + ".conflist"
	}

	entry := map[string]any{"type": pluginType}
	n := 0
	for _, p := range plugins {
		if isVeil(p) {
			if n == 0 {
				entry = p.(map[string]any)
			}
			n++
		}
	}
	last := len(plugins) > 0 && isVeil(plugins[len(plugins)-1])
	if n == 1 && last && entry["agentSocket"] == agentSocket {
		return path, false, nil
	}
	entry["agentSocket"] = agentSocket
	conf["plugins"] = append(slices.DeleteFunc(plugins, isVeil), entry)
	if err := writeConf(out, conf); err != nil {
		return out, false, err
	}
	if out != path {
		if err := os.Remove(path); err != nil {
			return out, true, err
		}
	}
	return out, true, nil
}

func isVeil(p any) bool {
	m, ok := p.(map[string]any)
	return ok && m["type"] == pluginType
}

func readConf(path string) (map[string]any, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var conf map[string]any
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber() // numbers come back as written, however large
	if err := dec.Decode(&conf); err != nil {
		return nil, fmt.Errorf("%s is not a CNI configuration: %w", path, err)
	}
	return conf, nil
}

// writeConf replaces path (the file a symbolic link at path leads to) with conf in one
// rename, so the runtime never reads half, keeping the file's mode.
func writeConf(path string, conf map[string]any) error {
	data, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		return err
	}
	mode := os.FileMode(0o644)
	if target, err := filepath.EvalSymlinks(path); err == nil {
		path = target
		if st, err := os.Stat(target); err == nil {
			mode = st.Mode().Perm()
		}
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".veil-cni-conf-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(data, '\n')); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
