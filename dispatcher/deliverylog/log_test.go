package deliverylog

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"

	deliveryv1 "github.com/herald-dev/herald/api/delivery/v1alpha1"
	"github.com/herald-dev/herald/dispatcher/queue"
)

func openLog(t *testing.T, cfg Config) (*Log, *queue.Queue) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	logger := testr.New(t)
	q, err := queue.Open(ctx, queue.Config{StoreDir: t.TempDir()}, logger)
	if err != nil {
		t.Fatalf("open the queue: %v", err)
	}
	t.Cleanup(func() { _ = q.Close() })
	l, err := Open(ctx, q, cfg, nil, logger)
	if err != nil {
		t.Fatalf("open the log: %v", err)
	}
	return l, q
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// record writes entries and waits until the stream holds them all, so that
// a query after it sees them (records are fire-and-forget).
func record(t *testing.T, l *Log, entries ...Entry) {
	t.Helper()
	ctx := testCtx(t)
	before, err := l.stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		l.Record(e)
	}
	if err := l.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	want := before.State.LastSeq + uint64(len(entries))
	for {
		info, err := l.stream.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.State.LastSeq >= want {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the log stored %d of %d records", info.State.LastSeq-before.State.LastSeq, len(entries))
		case <-time.After(10 * time.Millisecond):
		}
	}
}

var t0 = time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)

func attempt(ns, ep, id string, n, code int, phase deliveryv1.DeliveryPhase) Entry {
	e := Entry{
		Namespace: ns, Endpoint: ep, WebhookID: id,
		Event:      Event{ID: "ev-" + id, Source: "/orders", Type: "order.created", Time: t0},
		IngestedAt: t0,
		Attempt:    n, Time: t0.Add(time.Duration(n) * time.Second), Duration: 20 * time.Millisecond,
		StatusCode: code, Phase: phase,
	}
	if code >= 300 {
		e.Error = fmt.Sprintf("HTTP %d", code)
		e.Response = []byte(`{"error":"busy"}`)
	}
	if phase == deliveryv1.DeliveryRetrying {
		e.NextAttempt = e.Time.Add(5 * time.Second)
	}
	if phase == deliveryv1.DeliverySucceeded || phase == deliveryv1.DeliveryDeadLettered {
		e.Payload = json.RawMessage(`{"specversion":"1.0","id":"ev-` + id + `"}`)
	}
	return e
}

func TestListFoldsAttemptsIntoDeliveries(t *testing.T) {
	l, _ := openLog(t, Config{})
	record(t, l,
		attempt("shop", "orders", "msg_a", 1, 503, deliveryv1.DeliveryRetrying),
		attempt("shop", "orders", "msg_b", 1, 200, deliveryv1.DeliverySucceeded),
		attempt("shop", "orders", "msg_a", 2, 503, deliveryv1.DeliveryRetrying),
		attempt("shop", "billing.v2", "msg_a", 1, 410, deliveryv1.DeliveryRetrying),
		attempt("other", "orders", "msg_c", 1, 200, deliveryv1.DeliverySucceeded),
	)
	ctx := testCtx(t)
	all, rv, err := l.List(ctx, Query{Namespace: "shop"})
	if err != nil {
		t.Fatal(err)
	}
	if rv != 5 {
		t.Errorf("list resourceVersion = %d, want the log's last sequence 5", rv)
	}
	names := map[string]*deliveryv1.Delivery{}
	for _, d := range all {
		names[d.Name] = d
	}
	if len(all) != 3 || names["msg_a.orders"] == nil || names["msg_b.orders"] == nil || names["msg_a.billing.v2"] == nil {
		t.Fatalf("deliveries of shop = %v, want msg_a.orders, msg_b.orders, msg_a.billing.v2", keys(names))
	}
	a := names["msg_a.orders"]
	if a.Status.Phase != deliveryv1.DeliveryRetrying || a.Status.AttemptCount != 2 || len(a.Status.Attempts) != 2 {
		t.Errorf("msg_a.orders status = %+v, want Retrying after 2 attempts", a.Status)
	}
	if got := a.Status.Attempts[1]; got.StatusCode != 503 || got.Error != "HTTP 503" || got.Response != `{"error":"busy"}` || got.Duration.Duration != 20*time.Millisecond {
		t.Errorf("second attempt = %+v", got)
	}
	if a.Status.NextAttemptTime == nil || !a.Status.NextAttemptTime.Time.Equal(t0.Add(7*time.Second)) {
		t.Errorf("nextAttemptTime = %v, want %v", a.Status.NextAttemptTime, t0.Add(7*time.Second))
	}
	if a.Labels[deliveryv1.LabelEndpoint] != "orders" || a.Spec.EndpointRef.Name != "orders" || a.Namespace != "shop" {
		t.Errorf("msg_a.orders meta = %+v / %+v", a.ObjectMeta, a.Spec)
	}
	if a.Spec.Event.Type != "order.created" || a.Spec.Event.ID != "ev-msg_a" || !a.CreationTimestamp.Time.Equal(t0) {
		t.Errorf("msg_a.orders event = %+v created %v", a.Spec.Event, a.CreationTimestamp)
	}
	if names["msg_b.orders"].Status.Phase != deliveryv1.DeliverySucceeded {
		t.Errorf("msg_b.orders phase = %s", names["msg_b.orders"].Status.Phase)
	}
	if names["msg_a.orders"].UID == names["msg_a.billing.v2"].UID {
		t.Error("two deliveries share a UID")
	}

	byEndpoint, _, err := l.List(ctx, Query{Namespace: "shop", Endpoint: "billing.v2"})
	if err != nil {
		t.Fatal(err)
	}
	if len(byEndpoint) != 1 || byEndpoint[0].Name != "msg_a.billing.v2" {
		t.Errorf("deliveries of billing.v2 = %v", byEndpoint)
	}
	got, err := l.Get(ctx, "other", "orders", "msg_c")
	if err != nil || got.Name != "msg_c.orders" {
		t.Fatalf("Get(other/msg_c.orders) = %v, %v", got, err)
	}
	if _, err := l.Get(ctx, "other", "orders", "msg_a"); err != ErrNotFound {
		t.Errorf("Get of a delivery of another namespace = %v, want ErrNotFound", err)
	}
}

