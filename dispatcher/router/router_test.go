package router

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/herald-dev/herald/dispatcher/catalog"
	"github.com/herald-dev/herald/dispatcher/queue"
)

const testTimeout = 30 * time.Second

func testContext(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

func openQueue(t testing.TB) *queue.Queue {
	t.Helper()
	q, err := queue.Open(testContext(t), queue.Config{StoreDir: t.TempDir()}, logr.Discard())
	if err != nil {
		t.Fatalf("open queue: %v", err)
	}
	t.Cleanup(func() {
		if err := q.Close(); err != nil {
			t.Errorf("close queue: %v", err)
		}
	})
	return q
}

// fakeCatalog is an in-memory Catalog.
type fakeCatalog struct {
	mu           sync.Mutex
	revision     uint64
	subs         map[string][]*catalog.Subscription
	endpoints    map[string]*catalog.Endpoint
	inTransition map[string]bool
}

func newFakeCatalog() *fakeCatalog {
	return &fakeCatalog{subs: map[string][]*catalog.Subscription{}, endpoints: map[string]*catalog.Endpoint{}, inTransition: map[string]bool{}}
}

func (c *fakeCatalog) setTransition(ns string, v bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.inTransition[ns] = v
}

func (c *fakeCatalog) InTransition(ns string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.inTransition[ns]
}

func (c *fakeCatalog) addEndpoint(ns, name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.endpoints[ns+"/"+name] = &catalog.Endpoint{Namespace: ns, Name: name}
}

func (c *fakeCatalog) addSubscription(s *catalog.Subscription) {
	c.mu.Lock()
	defer c.mu.Unlock()
	// Copy-on-write: returned slices are snapshots.
	c.subs[s.Namespace] = append(slices.Clip(c.subs[s.Namespace]), s)
	c.revision++
}

func (c *fakeCatalog) Subscriptions(ns string) ([]*catalog.Subscription, uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.subs[ns], c.revision
}

func (c *fakeCatalog) Endpoint(ns, name string) (*catalog.Endpoint, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.endpoints[ns+"/"+name]
	return e, ok
}

// recordingReporter collects Matched calls.
type recordingReporter struct {
	mu      sync.Mutex
	matched []string
}

func (r *recordingReporter) Matched(ns, sub string, _ time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.matched = append(r.matched, ns+"/"+sub)
}

func (r *recordingReporter) get() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := slices.Clone(r.matched)
	slices.Sort(out)
	return out
}

type testEvent struct {
	ns, id, source, typ string
	data                any
}

