// Command veil-agent is veil's node agent. It is wiring only: flags into agent.Config,
// a logger, and signal handling; package agent does the work.
package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"github.com/spf13/cobra"

	"github.com/veil-mesh/veil/agent"
	"github.com/veil-mesh/veil/agent/harden"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	// Before anything else, so that no key this process ever holds can end up in a core
	// file.
	if err := harden.Process(); err != nil {
		fmt.Fprintln(os.Stderr, "veil-agent: turning off core dumps:", err)
		os.Exit(1)
	}
	if err := newRootCmd().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "veil-agent:", err)
		os.Exit(1)
	}
}

func newRootCmd() *cobra.Command {
	var (
		cfg       agent.Config
		exclude   []string
		logLevel  string
		logFormat string
	)
	reloadEvery, envErr := envDuration("VEIL_RELOAD_EVERY", 2*time.Second)
	drainTimeout, drainErr := envDuration("VEIL_DRAIN_TIMEOUT", agent.DefaultDrainTimeout)
	envErr = errors.Join(envErr, drainErr)
	cmd := &cobra.Command{
		Use:           "veil-agent",
		Short:         "Intercept enrolled pods' TCP with eBPF and carry it over mTLS",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if envErr != nil {
				return envErr
			}
			log, err := newLogger(logLevel, logFormat)
			if err != nil {
				return err
			}
			dumpable, err := harden.Dumpable()
			if err != nil {
				return err
			}
			log.Info().Bool(harden.LogFieldDumpable, dumpable).Msg("core dumps off")
			for _, e := range exclude {
				p, err := netip.ParsePrefix(e)
				if err != nil {
					return fmt.Errorf("--exclude %q: want a CIDR such as 10.0.0.0/8: %w",
						e, err)
				}
				cfg.Exclude = append(cfg.Exclude, p)
			}
			cfg.Version = version
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return agent.Run(ctx, cfg, log)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Node, "node", envOr("VEIL_NODE", ""),
		"name of this node, as the workload file names it (env VEIL_NODE)")
	f.StringVar(&cfg.WorkloadFile, "workloads",
		envOr("VEIL_WORKLOADS", "/etc/veil/workloads.yaml"),
		"workload file (env VEIL_WORKLOADS)")
	f.BoolVar(&cfg.Kubernetes, "kubernetes", envOr("VEIL_KUBERNETES", "") == "true",
		"learn pods and policies from the Kubernetes API instead of --workloads and "+
			"--policy (env VEIL_KUBERNETES=true)")
	f.StringVar(&cfg.Kubeconfig, "kubeconfig", envOr("VEIL_KUBECONFIG", ""),
		"kubeconfig file for --kubernetes outside a pod; empty: the pod's service account "+
			"(env VEIL_KUBECONFIG)")
	f.StringVar(&cfg.TrustDomain, "trust-domain", envOr("VEIL_TRUST_DOMAIN", "cluster.local"),
		"trust domain of the identities, with --kubernetes; the workload file names its own "+
			"(env VEIL_TRUST_DOMAIN)")
	f.StringVar(&cfg.ProcDir, "proc", envOr("VEIL_PROC", "/proc"),
		"the host's /proc, where pods' network namespaces are found with --kubernetes "+
			"(env VEIL_PROC)")
	f.StringVar(&cfg.NodeNetns, "node-netns", envOr("VEIL_NODE_NETNS", "/proc/self/ns/net"),
		"the node's network namespace, where pods' interfaces lead, with --kubernetes; in a "+
			"pod of its own the agent needs the host's, e.g. /host/proc/1/ns/net "+
			"(env VEIL_NODE_NETNS)")
	f.StringVar(&cfg.PolicyFile, "policy", envOr("VEIL_POLICY", ""),
		"policy file of peer authentications and authorization policies; empty: every "+
			"port PERMISSIVE and every connection allowed (env VEIL_POLICY)")
	f.StringVar(&cfg.Cgroup, "cgroup", envOr("VEIL_CGROUP", ""),
		"cgroup v2 directory whose processes are intercepted (env VEIL_CGROUP)")
	f.StringVar(&cfg.PinDir, "bpffs", envOr("VEIL_BPFFS", "/sys/fs/bpf/veil"),
		"directory in bpffs for this agent's pinned links (env VEIL_BPFFS)")
	f.StringVar(&cfg.AdminSocket, "admin-socket",
		envOr("VEIL_ADMIN_SOCKET", "/run/veil/agent.sock"),
		"Unix socket of the admin API (env VEIL_ADMIN_SOCKET)")
	f.StringVar(&cfg.AdminGroup, "admin-group", envOr("VEIL_ADMIN_GROUP", ""),
		"group whose members may read the admin API but not change anything: a name, or a "+
			"numeric gid (in a container, names come from the image's /etc/group); the "+
			"socket is then 0660 root:<group>, and a directory that exists already must "+
			"let the group through; empty: root only (env VEIL_ADMIN_GROUP)")
	f.StringVar(&cfg.CAAddr, "ca-addr", envOr("VEIL_CA_ADDR", ""),
		"address of veil-ca, host:port (env VEIL_CA_ADDR)")
	f.StringVar(&cfg.CARoot, "ca-root", envOr("VEIL_CA_ROOT", ""),
		"PEM file of the CA root that veil-ca's serving certificate chains to "+
			"(env VEIL_CA_ROOT)")
	f.StringVar(&cfg.NodeTokenFile, "node-token-file", envOr("VEIL_NODE_TOKEN_FILE", ""),
		"file holding this node's token for the CA (env VEIL_NODE_TOKEN_FILE)")
	f.StringSliceVar(&exclude, "exclude", envList("VEIL_EXCLUDE"),
		"destination CIDRs never intercepted (repeatable; env VEIL_EXCLUDE, comma-separated)")
	f.DurationVar(&cfg.DrainTimeout, "drain-timeout", drainTimeout,
		"after handing over to a newer agent, how long open connections may run before "+
			"they are reset (env VEIL_DRAIN_TIMEOUT)")
	f.DurationVar(&cfg.ReloadEvery, "reload-every", reloadEvery,
		"how often the workload file is checked for changes (env VEIL_RELOAD_EVERY)")
	f.StringVar(&cfg.MetricsAddr, "metrics-addr",
		envOr("VEIL_METRICS_ADDR", agent.DefaultMetricsAddr),
		"where /metrics, /healthz and /readyz are served; empty turns them off "+
			"(env VEIL_METRICS_ADDR)")
	f.BoolVar(&cfg.AccessLog, "access-log", envOr("VEIL_ACCESS_LOG", "") == "true",
		"log one info line per closed connection (env VEIL_ACCESS_LOG=true)")
	f.BoolVar(&cfg.SameNodeDirect, "same-node-direct",
		envOr("VEIL_SAME_NODE_DIRECT", "") == "true",
		"carry connections between two pods of this node without HBONE: identities and "+
			"policy are checked as over HBONE, but the bytes are not encrypted and the "+
			"network plugin's NetworkPolicy does not see them (env VEIL_SAME_NODE_DIRECT=true)")
	f.StringVar(&logLevel, "log-level", envOr("VEIL_LOG_LEVEL", "info"),
		"trace, debug, info, warn or error; agentctl log-level changes it at run time "+
			"(env VEIL_LOG_LEVEL)")
	f.StringVar(&logFormat, "log-format", envOr("VEIL_LOG_FORMAT", ""),
		"json or console; default console on a terminal, json otherwise "+
			"(env VEIL_LOG_FORMAT)")
	return cmd
}

