package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"syscall"
	"time"

	"github.com/spf13/cobra"
)

const (
	defaultSocket = "/run/veil/agent.sock"
	socketEnv     = "VEIL_ADMIN_SOCKET"
)

type options struct {
	socket string
	output string
}

func newRootCmd() *cobra.Command {
	o := &options{}
	cmd := &cobra.Command{
		Use:           "agentctl",
		Short:         "Inspect and steer the veil agent of this node",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(*cobra.Command, []string) error {
			return o.checkOutput()
		},
	}
	def := defaultSocket
	if v := os.Getenv(socketEnv); v != "" {
		def = v
	}
	pf := cmd.PersistentFlags()
	pf.StringVar(&o.socket, "socket", def, "admin socket of the agent (env "+socketEnv+")")
	pf.StringVarP(&o.output, "output", "o", "table", "output format: table, json or yaml")
	_ = cmd.RegisterFlagCompletionFunc("output", cobra.FixedCompletions(outputFormats,
		cobra.ShellCompDirectiveNoFileComp))
	cmd.AddCommand(newStatusCmd(o), newWorkloadsCmd(o), newCertsCmd(o),
		newConnectionsCmd(o), newLogLevelCmd(o), newPolicyCmd(o))
	return cmd
}

// get fetches path from the agent's admin API into v.
func (o *options) get(ctx context.Context, path string, v any) error {
	return o.do(ctx, http.MethodGet, path, nil, v)
}

// put sends body as JSON to path and decodes the answer into v.
func (o *options) put(ctx context.Context, path string, body, v any) error {
	return o.do(ctx, http.MethodPut, path, body, v)
}

// do makes one request to the admin API. An agent that is not running is one line that
// says so, not a stack of dial errors.
func (o *options) do(ctx context.Context, method, path string, body, v any) error {
	client := &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", o.socket)
		}},
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("encoding the request: %w", err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://agent"+path, rd)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return o.dialError(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("agent answered %s: %s", resp.Status, bytes.TrimSpace(b))
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

func (o *options) dialError(err error) error {
	switch {
	case errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("no veil agent is running at %s (start veil-agent, "+
			"or point --socket or %s at its admin socket)", o.socket, socketEnv)
	case errors.Is(err, os.ErrPermission):
		return fmt.Errorf("not allowed to open %s: run as root, or as a member of the "+
			"group the agent's --admin-group names", o.socket)
	}
	return fmt.Errorf("asking the agent at %s: %w", o.socket, err)
}
