package cni

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"time"
)

// agentTimeout bounds one request to the agent. The agent itself gives up on a pod it
// cannot enroll sooner (30 s), and says why.
const agentTimeout = 45 * time.Second

// Post sends req to path on the agent's admin socket and returns its answer, or an error
// that says what the operator can do.
func Post(socket, path string, req Request) (*Response, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	client := &http.Client{Timeout: agentTimeout, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}}
	resp, err := client.Post("http://veil-agent"+path, "application/json", bytes.NewReader(body))
	if err != nil {
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("no veil agent answers at %s; the pod waits until the "+
				"node's agent runs (kubectl -n veil-system get pods "+
				"-l app.kubernetes.io/name=veil-agent)", socket)
		}
		return nil, fmt.Errorf("asking the veil agent at %s: %w", socket, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return nil, fmt.Errorf("reading the veil agent's answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("the veil agent answered %s: %s", resp.Status,
			strings.TrimSpace(string(data)))
	}
	var out Response
	if err := json.Unmarshal(data, &out); err != nil {
		return nil, fmt.Errorf("the veil agent's answer: %w", err)
	}
	return &out, nil
}
