package delivery

import (
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	deliveryv1 "github.com/herald-dev/herald/api/delivery/v1alpha1"
	"github.com/herald-dev/herald/dispatcher/catalog"
	"github.com/herald-dev/herald/dispatcher/deliverylog"
	"github.com/herald-dev/herald/dispatcher/queue"
)

// recorded is a Recorder that keeps what it is given.
type recorded struct {
	mu      sync.Mutex
	entries []deliverylog.Entry
}

func (r *recorded) Record(e deliverylog.Entry) {
	r.mu.Lock()
	r.entries = append(r.entries, e)
	r.mu.Unlock()
}

func (r *recorded) all() []deliverylog.Entry {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]deliverylog.Entry(nil), r.entries...)
}

// TestManagerRecordsEveryAttemptInTheLog: a failed attempt is recorded
// Retrying with its status, reason, the start of the answer and when the
// next attempt is; the success that follows is recorded Succeeded with the
// queued message, so a Redelivery can queue it again. An answer longer
// than the log's share is cut there.
func TestManagerRecordsEveryAttemptInTheLog(t *testing.T) {
	q := openQueue(t)
	long := strings.Repeat("x", 2*deliverylog.MaxResponseBytes)
	rc := newReceiver(t, func(i int, w http.ResponseWriter, _ *http.Request) {
		if i == 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte(`{"error":"overloaded"}`))
			return
		}
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte(long))
	})
	rec := &recorded{}
	m, out, _ := newTestManager(t, q, func(o *Options) { o.Log = rec })
	m.Sync([]*catalog.Endpoint{testEndpoint("shop", "orders", rc.URL)})
	publish(t, q, "shop", "orders", "o-1")
	out.waitFor(t, "shop/orders", "a success", func(os []Outcome) bool { return countSuccess(os) == 1 })

	got := rec.all()
	if len(got) != 2 {
		t.Fatalf("recorded %d entries, want 2: %+v", len(got), got)
	}
	failed, ok := got[0], got[1]
	wantID := queue.WebhookID("shop", "/orders", "o-1")
	for _, e := range got {
		if e.Namespace != "shop" || e.Endpoint != "orders" || e.WebhookID != wantID {
			t.Errorf("entry identifies %s/%s %s, want shop/orders %s", e.Namespace, e.Endpoint, e.WebhookID, wantID)
		}
		if e.Event.ID != "o-1" || e.Event.Source != "/orders" || e.Event.Type != "order.created" || e.Event.Time.IsZero() {
			t.Errorf("entry event = %+v", e.Event)
		}
		if e.IngestedAt.IsZero() || e.Duration <= 0 {
			t.Errorf("entry ingested %v, duration %v", e.IngestedAt, e.Duration)
		}
	}
	if failed.Phase != deliveryv1.DeliveryRetrying || failed.Attempt != 1 || failed.StatusCode != 503 ||
		failed.Error != "HTTP 503" || string(failed.Response) != `{"error":"overloaded"}` || failed.NextAttempt.IsZero() || failed.Payload != nil {
		t.Errorf("failed attempt entry = %+v", failed)
	}
	if ok.Phase != deliveryv1.DeliverySucceeded || ok.Attempt != 2 || ok.StatusCode != 200 || ok.Error != "" ||
		len(ok.Response) != deliverylog.MaxResponseBytes || string(ok.Payload) != string(testEvent("o-1")) {
		t.Errorf("success entry = phase %s attempt %d status %d error %q response %d bytes payload %q",
			ok.Phase, ok.Attempt, ok.StatusCode, ok.Error, len(ok.Response), ok.Payload)
	}
	if !ok.PayloadValid {
		t.Error("success entry does not say its payload was parsed: the log would validate it again")
	}
}

// BenchmarkLogEntry builds the delivery log's record of a success from
// the payload the attempt already parsed (what the worker does) and from
// the raw payload alone (what it did before, parsing it a second time).
func BenchmarkLogEntry(b *testing.B) {
	msg := &queue.Message{Data: testEvent("o-1")}
	ev, err := parseEvent(msg.Data)
	if err != nil {
		b.Fatal(err)
	}
	o := &Outcome{Success: true, WebhookID: "msg_bench", Attempt: 1, Time: time.Now(), StatusCode: http.StatusOK}
	for _, c := range []struct {
		name   string
		parsed *cloudEvent
	}{{"parsed", ev}, {"unparsed", nil}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if e := logEntry("shop", "orders", msg, c.parsed, o, nil); e.Event.ID != "o-1" {
					b.Fatalf("event %+v", e.Event)
				}
			}
		})
	}
}

// TestLogEntryContextIsTheSameParsedOrNot: the record's event context taken
// from what parseEvent decoded equals the one read from the payload alone.
func TestLogEntryContextIsTheSameParsedOrNot(t *testing.T) {
	o := &Outcome{Success: true, WebhookID: "msg_1", Attempt: 1, Time: time.Now(), StatusCode: http.StatusOK}
	for _, payload := range []string{
		string(testEvent("o-1")),
		`{"specversion":"1.0","id":"o-2","source":"/orders","type":"order.created","subject":"orders/2","time":"2026-01-02T03:04:05.123456789+05:30"}`,
		`{"specversion":"1.0","id":"o-3","source":"/o\u00e9","type":"t","subject":null,"time":"not a time"}`,
		`{"specversion":"1.0","id":"o-4","source":"/orders","type":"t","subject":"x\"y"}`,
	} {
		msg := &queue.Message{Data: []byte(payload)}
		parsed, err := parseEvent(msg.Data)
		if err != nil {
			t.Fatalf("%s: %v", payload, err)
		}
		withParsed, alone := logEntry("shop", "orders", msg, parsed, o, nil), logEntry("shop", "orders", msg, nil, o, nil)
		a, b := withParsed.Event, alone.Event
		sameTime := a.Time.Equal(b.Time) && a.Time.Format(time.RFC3339Nano) == b.Time.Format(time.RFC3339Nano)
		a.Time, b.Time = time.Time{}, time.Time{} // each parse makes its own zone
		if a != b || !sameTime {
			t.Errorf("%s:\n parsed %+v\n alone  %+v", payload, withParsed.Event, alone.Event)
		}
	}
}
