package health

import (
	"context"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/dispatcher/catalog"
	"github.com/herald-dev/herald/internal/testenv"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testenv.Stop()
	os.Exit(code)
}

// startEnv returns a client of the package's API server.
func startEnv(t *testing.T) client.Client { return testenv.Client(t) }

func newNamespace(t *testing.T, c client.Client) string { return testenv.Namespace(t, c, "health") }

func createEndpoint(t *testing.T, c client.Client, ns, name string) *heraldv1.WebhookEndpoint {
	t.Helper()
	ep := &heraldv1.WebhookEndpoint{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       heraldv1.WebhookEndpointSpec{URL: "https://receiver.example.com/hooks"},
	}
	if err := c.Create(testContext(t), ep); err != nil {
		t.Fatal(err)
	}
	return ep
}

func createSubscription(t *testing.T, c client.Client, ns, name, endpoint string) *heraldv1.Subscription {
	t.Helper()
	sub := &heraldv1.Subscription{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       heraldv1.SubscriptionSpec{EndpointRef: heraldv1.LocalObjectReference{Name: endpoint}, Types: []string{"order.*"}},
	}
	if err := c.Create(testContext(t), sub); err != nil {
		t.Fatal(err)
	}
	return sub
}

// managerApplyReady writes what the manager writes, the way
// controllers/apply.go does: Ready and observedGeneration under
// "herald-manager" with ForceOwnership.
func managerApplyReady(t *testing.T, c client.Client, kind, ns, name string, generation int64, message string) {
	t.Helper()
	status := map[string]any{
		"observedGeneration": generation,
		"conditions": []any{map[string]any{
			"type": heraldv1.ReadyCondition, "status": "True", "reason": heraldv1.ReconciledReason,
			"message": message, "observedGeneration": generation, "lastTransitionTime": "2026-01-01T00:00:00Z",
		}},
	}
	u := &unstructured.Unstructured{Object: map[string]any{"status": status}}
	u.SetGroupVersionKind(heraldv1.GroupVersion.WithKind(kind))
	u.SetNamespace(ns)
	u.SetName(name)
	if err := c.Status().Apply(testContext(t), client.ApplyConfigurationFromUnstructured(u), client.FieldOwner("herald-manager"), client.ForceOwnership); err != nil {
		t.Fatalf("manager apply: %v", err)
	}
}

// fakeEndpoints is the catalog's list of Ready endpoints.
type fakeEndpoints struct {
	mu  sync.Mutex
	eps []*catalog.Endpoint
}

func (f *fakeEndpoints) Endpoints() []*catalog.Endpoint {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.eps
}

func (f *fakeEndpoints) set(eps ...*catalog.Endpoint) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.eps = eps
}

func catalogEndpoint(ns, name string) *catalog.Endpoint {
	return &catalog.Endpoint{Namespace: ns, Name: name, Generation: 1, Keys: []heraldv1.SigningKey{{Secret: "whsec_test"}}}
}

// countingClient counts status applies.
type countingClient struct {
	client.Client
	applies atomic.Int64
}

func (c *countingClient) Status() client.SubResourceWriter {
	return &countingStatusWriter{SubResourceWriter: c.Client.Status(), n: &c.applies}
}

type countingStatusWriter struct {
	client.SubResourceWriter
	n *atomic.Int64
}

func (w *countingStatusWriter) Apply(ctx context.Context, obj runtime.ApplyConfiguration, opts ...client.SubResourceApplyOption) error {
	w.n.Add(1)
	return w.SubResourceWriter.Apply(ctx, obj, opts...)
}

func fastOptions() Options {
	return Options{
		FlushInterval: 50 * time.Millisecond,
		Interval:      300 * time.Millisecond,
		LeaseDuration: 2 * time.Second,
		GCGrace:       200 * time.Millisecond,
		OpTimeout:     5 * time.Second,
	}
}

func getEndpoint(t *testing.T, c client.Client, ns, name string) *heraldv1.WebhookEndpoint {
	t.Helper()
	ep := &heraldv1.WebhookEndpoint{}
	if err := c.Get(testContext(t), client.ObjectKey{Namespace: ns, Name: name}, ep); err != nil {
		t.Fatal(err)
	}
	return ep
}

func condition(ep *heraldv1.WebhookEndpoint, typ string) *metav1.Condition {
	return meta.FindStatusCondition(ep.Status.Conditions, typ)
}

