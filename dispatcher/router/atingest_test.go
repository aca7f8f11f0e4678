package router

import (
	"slices"
	"testing"
	"time"

	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/dispatcher/catalog"
	"github.com/herald-dev/herald/dispatcher/queue"
)

// atIngest is how an ingest request hands r its events.
func atIngest(t testing.TB, r *Router, ns string, events ...testEvent) []IngestOutcome {
	t.Helper()
	batch := make([]queue.EventPublish, len(events))
	for i, e := range events {
		batch[i] = queue.EventPublish{DedupID: queue.EventDedupID(e.ns, e.source, e.id), Payload: e.payload(t), Header: e.header()}
	}
	return r.FanOutAtIngest(testContext(t), ns, batch)
}

// setOrdered makes an endpoint of the catalog Ordered.
func (c *fakeCatalog) setOrdered(ns, name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ep := *c.endpoints[ns+"/"+name]
	ep.Spec.Ordering = heraldv1.Ordered
	c.endpoints[ns+"/"+name] = &ep
}

// waitRunning waits until Run consumes events, when FanOutAtIngest acts.
func waitRunning(t testing.TB, r *Router) {
	t.Helper()
	eventually(t, 10*time.Second, "router running", r.running.Load)
}

func TestFanOutAtIngestStoresTheDeliveries(t *testing.T) {
	q := openQueue(t)
	cat := newFakeCatalog()
	cat.addEndpoint("shop", "billing")
	cat.addEndpoint("shop", "audit")
	cat.addSubscription(&catalog.Subscription{Namespace: "shop", Name: "orders", Endpoint: "billing", Types: []string{"order.*"}})
	cat.addSubscription(&catalog.Subscription{Namespace: "shop", Name: "everything", Endpoint: "audit", Types: []string{"*"}, Sources: []string{"/shop/*"}})
	rep := &recordingReporter{}
	r, reg := newTestRouter(t, q, cat, rep)
	runRouter(t, r)
	waitRunning(t, r)

	order := testEvent{ns: "shop", id: "o-1", source: "/shop/orders", typ: "order.created"}
	unmatched := testEvent{ns: "shop", id: "x-1", source: "/crm", typ: "lead.created"}
	got := atIngest(t, r, "shop", order, unmatched)
	if want := []IngestOutcome{{FannedOut: true}, {}}; !slices.Equal(got, want) {
		t.Fatalf("outcomes %+v, want %+v (the unmatched event is left to the events stream)", got, want)
	}
	for _, ep := range []string{"billing", "audit"} {
		if n := pending(t, q, "shop", ep); n != 1 {
			t.Errorf("%s has %d deliveries, want 1", ep, n)
		}
	}
	if got, want := rep.get(), []string{"shop/everything", "shop/orders"}; !slices.Equal(got, want) {
		t.Errorf("reported matches %v, want %v", got, want)
	}

	// The same event again, as a publisher's retry: stored once, answered
	// as a duplicate, not counted again.
	if got := atIngest(t, r, "shop", order); !slices.Equal(got, []IngestOutcome{{FannedOut: true, Duplicate: true}}) {
		t.Errorf("repeated event: %+v, want fanned out as a duplicate", got)
	}
	for _, ep := range []string{"billing", "audit"} {
		if n := pending(t, q, "shop", ep); n != 1 {
			t.Errorf("%s has %d deliveries after the repeat, want 1", ep, n)
		}
	}
	if n := len(rep.get()); n != 2 {
		t.Errorf("%d matches reported after the repeat, want still 2", n)
	}
	if got := counterValue(t, reg, "herald_router_events_at_ingest_total", nil); got != 1 {
		t.Errorf("herald_router_events_at_ingest_total = %v, want 1", got)
	}
	if got := counterValue(t, reg, "herald_router_deliveries_total", nil); got != 2 {
		t.Errorf("herald_router_deliveries_total = %v, want 2", got)
	}

	// The same event through the events stream (a replica that could not
	// fan it out at ingest, a publisher retry that took the stream): its
	// fan-out finds the deliveries stored.
	publishEvent(t, q, order)
	eventually(t, 10*time.Second, "the stream's copy routed", func() bool {
		return counterValue(t, reg, "herald_router_events_total", map[string]string{"result": ResultRouted}) == 2
	})
	for _, ep := range []string{"billing", "audit"} {
		if n := pending(t, q, "shop", ep); n != 1 {
			t.Errorf("%s has %d deliveries after the stream's fan-out, want 1", ep, n)
		}
	}
	m := fetchDeliveries(t, q, "shop", "billing", 1)[0]
	if string(m.Data) != string(order.payload(t)) || m.Header.Get(queue.HeaderWebhookID) != order.header().Get(queue.HeaderWebhookID) ||
		m.Header.Get(queue.HeaderIngestedAt) != order.header().Get(queue.HeaderIngestedAt) || m.Header.Get(queue.HeaderSubscriptions) != "orders" {
		t.Errorf("delivery stored at ingest differs from the stream's: %s %v", m.Data, m.Header)
	}
}

