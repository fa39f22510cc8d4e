package e2e

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// metricsPort is where the cluster's agents serve metrics and health inside their node's
// namespace: veil-agent's default.
const metricsPort = "15020"

// After 1 MiB from client to server and a 65-byte answer, both agents' Istio-style
// counters moved by what was carried, each from its own side (reporter), with the two
// principals and mutual_tls. The engine counts application bytes, so the slack allowed
// for protocol overhead should go unused.
func TestMetricsCountKnownTraffic(t *testing.T) {
	c := getCluster(t)
	server := c.ip(t, "server")
	const size = 1 << 20
	const reply = 65 // the sink's answer: a hex SHA-256 and a newline
	const slack = 4096

	labels := map[string]map[string]string{
		"node1": {"reporter": "source", "direction": "outbound"},
		"node2": {"reporter": "destination", "direction": "inbound"},
	}
	for _, l := range labels {
		l["source_principal"] = clientIdentity
		l["destination_principal"] = serverIdentity
		l["connection_security_policy"] = "mutual_tls"
	}
	before := map[string]metricSet{"node1": c.scrape(t, "node1"), "node2": c.scrape(t, "node2")}

	c.server(t, "server", "sink", server+":7701")
	out := c.run(t, "client", "send", server+":7701", fmt.Sprint(size), "7")
	if want := streamHash(size, 7); out != "sent="+want+" reply="+want {
		t.Fatalf("transfer: %q, want both hashes %s", out, want)
	}

	for _, node := range []string{"node1", "node2"} {
		l := labels[node]
		var after metricSet
		deadline := time.Now().Add(10 * time.Second)
		for {
			after = c.scrape(t, node)
			if after.delta(before[node], "veil_tcp_connections_closed_total", l) >= 1 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: no closed connection counted with %v", node, l)
			}
			time.Sleep(200 * time.Millisecond)
		}
		for _, m := range []struct {
			name     string
			min, max float64
		}{
			{"veil_tcp_connections_opened_total", 1, 1},
			{"veil_tcp_connections_closed_total", 1, 1},
			{"veil_tcp_received_bytes_total", size, size + slack}, // request: client to server
			{"veil_tcp_sent_bytes_total", reply, reply + slack},   // response: server to client
		} {
			if d := after.delta(before[node], m.name, l); d < m.min || d > m.max {
				t.Errorf("%s: %s moved by %v, want %v to %v", node, m.name, d, m.min, m.max)
			}
		}
		// Tunnels share pooled connections, so this transfer may have needed no
		// handshake of its own; the one that made its connection was timed.
		side := map[string]string{"node1": "client", "node2": "server"}[node]
		if n := after.sum("veil_tls_handshake_duration_seconds_count",
			map[string]string{"side": side}); n < 1 {
			t.Errorf("%s: no %s handshake timed", node, side)
		}
		if after.sum("veil_cert_expiry_timestamp_seconds", nil) < float64(time.Now().Unix()) {
			t.Errorf("%s: no certificate expiry in the future reported", node)
		}
		pods := map[string]int{"node1": len(node1Pods), "node2": 2}[node]
		if n := after.sum("veil_bpf_map_entries", map[string]string{"map": "enrolled"}); n != float64(pods) {
			t.Errorf("%s: enrolled map has %v entries, want %d (one per pod)", node, n, pods)
		}
		if n := after.sum("veil_workload_enrollments_total", map[string]string{"result": "success"}); n < 2 {
			t.Errorf("%s: %v successful enrollments counted, want at least 2", node, n)
		}
	}
}

// Kubernetes' probes find a running agent alive and ready.
func TestHealthEndpoints(t *testing.T) {
	c := getCluster(t)
	for _, node := range []string{"node1", "node2"} {
		for _, path := range []string{"/healthz", "/readyz"} {
			out, err := c.script("exec", node, "--", "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
				"http://127.0.0.1:"+metricsPort+path).Output()
			if err != nil || string(out) != "200" {
				t.Errorf("%s %s: %q %v, want 200", node, path, out, err)
			}
		}
	}
}

// metricSet is one scrape: every sample as its name and sorted label pairs.
type metricSet map[string]float64

var sampleLine = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$`)
var labelPair = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"`)

// scrape reads a node agent's /metrics from inside the node's namespace.
func (c *cluster) scrape(t *testing.T, node string) metricSet {
	t.Helper()
	out, err := c.script("exec", node, "--", "curl", "-sf",
		"http://127.0.0.1:"+metricsPort+"/metrics").Output()
	if err != nil {
		t.Fatalf("scraping %s: %v", node, err)
	}
	m := metricSet{}
	for _, line := range strings.Split(string(out), "\n") {
		s := sampleLine.FindStringSubmatch(line)
		if s == nil {
			continue
		}
		v, err := strconv.ParseFloat(s[4], 64)
		if err != nil {
			continue
		}
		m[s[1]+"{"+s[3]+"}"] = v
	}
	return m
}

// sum adds the samples of name whose labels include want.
func (m metricSet) sum(name string, want map[string]string) float64 {
	var total float64
	for k, v := range m {
		n, labels, _ := strings.Cut(k, "{")
		if n != name {
			continue
		}
		have := map[string]string{}
		for _, p := range labelPair.FindAllStringSubmatch(strings.TrimSuffix(labels, "}"), -1) {
			have[p[1]] = p[2]
		}
		match := true
		for k, v := range want {
			if have[k] != v {
				match = false
			}
		}
		if match {
			total += v
		}
	}
	return total
}

func (m metricSet) delta(before metricSet, name string, want map[string]string) float64 {
	return m.sum(name, want) - before.sum(name, want)
}
