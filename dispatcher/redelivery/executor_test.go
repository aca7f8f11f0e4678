package redelivery

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/dispatcher/deliverylog"
	"github.com/herald-dev/herald/dispatcher/queue"
	"github.com/herald-dev/herald/internal/testenv"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testenv.Stop()
	os.Exit(code)
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// fixture is a namespace with an endpoint, an embedded queue and an
// executor using both.
type fixture struct {
	t        *testing.T
	ctx      context.Context
	c        client.Client
	q        *queue.Queue
	e        *Executor
	ns       string
	endpoint string
	leading  atomic.Bool
	woken    atomic.Int64
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{t: t, ctx: testContext(t), c: testenv.Client(t), endpoint: "orders"}
	f.ns = testenv.Namespace(t, f.c, "redelivery")
	q, err := queue.Open(f.ctx, queue.Config{StoreDir: t.TempDir()}, logr.Discard())
	if err != nil {
		t.Fatalf("queue.Open: %v", err)
	}
	t.Cleanup(func() { _ = q.Close() })
	f.q = q
	f.leading.Store(true)
	f.e, err = New(f.ctx, Options{Client: f.c, Queue: q, Leading: f.leading.Load,
		Wake: func(string, string) { f.woken.Add(1) }, Logger: logr.Discard()})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fixture) createEndpoint(name string) {
	f.t.Helper()
	ep := &heraldv1.WebhookEndpoint{
		ObjectMeta: metav1.ObjectMeta{Namespace: f.ns, Name: name},
		Spec:       heraldv1.WebhookEndpointSpec{URL: "https://receiver.example/hooks"},
	}
	if err := f.c.Create(f.ctx, ep); err != nil {
		f.t.Fatal(err)
	}
}

// deadLetter stores a dead letter of event id, of type typ, ingested at
// ingested, as the delivery stage does, and returns its webhook-id.
func (f *fixture) deadLetter(id, typ string, ingested time.Time) string {
	f.t.Helper()
	webhookID := queue.WebhookID(f.ns, "/orders", id)
	header := queue.Header{}
	header.Set(queue.HeaderWebhookID, webhookID)
	header.Set(queue.HeaderIngestedAt, ingested.UTC().Format(time.RFC3339Nano))
	header.Set(queue.HeaderDeadLetterReason, "MaxAttempts: HTTP 503")
	payload := fmt.Appendf(nil, `{"specversion":"1.0","id":%q,"source":"/orders","type":%q,"data":{}}`, id, typ)
	dedup := queue.DeliveryDedupID(queue.EventDedupID(f.ns, "/orders", id), f.ns, f.endpoint)
	if _, _, err := f.q.PublishDeadLetter(f.ctx, f.ns, f.endpoint, dedup, payload, header); err != nil {
		f.t.Fatal(err)
	}
	return webhookID
}

func (f *fixture) createRedelivery(name string, spec heraldv1.RedeliverySpec) *heraldv1.Redelivery {
	f.t.Helper()
	rd := &heraldv1.Redelivery{ObjectMeta: metav1.ObjectMeta{Namespace: f.ns, Name: name}, Spec: spec}
	if err := f.c.Create(f.ctx, rd); err != nil {
		f.t.Fatal(err)
	}
	return rd
}

func (f *fixture) reconcile(name string) ctrl.Result {
	f.t.Helper()
	res, err := f.e.Reconcile(f.ctx, ctrl.Request{NamespacedName: client.ObjectKey{Namespace: f.ns, Name: name}})
	if err != nil {
		f.t.Fatalf("Reconcile %s: %v", name, err)
	}
	return res
}

func (f *fixture) get(name string) *heraldv1.Redelivery {
	f.t.Helper()
	rd := &heraldv1.Redelivery{}
	if err := f.c.Get(f.ctx, client.ObjectKey{Namespace: f.ns, Name: name}, rd); err != nil {
		f.t.Fatal(err)
	}
	return rd
}

// queued drains the endpoint's delivery queue and returns the webhook-ids
// of the deliveries in it, with their headers.
func (f *fixture) queued() map[string][]queue.Header {
	f.t.Helper()
	cons, err := f.q.DeliveryConsumer(f.ctx, f.ns, f.endpoint, queue.ConsumerOptions{FetchWait: 200 * time.Millisecond})
	if err != nil {
		f.t.Fatal(err)
	}
	out := map[string][]queue.Header{}
	for {
		msgs, err := cons.Fetch(f.ctx, 100)
		if err != nil {
			f.t.Fatal(err)
		}
		if len(msgs) == 0 {
			return out
		}
		for _, m := range msgs {
			id := m.Header.Get(queue.HeaderWebhookID)
			out[id] = append(out[id], m.Header)
			if err := m.Ack(f.ctx); err != nil {
				f.t.Fatal(err)
			}
		}
	}
}