// managedBy reports which field managers own a top-level status field.
func statusFieldOwners(obj metav1.Object, field string) []string {
	var owners []string
	for _, mf := range obj.GetManagedFields() {
		if mf.Subresource != "status" || mf.FieldsV1 == nil {
			continue
		}
		if containsField(mf.FieldsV1.GetRawString(), field) {
			owners = append(owners, mf.Manager)
		}
	}
	return owners
}

func containsField(raw, field string) bool {
	return len(raw) > 0 && (contains(raw, `"f:`+field+`"`))
}

func contains(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}

// TestEndpointStatusWithManagerFirst: the manager's status exists; the
// dispatcher adds status.delivery and DeliveryHealthy; each later write of
// either leaves the other's fields in place.
func TestEndpointStatusWithManagerFirst(t *testing.T) {
	c := startEnv(t)
	ns := newNamespace(t, c)
	ep := createEndpoint(t, c, ns, "billing")
	createSubscription(t, c, ns, "orders", "billing")
	managerApplyReady(t, c, "WebhookEndpoint", ns, "billing", ep.Generation, "Signing keys and delivery settings are ready")

	cat := &fakeEndpoints{}
	cat.set(catalogEndpoint(ns, "billing"))
	js := startJetStream(t)
	reg := prometheus.NewRegistry()
	opts := fastOptions()
	opts.Registerer = reg
	opts.Client, opts.Catalog, opts.Queue = c, cat, &testQueue{js: js.connect(), pending: 7, dead: 2}
	rep := newRunning(t, opts)

	for i := range 5 {
		rep.r.Record(Outcome{Namespace: ns, Endpoint: "billing", Success: true, Time: time.Now().Add(time.Duration(i) * time.Millisecond), Subscriptions: []string{"orders"}})
	}
	var got *heraldv1.WebhookEndpoint
	eventually(t, 15*time.Second, "status.delivery written", func() bool {
		got = getEndpoint(t, c, ns, "billing")
		return got.Status.Delivery != nil && got.Status.Delivery.Delivered == 5
	})
	d := got.Status.Delivery
	if d.Pending != 7 || d.DeadLettered != 2 || d.LastSuccessTime == nil || d.LastAttemptTime == nil || d.ConsecutiveFailures != 0 {
		t.Errorf("status.delivery = %+v", d)
	}
	healthy := condition(got, heraldv1.DeliveryHealthyCondition)
	if healthy == nil || healthy.Status != metav1.ConditionTrue || healthy.Reason != heraldv1.DeliveringReason || healthy.ObservedGeneration != got.Generation {
		t.Fatalf("DeliveryHealthy = %+v", healthy)
	}
	if ready := condition(got, heraldv1.ReadyCondition); ready == nil || ready.Reason != heraldv1.ReconciledReason {
		t.Errorf("manager's Ready condition lost: %+v", got.Status.Conditions)
	}
	if got.Status.ObservedGeneration != ep.Generation {
		t.Errorf("manager's observedGeneration lost: %d", got.Status.ObservedGeneration)
	}
	if owners := statusFieldOwners(got, "delivery"); len(owners) != 1 || owners[0] != string(FieldOwner) {
		t.Errorf("status.delivery owned by %v, want only %s", owners, FieldOwner)
	}
	if v := gaugeValue(t, reg, "herald_endpoint_pending", ns, "billing"); v != 7 {
		t.Errorf("herald_endpoint_pending = %v, want 7", v)
	}
	if v := gaugeValue(t, reg, "herald_endpoint_dead_lettered", ns, "billing"); v != 2 {
		t.Errorf("herald_endpoint_dead_lettered = %v, want 2", v)
	}
	transition := healthy.LastTransitionTime

	// More successes change the counts, not the condition's status: its
	// lastTransitionTime stays. Status times have a precision of one
	// second: wait for the next second to begin, so that a moved time would
	// show.
	eventually(t, 5*time.Second, "a new second", func() bool {
		return time.Now().UTC().Truncate(time.Second).After(transition.Time)
	})
	rep.r.Record(Outcome{Namespace: ns, Endpoint: "billing", Success: true})
	eventually(t, 15*time.Second, "delivered 6", func() bool {
		got = getEndpoint(t, c, ns, "billing")
		return got.Status.Delivery != nil && got.Status.Delivery.Delivered == 6
	})
	if h := condition(got, heraldv1.DeliveryHealthyCondition); !h.LastTransitionTime.Equal(&transition) {
		t.Errorf("lastTransitionTime moved from %v to %v without a status change", transition, h.LastTransitionTime)
	}

	// The manager writes again: the dispatcher's fields stay.
	managerApplyReady(t, c, "WebhookEndpoint", ns, "billing", ep.Generation, "Ready again")
	got = getEndpoint(t, c, ns, "billing")
	if got.Status.Delivery == nil || got.Status.Delivery.Delivered != 6 || condition(got, heraldv1.DeliveryHealthyCondition) == nil {
		t.Fatalf("manager's write removed the dispatcher's fields: %+v", got.Status)
	}

	// Failures turn the endpoint unhealthy; the manager's fields stay.
	for range 3 {
		rep.r.Record(Outcome{Namespace: ns, Endpoint: "billing", Reason: "HTTP 503"})
	}
	eventually(t, 15*time.Second, "ConsecutiveFailures", func() bool {
		got = getEndpoint(t, c, ns, "billing")
		h := condition(got, heraldv1.DeliveryHealthyCondition)
		return h != nil && h.Reason == heraldv1.ConsecutiveFailuresReason
	})
	h := condition(got, heraldv1.DeliveryHealthyCondition)
	if h.Status != metav1.ConditionFalse || got.Status.Delivery.ConsecutiveFailures != 3 || got.Status.Delivery.LastFailureReason != "HTTP 503" {
		t.Errorf("after failures: condition %+v, delivery %+v", h, got.Status.Delivery)
	}
	if h.LastTransitionTime.Equal(&transition) {
		t.Error("lastTransitionTime did not change with the status")
	}
	if ready := condition(got, heraldv1.ReadyCondition); ready == nil || ready.Message != "Ready again" || got.Status.ObservedGeneration != ep.Generation {
		t.Errorf("dispatcher's write removed the manager's fields: %+v", got.Status)
	}

	// Subscription counts, next to the manager's Ready.
	managerApplyReady(t, c, "Subscription", ns, "orders", 1, "Subscription is ready")
	rep.r.Matched(ns, "orders", time.Now())
	eventually(t, 15*time.Second, "Subscription status", func() bool {
		sub := &heraldv1.Subscription{}
		if err := c.Get(testContext(t), client.ObjectKey{Namespace: ns, Name: "orders"}, sub); err != nil {
			t.Fatal(err)
		}
		// Five successful attempts carried the Subscription.
		return sub.Status.Matched == 1 && sub.Status.Delivered == 5 && sub.Status.LastMatchedTime != nil &&
			meta.FindStatusCondition(sub.Status.Conditions, heraldv1.ReadyCondition) != nil && sub.Status.ObservedGeneration == 1
	})

	// The endpoint leaves the catalog and is deleted: gauges go, and so
	// does its entry in the bucket.
	cat.set()
	if err := c.Delete(testContext(t), ep); err != nil {
		t.Fatal(err)
	}
	eventually(t, 15*time.Second, "gauges removed", func() bool {
		return !hasGauge(t, reg, "herald_endpoint_pending", ns, "billing") && !hasGauge(t, reg, "herald_endpoint_dead_lettered", ns, "billing")
	})
	eventually(t, 15*time.Second, "bucket entry removed", func() bool {
		kv, err := js.connect().KeyValue(testContext(t), DefaultBucket)
		if err != nil {
			t.Fatal(err)
		}
		_, err = kv.Get(testContext(t), endpointKey(ns, "billing").bucketKey())
		return err != nil
	})
}