func (e testEvent) payload(t testing.TB) []byte {
	t.Helper()
	m := map[string]any{"specversion": "1.0", "id": e.id, "source": e.source, "type": e.typ}
	if e.data != nil {
		m["data"] = e.data
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (e testEvent) header() queue.Header {
	h := queue.Header{}
	h.Set(queue.HeaderWebhookID, queue.WebhookID(e.ns, e.source, e.id))
	h.Set(queue.HeaderEventKey, queue.EventDedupID(e.ns, e.source, e.id))
	h.Set(queue.HeaderIngestedAt, "2026-01-02T03:04:05.000000006Z")
	return h
}

func publishEvent(t testing.TB, q *queue.Queue, e testEvent) {
	t.Helper()
	if _, _, err := q.PublishEvent(testContext(t), e.ns, queue.EventDedupID(e.ns, e.source, e.id), e.payload(t), e.header()); err != nil {
		t.Fatalf("publish event: %v", err)
	}
}

func newTestRouter(t testing.TB, q Queue, cat Catalog, rep MatchReporter, mutate ...func(*Options)) (*Router, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	opts := Options{Reporter: rep, Registerer: reg, RetryDelay: 50 * time.Millisecond, Consumer: queue.ConsumerOptions{FetchWait: 200 * time.Millisecond}}
	for _, m := range mutate {
		m(&opts)
	}
	r, err := New(q, cat, logr.Discard(), opts)
	if err != nil {
		t.Fatalf("new router: %v", err)
	}
	return r, reg
}

// runRouter runs r until the test ends and returns a function that stops it
// and waits for Run to return.
func runRouter(t testing.TB, r *Router) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(testTimeout):
				t.Errorf("Run did not return within %s", testTimeout)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func eventually(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", within, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func pending(t testing.TB, q *queue.Queue, ns, ep string) uint64 {
	t.Helper()
	n, err := q.Pending(testContext(t), ns, ep)
	if err != nil {
		t.Fatalf("pending %s/%s: %v", ns, ep, err)
	}
	return n
}

// eventsLeft is how many events the router's consumer has not acknowledged.
func eventsLeft(t testing.TB, q *queue.Queue) uint64 {
	t.Helper()
	c, err := q.EventConsumer(testContext(t), DefaultConsumerName, queue.ConsumerOptions{FetchWait: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	n, err := c.Pending(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// fetchDeliveries reads n deliveries of an endpoint (acknowledging them).
func fetchDeliveries(t testing.TB, q *queue.Queue, ns, ep string, n int) []*queue.Message {
	t.Helper()
	ctx := testContext(t)
	c, err := q.DeliveryConsumer(ctx, ns, ep, queue.ConsumerOptions{FetchWait: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	var got []*queue.Message
	deadline := time.Now().Add(5 * time.Second)
	for len(got) < n && time.Now().Before(deadline) {
		msgs, err := c.Fetch(ctx, n-len(got))
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range msgs {
			if err := m.Ack(ctx); err != nil {
				t.Fatal(err)
			}
		}
		got = append(got, msgs...)
	}
	if len(got) != n {
		t.Fatalf("%s/%s: got %d deliveries, want %d", ns, ep, len(got), n)
	}
	return got
}

// waitProcessed waits until n events were settled (counted after their
// acknowledgement or termination), then checks the event consumer holds
// nothing more. The consumer's own pending count is not a signal to wait
// for: right after a publish it can read 0 before the consumer has seen
// the message.
func waitProcessed(t testing.TB, reg *prometheus.Registry, q *queue.Queue, n int) {
	t.Helper()
	total := func() float64 {
		var sum float64
		for _, r := range []string{ResultRouted, ResultUnmatched, ResultUnmatchedAfterHold, ResultInvalid} {
			sum += counterValue(t, reg, "herald_router_events_total", map[string]string{"result": r})
		}
		return sum
	}
	eventually(t, 10*time.Second, fmt.Sprintf("%d events processed", n), func() bool { return total() >= float64(n) })
	if got := total(); got != float64(n) {
		t.Errorf("%v events processed, want %d", got, n)
	}
	// The acknowledgements are not confirmed (queue.Message.AckNoWait):
	// the server may count an event for a moment after it was counted here.
	eventually(t, 5*time.Second, "every event acknowledged", func() bool { return eventsLeft(t, q) == 0 })
}

func counterValue(t testing.TB, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	for _, m := range family(t, reg, name).GetMetric() {
		if labelsMatch(m, labels) {
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

// family is the gathered metric family name, nil when it has no series.
func family(t testing.TB, reg *prometheus.Registry, name string) *dto.MetricFamily {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == name {
			return f
		}
	}
	return nil
}

func labelsMatch(m *dto.Metric, labels map[string]string) bool {
	if len(m.GetLabel()) != len(labels) {
		return false
	}
	for _, l := range m.GetLabel() {
		if labels[l.GetName()] != l.GetValue() {
			return false
		}
	}
	return true
}

func TestTwoSubscriptionsOneEndpointOneDelivery(t *testing.T) {
	q := openQueue(t)
	cat := newFakeCatalog()
	cat.addEndpoint("shop", "billing")
	cat.addEndpoint("shop", "audit")
	cat.addSubscription(&catalog.Subscription{Namespace: "shop", Name: "orders", Endpoint: "billing", Types: []string{"order.*"}})
	cat.addSubscription(&catalog.Subscription{Namespace: "shop", Name: "big-orders", Endpoint: "billing", Types: []string{"order.created"},
		Filter: mustFilter(t, `data.total > 100`)})
	cat.addSubscription(&catalog.Subscription{Namespace: "shop", Name: "everything", Endpoint: "audit", Types: []string{"*"}})
	cat.addSubscription(&catalog.Subscription{Namespace: "shop", Name: "orphan", Endpoint: "missing", Types: []string{"*"}})
	cat.addSubscription(&catalog.Subscription{Namespace: "shop", Name: "other-source", Endpoint: "audit", Types: []string{"*"}, Sources: []string{"/crm/*"}})
	rep := &recordingReporter{}
	var queuedMu sync.Mutex
	var queued []string
	r, reg := newTestRouter(t, q, cat, rep, func(o *Options) {
		o.Queued = func(namespace, endpoint string) {
			queuedMu.Lock()
			defer queuedMu.Unlock()
			queued = append(queued, namespace+"/"+endpoint)
		}
	})
	runRouter(t, r)

	ev := testEvent{ns: "shop", id: "o-1", source: "/shop/orders", typ: "order.created", data: map[string]any{"total": 250}}
	publishEvent(t, q, ev)
	waitProcessed(t, reg, q, 1)

	if got := pending(t, q, "shop", "billing"); got != 1 {
		t.Errorf("billing has %d deliveries, want 1 (two Subscriptions, one delivery)", got)
	}
	if got := pending(t, q, "shop", "audit"); got != 1 {
		t.Errorf("audit has %d deliveries, want 1", got)
	}
	if got := pending(t, q, "shop", "missing"); got != 0 {
		t.Errorf("endpoint missing from the catalog got %d deliveries", got)
	}

	m := fetchDeliveries(t, q, "shop", "billing", 1)[0]
	if string(m.Data) != string(ev.payload(t)) {
		t.Errorf("delivery payload %s, want the event %s", m.Data, ev.payload(t))
	}
	wantHeader := ev.header()
	for _, h := range []string{queue.HeaderWebhookID, queue.HeaderEventKey, queue.HeaderIngestedAt} {
		if got, want := m.Header.Get(h), wantHeader.Get(h); got != want {
			t.Errorf("header %s = %q, want %q", h, got, want)
		}
	}
	if got := m.Header.Get(queue.HeaderSubscriptions); got != "big-orders,orders" {
		t.Errorf("header %s = %q, want sorted matched Subscriptions %q", queue.HeaderSubscriptions, got, "big-orders,orders")
	}
	if m.DedupID != queue.DeliveryDedupID(wantHeader.Get(queue.HeaderEventKey), "shop", "billing") {
		t.Errorf("delivery dedup id %q is not DeliveryDedupID", m.DedupID)
	}
	queuedMu.Lock()
	slices.Sort(queued)
	if want := []string{"shop/audit", "shop/billing"}; !slices.Equal(queued, want) {
		t.Errorf("Queued called for %v, want once per stored delivery %v", queued, want)
	}
	queuedMu.Unlock()
	eventually(t, 5*time.Second, "matches reported", func() bool { return len(rep.get()) == 3 })
	if got, want := rep.get(), []string{"shop/big-orders", "shop/everything", "shop/orders"}; !slices.Equal(got, want) {
		t.Errorf("reported matches %v, want %v", got, want)
	}
	if got := counterValue(t, reg, "herald_router_events_total", map[string]string{"result": ResultRouted}); got != 1 {
		t.Errorf("routed events = %v, want 1", got)
	}
}

func TestNamespaceIsolation(t *testing.T) {
	q := openQueue(t)
	cat := newFakeCatalog()
	for _, ns := range []string{"team-a", "team-b"} {
		cat.addEndpoint(ns, "hook")
		cat.addSubscription(&catalog.Subscription{Namespace: ns, Name: "all", Endpoint: "hook", Types: []string{"*"}})
	}
	r, reg := newTestRouter(t, q, cat, nil)
	runRouter(t, r)

	publishEvent(t, q, testEvent{ns: "team-a", id: "1", source: "/a", typ: "x.y"})
	publishEvent(t, q, testEvent{ns: "team-c", id: "1", source: "/c", typ: "x.y"})
	waitProcessed(t, reg, q, 2)

	if got := pending(t, q, "team-a", "hook"); got != 1 {
		t.Errorf("team-a/hook has %d deliveries, want 1", got)
	}
	if got := pending(t, q, "team-b", "hook"); got != 0 {
		t.Errorf("team-b/hook has %d deliveries for an event published in team-a", got)
	}
	if got := counterValue(t, reg, "herald_router_events_total", map[string]string{"result": ResultUnmatched}); got != 1 {
		t.Errorf("unmatched events = %v, want 1 (team-c has no Subscriptions)", got)
	}
}

// TestFanOutResumesAfterCrash: a router that crashed after queueing some of
// an event's deliveries left them in the queue and the event unacknowledged.
// The next fan-out of the event must complete the rest without duplicating
// what was queued.
func TestFanOutResumesAfterCrash(t *testing.T) {
	q := openQueue(t)
	cat := newFakeCatalog()
	endpoints := []string{"ep-1", "ep-2", "ep-3", "ep-4", "ep-5"}
	for _, ep := range endpoints {
		cat.addEndpoint("ns", ep)
		cat.addSubscription(&catalog.Subscription{Namespace: "ns", Name: "sub-" + ep, Endpoint: ep, Types: []string{"order.*"}})
	}
	ev := testEvent{ns: "ns", id: "crash-1", source: "/s", typ: "order.created"}
	publishEvent(t, q, ev)

	// What the crashed router had done: two deliveries queued, no ack.
	ctx := testContext(t)
	eventKey := ev.header().Get(queue.HeaderEventKey)
	for _, ep := range endpoints[:2] {
		h := ev.header()
		h.Set(queue.HeaderSubscriptions, "sub-"+ep)
		if _, _, err := q.PublishDelivery(ctx, "ns", ep, queue.DeliveryDedupID(eventKey, "ns", ep), ev.payload(t), h); err != nil {
			t.Fatal(err)
		}
	}

	r, reg := newTestRouter(t, q, cat, nil)
	runRouter(t, r)
	waitProcessed(t, reg, q, 1)
	// Re-running the fan-out once more (a second redelivery) changes nothing.
	if out := r.fanOut(ctx, "ns", []*queue.Message{{Namespace: "ns", Data: ev.payload(t), Header: ev.header()}}); out[0].err != nil {
		t.Fatal(out[0].err)
	}
	for _, ep := range endpoints {
		if got := pending(t, q, "ns", ep); got != 1 {
			t.Errorf("%s has %d deliveries, want exactly 1", ep, got)
		}
	}
}

// faultyQueue records the router's batch publishes and fails the entries
// fail picks (given the number of the batch publish, from 0) without
// publishing them, passing the others to the queue: like an asynchronous
// publish that failed while the later ones went through.
type faultyQueue struct {
	*queue.Queue
	fail func(batch int, d queue.DeliveryPublish) bool

	mu      sync.Mutex
	batches [][]queue.DeliveryPublish
}

func (f *faultyQueue) PublishDeliveries(ctx context.Context, batch []queue.DeliveryPublish) []queue.PublishResult {
	f.mu.Lock()
	batchNumber := len(f.batches)
	f.batches = append(f.batches, slices.Clone(batch))
	f.mu.Unlock()
	results := make([]queue.PublishResult, len(batch))
	var passed []queue.DeliveryPublish
	var passedIndex []int
	for i, d := range batch {
		if f.fail != nil && f.fail(batchNumber, d) {
			results[i].Err = errors.New("injected publish failure")
			continue
		}
		passed = append(passed, d)
		passedIndex = append(passedIndex, i)
	}
	if len(passed) > 0 {
		for j, res := range f.Queue.PublishDeliveries(ctx, passed) {
			results[passedIndex[j]] = res
		}
	}
	return results
}

// publishedBatches returns the batch publishes so far.
func (f *faultyQueue) publishedBatches() [][]queue.DeliveryPublish {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.batches)
}

// failNth fails the nth delivery publish (counting from 1) of all batches.
func failNth(n int64) func(int, queue.DeliveryPublish) bool {
	var count atomic.Int64
	return func(int, queue.DeliveryPublish) bool { return count.Add(1) == n }
}

func TestFailedFanOutIsRetriedWithoutDuplicates(t *testing.T) {
	q := openQueue(t)
	cat := newFakeCatalog()
	var endpoints []string
	for i := range 5 {
		ep := fmt.Sprintf("ep-%d", i)
		endpoints = append(endpoints, ep)
		cat.addEndpoint("ns", ep)
		cat.addSubscription(&catalog.Subscription{Namespace: "ns", Name: "sub-" + ep, Endpoint: ep, Types: []string{"*"}})
	}
	rep := &recordingReporter{}
	flaky := &faultyQueue{Queue: q, fail: failNth(3)}
	r, reg := newTestRouter(t, flaky, cat, rep)
	runRouter(t, r)

	publishEvent(t, q, testEvent{ns: "ns", id: "1", source: "/s", typ: "a.b"})
	waitProcessed(t, reg, q, 1)
	for _, ep := range endpoints {
		if got := pending(t, q, "ns", ep); got != 1 {
			t.Errorf("%s has %d deliveries, want exactly 1", ep, got)
		}
	}
	if got := len(rep.get()); got != len(endpoints) {
		t.Errorf("reported %d matches, want %d: a retried fan-out reports once", got, len(endpoints))
	}
	if got := counterValue(t, reg, "herald_router_retries_total", nil); got != 1 {
		t.Errorf("retries = %v, want 1", got)
	}
	if got := counterValue(t, reg, "herald_router_events_total", map[string]string{"result": ResultRouted}); got != 1 {
		t.Errorf("routed events = %v, want 1", got)
	}
}

func TestInvalidEventIsTerminated(t *testing.T) {
	q := openQueue(t)
	cat := newFakeCatalog()
	cat.addEndpoint("ns", "ep")
	cat.addSubscription(&catalog.Subscription{Namespace: "ns", Name: "all", Endpoint: "ep", Types: []string{"*"}})
	r, reg := newTestRouter(t, q, cat, nil)
	runRouter(t, r)

	if _, _, err := q.PublishEvent(testContext(t), "ns", "garbage-1", []byte(`{"id":`), nil); err != nil {
		t.Fatal(err)
	}
	waitProcessed(t, reg, q, 1)
	if got := counterValue(t, reg, "herald_router_events_total", map[string]string{"result": ResultInvalid}); got != 1 {
		t.Errorf("invalid events = %v, want 1", got)
	}
	if got := pending(t, q, "ns", "ep"); got != 0 {
		t.Errorf("invalid event produced %d deliveries", got)
	}
}

// blockingQueue holds delivery publishes until released.
type blockingQueue struct {
	*queue.Queue
	started chan struct{}
	release chan struct{}
	once    sync.Once
}

func (b *blockingQueue) PublishDeliveries(ctx context.Context, batch []queue.DeliveryPublish) []queue.PublishResult {
	b.once.Do(func() { close(b.started) })
	select {
	case <-b.release:
	case <-ctx.Done():
		results := make([]queue.PublishResult, len(batch))
		for i := range results {
			results[i].Err = ctx.Err()
		}
		return results
	}
	return b.Queue.PublishDeliveries(ctx, batch)
}

func TestRunFinishesInFlightEventOnShutdown(t *testing.T) {
	q := openQueue(t)
	cat := newFakeCatalog()
	cat.addEndpoint("ns", "ep")
	cat.addSubscription(&catalog.Subscription{Namespace: "ns", Name: "all", Endpoint: "ep", Types: []string{"*"}})
	bq := &blockingQueue{Queue: q, started: make(chan struct{}), release: make(chan struct{})}
	r, _ := newTestRouter(t, bq, cat, nil)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()

	publishEvent(t, q, testEvent{ns: "ns", id: "1", source: "/s", typ: "a"})
	select {
	case <-bq.started:
	case <-time.After(10 * time.Second):
		t.Fatal("fan-out did not start")
	}
	cancel()
	select {
	case err := <-done:
		t.Fatalf("Run returned (%v) while an event was in flight", err)
	case <-time.After(300 * time.Millisecond):
	}
	close(bq.release)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after the in-flight event finished")
	}
	if got := pending(t, q, "ns", "ep"); got != 1 {
		t.Errorf("ep has %d deliveries, want 1", got)
	}
	// Run confirmed its acknowledgements before returning: no waiting.
	if got := eventsLeft(t, q); got != 0 {
		t.Errorf("%d events unacknowledged after a graceful stop", got)
	}
}

func TestIndexFollowsCatalogRevision(t *testing.T) {
	cat := newFakeCatalog()
	cat.addEndpoint("ns", "ep")
	r, reg := newTestRouter(t, nil, cat, nil)
	ev := mustEvent(t, `{"specversion":"1.0","id":"1","source":"/s","type":"order.created","data":{}}`)
	if got := r.Match("ns", ev); len(got) != 0 {
		t.Fatalf("matched %v with no Subscriptions", names(got))
	}
	cat.addSubscription(&catalog.Subscription{Namespace: "ns", Name: "orders", Endpoint: "ep", Types: []string{"order.*"}})
	if got := names(r.Match("ns", ev)); !slices.Equal(got, []string{"orders"}) {
		t.Fatalf("after adding a Subscription matched %v", got)
	}
	cat.addSubscription(&catalog.Subscription{Namespace: "ns", Name: "broken", Endpoint: "ep", Types: []string{"*"}, Filter: mustFilter(t, `data.missing == 1`)})
	if got := names(r.Match("ns", ev)); !slices.Equal(got, []string{"orders"}) {
		t.Fatalf("matched %v", got)
	}
	if got := counterValue(t, reg, "herald_router_filter_errors_total", map[string]string{"namespace": "ns"}); got != 1 {
		t.Errorf("filter errors = %v, want 1", got)
	}
}

// TestFanOutPublishesGroupInEventOrder: the events of a namespace are
// published as one batch: the deliveries of the first event (by endpoint
// name), then those of the next; undecodable and unmatched events add none.
func TestFanOutPublishesGroupInEventOrder(t *testing.T) {
	q := &faultyQueue{Queue: openQueue(t)}
	cat := newFakeCatalog()
	for _, ep := range []string{"b-ep", "c-ep", "a-ep"} {
		cat.addEndpoint("ns", ep)
		cat.addSubscription(&catalog.Subscription{Namespace: "ns", Name: "sub-" + ep, Endpoint: ep, Types: []string{"order.*"}})
	}
	r, reg := newTestRouter(t, q, cat, nil)
	events := []testEvent{
		{ns: "ns", id: "1", source: "/s", typ: "order.created"},
		{ns: "ns", id: "2", source: "/s", typ: "order.created"}, // made undecodable below
		{ns: "ns", id: "3", source: "/s", typ: "invoice.paid"},  // matches nothing
		{ns: "ns", id: "4", source: "/s", typ: "order.shipped"},
	}
	var msgs []*queue.Message
	for _, e := range events {
		msgs = append(msgs, &queue.Message{Namespace: "ns", Data: e.payload(t), Header: e.header()})
	}
	msgs[1].Data = []byte(`{"id":`)

	outcomes := r.fanOut(testContext(t), "ns", msgs)

	var permanent *permanentError
	if !errors.As(outcomes[1].err, &permanent) {
		t.Errorf("undecodable event: error %v, want a permanent error", outcomes[1].err)
	}
	for _, i := range []int{0, 2, 3} {
		if outcomes[i].err != nil {
			t.Errorf("event %s: %v", events[i].id, outcomes[i].err)
		}
	}
	if got := outcomes[2].result.Endpoints; len(got) != 0 {
		t.Errorf("unmatched event has endpoints %v", got)
	}
	batches := q.publishedBatches()
	if len(batches) != 1 {
		t.Fatalf("%d batch publishes, want 1 for the namespace's events", len(batches))
	}
	var got, want []string
	for _, d := range batches[0] {
		got = append(got, d.Header.Get(queue.HeaderEventKey)+" "+d.Endpoint+" "+d.DedupID)
	}
	for _, i := range []int{0, 3} {
		key := events[i].header().Get(queue.HeaderEventKey)
		for _, ep := range []string{"a-ep", "b-ep", "c-ep"} {
			want = append(want, key+" "+ep+" "+queue.DeliveryDedupID(key, "ns", ep))
		}
	}
	if !slices.Equal(got, want) {
		t.Errorf("published (event key, endpoint, dedup id)\n%q\nwant\n%q", got, want)
	}
	if got := counterValue(t, reg, "herald_router_deliveries_total", nil); got != 6 {
		t.Errorf("deliveries = %v, want 6", got)
	}
}

// eventIDs returns the ids of the events whose deliveries batch holds, in
// order of first appearance.
func eventIDs(t testing.TB, batch []queue.DeliveryPublish) []string {
	t.Helper()
	var ids []string
	for _, d := range batch {
		ev, err := ParseEvent(d.Payload)
		if err != nil {
			t.Fatal(err)
		}
		if len(ids) == 0 || ids[len(ids)-1] != ev.ID() {
			ids = append(ids, ev.ID())
		}
	}
	return ids
}

func deliveredEventIDs(t testing.TB, msgs []*queue.Message) []string {
	t.Helper()
	ids := make([]string, len(msgs))
	for i, m := range msgs {
		ev, err := ParseEvent(m.Data)
		if err != nil {
			t.Fatal(err)
		}
		ids[i] = ev.ID()
	}
	return ids
}

// TestBatchKeepsEventOrderPerEndpoint: a batch of events of one namespace
// fanned out to several endpoints reaches every endpoint in event order.
func TestBatchKeepsEventOrderPerEndpoint(t *testing.T) {
	q := openQueue(t)
	cat := newFakeCatalog()
	endpoints := []string{"ep-1", "ep-2", "ep-3"}
	for _, ep := range endpoints {
		cat.addEndpoint("ns", ep)
		cat.addSubscription(&catalog.Subscription{Namespace: "ns", Name: "sub-" + ep, Endpoint: ep, Types: []string{"*"}})
	}
	const n = 40
	var want []string
	for i := range n {
		id := fmt.Sprintf("e-%02d", i)
		want = append(want, id)
		publishEvent(t, q, testEvent{ns: "ns", id: id, source: "/s", typ: "a.b"})
	}
	r, reg := newTestRouter(t, q, cat, nil)
	runRouter(t, r)
	waitProcessed(t, reg, q, n)

	for _, ep := range endpoints {
		if got := deliveredEventIDs(t, fetchDeliveries(t, q, "ns", ep, n)); !slices.Equal(got, want) {
			t.Errorf("%s received events %v, want %v", ep, got, want)
		}
	}
	if got := counterValue(t, reg, "herald_router_deliveries_total", nil); got != n*3 {
		t.Errorf("deliveries = %v, want %d", got, n*3)
	}
}

// TestFailedPublishReturnsLaterEvents: when the deliveries of event k of a
// batch fail, the events before it are acknowledged and event k and all
// later ones are returned for redelivery; the retry queues what is missing
// without duplicates. The endpoint then holds event k after the later ones:
// the ordering caveat the package documents.
func TestFailedPublishReturnsLaterEvents(t *testing.T) {
	q := openQueue(t)
	cat := newFakeCatalog()
	endpoints := []string{"ep-1", "ep-2"}
	for _, ep := range endpoints {
		cat.addEndpoint("ns", ep)
		cat.addSubscription(&catalog.Subscription{Namespace: "ns", Name: "sub-" + ep, Endpoint: ep, Types: []string{"*"}})
	}
	const n, k = 6, 2
	var events []testEvent
	for i := range n {
		e := testEvent{ns: "ns", id: fmt.Sprintf("e-%d", i), source: "/s", typ: "a.b"}
		events = append(events, e)
		publishEvent(t, q, e)
	}
	failingKey := events[k].header().Get(queue.HeaderEventKey)
	faulty := &faultyQueue{Queue: q, fail: func(batch int, d queue.DeliveryPublish) bool {
		// Every delivery of event k, in the first fan-out only.
		return batch == 0 && d.Header.Get(queue.HeaderEventKey) == failingKey
	}}
	rep := &recordingReporter{}
	r, reg := newTestRouter(t, faulty, cat, rep)
	runRouter(t, r)
	waitProcessed(t, reg, q, n)

	batches := faulty.publishedBatches()
	if got, want := eventIDs(t, batches[0]), []string{"e-0", "e-1", "e-2", "e-3", "e-4", "e-5"}; !slices.Equal(got, want) {
		t.Fatalf("first fan-out published events %v, want all %v in one batch", got, want)
	}
	var redelivered []string
	for _, b := range batches[1:] {
		redelivered = append(redelivered, eventIDs(t, b)...)
	}
	slices.Sort(redelivered)
	if want := []string{"e-2", "e-3", "e-4", "e-5"}; !slices.Equal(redelivered, want) {
		t.Errorf("events fanned out again = %v, want %v: those before the failed one acknowledged, it and the later ones returned", redelivered, want)
	}
	for _, ep := range endpoints {
		got := deliveredEventIDs(t, fetchDeliveries(t, q, "ns", ep, n))
		if want := []string{"e-0", "e-1", "e-3", "e-4", "e-5", "e-2"}; !slices.Equal(got, want) {
			t.Errorf("%s received events %v, want %v (each once; the failed one after the later ones)", ep, got, want)
		}
	}
	if got := counterValue(t, reg, "herald_router_retries_total", nil); got != 1 {
		t.Errorf("retries = %v, want 1 (only the failed event counts)", got)
	}
	if got := counterValue(t, reg, "herald_router_events_total", map[string]string{"result": ResultRouted}); got != n {
		t.Errorf("routed events = %v, want %d: each counted once, when acknowledged", got, n)
	}
	if got := len(rep.get()); got != n*len(endpoints) {
		t.Errorf("reported %d matches, want %d", got, n*len(endpoints))
	}
}

// TestUnmatchedEventIsHeldWhileNamespaceInTransition: an event that matches
// nothing while an object of its namespace is being reconciled is held, and
// delivered once the new generation is Ready; one that matches nothing in a
// settled namespace is discarded at once; one held longer than
// UnmatchedHold is discarded and counted as such.
func TestUnmatchedEventIsHeldWhileNamespaceInTransition(t *testing.T) {
	q := openQueue(t)
	cat := newFakeCatalog()
	cat.setTransition("shop", true)
	cat.setTransition("stuck", true)
	ingested, _ := time.Parse(time.RFC3339Nano, testEvent{}.header().Get(queue.HeaderIngestedAt))
	var clock atomic.Int64
	clock.Store(ingested.Add(time.Second).UnixNano())
	r, reg := newTestRouter(t, q, cat, nil, func(o *Options) {
		o.UnmatchedRetry = 20 * time.Millisecond
		o.UnmatchedHold = time.Minute
		o.Now = func() time.Time { return time.Unix(0, clock.Load()) }
	})
	runRouter(t, r)
	held := func(ns string) float64 {
		return counterValue(t, reg, "herald_router_events_held_total", map[string]string{"namespace": ns})
	}

	publishEvent(t, q, testEvent{ns: "shop", id: "edit-time", source: "/shop", typ: "order.created"})
	publishEvent(t, q, testEvent{ns: "stuck", id: "never", source: "/stuck", typ: "order.created"})
	publishEvent(t, q, testEvent{ns: "quiet", id: "nobody", source: "/quiet", typ: "order.created"})
	eventually(t, 10*time.Second, "both events held more than once", func() bool { return held("shop") >= 2 && held("stuck") >= 2 })
	eventually(t, 10*time.Second, "the settled namespace's event discarded", func() bool {
		return counterValue(t, reg, "herald_router_events_total", map[string]string{"result": ResultUnmatched}) == 1
	})
	if got := held("quiet"); got != 0 {
		t.Errorf("an event of a settled namespace was held %v times", got)
	}

	// The new generation is Ready: the held event matches it.
	cat.addEndpoint("shop", "billing")
	cat.addSubscription(&catalog.Subscription{Namespace: "shop", Name: "orders", Endpoint: "billing", Types: []string{"order.*"}})
	cat.setTransition("shop", false)
	eventually(t, 10*time.Second, "the held event routed", func() bool { return pending(t, q, "shop", "billing") == 1 })

	// The other namespace never settles: past the hold, discarded.
	clock.Store(ingested.Add(2 * time.Minute).UnixNano())
	waitProcessed(t, reg, q, 3)
	if got := counterValue(t, reg, "herald_router_events_total", map[string]string{"result": ResultUnmatchedAfterHold}); got != 1 {
		t.Errorf("events discarded after the hold = %v, want 1", got)
	}
}

// TestHeldEventsDoNotStopOtherNamespaces: more events held for a namespace
// in transition than JetStream's default MaxAckPending (1,000) do not stop
// fan-out of another namespace's events.
func TestHeldEventsDoNotStopOtherNamespaces(t *testing.T) {
	q := openQueue(t)
	cat := newFakeCatalog()
	cat.setTransition("editing", true)
	cat.addEndpoint("steady", "hook")
	cat.addSubscription(&catalog.Subscription{Namespace: "steady", Name: "all", Endpoint: "hook", Types: []string{"*"}})
	ingested, _ := time.Parse(time.RFC3339Nano, testEvent{}.header().Get(queue.HeaderIngestedAt))
	r, reg := newTestRouter(t, q, cat, nil, func(o *Options) {
		o.UnmatchedRetry = time.Hour
		o.Now = func() time.Time { return ingested.Add(time.Second) }
	})
	const held = 1005
	for i := range held {
		publishEvent(t, q, testEvent{ns: "editing", id: fmt.Sprintf("held-%d", i), source: "/editing", typ: "order.created"})
	}
	runRouter(t, r)
	eventually(t, 2*time.Minute, "a thousand events of the namespace in transition held", func() bool {
		return counterValue(t, reg, "herald_router_events_held_total", map[string]string{"namespace": "editing"}) >= 1000
	})
	publishEvent(t, q, testEvent{ns: "steady", id: "after", source: "/steady", typ: "order.created"})
	eventually(t, 30*time.Second, "the other namespace's event routed", func() bool { return pending(t, q, "steady", "hook") == 1 })
}

// TestUnmatchedEventIsHeldUntilCatalogCaughtUp: an event that matches
// nothing in a namespace that is not in transition is held, not discarded,
// while the catalog is not confirmed to have caught up with the API server
// since the event was ingested (a Subscription created a moment before the
// event, not yet seen by the informers); it is routed once the catalog has
// the Subscription. Where the catalog is confirmed up to date, it is
// discarded at once.
func TestUnmatchedEventIsHeldUntilCatalogCaughtUp(t *testing.T) {
	q := openQueue(t)
	cat := newFakeCatalog()
	ingested, _ := time.Parse(time.RFC3339Nano, testEvent{}.header().Get(queue.HeaderIngestedAt))
	var askedSince sync.Map // namespace → the since it was asked with
	r, reg := newTestRouter(t, q, cat, nil, func(o *Options) {
		o.UnmatchedHold = time.Minute
		o.Now = func() time.Time { return ingested.Add(time.Second) }
		o.ConfirmSettled = func(_ context.Context, namespace string, since time.Time) (bool, time.Duration) {
			askedSince.Store(namespace, since)
			// The catalog has caught up with "lagging" once it has its
			// Subscription; "quiet" has nothing to catch up with.
			subs, _ := cat.Subscriptions(namespace)
			return namespace == "quiet" || len(subs) > 0, 20 * time.Millisecond
		}
	})
	runRouter(t, r)
	held := func(ns string) float64 {
		return counterValue(t, reg, "herald_router_events_held_total", map[string]string{"namespace": ns})
	}

	publishEvent(t, q, testEvent{ns: "lagging", id: "just-after-create", source: "/shop", typ: "order.created"})
	publishEvent(t, q, testEvent{ns: "quiet", id: "nobody", source: "/quiet", typ: "order.created"})
	eventually(t, 10*time.Second, "the lagging namespace's event held", func() bool { return held("lagging") >= 2 })
	eventually(t, 10*time.Second, "the settled namespace's event discarded", func() bool {
		return counterValue(t, reg, "herald_router_events_total", map[string]string{"result": ResultUnmatched}) == 1
	})
	if got := held("quiet"); got != 0 {
		t.Errorf("an event of a namespace confirmed settled was held %v times", got)
	}
	if since, _ := askedSince.Load("lagging"); since != ingested {
		t.Errorf("ConfirmSettled asked since %v, want the event's ingest time %v", since, ingested)
	}

	// The informers deliver the Subscription: the held event matches it.
	cat.addEndpoint("lagging", "billing")
	cat.addSubscription(&catalog.Subscription{Namespace: "lagging", Name: "orders", Endpoint: "billing", Types: []string{"order.*"}})
	eventually(t, 10*time.Second, "the held event routed", func() bool { return pending(t, q, "lagging", "billing") == 1 })
}
