package agent

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/veil-mesh/veil/tlsengine"
)

var (
	idClient = spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/client")
	idServer = spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/server")
)

func TestConnectionMetricsFollowIstio(t *testing.T) {
	m := newMetrics("test")
	var logs bytes.Buffer
	log := zerolog.New(&logs)
	m.accessLog = &log

	// The client's agent carries 1000 bytes up and 50 down to the server's agent.
	out := tlsengine.ConnInfo{
		Workload: idClient, Peer: idServer, Direction: tlsengine.Outbound,
		Local:  netip.MustParseAddrPort("10.244.1.11:40000"),
		Remote: netip.MustParseAddrPort("10.244.2.11:8080"), Start: time.Now(),
	}
	in := tlsengine.ConnInfo{
		Workload: idServer, Peer: idClient, Direction: tlsengine.Inbound,
		Local:  netip.MustParseAddrPort("10.244.2.11:8080"),
		Remote: netip.MustParseAddrPort("10.244.1.11:40001"), Start: time.Now(),
	}
	co, ci := m.Opened(out), m.Opened(in)
	co.Sent(1000)
	co.Received(50)
	ci.Received(1000)
	ci.Sent(50)
	out.BytesSent, out.BytesReceived = 1000, 50
	in.BytesSent, in.BytesReceived = 50, 1000
	co.Closed(out, "eof")
	ci.Closed(in, "eof")
	m.Failed(tlsengine.Passthrough)

	for _, reporter := range []string{"source", "destination"} {
		dir := map[string]string{"source": "outbound", "destination": "inbound"}[reporter]
		lv := []string{reporter, dir, idClient.String(), idServer.String(), "mutual_tls"}
		for name, want := range map[string]float64{
			"opened": 1, "closed": 1, "received (request)": 1000, "sent (response)": 50,
		} {
			c := map[string]float64{
				"opened":             testutil.ToFloat64(m.opened.WithLabelValues(lv...)),
				"closed":             testutil.ToFloat64(m.closed.WithLabelValues(lv...)),
				"received (request)": testutil.ToFloat64(m.received.WithLabelValues(lv...)),
				"sent (response)":    testutil.ToFloat64(m.sent.WithLabelValues(lv...)),
			}[name]
			if c != want {
				t.Errorf("reporter %s: %s = %v, want %v", reporter, name, c, want)
			}
		}
	}
	if n := testutil.ToFloat64(m.failed.WithLabelValues("source", "passthrough")); n != 1 {
		t.Errorf("failed passthrough = %v, want 1", n)
	}

	// Both ends log the connection the same way round: src is the client.
	lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("access log has %d lines, want 2:\n%s", len(lines), logs.String())
	}
	for _, l := range lines {
		var e map[string]any
		if err := json.Unmarshal([]byte(l), &e); err != nil {
			t.Fatal(err)
		}
		if e[fieldSrcIdentity] != idClient.String() || e[fieldDstIdentity] != idServer.String() ||
			e[fieldBytesSent] != 1000.0 || e[fieldBytesRecv] != 50.0 ||
			e[fieldDstAddr] != "10.244.2.11:8080" || e[fieldReason] != "eof" ||
			e["message"] != accessLogMessage || e["level"] != "info" {
			t.Errorf("access log line %s", l)
		}
	}
}

func TestPlaintextHasUnknownPeer(t *testing.T) {
	got := connLabelValues(tlsengine.ConnInfo{
		Workload: idServer, Direction: tlsengine.InboundPlaintext})
	want := []string{"destination", "inbound-plaintext", "unknown", idServer.String(), "none"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("labels = %v, want %v", got, want)
	}
}

func TestMetricsRegistryGathers(t *testing.T) {
	a := newAgent(Config{Version: "v-test"}, zerolog.Nop())
	a.metrics.enrolled(true, 20*time.Millisecond)
	mfs, err := a.metrics.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, mf := range mfs {
		names[mf.GetName()] = true
	}
	for _, n := range []string{"veil_build_info", "veil_workloads", "veil_workload_enrollments_total",
		"veil_workload_enrollment_duration_seconds", "go_goroutines"} {
		if !names[n] {
			t.Errorf("%s not gathered; have %v", n, names)
		}
	}
}
