// Command veil-agent is veil's node agent. It is wiring only: flags into agent.Config,
// a logger, and signal handling; package agent does the work.
package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"github.com/spf13/cobra"

	"github.com/veil-mesh/veil/agent"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
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
	cmd := &cobra.Command{
		Use:           "veil-agent",
		Short:         "Intercept enrolled pods' TCP with eBPF and carry it over mTLS",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(logLevel, logFormat)
			if err != nil {
				return err
			}
			for _, e := range exclude {
				p, err := netip.ParsePrefix(e)
				if err != nil {
					return fmt.Errorf("--exclude %q: want a CIDR such as 10.0.0.0/8: %w", e, err)
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
	f.StringVar(&cfg.Node, "node", envOr("VEIL_NODE", ""), "name of this node, as the workload file names it (env VEIL_NODE)")
	f.StringVar(&cfg.WorkloadFile, "workloads", "/etc/veil/workloads.yaml", "workload file")
	f.StringVar(&cfg.Cgroup, "cgroup", "", "cgroup v2 directory whose processes are intercepted")
	f.StringVar(&cfg.PinDir, "bpffs", "/sys/fs/bpf/veil", "directory in bpffs for this agent's pinned links")
	f.StringVar(&cfg.AdminSocket, "admin-socket", envOr("VEIL_ADMIN_SOCKET", "/run/veil/agent.sock"), "Unix socket of the admin API (env VEIL_ADMIN_SOCKET)")
	f.StringVar(&cfg.CAAddr, "ca-addr", "", "address of veil-ca, host:port")
	f.StringVar(&cfg.CARoot, "ca-root", "", "PEM file of the CA root that veil-ca's serving certificate chains to")
	f.StringVar(&cfg.NodeTokenFile, "node-token-file", "", "file holding this node's token for the CA")
	f.StringSliceVar(&exclude, "exclude", nil, "destination CIDRs never intercepted (repeatable)")
	f.DurationVar(&cfg.ReloadEvery, "reload-every", 2*time.Second, "how often the workload file is checked for changes")
	f.StringVar(&cfg.MetricsAddr, "metrics-addr", envOr("VEIL_METRICS_ADDR", agent.DefaultMetricsAddr),
		"where /metrics, /healthz and /readyz are served; empty turns them off (env VEIL_METRICS_ADDR)")
	f.BoolVar(&cfg.AccessLog, "access-log", envOr("VEIL_ACCESS_LOG", "") == "true",
		"log one info line per closed connection (env VEIL_ACCESS_LOG=true)")
	f.StringVar(&logLevel, "log-level", envOr("VEIL_LOG_LEVEL", "info"), "trace, debug, info, warn or error; agentctl log-level changes it at run time (env VEIL_LOG_LEVEL)")
	f.StringVar(&logFormat, "log-format", envOr("VEIL_LOG_FORMAT", ""), "json or console; default console on a terminal, json otherwise (env VEIL_LOG_FORMAT)")
	return cmd
}

func newLogger(level, format string) (zerolog.Logger, error) {
	lvl, err := zerolog.ParseLevel(level)
	if err != nil {
		return zerolog.Logger{}, fmt.Errorf("--log-level %q: want trace, debug, info, warn or error", level)
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
