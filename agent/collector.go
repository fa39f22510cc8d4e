package agent

import (
	"github.com/prometheus/client_golang/prometheus"
)

// stateCollector reads, at each scrape, what the agent knows anyway: certificates,
// workloads and how full the BPF maps are. Reading at scrape time keeps these gauges
// exact without the agent having to remember to update them.
type stateCollector struct {
	a                    *Agent
	certExpiry           *prometheus.Desc
	workloads            *prometheus.Desc
	mapEntries, mapLimit *prometheus.Desc
}

func newStateCollector(a *Agent) *stateCollector {
	name := func(n string) string { return prometheus.BuildFQName(metricsNamespace, "", n) }
	return &stateCollector{
		a: a,
		certExpiry: prometheus.NewDesc(name("cert_expiry_timestamp_seconds"),
			"When the certificate held for an identity expires, in Unix seconds.",
			[]string{labelIdentity}, nil),
		workloads: prometheus.NewDesc(name("workloads"),
			"Workloads of this node by state: enrolled, or failed (left out and retried).",
			[]string{labelState}, nil),
		mapEntries: prometheus.NewDesc(name("bpf_map_entries"),
			"Entries in a BPF map of the redirector.", []string{labelMap}, nil),
		mapLimit: prometheus.NewDesc(name("bpf_map_max_entries"),
			"Capacity of a BPF map of the redirector.", []string{labelMap}, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.certExpiry
	ch <- c.workloads
	ch <- c.mapEntries
	ch <- c.mapLimit
}

// Collect implements prometheus.Collector.
func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	if ids := c.a.identities(); ids != nil {
		for _, id := range ids.Status() {
			ch <- prometheus.MustNewConstMetric(c.certExpiry, prometheus.GaugeValue,
				float64(id.NotAfter.Unix()), id.ID)
		}
	}

	var enrolled, failed int
	c.a.mu.Lock()
	for _, w := range c.a.workloads {
		if w.isEnrolled() {
			enrolled++
		} else {
			failed++
		}
	}
	c.a.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(c.workloads, prometheus.GaugeValue,
		float64(enrolled), "enrolled")
	ch <- prometheus.MustNewConstMetric(c.workloads, prometheus.GaugeValue,
		float64(failed), "failed")

	red := c.a.redirector()
	if red == nil {
		return
	}
	usage, err := red.MapUsage()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.mapEntries, err)
	}
	for _, u := range usage {
		ch <- prometheus.MustNewConstMetric(c.mapEntries, prometheus.GaugeValue,
			float64(u.Entries), u.Name)
		ch <- prometheus.MustNewConstMetric(c.mapLimit, prometheus.GaugeValue,
			float64(u.MaxEntries), u.Name)
	}
}
