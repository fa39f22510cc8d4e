package main

import (
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

const defaultSocket = "/run/veil/agent.sock"

type options struct {
	socket string
	output string
}

func newRootCmd() *cobra.Command {
	o := &options{}
	cmd := &cobra.Command{
		Use:           "agentctl",
		Short:         "Inspect the veil agent of this node",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	def := defaultSocket
	if v := os.Getenv("VEIL_ADMIN_SOCKET"); v != "" {
		def = v
	}
	cmd.PersistentFlags().StringVar(&o.socket, "socket", def, "admin socket of the agent (env VEIL_ADMIN_SOCKET)")
	cmd.PersistentFlags().StringVarP(&o.output, "output", "o", "table", "output format: table or json")
	cmd.AddCommand(newStatusCmd(o), newConnectionsCmd(o))
	return cmd
}

// get fetches path from the agent's admin API into v. An agent that is not running is one
// line that says so, not a stack of dial errors.
func (o *options) get(ctx context.Context, path string, v any) error {
	client := &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", o.socket)
		}},
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://agent"+path, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("no veil agent is running at %s (start veil-agent, or point --socket or VEIL_ADMIN_SOCKET at its admin socket)", o.socket)
		}
		if errors.Is(err, os.ErrPermission) {
			return fmt.Errorf("not allowed to open %s: the admin socket is root's only", o.socket)
		}
		return fmt.Errorf("asking the agent at %s: %w", o.socket, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("agent answered %s: %s", resp.Status, b)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

func (o *options) checkOutput() error {
	switch o.output {
	case "table", "json":
		return nil
	}
	return fmt.Errorf("--output %q: want table or json", o.output)
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
