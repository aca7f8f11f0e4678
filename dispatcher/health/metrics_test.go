package health

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// gauge reads one series of a gathered gauge; ok is false when the
// registry has no such series.
func gauge(t *testing.T, reg *prometheus.Registry, name, namespace, endpoint string) (value float64, ok bool) {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["namespace"] == namespace && labels["endpoint"] == endpoint {
				return m.GetGauge().GetValue(), true
			}
		}
	}
	return 0, false
}

// TestOldestPendingAgeMetric: herald_endpoint_oldest_pending_age_seconds
// is how long the oldest queued delivery has waited, 0 when none is queued,
// and disappears with the endpoint.
func TestOldestPendingAgeMetric(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := newMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	k := objectKey{kind: kindEndpoint, namespace: "shop", name: "orders"}
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	age := func() float64 {
		v, ok := gauge(t, reg, "herald_endpoint_oldest_pending_age_seconds", "shop", "orders")
		if !ok {
			t.Fatal("no herald_endpoint_oldest_pending_age_seconds series for shop/orders")
		}
		return v
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
	if n := testutil.CollectAndCount(m.endpoints); n != 0 {
		t.Errorf("after forgetEndpoint: %d series, want 0", n)
	}
}

// TestEndpointGauges: the queue counts of each endpoint are exported with
// its labels, the age only once it was read, and an endpoint forgotten
// leaves the others.
func TestEndpointGauges(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := newMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	orders := objectKey{kind: kindEndpoint, namespace: "shop", name: "orders"}
	audit := objectKey{kind: kindEndpoint, namespace: "ops", name: "audit"}
	m.setEndpoint(orders, queueStats{Pending: 3, DeadLettered: 1})
	m.setEndpoint(audit, queueStats{Pending: 0, DeadLettered: 7})
	m.setOldestPending(audit, time.Time{}, time.Now())

	for _, c := range []struct {
		name, ns, ep string
		want         float64
		present      bool
	}{
		{"herald_endpoint_pending", "shop", "orders", 3, true},
		{"herald_endpoint_dead_lettered", "shop", "orders", 1, true},
		{"herald_endpoint_oldest_pending_age_seconds", "shop", "orders", 0, false},
		{"herald_endpoint_pending", "ops", "audit", 0, true},
		{"herald_endpoint_dead_lettered", "ops", "audit", 7, true},
		{"herald_endpoint_oldest_pending_age_seconds", "ops", "audit", 0, true},
	} {
		got, ok := gauge(t, reg, c.name, c.ns, c.ep)
		if ok != c.present || got != c.want {
			t.Errorf("%s{%s/%s} = %v (present %v), want %v (present %v)", c.name, c.ns, c.ep, got, ok, c.want, c.present)
		}
	}
	m.forgetEndpoint(orders)
	if _, ok := gauge(t, reg, "herald_endpoint_pending", "shop", "orders"); ok {
		t.Errorf("herald_endpoint_pending{shop/orders} still exported after forgetEndpoint")
	}
	if got, ok := gauge(t, reg, "herald_endpoint_dead_lettered", "ops", "audit"); !ok || got != 7 {
		t.Errorf("herald_endpoint_dead_lettered{ops/audit} = %v (present %v) after forgetting another endpoint, want 7", got, ok)
	}
}
