package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/veil-mesh/veil/ca"
)

// Log field names, defined once; package ca defines those of the lines it logs itself.
const (
	logListen  = "listen"
	logCertTTL = "certTTL"
)

type serveFlags struct {
	dir, listen, workloads, nodeTokens string
	certTTL, reload                    time.Duration
	logLevel, logFormat                string
}

func newServeCommand() *cobra.Command {
	var (
		f      serveFlags
		envErr error
	)
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Serve the signing API over TLS 1.3",
		Long: "Serve the signing API over TLS 1.3. On first start a root is created in --dir " +
			"and kept there; agents need its " + ca.RootCertFile + " as --ca-root.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if envErr != nil {
				return envErr
			}
			return serve(cmd.Context(), f)
		},
	}

	fs := cmd.Flags()
	stringFlag(fs, &f.dir, "dir", "VEIL_CA_DIR", "/var/lib/veil-ca",
		"directory for the root certificate and key (created 0700)")
	stringFlag(fs, &f.listen, "listen", "VEIL_CA_LISTEN", ":15012", "address to serve on")
	stringFlag(fs, &f.workloads, "workloads", "VEIL_WORKLOADS", "/etc/veil/workloads.yaml",
		"workload file saying which workloads run on which node")
	stringFlag(fs, &f.nodeTokens, "node-tokens", "VEIL_CA_NODE_TOKENS", "/etc/veil/node-tokens",
		`node tokens file, one "<node> <token>" per line`)
	envErr = errors.Join(
		durationFlag(fs, &f.certTTL, "cert-ttl", "VEIL_CA_CERT_TTL", ca.DefaultCertTTL,
			"lifetime of issued certificates (at least 1s; short values are for tests)"),
		durationFlag(fs, &f.reload, "reload-interval", "VEIL_CA_RELOAD_INTERVAL",
			ca.DefaultReloadPeriod, "how often the workload file is checked for changes"))
	stringFlag(fs, &f.logLevel, "log-level", "VEIL_LOG_LEVEL", "info",
		"debug, info, warn or error")
	stringFlag(fs, &f.logFormat, "log-format", "VEIL_LOG_FORMAT", "json", "json or console")
	return cmd
}

func serve(ctx context.Context, f serveFlags) error {
	log, err := newLogger(f.logLevel, f.logFormat)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()

	srv, err := ca.NewServer(ca.Config{
		Dir: f.dir, WorkloadsPath: f.workloads, ReloadPeriod: f.reload,
		NodeTokensPath: f.nodeTokens, CertTTL: f.certTTL, Log: log,
	})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", f.listen)
	if err != nil {
		return fmt.Errorf("listening on %s: %w; check --listen", f.listen, err)
	}
	log.Info().Str(logListen, ln.Addr().String()).Str(logCertTTL, f.certTTL.String()).
		Msg("veil-ca serving")
	return srv.Serve(ctx, ln)
}

func newLogger(level, format string) (zerolog.Logger, error) {
	lvl, err := zerolog.ParseLevel(level)
	if err != nil || level == "" {
		return zerolog.Logger{}, fmt.Errorf("--log-level %q: use debug, info, warn or error",
			level)
	}
	switch format {
	case "json":
		return zerolog.New(os.Stderr).Level(lvl).With().Timestamp().Logger(), nil
	case "console":
		w := zerolog.ConsoleWriter{Out: os.Stderr, TimeFormat: time.RFC3339}
		return zerolog.New(w).Level(lvl).With().Timestamp().Logger(), nil
	}
	return zerolog.Logger{}, fmt.Errorf("--log-format %q: use json or console", format)
}

// stringFlag defines a flag whose default comes from env when that is set; the help text
// names the variable.
func stringFlag(fs *pflag.FlagSet, p *string, name, env, def, usage string) {
	if v, ok := os.LookupEnv(env); ok {
		def = v
	}
	fs.StringVar(p, name, def, usage+" (env "+env+")")
}

// durationFlag is stringFlag for durations. A malformed environment value is returned
// so that the command fails with it instead of silently using the default.
func durationFlag(fs *pflag.FlagSet, p *time.Duration, name, env string, def time.Duration,
	usage string) error {
	if v, ok := os.LookupEnv(env); ok {
		d, err := time.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("%s=%q: %w; use a duration such as 24h or 30s", env, v, err)
		}
		def = d
	}
	fs.DurationVar(p, name, def, usage+" (env "+env+")")
	return nil
}