// TestEndpointStatusWithDispatcherFirst: the dispatcher writes first
// (NoTraffic), then the manager, then the dispatcher again.
func TestEndpointStatusWithDispatcherFirst(t *testing.T) {
	c := startEnv(t)
	ns := newNamespace(t, c)
	ep := createEndpoint(t, c, ns, "audit")
	cat := &fakeEndpoints{}
	cat.set(catalogEndpoint(ns, "audit"))
	js := startJetStream(t)
	opts := fastOptions()
	opts.Client, opts.Catalog, opts.Queue = c, cat, &testQueue{js: js.connect()}
	rep := newRunning(t, opts)

	var got *heraldv1.WebhookEndpoint
	eventually(t, 15*time.Second, "NoTraffic written", func() bool {
		got = getEndpoint(t, c, ns, "audit")
		h := condition(got, heraldv1.DeliveryHealthyCondition)
		return h != nil && h.Reason == heraldv1.NoTrafficReason && h.Status == metav1.ConditionUnknown
	})
	managerApplyReady(t, c, "WebhookEndpoint", ns, "audit", ep.Generation, "ready")
	got = getEndpoint(t, c, ns, "audit")
	if condition(got, heraldv1.DeliveryHealthyCondition) == nil || got.Status.Delivery == nil {
		t.Fatalf("manager's apply removed the dispatcher's fields: %+v", got.Status)
	}

	rep.r.Record(Outcome{Namespace: ns, Endpoint: "audit", Reason: "HTTP 410", Gone: true, GoneGeneration: ep.Generation})
	eventually(t, 15*time.Second, "EndpointGone", func() bool {
		got = getEndpoint(t, c, ns, "audit")
		h := condition(got, heraldv1.DeliveryHealthyCondition)
		return h != nil && h.Reason == heraldv1.EndpointGoneReason
	})
	if h := condition(got, heraldv1.DeliveryHealthyCondition); h.Status != metav1.ConditionFalse || got.Status.Delivery.GoneGeneration != ep.Generation {
		t.Errorf("gone: condition %+v, delivery %+v", h, got.Status.Delivery)
	}
	if ready := condition(got, heraldv1.ReadyCondition); ready == nil || got.Status.ObservedGeneration != ep.Generation {
		t.Errorf("dispatcher's write removed the manager's fields: %+v", got.Status)
	}
}

