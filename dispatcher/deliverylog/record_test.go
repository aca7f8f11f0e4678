package deliverylog

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	deliveryv1 "github.com/herald-dev/herald/api/delivery/v1alpha1"
)

// storedForm is an event as ingest stores it: json.Marshal's output, so
// compact, with <, > and & escaped.
const storedForm = `{"specversion":"1.0","id":"ev-1","source":"/orders","type":"order.created","datacontenttype":"application/json","data":{"note":"a \u003cb\u003e \u0026 \"c\"","n":[1,2.5,null,true]}}`

// TestEncodeIsJSONMarshal: a record's bytes are exactly json.Marshal's, so
// records written before and after the encoder are read alike.
func TestEncodeIsJSONMarshal(t *testing.T) {
	retrying := attempt("shop", "orders", "msg_a", 2, 503, deliveryv1.DeliveryRetrying)
	succeeded := attempt("shop", "orders", "msg_b", 1, 200, deliveryv1.DeliverySucceeded)
	succeeded.Payload = json.RawMessage(storedForm)
	checked := succeeded
	checked.PayloadValid = true
	requeue := Entry{Requeued: true, Time: t0, Phase: deliveryv1.DeliveryPending, Payload: json.RawMessage(storedForm)}
	for name, e := range map[string]Entry{
		"without a payload":                  retrying,
		"with a payload checked here":        succeeded,
		"with a payload the caller checked":  checked,
		"requeue with only the members left": requeue,
		"zero entry":                         {},
	} {
		want, err := json.Marshal(&e)
		if err != nil {
			t.Fatal(err)
		}
		got, err := e.encode()
		if err != nil {
			t.Errorf("%s: encode: %v", name, err)
			continue
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s: encode =\n %s\nwant json.Marshal's\n %s", name, got, want)
		}
	}
}

// TestEncodeRejectsAPayloadThatIsNotJSON: appending an unchecked payload as
// it is would let it add members to the record; here one tries to turn a
// failed attempt into a success.
func TestEncodeRejectsAPayloadThatIsNotJSON(t *testing.T) {
	e := attempt("shop", "orders", "msg_a", 1, 503, deliveryv1.DeliveryRetrying)
	e.Payload = json.RawMessage(`1,"p":"Succeeded"`)
	if _, err := e.encode(); !errors.Is(err, errInvalidPayload) {
		t.Fatalf("encode of a forged payload: err = %v, want %v", err, errInvalidPayload)
	}
}

// TestRecordDropsAnInvalidPayload writes through the embedded JetStream: the
// entry with a payload that is not JSON is counted as an encoding error and
// not stored, and the next record of the delivery is.
func TestRecordDropsAnInvalidPayload(t *testing.T) {
	l, _ := openLog(t, Config{})
	forged := attempt("shop", "orders", "msg_a", 1, 503, deliveryv1.DeliveryRetrying)
	forged.Payload = json.RawMessage(`1,"p":"Succeeded"`)
	l.Record(forged)
	if got := testutil.ToFloat64(l.metrics.records.WithLabelValues(resultEncodeError)); got != 1 {
		t.Fatalf("encode errors counted = %v, want 1", got)
	}
	ok := attempt("shop", "orders", "msg_a", 2, 200, deliveryv1.DeliverySucceeded)
	ok.Payload, ok.PayloadValid = json.RawMessage(storedForm), true
	record(t, l, ok)
	if got := testutil.ToFloat64(l.metrics.records.WithLabelValues(resultSent)); got != 1 {
		t.Errorf("records counted as sent = %v, want 1", got)
	}

	ctx := testCtx(t)
	d, err := l.Get(ctx, "shop", "orders", "msg_a")
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Status.Attempts) != 1 || d.Status.Attempts[0].StatusCode != 200 {
		t.Errorf("attempts = %+v, want only the stored 200", d.Status.Attempts)
	}
	payload, _, found, err := l.Payload(ctx, "shop", "orders", "msg_a")
	if err != nil || !found || string(payload) != storedForm {
		t.Errorf("Payload = %s, %v, %v; want the stored form as it was recorded", payload, found, err)
	}
}

// FuzzEncode holds encode's bytes equal to json.Marshal's for any strings,
// times, numbers and response, and its failures to json.Marshal's. The
// payload is a fuzzed string in Herald's stored form (json.Marshal's
// compact output), as the worker records it.
func FuzzEncode(f *testing.F) {
	f.Add("ev-1", "/orders", "order.created", "", "HTTP 503", "MaxAttempts: HTTP 503", []byte(`{"error":"busy"}`), "note", int64(1764756000123456789), int64(0), 3, 503, false)
	f.Add("a<b>&\"c\"", "ü\u2028\x00", "\xff\xfe", "sub\tject", "", "", []byte{0, 0xff}, "<&>", int64(-62135596800000000), int64(3600), 0, 0, true)
	f.Add("", "", "", "", "", "", []byte(nil), "", int64(253402300800000000), int64(-7200), -1, 200, false)
	f.Fuzz(func(t *testing.T, id, source, typ, subject, reason, deadLetter string, response []byte, data string, nanos, zone int64, attempt, code int, requeued bool) {
		at := time.Unix(0, nanos).In(time.FixedZone("z", int(zone%(30*3600))))
		payload, err := json.Marshal(map[string]string{"id": id, "data": data})
		if err != nil {
			t.Fatal(err)
		}
		e := Entry{
			Event:      Event{ID: id, Source: source, Type: typ, Subject: subject, Time: at},
			IngestedAt: at.Add(-time.Second), Requeued: requeued, Attempt: attempt,
			Time: at, Duration: time.Duration(nanos % int64(time.Hour)), StatusCode: code,
			Error: reason, Response: response, Phase: deliveryv1.DeliveryPhase(typ),
			NextAttempt: at.Add(time.Minute), DeadLetterReason: deadLetter,
			Payload: payload, PayloadValid: attempt%2 == 0,
		}
		for _, e := range []Entry{e, {Event: e.Event, Time: e.Time, Phase: e.Phase}} {
			want, wantErr := json.Marshal(&e)
			got, err := e.encode()
			if (err != nil) != (wantErr != nil) {
				t.Fatalf("encode error %v, json.Marshal error %v", err, wantErr)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("encode =\n %s\nwant json.Marshal's\n %s", got, want)
			}
		}
	})
}

func BenchmarkEncode(b *testing.B) {
	e := attempt("shop", "orders", "msg_b", 1, 200, deliveryv1.DeliverySucceeded)
	e.Time = time.Date(2026, 12, 3, 10, 0, 0, 123456789, time.UTC)
	e.Payload, e.PayloadValid = json.RawMessage(storedForm), true
	b.ReportAllocs()
	for b.Loop() {
		if _, err := e.encode(); err != nil {
			b.Fatal(err)
		}
	}
}
