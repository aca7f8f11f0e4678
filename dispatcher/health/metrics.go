package health

import (
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	endpoints    *endpointGauges
	statusWrites *prometheus.CounterVec
	flushErrors  prometheus.Counter
	casConflicts prometheus.Counter
	writer       prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	labels := []string{"namespace", "endpoint"}
	m := &metrics{
		endpoints: &endpointGauges{
			pending: prometheus.NewDesc("herald_endpoint_pending",
				"Deliveries queued for a WebhookEndpoint and not yet acknowledged (waiting, in flight or backing off). Exported by the status-writing replica only.",
				labels, nil),
			deadLettered: prometheus.NewDesc("herald_endpoint_dead_lettered",
				"Dead-lettered deliveries kept for a WebhookEndpoint. Exported by the status-writing replica only.",
				labels, nil),
			oldestAge: prometheus.NewDesc("herald_endpoint_oldest_pending_age_seconds",
				"Age of the oldest delivery queued for a WebhookEndpoint (0 when none is queued), as of the last queue-count pass. Exported by the status-writing replica only.",
				labels, nil),
			values: make(map[objectKey]*endpointValues),
		},
		statusWrites: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_health_status_writes_total",
			Help: "Status writes of the health reporter, by kind (ep, sub) and result.",
		}, []string{"kind", "result"}),
		flushErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "herald_health_flush_errors_total",
			Help: "Objects whose local health deltas could not be merged into the shared bucket (kept and retried).",
		}),
		casConflicts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "herald_health_cas_retries_total",
			Help: "Compare-and-swap retries while merging health deltas (concurrent writers or a stale cache).",
		}),
		writer: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "herald_health_status_writer",
			Help: "1 while this replica holds the status-writer lease.",
		}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.endpoints, m.statusWrites, m.flushErrors, m.casConflicts, m.writer} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register health metrics (one Reporter per registry): %w", err)
		}
	}
	return m, nil
}

func (m *metrics) setEndpoint(k objectKey, st queueStats) {
	m.endpoints.update(k, func(v *endpointValues) {
		v.pending, v.deadLettered = float64(st.Pending), float64(st.DeadLettered)
	})
}

func (m *metrics) forgetEndpoint(k objectKey) {
	if k.kind != kindEndpoint {
		return
	}
	m.endpoints.mu.Lock()
	defer m.endpoints.mu.Unlock()
	delete(m.endpoints.values, k)
}

// setOldestPending sets the queue age of an endpoint: how long its oldest
// queued delivery has waited at now, or 0 when none is queued.
func (m *metrics) setOldestPending(k objectKey, oldest, now time.Time) {
	age := 0.0
	if !oldest.IsZero() {
		age = max(now.Sub(oldest).Seconds(), 0)
	}
	m.endpoints.update(k, func(v *endpointValues) { v.oldestAge, v.hasAge = age, true })
}

// endpointGauges exports the per-endpoint queue gauges
// (herald_endpoint_pending, herald_endpoint_dead_lettered,
// herald_endpoint_oldest_pending_age_seconds) from one map when scraped,
// as const metrics. Three GaugeVecs kept a series object with its label
// pairs per endpoint and gauge for the dispatcher's lifetime: about 1.3
// KiB per endpoint, idle or not (docs/benchmarks); this is one small
// entry.
type endpointGauges struct {
	pending, deadLettered, oldestAge *prometheus.Desc

	mu     sync.Mutex
	values map[objectKey]*endpointValues
}

// endpointValues are one endpoint's gauges; the age is exported once set.
type endpointValues struct {
	pending, deadLettered, oldestAge float64
	hasAge                           bool
}

func (g *endpointGauges) update(k objectKey, set func(*endpointValues)) {
	g.mu.Lock()
	defer g.mu.Unlock()
	v := g.values[k]
	if v == nil {
		v = &endpointValues{}
		g.values[k] = v
	}
	set(v)
}

// Describe implements prometheus.Collector.
func (g *endpointGauges) Describe(ch chan<- *prometheus.Desc) {
	ch <- g.pending
	ch <- g.deadLettered
	ch <- g.oldestAge
}

// Collect implements prometheus.Collector.
func (g *endpointGauges) Collect(ch chan<- prometheus.Metric) {
	g.mu.Lock()
	out := make([]prometheus.Metric, 0, 3*len(g.values))
	for k, v := range g.values {
		out = append(out,
			prometheus.MustNewConstMetric(g.pending, prometheus.GaugeValue, v.pending, k.namespace, k.name),
			prometheus.MustNewConstMetric(g.deadLettered, prometheus.GaugeValue, v.deadLettered, k.namespace, k.name))
		if v.hasAge {
			out = append(out, prometheus.MustNewConstMetric(g.oldestAge, prometheus.GaugeValue, v.oldestAge, k.namespace, k.name))
		}
	}
	g.mu.Unlock()
	for _, m := range out {
		ch <- m
	}
}