func newLogger(level, format string) (zerolog.Logger, error) {
	lvl, err := zerolog.ParseLevel(level)
	if err != nil {
		return zerolog.Logger{}, fmt.Errorf("--log-level %q: "+
			"want trace, debug, info, warn or error", level)
	}
	if format == "" {
		format = "json"
		if st, err := os.Stderr.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			format = "console"
		}
	}
	var log zerolog.Logger
	switch format {
	case "json":
		log = zerolog.New(os.Stderr)
	case "console":
		log = zerolog.New(zerolog.ConsoleWriter{Out: os.Stderr, TimeFormat: time.TimeOnly})
	default:
		return zerolog.Logger{}, fmt.Errorf("--log-format %q: want json or console", format)
	}
	return log.Level(lvl).With().Timestamp().Logger(), nil
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// envList is envOr for a list: the variable's value split at commas, or nil when it is
// unset or empty.
func envList(name string) []string {
	v := envOr(name, "")
	if v == "" {
		return nil
	}
	return strings.Split(v, ",")
}

// envDuration is envOr for a duration. A malformed value is returned as an error, so that
// the agent fails with it instead of silently using the default.
func envDuration(name string, def time.Duration) (time.Duration, error) {
	v := envOr(name, "")
	if v == "" {
		return def, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return def, fmt.Errorf("%s=%q: %w; use a duration such as 2s or 1m", name, v, err)
	}
	return d, nil
}
