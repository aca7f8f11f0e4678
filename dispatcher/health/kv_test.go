package health

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/client"

	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
)

// TestReplicasSumInBucket: two dispatcher replicas record attempts for the
// same endpoint and flush concurrently; the bucket holds the sum.
func TestReplicasSumInBucket(t *testing.T) {
	js := startJetStream(t)
	a := openReporter(t, js.connect(), nil, Options{Replica: "a"})
	b := openReporter(t, js.connect(), nil, Options{Replica: "b"})
	ctx := testContext(t)

	const rounds, perRound = 10, 50
	for round := range rounds {
		var wg sync.WaitGroup
		for _, r := range []*Reporter{a, b} {
			wg.Go(func() {
				for i := range perRound {
					sec := round*perRound + i
					r.Record(Outcome{Namespace: "shop", Endpoint: "billing", Time: at(sec), Success: i%5 != 0, Reason: "HTTP 503",
						Subscriptions: []string{"orders"}})
					r.Matched("shop", "orders", at(sec))
				}
				r.flush(ctx)
			})
		}
		wg.Wait()
	}
	if len(a.endpointDeltas)+len(b.endpointDeltas)+len(a.subDeltas)+len(b.subDeltas) != 0 {
		t.Fatal("deltas left after flushing")
	}

	st := readEndpointTotals(t, js.connect(), endpointKey("shop", "billing"))
	total := int64(2 * rounds * perRound)
	if st.Attempts != total || st.Delivered != total*4/5 || st.Failed != total/5 {
		t.Errorf("bucket totals attempts=%d delivered=%d failed=%d, want %d %d %d", st.Attempts, st.Delivered, st.Failed, total, total*4/5, total/5)
	}
	if want := at(rounds*perRound - 1); !st.LastAttemptTime.Equal(want) || !st.LastSuccessTime.Equal(want) {
		t.Errorf("last attempt %v, last success %v, want %v", st.LastAttemptTime, st.LastSuccessTime, want)
	}
	if st.ConsecutiveFailures != 0 {
		t.Errorf("consecutive failures %d after a final success", st.ConsecutiveFailures)
	}

	kv, err := js.connect().KeyValue(ctx, DefaultBucket)
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(ctx, subscriptionKey("shop", "orders").bucketKey())
	if err != nil {
		t.Fatal(err)
	}
	sub, _ := decodeSubscriptionState(e.Value())
	if sub.Matched != total || sub.Delivered != total*4/5 {
		t.Errorf("subscription totals matched=%d delivered=%d, want %d %d", sub.Matched, sub.Delivered, total, total*4/5)
	}
}

// TestFlushSurvivesStaleCache: a replica whose cached revision is stale
// (another replica wrote meanwhile) retries with the latest value instead
// of losing either write.
func TestFlushSurvivesStaleCache(t *testing.T) {
	js := startJetStream(t)
	a := openReporter(t, js.connect(), nil, Options{Replica: "a"})
	b := openReporter(t, js.connect(), nil, Options{Replica: "b"})
	ctx := testContext(t)
	k := endpointKey("ns", "ep")

	a.Record(success(1))
	a.flush(ctx)
	// b's cache may not have seen a's write yet; force it stale.
	b.cacheMu.Lock()
	delete(b.cache, k.bucketKey())
	b.cacheMu.Unlock()
	b.Record(failure(2, "Timeout"))
	b.flush(ctx)
	a.Record(failure(3, "Timeout"))
	a.cacheMu.Lock()
	a.cache[k.bucketKey()] = cacheEntry{revision: 1, value: []byte(`{}`)}
	a.cacheMu.Unlock()
	a.flush(ctx)

	st := readEndpointTotals(t, js.connect(), k)
	if st.Attempts != 3 || st.Delivered != 1 || st.ConsecutiveFailures != 2 || st.LastFailureReason != "Timeout" {
		t.Errorf("totals %+v", st)
	}
}

