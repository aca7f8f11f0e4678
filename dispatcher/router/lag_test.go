package router

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/herald-dev/herald/dispatcher/catalog"
)

// TestRouterLagHistogram: every routed event is observed once in
// herald_router_lag_seconds, as the time from its ingest to its
// acknowledgement; an event that matched nothing is not.
func TestRouterLagHistogram(t *testing.T) {
	q := openQueue(t)
	cat := newFakeCatalog()
	cat.addEndpoint("shop", "billing")
	cat.addSubscription(&catalog.Subscription{Namespace: "shop", Name: "orders", Endpoint: "billing", Types: []string{"order.created"}})
	// testEvent.header's ingest time, 7 ms earlier.
	ingested, err := time.Parse(time.RFC3339Nano, "2026-01-02T03:04:05.000000006Z")
	if err != nil {
		t.Fatal(err)
	}
	r, reg := newTestRouter(t, q, cat, nil, func(o *Options) {
		o.Now = func() time.Time { return ingested.Add(7 * time.Millisecond) }
	})
	runRouter(t, r)

	publishEvent(t, q, testEvent{ns: "shop", id: "1", source: "/shop", typ: "order.created"})
	publishEvent(t, q, testEvent{ns: "shop", id: "2", source: "/shop", typ: "order.created"})
	publishEvent(t, q, testEvent{ns: "shop", id: "3", source: "/shop", typ: "order.refunded"})
	waitProcessed(t, reg, q, 3)

	count, buckets := histogram(t, reg, "herald_router_lag_seconds")
	if count != 2 {
		t.Fatalf("lag observations = %d, want 2 (the routed events only)", count)
	}
	if buckets[0.005] != 0 || buckets[0.01] != 2 {
		t.Errorf("cumulative buckets le=0.005: %d, le=0.01: %d; want 0 and 2 for a lag of 7 ms", buckets[0.005], buckets[0.01])
	}
}

// histogram returns the sample count and the cumulative bucket counts of
// an unlabelled histogram.
func histogram(t testing.TB, reg *prometheus.Registry, name string) (uint64, map[float64]uint64) {
	t.Helper()
	f := family(t, reg, name)
	if f == nil {
		t.Fatalf("no metric %s", name)
	}
	h := f.GetMetric()[0].GetHistogram()
	buckets := map[float64]uint64{}
	for _, b := range h.GetBucket() {
		buckets[b.GetUpperBound()] = b.GetCumulativeCount()
	}
	return h.GetSampleCount(), buckets
}
