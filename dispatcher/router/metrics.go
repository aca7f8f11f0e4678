package router

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/herald-dev/herald/dispatcher/queue"
)

// Values of the result label of herald_router_events_total.
const (
	// ResultRouted: at least one delivery was queued.
	ResultRouted = "routed"
	// ResultUnmatched: no Subscription (with an existing endpoint) matched.
	ResultUnmatched = "unmatched"
	// ResultUnmatchedAfterHold: matched nothing, was held because its
	// namespace was in transition, and was discarded when the hold ran out
	// (Options.UnmatchedHold) with the namespace still in transition.
	ResultUnmatchedAfterHold = "unmatched_after_hold"
	// ResultInvalid: the stored event could not be decoded and was
	// terminated. Ingest validates events, so this signals a bug.
	ResultInvalid = "invalid"
)

type metrics struct {
	events       *prometheus.CounterVec
	filterErrors *prometheus.CounterVec
	retries      prometheus.Counter
	deliveries   prometheus.Counter
	atIngest     prometheus.Counter
	held         *prometheus.CounterVec
	lag          prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_router_events_total",
			Help: "Events processed by fan-out, by result: routed (at least one delivery queued), unmatched (discarded), unmatched_after_hold (discarded after being held while the namespace was in transition), invalid (undecodable, terminated).",
		}, []string{"result"}),
		filterErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_router_filter_errors_total",
			Help: "Subscription filter evaluations that failed (counted as no match), by namespace.",
		}, []string{"namespace"}),
		retries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "herald_router_retries_total",
			Help: "Events whose fan-out failed to queue every delivery and will be retried.",
		}),
		held: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "herald_router_events_held_total",
			Help: "Times an event that matched nothing was held for another try because a WebhookEndpoint or Subscription of its namespace was being reconciled, by namespace.",
		}, []string{"namespace"}),
		deliveries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "herald_router_deliveries_total",
			Help: "Deliveries queued by fan-out (one per event per endpoint; retried fan-outs count again).",
		}),
		atIngest: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "herald_router_events_at_ingest_total",
			Help: "Events fanned out by the ingest request that accepted them, their deliveries stored before the answer, without passing through the events stream (also counted in herald_router_events_total as routed).",
		}),
		lag: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "herald_router_lag_seconds",
			Help:    "Time from an event's ingest until its deliveries were all stored, by the ingest request (herald_router_events_at_ingest_total) or by the fan-out of the events stream (routed events only; held and retried ones included).",
			Buckets: queue.LagBuckets,
		}),
	}
	for _, r := range []string{ResultRouted, ResultUnmatched, ResultUnmatchedAfterHold, ResultInvalid} {
		m.events.WithLabelValues(r) // export zero values
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.events, m.filterErrors, m.retries, m.deliveries, m.atIngest, m.held, m.lag} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register router metrics (one Router per registry): %w", err)
		}
	}
	return m, nil
}