// TestFlushKeepsDeltasWhenBucketUnavailable: a failed merge is retried on
// the next flush, nothing is lost.
func TestFlushKeepsDeltasWhenBucketUnavailable(t *testing.T) {
	js := startJetStream(t)
	conn := js.connect()
	r := openReporter(t, conn, nil, Options{Replica: "a", OpTimeout: 200 * time.Millisecond})
	ctx := testContext(t)

	if err := conn.DeleteKeyValue(ctx, DefaultBucket); err != nil {
		t.Fatal(err)
	}
	r.Record(success(1))
	r.Record(success(2))
	r.flush(ctx)
	if d := r.endpointDeltas[endpointKey("ns", "ep")]; d == nil || d.Delivered != 2 {
		t.Fatalf("delta after a failed flush: %+v", d)
	}
	kv, err := r.openBucket(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r.kv = kv
	r.cacheMu.Lock()
	clear(r.cache)
	r.cacheMu.Unlock()
	r.Record(success(3))
	r.flush(ctx)
	if st := readEndpointTotals(t, conn, endpointKey("ns", "ep")); st.Delivered != 3 {
		t.Errorf("delivered %d after recovery, want 3", st.Delivered)
	}
}

func TestLease(t *testing.T) {
	js := startJetStream(t)
	clockA, clockB := &manualClock{now: t0}, &manualClock{now: t0}
	opts := func(id string, c *manualClock) Options {
		return Options{Replica: id, LeaseDuration: 15 * time.Second, Now: c.Now}
	}
	a := openReporter(t, js.connect(), stubClient{}, opts("a", clockA))
	b := openReporter(t, js.connect(), stubClient{}, opts("b", clockB))
	ctx := testContext(t)

	a.updateLease(ctx)
	b.updateLease(ctx)
	if !a.lease.holding || b.lease.holding {
		t.Fatalf("holding: a=%v b=%v, want only a", a.lease.holding, b.lease.holding)
	}
	// a renews: b sees the revision move and never takes over.
	for range 5 {
		clockA.Advance(10 * time.Second)
		clockB.Advance(10 * time.Second)
		a.updateLease(ctx)
		b.updateLease(ctx)
		if !a.lease.holding || b.lease.holding {
			t.Fatalf("while a renews: a=%v b=%v", a.lease.holding, b.lease.holding)
		}
	}
	// a stops renewing (hung or partitioned): b waits one full lease
	// duration, then takes over; a notices and stops writing.
	clockB.Advance(10 * time.Second)
	b.updateLease(ctx)
	if b.lease.holding {
		t.Fatal("b took over before the lease expired")
	}
	clockB.Advance(6 * time.Second)
	b.updateLease(ctx)
	if !b.lease.holding {
		t.Fatal("b did not take over an expired lease")
	}
	a.updateLease(ctx)
	if a.lease.holding {
		t.Fatal("a still writes after b took over")
	}
	// b shuts down and releases: a takes over at once.
	b.releaseLease(ctx)
	a.updateLease(ctx)
	if !a.lease.holding || b.lease.holding {
		t.Fatalf("after release: a=%v b=%v", a.lease.holding, b.lease.holding)
	}
}

// TestRunHandsOverLease: with two Reporters running, exactly one writes
// status, the one holding the lease; when it stops, the other takes over
// and writes from then on. Which replica writes is observed through the
// status applies each replica's client makes.
func TestRunHandsOverLease(t *testing.T) {
	js := startJetStream(t)
	api := &statusAPI{endpoint: &heraldv1.WebhookEndpoint{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "billing", UID: "billing-uid", Generation: 1},
	}}
	cat := &fakeEndpoints{}
	cat.set(catalogEndpoint("shop", "billing"))
	opts := func(id string) Options {
		return Options{Replica: id, Client: api.as(id), Catalog: cat, Queue: &testQueue{js: js.connect()},
			FlushInterval: 50 * time.Millisecond, Interval: 100 * time.Millisecond, LeaseDuration: time.Second}
	}
	replicas := map[string]*running{"a": newRunning(t, opts("a")), "b": newRunning(t, opts("b"))}
	holder := func() string {
		kv, err := js.connect().KeyValue(testContext(t), DefaultBucket)
		if err != nil {
			return ""
		}
		e, err := kv.Get(testContext(t), leaseKey)
		if err != nil {
			return ""
		}
		var lease leaseRecord
		_ = json.Unmarshal(e.Value(), &lease)
		return lease.Holder
	}

	// Each change must show in status. Both replicas record deliveries, so
	// both have something to write; only the lease holder may write it.
	var delivered int64
	record := func(ids ...string) {
		for _, id := range ids {
			replicas[id].r.Record(Outcome{Namespace: "shop", Endpoint: "billing", Success: true, Time: time.Now()})
			delivered++
		}
	}
	waitWritten := func(what string) {
		t.Helper()
		eventually(t, 10*time.Second, what, func() bool { return api.delivered() == delivered })
	}
	for round := range 3 {
		record("a", "b")
		waitWritten(fmt.Sprintf("status of round %d", round))
	}
	writers := api.writersSince(0)
	if len(writers) != 1 {
		t.Fatalf("status written by replicas %v, want exactly one", writers)
	}
	first := writers[0]
	if h := holder(); h != first {
		t.Errorf("status written by %q, but the lease is held by %q", first, h)
	}
	second := map[string]string{"a": "b", "b": "a"}[first]

	// The writer stops (and releases the lease): the other takes over.
	before := api.writeCount()
	replicas[first].stop()
	record(second)
	waitWritten("status written after the hand-over")
	if after := api.writersSince(before); len(after) != 1 || after[0] != second {
		t.Errorf("after %s stopped, status written by replicas %v, want only %s", first, after, second)
	}
	if h := holder(); h != second {
		t.Errorf("lease held by %q after the hand-over, want %q", h, second)
	}
}

