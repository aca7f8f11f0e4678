package health

import (
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	pending      *prometheus.GaugeVec
	deadLettered *prometheus.GaugeVec
	oldestAge    *prometheus.GaugeVec
	statusWrites *prometheus.CounterVec
	flushErrors  prometheus.Counter
	casConflicts prometheus.Counter
	writer       prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		pending: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "herald_endpoint_pending",
			Help: "Deliveries queued for a WebhookEndpoint and not yet acknowledged (waiting, in flight or backing off). Exported by the status-writing replica only.",
		}, []string{"namespace", "endpoint"}),
		deadLettered: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "herald_endpoint_dead_lettered",
			Help: "Dead-lettered deliveries kept for a WebhookEndpoint. Exported by the status-writing replica only.",
		}, []string{"namespace", "endpoint"}),
		oldestAge: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "herald_endpoint_oldest_pending_age_seconds",
			Help: "Age of the oldest delivery queued for a WebhookEndpoint (0 when none is queued), as of the last queue-count pass. Exported by the status-writing replica only.",
		}, []string{"namespace", "endpoint"}),
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
	for _, c := range []prometheus.Collector{m.pending, m.deadLettered, m.oldestAge, m.statusWrites, m.flushErrors, m.casConflicts, m.writer} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register health metrics (one Reporter per registry): %w", err)
		}
	}
	return m, nil
}

func (m *metrics) setEndpoint(k objectKey, st queueStats) {
	m.pending.WithLabelValues(k.namespace, k.name).Set(float64(st.Pending))
	m.deadLettered.WithLabelValues(k.namespace, k.name).Set(float64(st.DeadLettered))
}

func (m *metrics) forgetEndpoint(k objectKey) {
	if k.kind != kindEndpoint {
		return
	}
	m.pending.DeleteLabelValues(k.namespace, k.name)
	m.deadLettered.DeleteLabelValues(k.namespace, k.name)
	m.oldestAge.DeleteLabelValues(k.namespace, k.name)
}

// setOldestPending sets the queue age of an endpoint: how long its oldest
// queued delivery has waited at now, or 0 when none is queued.
func (m *metrics) setOldestPending(k objectKey, oldest, now time.Time) {
	age := 0.0
	if !oldest.IsZero() {
		age = max(now.Sub(oldest).Seconds(), 0)
	}
	m.oldestAge.WithLabelValues(k.namespace, k.name).Set(age)
}
