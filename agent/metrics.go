package agent

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/rs/zerolog"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/veil-mesh/veil/tlsengine"
)

// Metric and label names. The TCP ones are Istio's standard metrics under veil's prefix
// (istio_tcp_sent_bytes_total is veil_tcp_sent_bytes_total, with the same meaning and
// labels), so Istio dashboards carry over by renaming; the README has the mapping.
//
// Labels never hold a port, an address or anything per connection: their values are
// bounded by the identities of the trust domain and the workloads of this node.
const (
	metricsNamespace = "veil"

	labelReporter       = "reporter"
	labelDirection      = "direction"
	labelSrcPrincipal   = "source_principal"
	labelDstPrincipal   = "destination_principal"
	labelSecurityPolicy = "connection_security_policy"
	labelSide           = "side"
	labelResult         = "result"
	labelIdentity       = "identity"
	labelMap            = "map"
	labelVersion        = "version"
	labelState          = "state"
	labelReason         = "reason"
	labelVerdict        = "verdict"

	// Values of the reason label of denials: which part of policy refused.
	labelPeerAuthentication = "peer_authentication"
	labelAuthorization      = "authorization"

	// Values as Istio spells them.
	reporterSource      = "source"
	reporterDestination = "destination"
	policyMutualTLS     = "mutual_tls"
	policyNone          = "none"
	principalUnknown    = "unknown"
)

var connLabels = []string{
	labelReporter, labelDirection, labelSrcPrincipal, labelDstPrincipal, labelSecurityPolicy,
}

// metrics holds the agent's Prometheus registry and the metrics it updates itself; what
// can be read from the agent's state at scrape time is collected then (see stateCollector).
// It is the engine's tlsengine.Observer, which is also where the access log is written.
type metrics struct {
	reg *prometheus.Registry

	opened, closed  *prometheus.CounterVec
	failed          *prometheus.CounterVec
	sent, received  *prometheus.CounterVec
	handshake       *prometheus.HistogramVec
	enrollments     *prometheus.CounterVec
	enrollDurations *prometheus.HistogramVec
	denials         *prometheus.CounterVec
	guardVerdicts   *prometheus.CounterVec

	// accessLog, if not nil, gets one line per closed connection.
	accessLog *zerolog.Logger
}