// statusAPI stands in for the API server in lease tests: one
// WebhookEndpoint shared by the replicas, and the status applies each
// replica made, in order.
type statusAPI struct {
	mu       sync.Mutex
	endpoint *heraldv1.WebhookEndpoint
	writes   []string // the replica of each apply
}

// as returns the client replica writes status with.
func (a *statusAPI) as(replica string) StatusClient { return &replicaClient{api: a, replica: replica} }

func (a *statusAPI) delivered() int64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.endpoint.Status.Delivery == nil {
		return -1
	}
	return a.endpoint.Status.Delivery.Delivered
}

func (a *statusAPI) writeCount() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.writes)
}

// writersSince returns the replicas that applied status since the n-th
// apply, sorted.
func (a *statusAPI) writersSince(n int) []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	writers := slices.Clone(a.writes[n:])
	slices.Sort(writers)
	return slices.Compact(writers)
}

type replicaClient struct {
	api     *statusAPI
	replica string
}

func (c *replicaClient) Get(_ context.Context, key client.ObjectKey, obj client.Object, _ ...client.GetOption) error {
	c.api.mu.Lock()
	defer c.api.mu.Unlock()
	ep, ok := obj.(*heraldv1.WebhookEndpoint)
	if !ok || key != client.ObjectKeyFromObject(c.api.endpoint) {
		return apierrors.NewNotFound(schema.GroupResource{Group: "herald.dev"}, key.Name)
	}
	c.api.endpoint.DeepCopyInto(ep)
	return nil
}

func (c *replicaClient) List(context.Context, client.ObjectList, ...client.ListOption) error {
	return errors.New("replicaClient: List not supported")
}

func (c *replicaClient) Status() client.SubResourceWriter { return replicaStatusWriter{c} }

// replicaStatusWriter applies status the way server-side apply does for the
// dispatcher's fields: status.delivery and the conditions it names are
// replaced, the rest stays.
type replicaStatusWriter struct{ c *replicaClient }

func (w replicaStatusWriter) Apply(_ context.Context, obj runtime.ApplyConfiguration, _ ...client.SubResourceApplyOption) error {
	raw, err := json.Marshal(obj)
	if err != nil {
		return err
	}
	var applied heraldv1.WebhookEndpoint
	if err := json.Unmarshal(raw, &applied); err != nil {
		return err
	}
	api := w.c.api
	api.mu.Lock()
	defer api.mu.Unlock()
	if client.ObjectKeyFromObject(&applied) != client.ObjectKeyFromObject(api.endpoint) {
		return apierrors.NewNotFound(schema.GroupResource{Group: "herald.dev"}, applied.Name)
	}
	api.endpoint.Status.Delivery = applied.Status.Delivery
	for _, c := range applied.Status.Conditions {
		meta.RemoveStatusCondition(&api.endpoint.Status.Conditions, c.Type)
		api.endpoint.Status.Conditions = append(api.endpoint.Status.Conditions, c)
	}
	api.writes = append(api.writes, w.c.replica)
	return nil
}

func (replicaStatusWriter) Create(context.Context, client.Object, client.Object, ...client.SubResourceCreateOption) error {
	return errors.New("replicaStatusWriter: only Apply is supported")
}

func (replicaStatusWriter) Update(context.Context, client.Object, ...client.SubResourceUpdateOption) error {
	return errors.New("replicaStatusWriter: only Apply is supported")
}

func (replicaStatusWriter) Patch(context.Context, client.Object, client.Patch, ...client.SubResourcePatchOption) error {
	return errors.New("replicaStatusWriter: only Apply is supported")
}
