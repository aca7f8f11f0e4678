package delivery

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// TestFailureReasonMetric: failed attempts are counted by reason, the label
// the dashboard's "failures by reason" panel and the alert descriptions use;
// successes are not counted, and forgetting an endpoint drops its series.
func TestFailureReasonMetric(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := newMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	attempt := func(o Outcome) {
		o.Namespace, o.Endpoint, o.Sent, o.Latency = "shop", "orders", true, 10*time.Millisecond
		m.observe(o)
	}
	attempt(Outcome{StatusCode: 503, Reason: HTTPReason(503)})
	attempt(Outcome{StatusCode: 503, Reason: HTTPReason(503)})
	attempt(Outcome{Reason: ReasonTimeout})
	attempt(Outcome{StatusCode: 500}) // no reason recorded: derived from the status
	attempt(Outcome{})                // neither: Other
	attempt(Outcome{StatusCode: 410, Reason: HTTPReason(410), Gone: true})
	attempt(Outcome{StatusCode: 200, Success: true})

	for reason, want := range map[string]float64{
		"HTTP 503": 2, ReasonTimeout: 1, "HTTP 500": 1, ReasonOther: 1, "HTTP 410": 1,
	} {
		if got := metricValue(t, reg, "herald_delivery_failures_total", map[string]string{
			"namespace": "shop", "endpoint": "orders", "reason": reason,
		}); got != want {
			t.Errorf("herald_delivery_failures_total{reason=%q} = %v, want %v", reason, got, want)
		}
	}
	if got := metricValue(t, reg, "herald_delivery_failures_total", nil); got != 6 {
		t.Errorf("failures in all = %v, want 6 (the success is not a failure)", got)
	}

	m.forget("shop", "orders")
	if got := metricValue(t, reg, "herald_delivery_failures_total", nil); got != 0 {
		t.Errorf("after forget: %v, want 0", got)
	}
}