func (f *fixture) deadLetterIDs() []string {
	f.t.Helper()
	last, err := f.q.DeadLetterPosition(f.ctx)
	if err != nil {
		f.t.Fatal(err)
	}
	var ids []string
	err = f.q.DeadLetters(f.ctx, f.ns, f.endpoint, last, func(dl *queue.StoredDeadLetter) error {
		ids = append(ids, dl.Header.Get(queue.HeaderWebhookID))
		return nil
	})
	if err != nil {
		f.t.Fatal(err)
	}
	return ids
}

func condition(rd *heraldv1.Redelivery, typ string) *metav1.Condition {
	return apimeta.FindStatusCondition(rd.Status.Conditions, typ)
}

// A Redelivery queues every selected dead letter once, with its webhook-id
// and a fresh maxAge, takes it out of the dead-letter stream, leaves the
// others there, and completes: Ready True, matched and requeued counted.
// Reconciling it again queues nothing more.
func TestRedeliveryRequeuesSelectedDeadLettersOnce(t *testing.T) {
	f := newFixture(t)
	f.createEndpoint(f.endpoint)
	now := time.Now()
	created := f.deadLetter("a", "order.created", now.Add(-2*time.Hour))
	paid := f.deadLetter("b", "order.paid", now.Add(-time.Hour))
	other := f.deadLetter("c", "invoice.sent", now.Add(-time.Hour))
	old := f.deadLetter("d", "order.created", now.Add(-48*time.Hour))

	since := metav1.NewTime(now.Add(-24 * time.Hour))
	before := time.Now()
	f.createRedelivery("replay", heraldv1.RedeliverySpec{
		EndpointRef: heraldv1.LocalObjectReference{Name: f.endpoint},
		Types:       []string{"order.*"},
		Since:       &since,
	})
	if res := f.reconcile("replay"); res.RequeueAfter != 0 {
		t.Fatalf("Reconcile result = %+v; want done", res)
	}

	rd := f.get("replay")
	if got := rd.Spec.GetPhases(); len(got) != 1 || got[0] != heraldv1.RedeliverDeadLettered {
		t.Errorf("spec.phases = %v; want the default [DeadLettered]", rd.Spec.Phases)
	}
	if rd.Status.Matched != 2 || rd.Status.Requeued != 2 {
		t.Errorf("status matched/requeued = %d/%d; want 2/2", rd.Status.Matched, rd.Status.Requeued)
	}
	ready := condition(rd, heraldv1.ReadyCondition)
	if ready == nil || ready.Status != metav1.ConditionTrue || ready.Reason != heraldv1.CompletedReason {
		t.Errorf("Ready = %+v; want True/Completed", ready)
	}
	if c := condition(rd, heraldv1.ReconcilingCondition); c != nil {
		t.Errorf("Reconciling = %+v; want absent once completed", c)
	}
	if rd.Status.CompletionTime == nil || rd.Status.ObservedGeneration != rd.Generation {
		t.Errorf("completionTime %v, observedGeneration %d (generation %d)", rd.Status.CompletionTime, rd.Status.ObservedGeneration, rd.Generation)
	}

	queued := f.queued()
	if len(queued) != 2 || len(queued[created]) != 1 || len(queued[paid]) != 1 {
		t.Fatalf("queued deliveries by webhook-id = %v; want %s and %s once each", keys(queued), created, paid)
	}
	for id, hs := range queued {
		h := hs[0]
		if h.Get(queue.HeaderDeadLetterReason) != "" {
			t.Errorf("%s keeps its dead-letter headers", id)
		}
		at, err := time.Parse(time.RFC3339Nano, h.Get(queue.HeaderQueuedAt))
		if err != nil || at.Before(before.Add(-time.Second)) {
			t.Errorf("%s: %s = %q; want the time of the requeue (maxAge counts from it)", id, queue.HeaderQueuedAt, h.Get(queue.HeaderQueuedAt))
		}
		if h.Get(queue.HeaderIngestedAt) == "" {
			t.Errorf("%s lost its ingest time", id)
		}
	}
	left := f.deadLetterIDs()
	if len(left) != 2 || !slices.Contains(left, other) || !slices.Contains(left, old) {
		t.Errorf("dead letters left = %v; want the unselected %s and %s", left, other, old)
	}
	if f.woken.Load() == 0 {
		t.Error("the delivery stage was not woken for the requeued deliveries")
	}

	// Never twice: reconciling the completed Redelivery queues nothing.
	f.reconcile("replay")
	if again := f.queued(); len(again) != 0 {
		t.Errorf("a completed Redelivery queued %v again", keys(again))
	}
}

