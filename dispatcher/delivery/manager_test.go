package delivery

import (
	"context"
	"encoding/json"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"

	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/dispatcher/catalog"
	"github.com/herald-dev/herald/dispatcher/queue"
)

func pending(t testing.TB, q *queue.Queue, namespace, endpoint string) uint64 {
	t.Helper()
	n, err := q.Pending(testContext(t), namespace, endpoint)
	if err != nil {
		t.Fatalf("Pending: %v", err)
	}
	return n
}

// settledPending waits for the endpoint's pending count to become want: a
// successful delivery is acknowledged without a confirmation
// (queue.Message.AckNoWait), so the server may count it for a moment after
// the outcome was reported.
func settledPending(t testing.TB, q *queue.Queue, namespace, endpoint string, want uint64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		n := pending(t, q, namespace, endpoint)
		if n == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pending = %d 5s after the outcome, want %d", n, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func deadLetters(t testing.TB, q *queue.Queue, namespace, endpoint string) uint64 {
	t.Helper()
	n, err := q.DeadLetterCount(testContext(t), namespace, endpoint)
	if err != nil {
		t.Fatalf("DeadLetterCount: %v", err)
	}
	return n
}

// orderOf is the event id in a StandardWebhooks body of testEvent.
func orderOf(t testing.TB, body []byte) string {
	t.Helper()
	var v struct {
		Data struct {
			Order string `json:"order"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &v); err != nil {
		t.Fatalf("body %s: %v", body, err)
	}
	return v.Data.Order
}

func TestManagerDeliversSignedWebhook(t *testing.T) {
	q := openQueue(t)
	rc := newReceiver(t, nil)
	m, out, rec := newTestManager(t, q)
	ep := testEndpoint("shop", "orders", rc.URL+"/hook")
	m.Sync([]*catalog.Endpoint{ep})
	if got := m.Running(); !slices.Equal(got, []string{"shop/orders"}) {
		t.Fatalf("Running = %v", got)
	}
	publish(t, q, "shop", "orders", "o-1")

	got := out.waitFor(t, "shop/orders", "a success", func(os []Outcome) bool { return countSuccess(os) == 1 })
	o := got[0]
	if !o.Sent || o.StatusCode != http.StatusNoContent || o.Reason != "" || o.Attempt != 1 || o.Generation != 1 ||
		o.Subscriptions != "sub-a,sub-b" || o.Namespace != "shop" || o.Endpoint != "orders" || o.DeadLettered || o.Gone {
		t.Errorf("outcome = %+v", o)
	}
	if o.Latency <= 0 || o.Time.IsZero() {
		t.Errorf("outcome lacks latency or time: %+v", o)
	}

	reqs := rc.received()
	if len(reqs) != 1 {
		t.Fatalf("receiver got %d requests", len(reqs))
	}
	r := reqs[0]
	if got, want := r.Header.Get("webhook-id"), queue.WebhookID("shop", "/orders", "o-1"); got != want || o.WebhookID != want {
		t.Errorf("webhook-id = %q (outcome %q), want %q", got, o.WebhookID, want)
	}
	if got := r.Header.Get("User-Agent"); got != "Herald/test" {
		t.Errorf("User-Agent = %q", got)
	}
	if want := `{"type":"order.created","timestamp":"2026-01-02T03:04:05.123Z","data":{"order":"o-1"}}`; string(r.Body) != want {
		t.Errorf("body = %s", r.Body)
	}
	wh, _ := standardwebhooks.NewWebhook(testSecret)
	if err := wh.Verify(r.Body, r.Header); err != nil {
		t.Errorf("official library: %v", err)
	}
	settledPending(t, q, "shop", "orders", 0)
	for _, a := range rec.addresses() {
		if a != netip.MustParseAddr("127.0.0.1") {
			t.Errorf("dialled %s", a)
		}
	}
}

// TestManagerRetriesWithSameIDAndFreshTimestamps: a 5xx is retried; every
// attempt carries the same webhook-id and a new timestamp and signature.
func TestManagerRetriesWithSameIDAndFreshTimestamps(t *testing.T) {
	q := openQueue(t)
	rc := newReceiver(t, func(i int, w http.ResponseWriter, _ *http.Request) {
		if i < 2 {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	// The signing clock moves a minute per attempt (within the official
	// library's five-minute tolerance), so fresh timestamps are visible
	// without waiting for seconds to tick.
	base := time.Now().Add(-2 * time.Minute)
	var calls atomic.Int64
	m, out, _ := newTestManager(t, q, func(o *Options) {
		o.Now = func() time.Time { return base.Add(time.Duration(calls.Add(1)) * time.Minute) }
	})
	m.Sync([]*catalog.Endpoint{testEndpoint("shop", "orders", rc.URL)})
	publish(t, q, "shop", "orders", "o-1")

	got := out.waitFor(t, "shop/orders", "a success", func(os []Outcome) bool { return countSuccess(os) == 1 })
	if len(got) != 3 {
		t.Fatalf("outcomes = %+v, want 2 failures and a success", got)
	}
	for i, o := range got[:2] {
		if o.Success || o.Reason != "HTTP 500" || o.StatusCode != 500 || o.Attempt != i+1 || o.DeadLettered {
			t.Errorf("attempt %d outcome = %+v", i+1, o)
		}
		if upper := BackoffCap(i+1, 100*time.Millisecond, 200*time.Millisecond); o.RetryDelay < 0 || o.RetryDelay > upper {
			t.Errorf("attempt %d retry delay %s outside [0, %s]", i+1, o.RetryDelay, upper)
		}
	}
	if got[2].Attempt != 3 || !got[2].Success {
		t.Errorf("last outcome = %+v", got[2])
	}

	reqs := rc.received()
	if len(reqs) != 3 {
		t.Fatalf("receiver got %d requests, want 3", len(reqs))
	}
	wh, _ := standardwebhooks.NewWebhook(testSecret)
	var lastTS int64
	for i, r := range reqs {
		if r.Header.Get("webhook-id") != reqs[0].Header.Get("webhook-id") {
			t.Errorf("attempt %d webhook-id %q differs from the first %q", i+1, r.Header.Get("webhook-id"), reqs[0].Header.Get("webhook-id"))
		}
		ts, _ := strconv.ParseInt(r.Header.Get("webhook-timestamp"), 10, 64)
		if ts <= lastTS {
			t.Errorf("attempt %d timestamp %d is not fresh (previous %d)", i+1, ts, lastTS)
		}
		lastTS = ts
		if i > 0 && r.Header.Get("webhook-signature") == reqs[i-1].Header.Get("webhook-signature") {
			t.Errorf("attempt %d reuses the previous signature", i+1)
		}
		if err := wh.Verify(r.Body, r.Header); err != nil {
			t.Errorf("attempt %d: official library: %v", i+1, err)
		}
	}
}

// TestManagerHonoursRetryAfter: 429 and 503 with Retry-After schedule the
// retry at the receiver's delay clamped to [initialBackoff, maxBackoff].
func TestManagerHonoursRetryAfter(t *testing.T) {
	q := openQueue(t)
	rc := newReceiver(t, func(i int, w http.ResponseWriter, _ *http.Request) {
		switch i {
		case 0:
			w.Header().Set("Retry-After", "3600") // clamped down to maxBackoff
			w.WriteHeader(http.StatusTooManyRequests)
		case 1:
			w.Header().Set("Retry-After", "0") // clamped up to initialBackoff
			w.WriteHeader(http.StatusServiceUnavailable)
		case 2:
			w.Header().Set("Retry-After", time.Now().Add(time.Hour).UTC().Format(http.TimeFormat))
			w.WriteHeader(http.StatusServiceUnavailable)
		default:
			w.WriteHeader(http.StatusOK)
		}
	})
	m, out, _ := newTestManager(t, q)
	ep := testEndpoint("shop", "orders", rc.URL)
	ep.Spec.Retry.InitialBackoff = &metav1.Duration{Duration: 100 * time.Millisecond}
	ep.Spec.Retry.MaxBackoff = &metav1.Duration{Duration: 400 * time.Millisecond}
	m.Sync([]*catalog.Endpoint{ep})
	publish(t, q, "shop", "orders", "o-1")

	got := out.waitFor(t, "shop/orders", "a success", func(os []Outcome) bool { return countSuccess(os) == 1 })
	want := []struct {
		reason string
		delay  time.Duration
	}{
		{"HTTP 429", 400 * time.Millisecond},
		{"HTTP 503", 100 * time.Millisecond},
		{"HTTP 503", 400 * time.Millisecond},
		{"", 0},
	}
	if len(got) != len(want) {
		t.Fatalf("outcomes = %+v", got)
	}
	for i, w := range want {
		if got[i].Reason != w.reason || got[i].RetryDelay != w.delay {
			t.Errorf("attempt %d: reason %q delay %s, want %q %s", i+1, got[i].Reason, got[i].RetryDelay, w.reason, w.delay)
		}
	}
	// JetStream redelivers no earlier than the scheduled delay.
	reqs := rc.received()
	for i := 1; i < len(reqs); i++ {
		if gap := reqs[i].At.Sub(reqs[i-1].At); gap < want[i-1].delay {
			t.Errorf("attempt %d came %s after the previous one, before its delay %s", i+1, gap, want[i-1].delay)
		}
	}
}

// TestManagerGoneStopsEndpoint: 410 stops delivery to the endpoint, its
// deliveries stay queued, and a new generation resumes delivery.
func TestManagerGoneStopsEndpoint(t *testing.T) {
	q := openQueue(t)
	rc := newReceiver(t, func(i int, w http.ResponseWriter, _ *http.Request) {
		if i == 0 {
			w.WriteHeader(http.StatusGone)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	m, out, _ := newTestManager(t, q)
	ep := testEndpoint("shop", "orders", rc.URL)
	m.Sync([]*catalog.Endpoint{ep})
	publish(t, q, "shop", "orders", "o-1")

	got := out.waitFor(t, "shop/orders", "Gone", func(os []Outcome) bool { return len(os) == 1 })
	if o := got[0]; !o.Gone || o.Success || o.Reason != "HTTP 410" || o.Generation != 1 || o.DeadLettered {
		t.Fatalf("outcome = %+v", o)
	}
	if r := m.Running(); len(r) != 0 {
		t.Fatalf("Running = %v after 410", r)
	}
	publish(t, q, "shop", "orders", "o-2")
	// The catalog has not caught up yet (Gone still false): the same
	// generation stays stopped.
	m.Sync([]*catalog.Endpoint{ep})
	if r := m.Running(); len(r) != 0 {
		t.Fatalf("Running = %v for the gone generation", r)
	}
	// JetStream's consumer counters settle asynchronously after the Nak
	// and the new publish: wait (bounded) for both to be counted.
	deadline := time.Now().Add(10 * time.Second)
	for n := pending(t, q, "shop", "orders"); n != 2; n = pending(t, q, "shop", "orders") {
		if time.Now().After(deadline) {
			t.Fatalf("pending = %d, want both deliveries kept", n)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n := rc.count(); n != 1 {
		t.Fatalf("receiver got %d requests while gone", n)
	}

	// The user changes the spec: delivery resumes with everything queued.
	next := *ep
	next.Generation = 2
	m.Sync([]*catalog.Endpoint{&next})
	got = out.waitFor(t, "shop/orders", "two successes", func(os []Outcome) bool { return countSuccess(os) == 2 })
	for _, o := range got[1:] {
		if o.Generation != 2 {
			t.Errorf("outcome after resume = %+v", o)
		}
	}
	settledPending(t, q, "shop", "orders", 0)
}

func TestManagerTimeoutIsRetried(t *testing.T) {
	q := openQueue(t)
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	rc := newReceiver(t, func(i int, w http.ResponseWriter, r *http.Request) {
		if i == 0 {
			select {
			case <-release:
			case <-r.Context().Done():
			}
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	m, out, _ := newTestManager(t, q)
	ep := testEndpoint("shop", "orders", rc.URL)
	ep.Spec.Timeout = &metav1.Duration{Duration: 300 * time.Millisecond}
	m.Sync([]*catalog.Endpoint{ep})
	publish(t, q, "shop", "orders", "o-1")
	got := out.waitFor(t, "shop/orders", "a success", func(os []Outcome) bool { return countSuccess(os) == 1 })
	if got[0].Reason != ReasonTimeout || got[0].StatusCode != 0 || !got[0].Sent {
		t.Errorf("first outcome = %+v, want a Timeout", got[0])
	}
}

// TestManagerOrderedKeepsOrderAcrossRetry: an Ordered endpoint delivers
// strictly one at a time in publish order; a failing delivery holds back the
// ones behind it until it succeeds.
func TestManagerOrderedKeepsOrderAcrossRetry(t *testing.T) {
	q := openQueue(t)
	var inFlight, maxInFlight atomic.Int32
	var failures atomic.Int32
	var rc *receiver
	rc = newReceiver(t, func(_ int, w http.ResponseWriter, r *http.Request) {
		n := inFlight.Add(1)
		defer inFlight.Add(-1)
		for {
			m := maxInFlight.Load()
			if n <= m || maxInFlight.CompareAndSwap(m, n) {
				break
			}
		}
		time.Sleep(5 * time.Millisecond) // give a second request the chance to overlap
		reqs := rc.received()
		if orderOf(t, reqs[len(reqs)-1].Body) == "e-2" && failures.Add(1) <= 2 {
			w.WriteHeader(http.StatusBadGateway)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	for i := 1; i <= 5; i++ {
		publish(t, q, "shop", "ledger", "e-"+strconv.Itoa(i))
	}
	m, out, _ := newTestManager(t, q)
	ep := testEndpoint("shop", "ledger", rc.URL)
	ep.Spec.Ordering = heraldv1.Ordered
	m.Sync([]*catalog.Endpoint{ep})

	out.waitFor(t, "shop/ledger", "five successes", func(os []Outcome) bool { return countSuccess(os) == 5 })
	var order []string
	for _, r := range rc.received() {
		order = append(order, orderOf(t, r.Body))
	}
	if want := []string{"e-1", "e-2", "e-2", "e-2", "e-3", "e-4", "e-5"}; !slices.Equal(order, want) {
		t.Errorf("receiver saw %v, want %v", order, want)
	}
	if n := maxInFlight.Load(); n != 1 {
		t.Errorf("%d requests overlapped, want 1", n)
	}
}

// TestManagerBacklogUsesMaxInFlight: a backlog is delivered with
// maxInFlight requests at once (fetched in batches), never more, and every
// delivery arrives exactly once.
func TestManagerBacklogUsesMaxInFlight(t *testing.T) {
	q := openQueue(t)
	const deliveries, limit = 60, 6
	rc, peak := newPeakReceiver(t)
	for i := range deliveries {
		publish(t, q, "shop", "bulk", "d-"+strconv.Itoa(i))
	}
	m, out, _ := newTestManager(t, q)
	ep := testEndpoint("shop", "bulk", rc.URL)
	ep.Spec.MaxInFlight = new(int32(limit))
	m.Sync([]*catalog.Endpoint{ep})

	out.waitFor(t, "shop/bulk", "every delivery", func(os []Outcome) bool { return countSuccess(os) == deliveries })
	if n := peak.Load(); n != limit {
		t.Errorf("at most %d requests overlapped, want exactly maxInFlight %d", n, limit)
	}
	expectEachOnce(t, rc, deliveries)
}

// TestManagerFailingEndpointDoesNotDelayHealthy: while one endpoint's
// receiver hangs until every attempt times out, all deliveries to a healthy
// endpoint complete — and the failing endpoint is still retrying then.
func TestManagerFailingEndpointDoesNotDelayHealthy(t *testing.T) {
	q := openQueue(t)
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	hanging := newReceiver(t, func(_ int, _ http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	healthy := newReceiver(t, nil)
	const failingDeliveries, healthyDeliveries = 8, 30
	for i := range failingDeliveries {
		publish(t, q, "shop", "broken", "b-"+strconv.Itoa(i))
	}
	m, out, _ := newTestManager(t, q)
	broken := testEndpoint("shop", "broken", hanging.URL)
	broken.Spec.Timeout = &metav1.Duration{Duration: time.Second}
	broken.Spec.MaxInFlight = new(int32(4))
	broken.Spec.Retry.MaxAttempts = new(int32(100))
	m.Sync([]*catalog.Endpoint{broken, testEndpoint("shop", "fine", healthy.URL)})
	// The broken endpoint's receiver is busy before the healthy endpoint
	// gets any traffic.
	for range 4 {
		select {
		case <-hanging.arrived:
		case <-time.After(testTimeout):
			t.Fatal("the failing endpoint got no traffic")
		}
	}
	for i := range healthyDeliveries {
		publish(t, q, "shop", "fine", "f-"+strconv.Itoa(i))
	}

	out.waitFor(t, "shop/fine", "all healthy deliveries", func(os []Outcome) bool { return countSuccess(os) == healthyDeliveries })
	if n := countSuccess(out.of("shop/broken")); n != 0 {
		t.Fatalf("the failing endpoint had %d successes", n)
	}
	if n := pending(t, q, "shop", "broken"); n != failingDeliveries {
		t.Errorf("failing endpoint has %d deliveries pending, want all %d still retrying", n, failingDeliveries)
	}
	for _, o := range out.of("shop/broken") {
		if o.Reason != ReasonTimeout {
			t.Errorf("failing endpoint outcome = %+v", o)
		}
	}
}

func TestManagerSuspendedEndpointIsNotConsumed(t *testing.T) {
	q := openQueue(t)
	rc := newReceiver(t, nil)
	m, out, _ := newTestManager(t, q)
	ep := testEndpoint("shop", "orders", rc.URL)
	ep.Spec.Suspend = true
	m.Sync([]*catalog.Endpoint{ep})
	if r := m.Running(); len(r) != 0 {
		t.Fatalf("Running = %v for a suspended endpoint", r)
	}
	publish(t, q, "shop", "orders", "o-1")
	if n := pending(t, q, "shop", "orders"); n != 1 {
		t.Fatalf("pending = %d", n)
	}
	resumed := *ep
	resumed.Spec.Suspend = false
	resumed.Generation = 2
	m.Sync([]*catalog.Endpoint{&resumed})
	out.waitFor(t, "shop/orders", "a success", func(os []Outcome) bool { return countSuccess(os) == 1 })
	if n := rc.count(); n != 1 {
		t.Errorf("receiver got %d requests", n)
	}
}

func TestManagerDeadLettersAndCountsMetrics(t *testing.T) {
	q := openQueue(t)
	rc := newReceiver(t, respondStatus(http.StatusInternalServerError))
	reg := prometheus.NewRegistry()
	m, out, _ := newTestManager(t, q, func(o *Options) { o.Registerer = reg })
	ep := testEndpoint("shop", "orders", rc.URL)
	ep.Spec.Retry.MaxAttempts = new(int32(3))
	m.Sync([]*catalog.Endpoint{ep})
	publish(t, q, "shop", "orders", "o-1")

	// The next attempt can start before the previous one has reported:
	// wait for three, then take the attempts in their order.
	got := out.waitFor(t, "shop/orders", "dead letter", func(os []Outcome) bool {
		return len(os) >= 3 && slices.ContainsFunc(os, func(o Outcome) bool { return o.DeadLettered })
	})
	if len(got) != 3 {
		t.Fatalf("outcomes = %+v, want 3 attempts", got)
	}
	slices.SortFunc(got, func(a, b Outcome) int { return a.Attempt - b.Attempt })
	last := got[2]
	if last.DeadLetterReason != "MaxAttempts: HTTP 500" || last.Reason != "HTTP 500" || last.Attempt != 3 || last.RetryDelay != 0 {
		t.Errorf("last outcome = %+v", last)
	}
	if n := deadLetters(t, q, "shop", "orders"); n != 1 {
		t.Errorf("dead letters = %d", n)
	}
	if n := pending(t, q, "shop", "orders"); n != 0 {
		t.Errorf("pending = %d", n)
	}

	// An undecodable payload is dead-lettered without an attempt.
	publishPayload(t, q, "shop", "orders", "bad", []byte(`not a cloudevent`))
	got = out.waitFor(t, "shop/orders", "second dead letter", func(os []Outcome) bool { return len(os) == 4 })
	if o := got[3]; o.Sent || !o.DeadLettered || o.Reason != ReasonInvalidPayload || o.DeadLetterReason != ReasonInvalidPayload {
		t.Errorf("invalid payload outcome = %+v", o)
	}
	if n := rc.count(); n != 3 {
		t.Errorf("receiver got %d requests, want 3", n)
	}

	if v := metricValue(t, reg, "herald_deliveries_total", map[string]string{"namespace": "shop", "endpoint": "orders", "outcome": OutcomeFailure}); v != 3 {
		t.Errorf("herald_deliveries_total{outcome=failure} = %v, want 3", v)
	}
	if v := metricValue(t, reg, "herald_deliveries_total", map[string]string{"outcome": OutcomeSuccess}); v != 0 {
		t.Errorf("herald_deliveries_total{outcome=success} = %v, want 0", v)
	}
	if v := metricValue(t, reg, "herald_deliveries_dead_lettered_total", map[string]string{"namespace": "shop", "endpoint": "orders"}); v != 2 {
		t.Errorf("herald_deliveries_dead_lettered_total = %v, want 2", v)
	}
	if v := metricValue(t, reg, "herald_delivery_attempt_duration_seconds", map[string]string{"namespace": "shop", "endpoint": "orders"}); v != 3 {
		t.Errorf("herald_delivery_attempt_duration_seconds count = %v, want 3", v)
	}
	// The start lag counts each delivery's first attempt once: the two
	// retries of o-1 are not a start, the invalid payload's dead-lettering
	// is.
	if v := metricValue(t, reg, "herald_delivery_start_lag_seconds", nil); v != 2 {
		t.Errorf("herald_delivery_start_lag_seconds count = %v, want 2", v)
	}
	// Removing the endpoint drops its series.
	m.Sync(nil)
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == "herald_delivery_endpoints" || f.GetName() == "herald_delivery_start_lag_seconds" {
			continue // per state, or one for the dispatcher: not per endpoint
		}
		if n := len(f.GetMetric()); n != 0 {
			t.Errorf("%s has %d series after the endpoint was removed", f.GetName(), n)
		}
	}
	if v := metricValue(t, reg, "herald_delivery_endpoints", nil); v != 0 {
		t.Errorf("herald_delivery_endpoints = %v after the endpoint was removed, want 0", v)
	}
}

func TestManagerExpiredDeliveryIsDeadLettered(t *testing.T) {
	q := openQueue(t)
	rc := newReceiver(t, nil)
	m, out, _ := newTestManager(t, q)
	ep := testEndpoint("shop", "orders", rc.URL)
	ep.Spec.Retry.MaxAge = &metav1.Duration{Duration: time.Hour}
	header := queue.Header{}
	header.Set(queue.HeaderWebhookID, "msg_old")
	header.Set(queue.HeaderIngestedAt, time.Now().Add(-2*time.Hour).UTC().Format(time.RFC3339Nano))
	if _, _, err := q.PublishDelivery(testContext(t), "shop", "orders", "old", testEvent("old"), header); err != nil {
		t.Fatal(err)
	}
	m.Sync([]*catalog.Endpoint{ep})
	got := out.waitFor(t, "shop/orders", "dead letter", func(os []Outcome) bool { return len(os) == 1 })
	if o := got[0]; o.Sent || !o.DeadLettered || o.DeadLetterReason != ReasonMaxAge {
		t.Errorf("outcome = %+v", o)
	}
	if n := rc.count(); n != 0 {
		t.Errorf("receiver got %d requests for an expired delivery", n)
	}
}

func TestManagerBlocksInternalDestination(t *testing.T) {
	q := openQueue(t)
	m, out, rec := newTestManager(t, q)
	ep := testEndpoint("shop", "orders", "http://169.254.169.254/latest/meta-data/")
	ep.Spec.Retry.MaxAttempts = new(int32(1))
	m.Sync([]*catalog.Endpoint{ep})
	publish(t, q, "shop", "orders", "o-1")
	got := out.waitFor(t, "shop/orders", "an outcome", func(os []Outcome) bool { return len(os) == 1 })
	if o := got[0]; o.Reason != ReasonBlockedAddress || !o.DeadLettered {
		t.Errorf("outcome = %+v", o)
	}
	if a := rec.addresses(); len(a) != 0 {
		t.Errorf("guard let %v through", a)
	}
}

// TestManagerSyncAppliesChanges: a new spec takes effect for the next
// delivery, an Ordered switch recreates the consumer, and an endpoint left
// out of Sync stops.
func TestManagerSyncAppliesChanges(t *testing.T) {
	q := openQueue(t)
	first, second := newReceiver(t, nil), newReceiver(t, nil)
	m, out, _ := newTestManager(t, q)
	ep := testEndpoint("shop", "orders", first.URL)
	m.Sync([]*catalog.Endpoint{ep})
	publish(t, q, "shop", "orders", "o-1")
	out.waitFor(t, "shop/orders", "first success", func(os []Outcome) bool { return countSuccess(os) == 1 })

	// An identical snapshot changes nothing.
	same := *ep
	m.Sync([]*catalog.Endpoint{&same})

	moved := *ep
	moved.Generation = 2
	moved.Spec.URL = second.URL
	moved.Spec.Ordering = heraldv1.Ordered
	m.Sync([]*catalog.Endpoint{&moved})
	publish(t, q, "shop", "orders", "o-2")
	publish(t, q, "shop", "orders", "o-3")
	got := out.waitFor(t, "shop/orders", "three successes", func(os []Outcome) bool { return countSuccess(os) == 3 })
	if first.count() != 1 || second.count() != 2 {
		t.Errorf("requests: first receiver %d, second %d; want 1 and 2", first.count(), second.count())
	}
	for _, o := range got[1:] {
		if o.Generation != 2 {
			t.Errorf("outcome after the change = %+v", o)
		}
	}

	m.Sync(nil)
	if r := m.Running(); len(r) != 0 {
		t.Errorf("Running = %v after the endpoint left the catalog", r)
	}
}

// TestManagerStop: Stop waits for the attempt in flight, which is then
// acknowledged; when its context ends first, the attempt is cancelled and
// the delivery stays queued.
func TestManagerStop(t *testing.T) {
	t.Run("waits for in-flight attempts", func(t *testing.T) {
		q := openQueue(t)
		release := make(chan struct{})
		rc := newReceiver(t, func(_ int, w http.ResponseWriter, _ *http.Request) {
			<-release
			w.WriteHeader(http.StatusOK)
		})
		m, out, _ := newTestManager(t, q)
		m.Sync([]*catalog.Endpoint{testEndpoint("shop", "orders", rc.URL)})
		publish(t, q, "shop", "orders", "o-1")
		<-rc.arrived

		stopped := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
			defer cancel()
			stopped <- m.Stop(ctx)
		}()
		select {
		case err := <-stopped:
			t.Fatalf("Stop returned (%v) while an attempt was in flight", err)
		case <-time.After(100 * time.Millisecond):
		}
		close(release)
		if err := <-stopped; err != nil {
			t.Fatalf("Stop: %v", err)
		}
		if n := countSuccess(out.of("shop/orders")); n != 1 {
			t.Errorf("%d successes reported before Stop returned", n)
		}
		// Stop confirmed the acknowledgements before returning: no waiting.
		if n := pending(t, q, "shop", "orders"); n != 0 {
			t.Errorf("pending = %d after Stop", n)
		}
		// Sync after Stop starts nothing.
		m.Sync([]*catalog.Endpoint{testEndpoint("shop", "orders", rc.URL)})
		if r := m.Running(); len(r) != 0 {
			t.Errorf("Running = %v after Stop", r)
		}
	})
	t.Run("bounded by its context", func(t *testing.T) {
		q := openQueue(t)
		release := make(chan struct{})
		var once sync.Once
		t.Cleanup(func() { once.Do(func() { close(release) }) })
		rc := newReceiver(t, func(_ int, w http.ResponseWriter, r *http.Request) {
			select {
			case <-release:
			case <-r.Context().Done():
			}
		})
		m, out, _ := newTestManager(t, q)
		m.Sync([]*catalog.Endpoint{testEndpoint("shop", "orders", rc.URL)})
		publish(t, q, "shop", "orders", "o-1")
		<-rc.arrived
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		if err := m.Stop(ctx); err == nil {
			t.Fatal("Stop returned nil with an attempt still in flight")
		}
		// The cancelled attempt is handed back to the queue, not reported
		// as the receiver's failure.
		deadline := time.Now().Add(testTimeout)
		for pending(t, q, "shop", "orders") != 1 && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if n := pending(t, q, "shop", "orders"); n != 1 {
			t.Errorf("pending = %d, want the delivery kept", n)
		}
		if os := out.of("shop/orders"); len(os) != 0 {
			t.Errorf("outcomes reported for a cancelled attempt: %+v", os)
		}
	})
}

// metricValue sums the counter values (or histogram sample counts) of the
// series of a family whose labels include match.
func metricValue(t testing.TB, reg *prometheus.Registry, name string, match map[string]string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	var sum float64
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	series:
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			for k, v := range match {
				if labels[k] != v {
					continue series
				}
			}
			switch {
			case m.GetCounter() != nil:
				sum += m.GetCounter().GetValue()
			case m.GetHistogram() != nil:
				sum += float64(m.GetHistogram().GetSampleCount())
			case m.GetGauge() != nil:
				sum += m.GetGauge().GetValue()
			}
		}
	}
	return sum
}

// fakeTimeReceiver answers 500 until healthy is set, then 200, and records
// the pacing clock's time of every request.
type fakeTimeReceiver struct {
	*receiver
	healthy atomic.Bool
	mu      sync.Mutex
	at      []time.Time
}

func newFakeTimeReceiver(t *testing.T, fc *clocktesting.FakeClock) *fakeTimeReceiver {
	r := &fakeTimeReceiver{}
	r.receiver = newReceiver(t, func(_ int, w http.ResponseWriter, _ *http.Request) {
		r.mu.Lock()
		r.at = append(r.at, fc.Now())
		r.mu.Unlock()
		if r.healthy.Load() {
			w.WriteHeader(http.StatusOK)
			return
		}
		w.WriteHeader(http.StatusInternalServerError)
	})
	return r
}

// requestsAt counts the requests made when the pacing clock read at.
func (r *fakeTimeReceiver) requestsAt(at time.Time) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, a := range r.at {
		if a.Equal(at) {
			n++
		}
	}
	return n
}

// waitParked waits until no ticket is out (every request sent has been
// answered), every answer is reported, and the endpoint's loop waits on the
// pacing clock (a cool-down or pause): from then on nothing is sent until
// the clock moves. Requests started before the circuit opened hold their
// tickets until answered, so a request still on its way is not mistaken for
// one sent after the clock moved.
func waitParked(t *testing.T, m *Manager, fc *clocktesting.FakeClock, rc *receiver, out *outcomes, key string) {
	t.Helper()
	out.waitFor(t, key, "every request answered and reported, the loop waiting on the clock", func(os []Outcome) bool {
		m.mu.Lock()
		w := m.workers[key]
		m.mu.Unlock()
		if w == nil {
			return false
		}
		w.mu.Lock()
		pacer := w.pacer
		w.mu.Unlock()
		return pacer != nil && pacer.InFlight() == 0 && len(os) == rc.count() && fc.HasWaiters()
	})
}

// TestManagerCircuitBreakerProbes: failures open the circuit; nothing is
// sent until the cool-down has passed on the pacing clock; then exactly one
// probe goes out per cool-down until one succeeds, and delivery resumes.
// The pacing clock is a fake one, so the cool-down is checked exactly and
// not against wall time on a loaded machine.
func TestManagerCircuitBreakerProbes(t *testing.T) {
	q := openQueue(t)
	fc := clocktesting.NewFakeClock(t0)
	rc := newFakeTimeReceiver(t, fc)
	const cooldown = time.Minute
	m, out, _ := newTestManager(t, q, func(o *Options) {
		o.Clock = fc
		o.Breaker = BreakerConfig{MinRequests: 2, FailureRatio: 1, Cooldown: cooldown, MaxCooldown: cooldown}
	})
	ep := testEndpoint("shop", "orders", rc.URL)
	ep.Spec.MaxInFlight = new(int32(4))
	ep.Spec.Retry.MaxAttempts = new(int32(100))
	const events = 6
	for i := range events {
		publish(t, q, "shop", "orders", "o-"+strconv.Itoa(i))
	}
	m.Sync([]*catalog.Endpoint{ep})

	// Failures open the circuit; the loop then waits for the cool-down.
	waitParked(t, m, fc, rc.receiver, out, "shop/orders")
	if !slices.ContainsFunc(out.of("shop/orders"), func(o Outcome) bool { return o.CircuitOpen }) {
		t.Fatalf("circuit not open after failures: %+v", out.of("shop/orders"))
	}
	beforeOpen := rc.count()

	// One nanosecond short of the cool-down nothing may go out; at the
	// cool-down the probe does, and fails.
	fc.Step(cooldown - time.Nanosecond)
	fc.Step(time.Nanosecond)
	waitParked(t, m, fc, rc.receiver, out, "shop/orders")
	if got := rc.requestsAt(t0.Add(cooldown)); got != 1 {
		t.Fatalf("%d requests at the end of the first cool-down, want exactly one probe", got)
	}
	if got := rc.count(); got != beforeOpen+1 {
		t.Fatalf("%d requests after the first probe, want %d", got, beforeOpen+1)
	}

	// The failed probe re-opened the circuit for another cool-down. The
	// receiver recovers; the next probe succeeds and delivery resumes.
	rc.healthy.Store(true)
	fc.Step(cooldown - time.Nanosecond)
	fc.Step(time.Nanosecond)
	got := out.waitFor(t, "shop/orders", "every event delivered", func(os []Outcome) bool { return countSuccess(os) == events })
	if n := rc.requestsAt(t0.Add(cooldown - time.Nanosecond)); n != 0 {
		t.Errorf("%d requests before the second cool-down ended", n)
	}
	if n := rc.requestsAt(t0.Add(cooldown)); n != 1 {
		t.Errorf("%d requests at the first probe's time after recovery, want still 1", n)
	}
	for _, o := range got {
		if o.Success && o.CircuitOpen {
			t.Errorf("circuit still open after a delivery succeeded: %+v", o)
		}
	}
	if n := rc.requestsAt(t0); n != beforeOpen {
		t.Errorf("%d requests at the start, %d before the circuit opened", n, beforeOpen)
	}
}

// TestManagerRetryAfterPausesEndpoint: a 429 with Retry-After holds the
// endpoint's next request until the pause (capped at maxBackoff) has
// passed on the pacing clock, and does not open the circuit.
func TestManagerRetryAfterPausesEndpoint(t *testing.T) {
	q := openQueue(t)
	fc := clocktesting.NewFakeClock(t0)
	var mu sync.Mutex
	var at []time.Time
	rc := newReceiver(t, func(i int, w http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		at = append(at, fc.Now())
		mu.Unlock()
		if i == 0 {
			w.Header().Set("Retry-After", "3600")
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	m, out, _ := newTestManager(t, q, func(o *Options) {
		o.Clock = fc
		o.Breaker = BreakerConfig{MinRequests: 1, FailureRatio: 1}
	})
	ep := testEndpoint("shop", "orders", rc.URL)
	ep.Spec.MaxInFlight = new(int32(1))
	const maxBackoff = 200 * time.Millisecond
	ep.Spec.Retry.MaxBackoff = &metav1.Duration{Duration: maxBackoff}
	publish(t, q, "shop", "orders", "o-0")
	publish(t, q, "shop", "orders", "o-1")
	m.Sync([]*catalog.Endpoint{ep})

	waitParked(t, m, fc, rc, out, "shop/orders")
	if n := rc.count(); n != 1 {
		t.Fatalf("%d requests before the pause ended, want the one answered 429", n)
	}
	fc.Step(maxBackoff)
	got := out.waitFor(t, "shop/orders", "both delivered", func(os []Outcome) bool { return countSuccess(os) == 2 })
	if slices.ContainsFunc(got, func(o Outcome) bool { return o.CircuitOpen }) {
		t.Errorf("a 429 with Retry-After opened the circuit: %+v", got)
	}
	mu.Lock()
	defer mu.Unlock()
	for i, a := range at[1:] {
		if a.Before(t0.Add(maxBackoff)) {
			t.Errorf("request %d sent at +%s, inside the pause", i+2, a.Sub(t0))
		}
	}
}

// TestManagerReceiverSucceedingOnRetryIsNotStarved: a receiver that answers
// 503 with Retry-After to the first two attempts of every webhook-id and
// 200 to the third gets every event, and the circuit never opens: it is
// pacing us, not failing. With the old consecutive-failures breaker the
// circuit opened after five such answers and stayed open.
func TestManagerReceiverSucceedingOnRetryIsNotStarved(t *testing.T) {
	q := openQueue(t)
	var mu sync.Mutex
	attempts := map[string]int{}
	rc := newReceiver(t, func(_ int, w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get("webhook-id")
		mu.Lock()
		attempts[id]++
		n := attempts[id]
		mu.Unlock()
		if n <= 2 {
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	m, out, _ := newTestManager(t, q, func(o *Options) { o.Breaker = BreakerConfig{} })
	ep := testEndpoint("shop", "orders", rc.URL)
	ep.Spec.Retry.MaxBackoff = &metav1.Duration{Duration: time.Second}
	const events = 20
	for i := range events {
		publish(t, q, "shop", "orders", "o-"+strconv.Itoa(i))
	}
	m.Sync([]*catalog.Endpoint{ep})
	got := out.waitFor(t, "shop/orders", "every event delivered", func(os []Outcome) bool { return countSuccess(os) == events })
	if slices.ContainsFunc(got, func(o Outcome) bool { return o.CircuitOpen }) {
		t.Errorf("the circuit opened for a receiver that paces with Retry-After")
	}
	mu.Lock()
	defer mu.Unlock()
	for id, n := range attempts {
		if n != 3 {
			t.Errorf("webhook-id %s: %d attempts, want 3", id, n)
		}
	}
}

// deliveryConsumers is the number of consumers of the deliveries stream.
func deliveryConsumers(t *testing.T, q *queue.Queue) int {
	t.Helper()
	stream, err := q.JetStream().Stream(testContext(t), queue.DeliveriesStream)
	if err != nil {
		t.Fatalf("deliveries stream: %v", err)
	}
	info, err := stream.Info(testContext(t))
	if err != nil {
		t.Fatalf("deliveries stream info: %v", err)
	}
	return info.State.Consumers
}

func waitForConsumers(t *testing.T, q *queue.Queue, want int, what string) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for deliveryConsumers(t, q) != want {
		if time.Now().After(deadline) {
			t.Fatalf("%s: the deliveries stream has %d consumers, want %d", what, deliveryConsumers(t, q), want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitForParked waits until an endpoint's loop has no goroutine.
func waitForParked(t *testing.T, m *Manager, key string) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for {
		m.mu.Lock()
		w := m.workers[key]
		m.mu.Unlock()
		if w == nil {
			t.Fatalf("no worker for %s", key)
		}
		w.mu.Lock()
		parked := !w.running && w.idle.Load()
		w.mu.Unlock()
		if parked {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the loop of idle endpoint %s still runs", key)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestManagerIdleEndpointReleasesConsumerAndWakes: an endpoint with nothing
// queued holds no consumer; Wake starts delivery of what was queued at
// once, and the consumer is released again once the endpoint is idle for
// IdleAfter.
func TestManagerIdleEndpointReleasesConsumerAndWakes(t *testing.T) {
	q := openQueue(t)
	rc := newReceiver(t, nil)
	reg := prometheus.NewRegistry()
	m, out, _ := newTestManager(t, q, func(o *Options) {
		o.FetchWait = 100 * time.Millisecond
		o.IdleAfter = 300 * time.Millisecond
		o.SweepInterval = time.Hour // only Wake can start delivery here
		o.Registerer = reg
	})
	m.Sync([]*catalog.Endpoint{testEndpoint("shop", "quiet", rc.URL)})
	waitForConsumers(t, q, 0, "a new endpoint with nothing queued")
	waitForParked(t, m, "shop/quiet")
	for state, want := range map[string]float64{EndpointStateIdle: 1, EndpointStateActive: 0} {
		if got := metricValue(t, reg, "herald_delivery_endpoints", map[string]string{"state": state}); got != want {
			t.Errorf("herald_delivery_endpoints{state=%q} = %v, want %v", state, got, want)
		}
	}
	for round := 1; round <= 2; round++ {
		publish(t, q, "shop", "quiet", "e-"+strconv.Itoa(round))
		m.Wake("shop", "quiet")
		out.waitFor(t, "shop/quiet", "delivery after Wake", func(os []Outcome) bool { return countSuccess(os) == round })
		waitForConsumers(t, q, 0, "the endpoint idle again")
		waitForParked(t, m, "shop/quiet")
	}
	if n := len(rc.received()); n != 2 {
		t.Errorf("receiver got %d requests, want 2", n)
	}
}

// TestManagerSweepWakesIdleEndpoint: deliveries queued without a Wake (by
// another replica, or a dead-letter replay) are found by the sweep.
func TestManagerSweepWakesIdleEndpoint(t *testing.T) {
	q := openQueue(t)
	rc := newReceiver(t, nil)
	m, out, _ := newTestManager(t, q, func(o *Options) {
		o.FetchWait = 100 * time.Millisecond
		o.IdleAfter = 300 * time.Millisecond
	})
	m.Sync([]*catalog.Endpoint{testEndpoint("shop", "quiet", rc.URL)})
	waitForConsumers(t, q, 0, "a new endpoint with nothing queued")
	publish(t, q, "shop", "quiet", "e-1")
	out.waitFor(t, "shop/quiet", "delivery found by the sweep", func(os []Outcome) bool { return countSuccess(os) == 1 })
}

// TestManagerRetriesInBackoffDoNotBlockFreshDeliveries: with more
// deliveries waiting for a retry than JetStream's default MaxAckPending
// (1,000), fresh deliveries of an Unordered endpoint still go out at once.
func TestManagerRetriesInBackoffDoNotBlockFreshDeliveries(t *testing.T) {
	q := openQueue(t)
	const backingOff = 1005
	var failing atomic.Bool
	failing.Store(true)
	rc := newReceiver(t, func(_ int, w http.ResponseWriter, _ *http.Request) {
		if failing.Load() {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	m, out, _ := newTestManager(t, q)
	ep := testEndpoint("shop", "orders", rc.URL)
	ep.Spec.Retry.InitialBackoff = &metav1.Duration{Duration: time.Hour}
	ep.Spec.Retry.MaxBackoff = &metav1.Duration{Duration: 2 * time.Hour}
	ep.Spec.MaxInFlight = new(int32(100))
	for i := range backingOff {
		publish(t, q, "shop", "orders", "retrying-"+strconv.Itoa(i))
	}
	m.Sync([]*catalog.Endpoint{ep})
	out.waitForWithin(t, "shop/orders", "every first attempt failed", 5*time.Minute, func(os []Outcome) bool { return len(os) >= backingOff })
	if !slices.ContainsFunc(out.of("shop/orders"), func(o Outcome) bool { return o.RetryDelay > time.Minute }) {
		t.Fatal("no delivery is backing off: the test would prove nothing")
	}
	failing.Store(false)
	for i := range 5 {
		publish(t, q, "shop", "orders", "fresh-"+strconv.Itoa(i))
	}
	// Fresh deliveries succeed on their first attempt; a few of the
	// backing-off ones drew a short full-jitter delay and may succeed on
	// their second meanwhile, which is not what this test is about.
	out.waitFor(t, "shop/orders", "five fresh deliveries", func(os []Outcome) bool {
		fresh := 0
		for _, o := range os {
			if o.Success && o.Attempt == 1 {
				fresh++
			}
		}
		return fresh == 5
	})
}

// TestManagerIdleEndpointHoldsNoSenderUntilItsFirstDelivery: an endpoint
// that has had no delivery keeps no request template, HTTP client, pacer or
// loop context (they were a third of an idle endpoint's memory), yet an
// unusable configuration is still refused when it is synced, and the first
// delivery makes them.
func TestManagerIdleEndpointHoldsNoSenderUntilItsFirstDelivery(t *testing.T) {
	q := openQueue(t)
	rc := newReceiver(t, nil)
	m, out, _ := newTestManager(t, q, func(o *Options) {
		o.FetchWait = 100 * time.Millisecond
		o.IdleAfter = 300 * time.Millisecond
		o.SweepInterval = time.Hour
	})
	badCA := testEndpoint("shop", "bad-ca", "https://127.0.0.1:1/hook")
	badCA.CABundle = []byte("not a certificate")
	m.Sync([]*catalog.Endpoint{testEndpoint("shop", "quiet", rc.URL), badCA})
	if got := m.Running(); !slices.Equal(got, []string{"shop/quiet"}) {
		t.Fatalf("Running = %v, want only shop/quiet: the bad CA bundle must be refused at Sync", got)
	}
	waitForParked(t, m, "shop/quiet")
	m.mu.Lock()
	w := m.workers["shop/quiet"]
	m.mu.Unlock()
	held := func() (sender bool, pacer bool, run bool) {
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.cfg.built.Load() != nil, w.pacer != nil, w.cancelRun != nil
	}
	if sender, pacer, run := held(); sender || pacer || run {
		t.Fatalf("idle endpoint holds sender=%v pacer=%v loop context=%v, want none", sender, pacer, run)
	}

	publish(t, q, "shop", "quiet", "e-1")
	m.Wake("shop", "quiet")
	out.waitFor(t, "shop/quiet", "the first delivery", func(os []Outcome) bool { return countSuccess(os) == 1 })
	if sender, pacer, _ := held(); !sender || !pacer {
		t.Errorf("after a delivery: sender=%v pacer=%v, want both kept", sender, pacer)
	}
	waitForParked(t, m, "shop/quiet")
	if _, _, run := held(); run {
		t.Errorf("a parked endpoint keeps its loop context")
	}
}