// TestStatusWritesAreBounded: a thousand attempts cost a handful of status
// writes, not one each, and nothing is written while nothing changes.
func TestStatusWritesAreBounded(t *testing.T) {
	c := startEnv(t)
	ns := newNamespace(t, c)
	createEndpoint(t, c, ns, "busy")
	cat := &fakeEndpoints{}
	cat.set(catalogEndpoint(ns, "busy"))
	counting := &countingClient{Client: c}
	js := startJetStream(t)
	queue := &testQueue{js: js.connect(), pending: 1}
	opts := fastOptions()
	opts.Interval = 500 * time.Millisecond
	opts.Client, opts.Catalog, opts.Queue = counting, cat, queue
	rep := newRunning(t, opts)

	start := time.Now()
	for i := range 1000 {
		rep.r.Record(Outcome{Namespace: ns, Endpoint: "busy", Success: i%10 != 0, Reason: "HTTP 500"})
		if i%100 == 99 {
			time.Sleep(100 * time.Millisecond)
		}
	}
	eventually(t, 15*time.Second, "all attempts in status", func() bool {
		ep := getEndpoint(t, c, ns, "busy")
		return ep.Status.Delivery != nil && ep.Status.Delivery.Delivered == 900
	})
	elapsed := time.Since(start)
	writes := counting.applies.Load()
	// One write per StatusInterval at most (by the Reporter's clock, which
	// is this one), plus the first, which may precede start. No fixed cap:
	// on a slow machine the attempts take longer, and more writes are due.
	if limit := int64(elapsed/opts.Interval) + 2; writes > limit {
		t.Errorf("%d status writes for 1000 attempts in %s (limit %d)", writes, elapsed.Round(time.Millisecond), limit)
	}
	t.Logf("%d status writes for 1000 attempts in %s", writes, elapsed.Round(time.Millisecond))

	// Nothing changes from here on. The writer polls the queue counts once
	// per Interval, then writes whatever is due: once three more polls
	// happened, at least two whole passes, an Interval apart, had their
	// chance to write.
	before := getEndpoint(t, c, ns, "busy").ResourceVersion
	polled := queue.polls.Load()
	eventually(t, 15*time.Second, "three more status passes", func() bool { return queue.polls.Load() >= polled+3 })
	if n := counting.applies.Load(); n != writes {
		t.Errorf("%d more status writes without any change", n-writes)
	}
	if after := getEndpoint(t, c, ns, "busy").ResourceVersion; after != before {
		t.Errorf("resourceVersion changed from %s to %s without any change", before, after)
	}
}

func gaugeValue(t *testing.T, reg *prometheus.Registry, name, ns, ep string) float64 {
	t.Helper()
	v, ok := gauge(t, reg, name, ns, ep)
	if !ok {
		t.Fatalf("no %s{namespace=%q,endpoint=%q}", name, ns, ep)
	}
	return v
}

func hasGauge(t *testing.T, reg *prometheus.Registry, name, ns, ep string) bool {
	t.Helper()
	_, ok := gauge(t, reg, name, ns, ep)
	return ok
}