// A run interrupted after some deliveries were queued (and marked) resumes
// without queueing them a second time, and counts them as requeued.
func TestRedeliveryResumesWithoutRequeueingTwice(t *testing.T) {
	f := newFixture(t)
	f.createEndpoint(f.endpoint)
	now := time.Now()
	ids := []string{f.deadLetter("a", "order.created", now), f.deadLetter("b", "order.created", now), f.deadLetter("c", "order.created", now)}
	rd := f.createRedelivery("resume", heraldv1.RedeliverySpec{EndpointRef: heraldv1.LocalObjectReference{Name: f.endpoint}})

	// The state a crash leaves after the first delivery was queued and
	// marked, before its dead letter was removed and before the status
	// was written.
	cutoff, err := f.q.DeadLetterPosition(f.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.e.progress.start(f.ctx, rd.UID, run{Started: now, DeadLetterCutoff: cutoff, Matched: 3}); err != nil {
		t.Fatal(err)
	}
	header := queue.Header{}
	header.Set(queue.HeaderWebhookID, ids[0])
	if _, _, err := f.q.PublishDelivery(f.ctx, f.ns, f.endpoint, queue.RequeueDedupID(string(rd.UID), ids[0]), []byte(`{}`), header); err != nil {
		t.Fatal(err)
	}
	if err := f.e.progress.markRequeued(f.ctx, rd.UID, ids[0]); err != nil {
		t.Fatal(err)
	}

	f.reconcile("resume")
	queued := f.queued()
	for _, id := range ids {
		if len(queued[id]) != 1 {
			t.Errorf("delivery %s queued %d times; want once", id, len(queued[id]))
		}
	}
	got := f.get("resume")
	if got.Status.Matched != 3 || got.Status.Requeued != 3 {
		t.Errorf("status matched/requeued = %d/%d; want 3/3", got.Status.Matched, got.Status.Requeued)
	}
	if left := f.deadLetterIDs(); len(left) != 0 {
		t.Errorf("dead letters left = %v; want none", left)
	}
}

// The executor acts only on the replica holding the status-writer lease:
// elsewhere it waits and touches nothing.
func TestRedeliveryWaitsForTheLease(t *testing.T) {
	f := newFixture(t)
	f.createEndpoint(f.endpoint)
	f.deadLetter("a", "order.created", time.Now())
	f.createRedelivery("later", heraldv1.RedeliverySpec{EndpointRef: heraldv1.LocalObjectReference{Name: f.endpoint}})
	f.leading.Store(false)
	if res := f.reconcile("later"); res.RequeueAfter == 0 {
		t.Errorf("Reconcile without the lease = %+v; want a requeue to check again", res)
	}
	if rd := f.get("later"); rd.Status.CompletionTime != nil || rd.Status.Requeued != 0 {
		t.Errorf("status without the lease = %+v; want untouched", rd.Status)
	}
	if len(f.deadLetterIDs()) != 1 {
		t.Error("a replica without the lease requeued a dead letter")
	}
	f.leading.Store(true)
	f.reconcile("later")
	if rd := f.get("later"); rd.Status.Requeued != 1 {
		t.Errorf("requeued = %d after taking the lease; want 1", rd.Status.Requeued)
	}
}

// A Redelivery of an endpoint that does not exist is Stalled with reason
// EndpointNotFound and runs once the endpoint exists.
func TestRedeliveryStalledWithoutEndpoint(t *testing.T) {
	f := newFixture(t)
	f.deadLetter("a", "order.created", time.Now())
	f.createRedelivery("early", heraldv1.RedeliverySpec{EndpointRef: heraldv1.LocalObjectReference{Name: f.endpoint}})
	f.reconcile("early")
	rd := f.get("early")
	stalled, ready := condition(rd, heraldv1.StalledCondition), condition(rd, heraldv1.ReadyCondition)
	if stalled == nil || stalled.Status != metav1.ConditionTrue || stalled.Reason != heraldv1.EndpointNotFoundReason {
		t.Errorf("Stalled = %+v; want True/EndpointNotFound", stalled)
	}
	if ready == nil || ready.Status != metav1.ConditionFalse || !strings.Contains(ready.Message, f.endpoint) {
		t.Errorf("Ready = %+v; want False naming the endpoint", ready)
	}

	f.createEndpoint(f.endpoint)
	f.reconcile("early")
	rd = f.get("early")
	if c := condition(rd, heraldv1.StalledCondition); c != nil {
		t.Errorf("Stalled = %+v after the endpoint appeared; want absent", c)
	}
	if rd.Status.Requeued != 1 || !apimeta.IsStatusConditionTrue(rd.Status.Conditions, heraldv1.ReadyCondition) {
		t.Errorf("status = %+v; want completed with 1 requeued", rd.Status)
	}
}

// The API server enforces what the reconciler relies on: since before
// until, deliveries of the named endpoint, and an immutable spec.
func TestRedeliveryValidation(t *testing.T) {
	f := newFixture(t)
	now := time.Now()
	later, earlier := metav1.NewTime(now), metav1.NewTime(now.Add(-time.Hour))
	ref := heraldv1.LocalObjectReference{Name: f.endpoint}
	for name, spec := range map[string]heraldv1.RedeliverySpec{
		"until-before-since": {EndpointRef: ref, Since: &later, Until: &earlier},
		"other-endpoint":     {EndpointRef: ref, Deliveries: []string{"msg_abc.payments"}},
		"pending-phase":      {EndpointRef: ref, Phases: []heraldv1.RedeliveryPhase{"Pending"}},
	} {
		rd := &heraldv1.Redelivery{ObjectMeta: metav1.ObjectMeta{Namespace: f.ns, Name: name}, Spec: spec}
		if err := f.c.Create(f.ctx, rd); !apierrors.IsInvalid(err) {
			t.Errorf("%s: create = %v; want Invalid", name, err)
		}
		if _, err := newSelector(&spec); err == nil {
			t.Errorf("%s: the reconciler accepts what the API server refuses", name)
		}
	}
	rd := f.createRedelivery("fixed", heraldv1.RedeliverySpec{EndpointRef: ref, Deliveries: []string{"msg_abc." + f.endpoint, "msg_def"}})
	rd.Spec.Types = []string{"order.*"}
	if err := f.c.Update(f.ctx, rd); !apierrors.IsInvalid(err) {
		t.Errorf("update of spec = %v; want Invalid (immutable)", err)
	}
}

func TestSelector(t *testing.T) {
	now := time.Now()
	since, until := metav1.NewTime(now.Add(-time.Hour)), metav1.NewTime(now)
	spec := heraldv1.RedeliverySpec{
		EndpointRef: heraldv1.LocalObjectReference{Name: "orders"},
		Phases:      []heraldv1.RedeliveryPhase{heraldv1.RedeliverDeadLettered},
		Since:       &since, Until: &until,
		Types:      []string{"order.*", "invoice.sent"},
		Deliveries: []string{"msg_a", "msg_b.orders"},
	}
	s, err := newSelector(&spec)
	if err != nil {
		t.Fatal(err)
	}
	in := now.Add(-time.Minute)
	for _, tc := range []struct {
		name     string
		phase    heraldv1.RedeliveryPhase
		id, typ  string
		ingested time.Time
		want     bool
	}{
		{"selected by webhook-id", heraldv1.RedeliverDeadLettered, "msg_a", "order.created", in, true},
		{"selected by delivery name", heraldv1.RedeliverDeadLettered, "msg_b", "invoice.sent", in, true},
		{"not named", heraldv1.RedeliverDeadLettered, "msg_c", "order.created", in, false},
		{"other phase", heraldv1.RedeliverSucceeded, "msg_a", "order.created", in, false},
		{"other type", heraldv1.RedeliverDeadLettered, "msg_a", "invoice.paid", in, false},
		{"before since", heraldv1.RedeliverDeadLettered, "msg_a", "order.created", now.Add(-2 * time.Hour), false},
		{"at since", heraldv1.RedeliverDeadLettered, "msg_a", "order.created", since.Time, true},
		{"at until (exclusive)", heraldv1.RedeliverDeadLettered, "msg_a", "order.created", until.Time, false},
	} {
		if got := s.matches(tc.phase, tc.id, eventOfType(tc.typ), tc.ingested); got != tc.want {
			t.Errorf("%s: matches = %v; want %v", tc.name, got, tc.want)
		}
	}
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

func eventOfType(typ string) deliverylog.Event {
	return deliverylog.Event{ID: "e", Source: "/orders", Type: typ}
}