func newMetrics(version string) *metrics {
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metricsNamespace, Name: name, Help: help,
		}, labels)
	}
	m := &metrics{
		reg: prometheus.NewRegistry(),
		opened: counter("tcp_connections_opened_total",
			"TCP connections that started relaying.", connLabels...),
		closed: counter("tcp_connections_closed_total",
			"TCP connections that ended after relaying.", connLabels...),
		failed: counter("tcp_connections_failed_total",
			"TCP connections that never started relaying: no original destination, "+
				"a failed dial or handshake, a refused CONNECT.",
			labelReporter, labelDirection),
		sent: counter("tcp_sent_bytes_total",
			"Bytes sent in the response direction, destination to source (as Istio counts).",
			connLabels...),
		received: counter("tcp_received_bytes_total",
			"Bytes received in the request direction, source to destination (as Istio counts).",
			connLabels...),
		handshake: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: metricsNamespace, Name: "tls_handshake_duration_seconds",
			Help: "Duration of successful mTLS handshakes, until the peer's certificate " +
				"was verified; side is client (to a peer) or server (from a peer).",
			// 0.5 ms (loopback) to about 4 s (a peer under heavy load).
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}, []string{labelSide}),
		enrollments: counter("workload_enrollments_total",
			"Attempts to enroll a workload, by result (success or failure).", labelResult),
		enrollDurations: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: metricsNamespace, Name: "workload_enrollment_duration_seconds",
			Help: "Time to enroll a workload: netns, certificate from the CA, listeners, " +
				"BPF maps; by result.",
			// 10 ms to about 40 s: the CA call dominates and is bounded at 15 s.
			Buckets: prometheus.ExponentialBuckets(0.01, 2, 13),
		}, []string{labelResult}),
	}
	m.denials = counter("policy_denials_total",
		"Inbound connections refused by policy before reaching the app, by the "+
			"workload's identity and the reason: peer_authentication (plaintext to a "+
			"STRICT port) or authorization (an AuthorizationPolicy).",
		labelIdentity, labelReason)
	m.guardVerdicts = counter("egress_guard_verdicts_total",
		"New outbound flows that left a pod without going through the agent, by the "+
			"pod's identity and the verdict: dropped (the pod is STRICT) or accepted.",
		labelIdentity, labelVerdict)
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: metricsNamespace, Name: "build_info",
		Help: "Always 1; the agent's version is in the label.",
	}, []string{labelVersion})
	build.WithLabelValues(version).Set(1)

	m.reg.MustRegister(m.opened, m.closed, m.failed, m.sent, m.received, m.handshake,
		m.enrollments, m.enrollDurations, m.denials, m.guardVerdicts, build,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// reporterOf is Istio's reporter label: which end of the connection this agent is.
func reporterOf(d tlsengine.Direction) string {
	if d == tlsengine.Inbound || d == tlsengine.InboundPlaintext {
		return reporterDestination
	}
	return reporterSource
}

func principal(id string) string {
	if id == "" {
		return principalUnknown
	}
	return id
}

// connLabelValues returns the values of connLabels for a connection.
func connLabelValues(ci tlsengine.ConnInfo) []string {
	policy := policyNone
	if !ci.Peer.IsZero() {
		policy = policyMutualTLS
	}
	var peer string
	if !ci.Peer.IsZero() {
		peer = ci.Peer.String()
	}
	src, dst := ci.Workload.String(), peer
	if reporterOf(ci.Direction) == reporterDestination {
		src, dst = peer, ci.Workload.String()
	}
	return []string{reporterOf(ci.Direction), ci.Direction.String(), principal(src),
		principal(dst), policy}
}

// Opened implements tlsengine.Observer.
func (m *metrics) Opened(ci tlsengine.ConnInfo) tlsengine.ConnObserver {
	lv := connLabelValues(ci)
	m.opened.WithLabelValues(lv...).Inc()
	c := &connMetrics{m: m, closed: m.closed.WithLabelValues(lv...)}
	// The engine counts bytes from the workload's side; Istio counts the request
	// direction (source to destination) as received and the response as sent. The
	// workload is the source of an outbound connection and the destination of an inbound
	// one.
	request, response := m.received.WithLabelValues(lv...), m.sent.WithLabelValues(lv...)
	if reporterOf(ci.Direction) == reporterSource {
		c.workloadSent, c.workloadReceived = request, response
	} else {
		c.workloadSent, c.workloadReceived = response, request
	}
	return c
}

// Failed implements tlsengine.Observer.
func (m *metrics) Failed(d tlsengine.Direction) {
	m.failed.WithLabelValues(reporterOf(d), d.String()).Inc()
}

// Handshake implements tlsengine.Observer.
func (m *metrics) Handshake(side tlsengine.HandshakeSide, d time.Duration) {
	m.handshake.WithLabelValues(side.String()).Observe(d.Seconds())
}

func (m *metrics) enrolled(ok bool, took time.Duration) {
	result := "success"
	if !ok {
		result = "failure"
	}
	m.enrollments.WithLabelValues(result).Inc()
	m.enrollDurations.WithLabelValues(result).Observe(took.Seconds())
}

// connMetrics is one connection's counters, resolved once when it opens so that moving
// bytes costs an atomic add and no label lookup.
type connMetrics struct {
	m                              *metrics
	closed                         prometheus.Counter
	workloadSent, workloadReceived prometheus.Counter
}

func (c *connMetrics) Sent(n int)     { c.workloadSent.Add(float64(n)) }
func (c *connMetrics) Received(n int) { c.workloadReceived.Add(float64(n)) }

func (c *connMetrics) Closed(ci tlsengine.ConnInfo, outcome string) {
	c.closed.Inc()
	if c.m.accessLog != nil {
		writeAccessLog(c.m.accessLog, ci, outcome)
	}
}

func (m *metrics) denied(id spiffeid.ID, reason string) {
	m.denials.WithLabelValues(id.String(), reason).Inc()
}

func (m *metrics) guarded(id spiffeid.ID, verdict string) {
	m.guardVerdicts.WithLabelValues(id.String(), verdict).Inc()
}
