package health

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// TestOldestPendingAgeMetric: herald_endpoint_oldest_pending_age_seconds
// is how long the oldest queued delivery has waited, 0 when none is queued,
// and disappears with the endpoint.
func TestOldestPendingAgeMetric(t *testing.T) {
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	k := objectKey{kind: kindEndpoint, namespace: "shop", name: "orders"}
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	age := func() float64 {
		var sample dto.Metric
		if err := m.oldestAge.WithLabelValues("shop", "orders").Write(&sample); err != nil {
			t.Fatal(err)
		}
		return sample.GetGauge().GetValue()
	}

	m.setOldestPending(k, now.Add(-90*time.Minute), now)
	if got := age(); got != 5400 {
		t.Errorf("age = %v, want 5400", got)
	}
	m.setOldestPending(k, time.Time{}, now)
	if got := age(); got != 0 {
		t.Errorf("nothing queued: age = %v, want 0", got)
	}
	m.setOldestPending(k, now.Add(time.Second), now) // clock skew between servers
	if got := age(); got != 0 {
		t.Errorf("stored in the future: age = %v, want 0", got)
	}
	m.forgetEndpoint(k)
	series := make(chan prometheus.Metric, 10)
	m.oldestAge.Collect(series)
	close(series)
	if n := len(series); n != 0 {
		t.Errorf("after forgetEndpoint: %d series, want 0", n)
	}
}
