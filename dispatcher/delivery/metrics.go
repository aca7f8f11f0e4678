package delivery

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/herald-dev/herald/dispatcher/queue"
)

// Values of the outcome label of herald_deliveries_total.
const (
	OutcomeSuccess = "success"
	OutcomeFailure = "failure"
	OutcomeGone    = "gone"
)

// metrics are the delivery stage's Prometheus metrics. Labels are bounded:
// the endpoint's namespace and name, and a fixed outcome set.
type metrics struct {
	deliveries   *prometheus.CounterVec
	duration     *prometheus.HistogramVec
	deadLettered *prometheus.CounterVec
	failures     *prometheus.CounterVec
	startLag     prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_deliveries_total",
			Help: "Delivery attempts sent to webhook endpoints, by outcome (success, failure, gone).",
		}, []string{"namespace", "endpoint", "outcome"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "herald_delivery_attempt_duration_seconds",
			Help:    "Duration of delivery attempts, connection and capped response body included.",
			Buckets: []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300},
		}, []string{"namespace", "endpoint"}),
		deadLettered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_deliveries_dead_lettered_total",
			Help: "Deliveries moved to the dead-letter stream after exhausting their retries.",
		}, []string{"namespace", "endpoint"}),
		// reason is bounded: "HTTP <code>" or one of the Reason* constants.
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_delivery_failures_total",
			Help: "Failed delivery attempts by reason: \"HTTP <code>\" for a non-2xx answer, otherwise Timeout, ConnectionRefused, ConnectionReset, DNSFailure, TLSError, BlockedAddress or Other.",
		}, []string{"namespace", "endpoint", "reason"}),
		// One series for the whole dispatcher: the lag of each stage is the
		// question (which queue the time is spent in), and per-endpoint
		// histograms would cost every endpoint a series per bucket.
		startLag: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "herald_delivery_start_lag_seconds",
			Help:    "Time from an event's ingest (or a redelivery's requeue) until the first attempt of its delivery to an endpoint started.",
			Buckets: queue.LagBuckets,
		}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.deliveries, m.duration, m.deadLettered, m.failures, m.startLag} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register delivery metrics: %w", err)
			}
		}
	}
	return m, nil
}

func (m *metrics) observe(o Outcome) {
	if o.Sent {
		outcome := OutcomeFailure
		switch {
		case o.Success:
			outcome = OutcomeSuccess
		case o.Gone:
			outcome = OutcomeGone
		}
		m.deliveries.WithLabelValues(o.Namespace, o.Endpoint, outcome).Inc()
		if outcome != OutcomeSuccess {
			m.failures.WithLabelValues(o.Namespace, o.Endpoint, failureReason(o)).Inc()
		}
		m.duration.WithLabelValues(o.Namespace, o.Endpoint).Observe(o.Latency.Seconds())
	}
	if o.DeadLettered {
		m.deadLettered.WithLabelValues(o.Namespace, o.Endpoint).Inc()
	}
}

// forget drops the series of an endpoint that no longer exists.
func (m *metrics) forget(namespace, endpoint string) {
	labels := prometheus.Labels{"namespace": namespace, "endpoint": endpoint}
	m.deliveries.DeletePartialMatch(labels)
	m.duration.DeletePartialMatch(labels)
	m.deadLettered.DeletePartialMatch(labels)
	m.failures.DeletePartialMatch(labels)
}

// failureReason is the reason label of a failed attempt: its Reason, or
// the HTTP status when only that is known.
func failureReason(o Outcome) string {
	switch {
	case o.Reason != "":
		return o.Reason
	case o.StatusCode != 0:
		return HTTPReason(o.StatusCode)
	default:
		return ReasonOther
	}
}
