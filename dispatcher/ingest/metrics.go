package ingest

import (
	"errors"
	"fmt"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// Values of the result label of herald_ingest_events_total.
const (
	resultAccepted  = "accepted"
	resultDuplicate = "duplicate"
	resultRejected  = "rejected"
)

// metrics are the ingest counters. Labels are bounded: status codes are the
// handful this package writes, and namespaces are counted only once they are
// known to exist and the caller is allowed to publish there, so a client
// cannot create series by inventing namespace names.
type metrics struct {
	requests  *prometheus.CounterVec
	events    *prometheus.CounterVec
	throttles *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_ingest_requests_total",
			Help: "Ingest HTTP requests by response status code.",
		}, []string{"code"}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_ingest_events_total",
			Help: "CloudEvents received by ingest, by namespace and result (accepted, duplicate, rejected).",
		}, []string{"namespace", "result"}),
		throttles: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_ingest_throttled_total",
			Help: "Ingest requests answered 429 by namespace and reason (in_flight, token_review_rate, namespace_rate, namespace_in_flight). The namespace is empty for reasons decided before the caller is authorized.",
		}, []string{"namespace", "reason"}),
	}
	if reg == nil {
		return m, nil
	}
	var err error
	if m.requests, err = register(reg, m.requests); err != nil {
		return nil, err
	}
	if m.events, err = register(reg, m.events); err != nil {
		return nil, err
	}
	if m.throttles, err = register(reg, m.throttles); err != nil {
		return nil, err
	}
	return m, nil
}

// register registers c, or returns the identical collector registered
// before (a second handler on the same registry shares the counters).
func register(reg prometheus.Registerer, c *prometheus.CounterVec) (*prometheus.CounterVec, error) {
	if err := reg.Register(c); err != nil {
		var already prometheus.AlreadyRegisteredError
		if errors.As(err, &already) {
			if existing, ok := already.ExistingCollector.(*prometheus.CounterVec); ok {
				return existing, nil
			}
		}
		return nil, fmt.Errorf("register ingest metrics: %w", err)
	}
	return c, nil
}

func (m *metrics) request(code int) {
	m.requests.WithLabelValues(strconv.Itoa(code)).Inc()
}

func (m *metrics) eventsResult(namespace, result string, n int) {
	if n > 0 {
		m.events.WithLabelValues(namespace, result).Add(float64(n))
	}
}

// throttled counts a 429; namespace is "" unless the caller may publish to
// it and it exists.
func (m *metrics) throttled(namespace, reason string) {
	m.throttles.WithLabelValues(namespace, reason).Inc()
}