func TestFanOutAtIngestLeavesUncertainEventsToTheStream(t *testing.T) {
	q := openQueue(t)
	cat := newFakeCatalog()
	cat.addEndpoint("shop", "ledger")
	cat.addEndpoint("shop", "audit")
	cat.addSubscription(&catalog.Subscription{Namespace: "shop", Name: "ledger", Endpoint: "ledger", Types: []string{"order.*"}})
	cat.addSubscription(&catalog.Subscription{Namespace: "shop", Name: "audit", Endpoint: "audit", Types: []string{"*"}})
	r, reg := newTestRouter(t, q, cat, nil)
	order := testEvent{ns: "shop", id: "o-1", source: "/shop/orders", typ: "order.created"}

	// Before Run: the catalog may not have seen every object yet.
	if got := atIngest(t, r, "shop", order); got[0].FannedOut {
		t.Fatalf("fanned out before the router runs")
	}
	runRouter(t, r)
	waitRunning(t, r)

	// In transition: a moment later the event may match another generation.
	cat.setTransition("shop", true)
	if got := atIngest(t, r, "shop", order); got[0].FannedOut {
		t.Errorf("fanned out while the namespace is in transition")
	}
	cat.setTransition("shop", false)

	// An Ordered endpoint: an earlier event may still wait in the events
	// stream, so none of the event's deliveries is stored at ingest, not
	// even the Unordered endpoint's.
	cat.setOrdered("shop", "ledger")
	if got := atIngest(t, r, "shop", order); got[0].FannedOut {
		t.Errorf("fanned out an event for an Ordered endpoint")
	}
	other := testEvent{ns: "shop", id: "c-1", source: "/crm", typ: "lead.created"}
	if got := atIngest(t, r, "shop", other); !got[0].FannedOut {
		t.Errorf("an event for the Unordered endpoint alone was not fanned out")
	}

	// An undecodable payload: the stream's fan-out terminates it.
	bad := r.FanOutAtIngest(testContext(t), "shop", []queue.EventPublish{{DedupID: "bad", Payload: []byte("{"), Header: order.header()}})
	if bad[0].FannedOut {
		t.Errorf("fanned out an undecodable event")
	}

	if n := pending(t, q, "shop", "ledger"); n != 0 {
		t.Errorf("ledger has %d deliveries stored at ingest, want 0", n)
	}
	if n := pending(t, q, "shop", "audit"); n != 1 {
		t.Errorf("audit has %d deliveries, want only the Unordered event's 1", n)
	}
	if got := counterValue(t, reg, "herald_router_events_at_ingest_total", nil); got != 1 {
		t.Errorf("herald_router_events_at_ingest_total = %v, want 1", got)
	}
}

func TestFanOutAtIngestFailureLeavesTheEventToTheStream(t *testing.T) {
	q := openQueue(t)
	cat := newFakeCatalog()
	for _, ep := range []string{"a", "b", "c"} {
		cat.addEndpoint("ns", ep)
		cat.addSubscription(&catalog.Subscription{Namespace: "ns", Name: ep, Endpoint: ep, Types: []string{"*"}})
	}
	faulty := &faultyQueue{Queue: q, fail: failNth(2)}
	r, reg := newTestRouter(t, faulty, cat, nil)
	runRouter(t, r)
	waitRunning(t, r)

	ev := testEvent{ns: "ns", id: "e-1", source: "/src", typ: "t"}
	if got := atIngest(t, r, "ns", ev); got[0].FannedOut {
		t.Fatalf("fanned out though a delivery was not stored")
	}
	if got := counterValue(t, reg, "herald_router_events_total", map[string]string{"result": ResultRouted}); got != 0 {
		t.Errorf("counted as routed: %v", got)
	}
	// The caller then stores the event in the stream; its fan-out stores
	// the missing delivery and finds the others de-duplicated.
	publishEvent(t, q, ev)
	waitProcessed(t, reg, q, 1)
	for _, ep := range []string{"a", "b", "c"} {
		if n := pending(t, q, "ns", ep); n != 1 {
			t.Errorf("%s has %d deliveries, want 1", ep, n)
		}
	}
}
