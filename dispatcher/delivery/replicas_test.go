package delivery

import (
	"context"
	"net/http"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"

	"github.com/herald-dev/herald/dispatcher/catalog"
	"github.com/herald-dev/herald/dispatcher/queue"
)

// newReplica starts a delivery manager as one of several dispatcher
// replicas sharing q: it delivers only to the endpoints whose lease it
// holds.
func newReplica(t *testing.T, q *queue.Queue, id string, mutate ...func(*Options)) (*Manager, *outcomes) {
	t.Helper()
	owners, err := q.Owners(testContext(t), id, 3*time.Second)
	if err != nil {
		t.Fatalf("Owners(%s): %v", id, err)
	}
	setup := func(o *Options) {
		o.Owners = owners
		o.Logger = testr.NewWithOptions(t, testr.Options{Verbosity: 2}).WithName(id)
	}
	m, out, _ := newTestManager(t, q, append([]func(*Options){setup}, mutate...)...)
	return m, out
}

// TestReplicasKeepMaxInFlightPerEndpoint: two replicas deliver one
// endpoint's backlog, and the receiver never sees more requests at once
// than the endpoint's maxInFlight (each replica with its own pacer let
// twice as many through).
func TestReplicasKeepMaxInFlightPerEndpoint(t *testing.T) {
	q := openQueue(t)
	const deliveries, limit = 120, 3
	rc, peak := newPeakReceiver(t)
	for i := range deliveries {
		publish(t, q, "shop", "bulk", "d-"+strconv.Itoa(i))
	}
	ep := testEndpoint("shop", "bulk", rc.URL)
	ep.Spec.MaxInFlight = new(int32(limit))
	a, outA := newReplica(t, q, "replica-a")
	b, outB := newReplica(t, q, "replica-b")
	a.Sync([]*catalog.Endpoint{ep})
	b.Sync([]*catalog.Endpoint{ep})
	// Wake both as the fan-out stage of each replica would.
	a.Wake("shop", "bulk")
	b.Wake("shop", "bulk")

	both := func() int { return countSuccess(outA.of("shop/bulk")) + countSuccess(outB.of("shop/bulk")) }
	deadline := time.Now().Add(2 * testTimeout)
	for both() < deliveries {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d deliveries arrived", both(), deliveries)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n := peak.Load(); n > limit {
		t.Errorf("the receiver saw %d requests at once from two replicas, want at most maxInFlight %d", n, limit)
	}
	expectEachOnce(t, rc, deliveries)
}

// TestReplicasShareOneBreakerAndHandOver: with a failing receiver, the
// replica that delivers opens its circuit after the breaker's minimum of
// requests, and the other replica sends nothing meanwhile (with a breaker
// each, the receiver got both replicas' requests). When the owner stops,
// the other replica takes the endpoint over without waiting for the lease
// to expire and delivers what is queued.
func TestReplicasShareOneBreakerAndHandOver(t *testing.T) {
	q := openQueue(t)
	const deliveries, minRequests = 30, 4
	var healthy atomic.Bool
	rc := newReceiver(t, func(_ int, w http.ResponseWriter, _ *http.Request) {
		if healthy.Load() {
			w.WriteHeader(http.StatusOK)
			return
		}
		w.WriteHeader(http.StatusInternalServerError)
	})
	for i := range deliveries {
		publish(t, q, "shop", "flaky", "d-"+strconv.Itoa(i))
	}
	ep := testEndpoint("shop", "flaky", rc.URL)
	ep.Spec.MaxInFlight = new(int32(1))
	breaker := func(o *Options) {
		o.Breaker = BreakerConfig{MinRequests: minRequests, FailureRatio: 0.5, Cooldown: time.Hour}
	}
	replicas := make([]*Manager, 2)
	outs := make([]*outcomes, 2)
	for i, id := range []string{"replica-a", "replica-b"} {
		replicas[i], outs[i] = newReplica(t, q, id, breaker)
	}
	for _, m := range replicas {
		m.Sync([]*catalog.Endpoint{ep})
		m.Wake("shop", "flaky")
	}
	// Attempts report concurrently, so the outcome that opened the circuit
	// need not be the last reported: look for it among them all.
	circuitOpen := func(os []Outcome) bool { return slices.ContainsFunc(os, func(o Outcome) bool { return o.CircuitOpen }) }
	owner := -1
	deadline := time.Now().Add(testTimeout)
	for owner < 0 {
		for i, out := range outs {
			if circuitOpen(out.of("shop/flaky")) {
				owner = i
			}
		}
		if time.Now().After(deadline) {
			for i, out := range outs {
				t.Logf("replica %d outcomes: %+v", i, out.of("shop/flaky"))
			}
			t.Logf("the receiver got %d requests; goroutines:\n%s", rc.count(), deliveryStacks())
			t.Fatalf("no replica opened its circuit within %s", testTimeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
	other := 1 - owner

	// The owner stops: the other replica takes over and, the receiver
	// healthy again, delivers every delivery.
	healthy.Store(true)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if err := replicas[owner].Stop(ctx); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	outs[other].waitFor(t, "shop/flaky", "every delivery", func(os []Outcome) bool { return countSuccess(os) == deliveries })

	byOwner := outs[owner].of("shop/flaky")
	if got := len(byOwner); got != minRequests {
		t.Errorf("the owner made %d attempts, want %d before its circuit opened and none after", got, minRequests)
	}
	var last time.Time
	for _, o := range byOwner {
		if o.Time.After(last) {
			last = o.Time
		}
	}
	for _, o := range outs[other].of("shop/flaky") {
		if o.Time.Before(last) {
			t.Errorf("the other replica attempted %s at %s, while the owner delivered (its last attempt at %s)", o.WebhookID, o.Time, last)
		}
	}
	if got, want := rc.count(), minRequests+deliveries; got != want {
		t.Errorf("the receiver got %d requests, want %d: %d failures, then each delivery once", got, want, minRequests)
	}
}
