package kubetest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"sync"
	"time"
)

// startEtcd runs a single-member etcd on loopback with its data in dir/etcd, plaintext:
// only kube-apiserver, on the same machine, talks to it.
func startEtcd(dir, bin, clientPort, peerPort string) (*process, string, error) {
	clientURL := "http://127.0.0.1:" + clientPort
	peerURL := "http://127.0.0.1:" + peerPort
	args := []string{
		"--name=kubetest",
		"--data-dir=" + filepath.Join(dir, "etcd"),
		"--listen-client-urls=" + clientURL,
		"--advertise-client-urls=" + clientURL,
		"--listen-peer-urls=" + peerURL,
		"--initial-advertise-peer-urls=" + peerURL,
		"--initial-cluster=kubetest=" + peerURL,
		"--log-level=warn",
	}
	// The data is thrown away with the test: syncing it to disk only costs time.
	if etcdHasNoFsync(bin) {
		args = append(args, "--unsafe-no-fsync")
	}
	p, err := startProcess(dir, "etcd", bin, args...)
	return p, clientURL, err
}

var noFsync sync.Map // etcd binary path -> bool

// etcdHasNoFsync reports whether this etcd knows --unsafe-no-fsync (3.5 and later), asking
// each binary once.
func etcdHasNoFsync(bin string) bool {
	if v, ok := noFsync.Load(bin); ok {
		return v.(bool)
	}
	out, _ := exec.Command(bin, "--help").CombinedOutput()
	has := bytes.Contains(out, []byte("--unsafe-no-fsync"))
	noFsync.Store(bin, has)
	return has
}

// waitEtcd polls etcd's /health until it reports healthy, the process exits or ctx ends.
func waitEtcd(ctx context.Context, p *process, clientURL string) error {
	client := &http.Client{Timeout: time.Second}
	healthy := func() bool {
		resp, err := client.Get(clientURL + "/health")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<10))
		return resp.StatusCode == http.StatusOK && bytes.Contains(body, []byte(`"health":"true"`))
	}
	return poll(ctx, p, "etcd", healthy)
}

// poll calls ready every 50 ms until it says yes. It fails as soon as p has exited, or
// when ctx ends, with the end of p's log either way.
func poll(ctx context.Context, p *process, what string, ready func() bool) error {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if ready() {
			return nil
		}
		if err := p.running(); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s to be ready: %w; end of its log:\n%s",
				what, ctx.Err(), p.logTail(30))
		case <-tick.C:
		}
	}
}