func keys(m map[string]*deliveryv1.Delivery) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func TestRequeueStartsAFreshRound(t *testing.T) {
	l, _ := openLog(t, Config{})
	dl := attempt("shop", "orders", "msg_a", 3, 503, deliveryv1.DeliveryDeadLettered)
	dl.DeadLetterReason = "MaxAttempts: HTTP 503"
	requeue := Entry{Namespace: "shop", Endpoint: "orders", WebhookID: "msg_a", Requeued: true, Time: t0.Add(time.Hour),
		Phase: deliveryv1.DeliveryPending, Payload: dl.Payload}
	record(t, l, dl, requeue)
	ctx := testCtx(t)
	d, err := l.Get(ctx, "shop", "orders", "msg_a")
	if err != nil {
		t.Fatal(err)
	}
	if d.Status.Phase != deliveryv1.DeliveryPending || d.Status.AttemptCount != 0 || d.Status.DeadLetterReason != "" ||
		d.Status.QueuedTime == nil || len(d.Status.Attempts) != 1 {
		t.Errorf("after a requeue status = %+v, want Pending with a fresh count and the old attempt kept", d.Status)
	}
	payload, ingested, ok, err := l.Payload(ctx, "shop", "orders", "msg_a")
	if err != nil || !ok || string(payload) != string(dl.Payload) || !ingested.Equal(t0) {
		t.Errorf("Payload = %s, %v, %v, %v", payload, ingested, ok, err)
	}
	record(t, l, attempt("shop", "orders", "msg_a", 1, 200, deliveryv1.DeliverySucceeded))
	d, err = l.Get(ctx, "shop", "orders", "msg_a")
	if err != nil {
		t.Fatal(err)
	}
	if d.Status.Phase != deliveryv1.DeliverySucceeded || d.Status.AttemptCount != 1 || len(d.Status.Attempts) != 2 {
		t.Errorf("after the redelivery succeeded status = %+v", d.Status)
	}
}

func TestLogKeepsBoundedAttemptsPerDelivery(t *testing.T) {
	l, _ := openLog(t, Config{MaxAttempts: 3})
	var entries []Entry
	for n := 1; n <= 7; n++ {
		entries = append(entries, attempt("shop", "orders", "msg_a", n, 503, deliveryv1.DeliveryRetrying))
	}
	record(t, l, entries...)
	d, err := l.Get(testCtx(t), "shop", "orders", "msg_a")
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Status.Attempts) != 3 || d.Status.AttemptCount != 7 {
		t.Errorf("attempts kept = %d, count = %d; want the last 3 of 7", len(d.Status.Attempts), d.Status.AttemptCount)
	}
}

func TestWatchSendsEachNewRecord(t *testing.T) {
	l, _ := openLog(t, Config{})
	record(t, l, attempt("shop", "orders", "msg_old", 1, 200, deliveryv1.DeliverySucceeded))
	ctx := testCtx(t)
	_, rv, err := l.List(ctx, Query{Namespace: "shop"})
	if err != nil {
		t.Fatal(err)
	}
	changes, err := l.Watch(ctx, Query{Namespace: "shop"}, rv)
	if err != nil {
		t.Fatal(err)
	}
	record(t, l,
		attempt("shop", "orders", "msg_a", 1, 503, deliveryv1.DeliveryRetrying),
		attempt("other", "orders", "msg_x", 1, 503, deliveryv1.DeliveryRetrying),
		attempt("shop", "orders", "msg_a", 2, 200, deliveryv1.DeliverySucceeded),
	)
	first := next(t, ctx, changes)
	if first.Delivery.Name != "msg_a.orders" || !first.Added {
		t.Errorf("first change = %s added=%v, want msg_a.orders added", first.Delivery.Name, first.Added)
	}
	second := next(t, ctx, changes)
	if second.Delivery.Name != "msg_a.orders" || second.Added || second.Delivery.Status.Phase != deliveryv1.DeliverySucceeded {
		t.Errorf("second change = %s added=%v phase=%s, want msg_a.orders modified to Succeeded", second.Delivery.Name, second.Added, second.Delivery.Status.Phase)
	}
}

func next(t *testing.T, ctx context.Context, ch <-chan Change) Change {
	t.Helper()
	select {
	case c, ok := <-ch:
		if !ok {
			t.Fatal("watch ended")
		}
		return c
	case <-ctx.Done():
		t.Fatal("no change arrived")
	}
	return Change{}
}

func TestNames(t *testing.T) {
	id, ep, err := ParseName(Name("msg_abc", "orders.v2"))
	if err != nil || id != "msg_abc" || ep != "orders.v2" {
		t.Errorf("ParseName(Name) = %q, %q, %v", id, ep, err)
	}
	for _, bad := range []string{"msg_abc", ".orders", "msg_abc.", ""} {
		if _, _, err := ParseName(bad); err == nil {
			t.Errorf("ParseName(%q) accepted", bad)
		}
	}
}
