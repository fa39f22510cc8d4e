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

	"github.com/veil-mesh/veil/ca"
)

// Log field names, defined once; package ca defines those of the lines it logs itself.
const (
	logListen  = "listen"
	logCertTTL = "certTTL"
)

type serveFlags struct {
	dir, listen, workloads, nodeTokens string
	plugin                             ca.PluginFiles
	certTTL, reload                    time.Duration
	logLevel, logFormat                string
	kube                               kubeFlags
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
			"and kept there; agents need --dir's " + ca.BundleFile + " (the roots to trust) " +
			"as --ca-root. `veil-ca root` rotates the roots while this runs.\n\n" +
			"With --signing-cert and --signing-key the CA signs with that intermediate " +
			"instead, and its root stays offline: issued certificates carry the chain, and " +
			"agents trust --trust-bundle, or the self-signed root at the end of " +
			"--signing-cert. Every file is re-read each --reload-interval; a change that " +
			"cannot be used is logged and the previous state kept.\n\n" +
			"With --kubernetes the CA runs against the Kubernetes API instead of the " +
			"workload and node tokens files: an agent authenticates with its pod's " +
			"projected service account token (audience --token-audience, service account " +
			"--agent-service-account), which the CA checks with TokenReview and takes the " +
			"agent's node from; it may obtain the identity of any service account with a " +
			"pod scheduled to that node. The roots are kept in the Secret " + ca.RootSecret +
			" of --namespace (--dir is the working copy, where root commands run), and the " +
			"bundle is published in the ConfigMap " + ca.BundleConfigMap + ".",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if envErr != nil {
				return envErr
			}
			if err := f.kube.check(cmd.Flags()); err != nil {
				return err
			}
			return serve(cmd.Context(), f)
		},
	}

	fs := cmd.Flags()
	stringFlag(fs, &f.dir, "dir", "VEIL_CA_DIR", "/var/lib/veil-ca",
		"directory for the roots and "+ca.BundleFile+" (created 0700)")
	stringFlag(fs, &f.plugin.CertPath, "signing-cert", "VEIL_CA_SIGNING_CERT", "",
		"plug-in mode: PEM chain, the intermediate to sign with first, then any "+
			"intermediates above it, optionally its root last")
	stringFlag(fs, &f.plugin.KeyPath, "signing-key", "VEIL_CA_SIGNING_KEY", "",
		"plug-in mode: the intermediate's private key (PEM, mode 0600)")
	stringFlag(fs, &f.plugin.BundlePath, "trust-bundle", "VEIL_CA_TRUST_BUNDLE", "",
		"plug-in mode: PEM root(s) agents trust (default: the self-signed root at the "+
			"end of --signing-cert)")
	stringFlag(fs, &f.listen, "listen", "VEIL_CA_LISTEN", ":15012", "address to serve on")
	stringFlag(fs, &f.workloads, "workloads", "VEIL_WORKLOADS", "/etc/veil/workloads.yaml",
		"workload file saying which workloads run on which node")
	stringFlag(fs, &f.nodeTokens, "node-tokens", "VEIL_CA_NODE_TOKENS", "/etc/veil/node-tokens",
		`node tokens file, one "<node> <token>" per line`)
	envErr = errors.Join(
		durationFlag(fs, &f.certTTL, "cert-ttl", "VEIL_CA_CERT_TTL", ca.DefaultCertTTL,
			"lifetime of issued certificates (at least 1s; short values are for tests)"),
		durationFlag(fs, &f.reload, "reload-interval", "VEIL_CA_RELOAD_INTERVAL",
			ca.DefaultReloadPeriod, "how often the workload file and the roots (or "+
				"signing files) are checked for changes"),
		f.kube.add(fs))
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

	cfg := ca.Config{
		Dir: f.dir, Plugin: f.plugin, WorkloadsPath: f.workloads, ReloadPeriod: f.reload,
		NodeTokensPath: f.nodeTokens, CertTTL: f.certTTL, Log: log,
	}
	var srv *ca.Server
	if f.kube.enabled {
		srv, err = newKubernetesServer(ctx, f.kube, cfg)
	} else {
		srv, err = ca.NewServer(cfg)
	}
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
