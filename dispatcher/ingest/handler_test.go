package ingest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/go-logr/logr/funcr"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/herald-dev/herald/dispatcher/queue"
)

// decodeStoredEvent decodes a stored payload with the SDK, as the fan-out
// stage does.
func decodeStoredEvent(t testing.TB, m *queue.Message) event.Event {
	t.Helper()
	ev := cloudevents.NewEvent()
	if err := json.Unmarshal(m.Data, &ev); err != nil {
		t.Fatalf("stored payload %s does not decode: %v", m.Data, err)
	}
	if err := ev.Validate(); err != nil {
		t.Fatalf("stored event %s is invalid: %v", m.Data, err)
	}
	return ev
}

// checkStoredHeaders asserts the headers every later stage relies on.
func checkStoredHeaders(t testing.TB, m *queue.Message, namespace, source, id string) {
	t.Helper()
	if got, want := m.Header.Get(queue.HeaderWebhookID), queue.WebhookID(namespace, source, id); got != want {
		t.Errorf("%s = %q, want %q", queue.HeaderWebhookID, got, want)
	}
	if got, want := m.Header.Get(queue.HeaderEventKey), queue.EventDedupID(namespace, source, id); got != want {
		t.Errorf("%s = %q, want %q", queue.HeaderEventKey, got, want)
	}
	if got, want := m.DedupID, queue.EventDedupID(namespace, source, id); got != want {
		t.Errorf("dedup id = %q, want %q", got, want)
	}
	ingested, err := time.Parse(time.RFC3339Nano, m.Header.Get(queue.HeaderIngestedAt))
	if err != nil {
		t.Errorf("%s = %q: %v", queue.HeaderIngestedAt, m.Header.Get(queue.HeaderIngestedAt), err)
	} else if d := time.Since(ingested); d < 0 || d > time.Minute {
		t.Errorf("%s = %s, not just now", queue.HeaderIngestedAt, ingested)
	}
	if m.Namespace != namespace {
		t.Errorf("stored under namespace %q, want %q", m.Namespace, namespace)
	}
}

func TestStructuredEventIsStored(t *testing.T) {
	f := newFixture(t)
	body := eventJSON(t, map[string]any{
		"subject":         "order/42",
		"time":            "2026-01-02T03:04:05.123456789Z",
		"datacontenttype": "application/json",
		"dataschema":      "https://example.com/schemas/order",
		"traceparent":     "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
		"priority":        7,
		"urgent":          true,
	})
	got := post(t, f.url("team-a"), structuredHeader(), body).accepted(t)
	want := AcceptedResponse{Namespace: "team-a", Events: []AcceptedEvent{{
		ID: "evt-1", Source: "/orders", WebhookID: queue.WebhookID("team-a", "/orders", "evt-1"),
	}}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("202 body = %+v, want %+v", got, want)
	}

	msgs := fetchStored(t, f.q, 1)
	checkStoredHeaders(t, msgs[0], "team-a", "/orders", "evt-1")
	ev := decodeStoredEvent(t, msgs[0])
	if ev.ID() != "evt-1" || ev.Source() != "/orders" || ev.Type() != "order.created" || ev.Subject() != "order/42" ||
		ev.DataSchema() != "https://example.com/schemas/order" || !ev.Time().Equal(time.Date(2026, 1, 2, 3, 4, 5, 123456789, time.UTC)) {
		t.Errorf("stored attributes differ: %s", msgs[0].Data)
	}
	if string(ev.Data()) != `{"order":42}` {
		t.Errorf("stored data = %s, want {\"order\":42}", ev.Data())
	}
	ext := ev.Extensions()
	if ext["traceparent"] != "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01" || ext["priority"] != int32(7) || ext["urgent"] != true {
		t.Errorf("stored extensions = %v", ext)
	}
	// The stored payload is the SDK's canonical structured form.
	canonical, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(canonical, msgs[0].Data) {
		t.Errorf("stored payload is not canonical:\n got %s\nwant %s", msgs[0].Data, canonical)
	}
}

func TestBinaryEventIsStored(t *testing.T) {
	binaryData := []byte{0x00, 0xff, 0xfe, 'a', 0x80}
	tests := []struct {
		name        string
		contentType string
		body        []byte
		// wantMember is the member holding the data in the stored JSON.
		wantMember string
	}{
		{name: "json", contentType: "application/json", body: []byte(" {\"order\": 42}\n"), wantMember: `"data":{"order":42}`},
		{name: "text", contentType: "text/plain; charset=utf-8", body: []byte("hello\nworld"), wantMember: `"data":"hello\nworld"`},
		{name: "octets", contentType: "application/octet-stream", body: binaryData, wantMember: `"data_base64":"AP/+YYA="`},
		{name: "no content type, not JSON", contentType: "", body: []byte("plain words"), wantMember: `"data_base64":"cGxhaW4gd29yZHM="`},
		{name: "no data", contentType: "", body: nil, wantMember: ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			header := binaryHeader("bin-1", "https://shop.example/orders", "order.paid")
			header.Set("Ce-Subject", "order/42")
			header.Set("Ce-Time", "2026-01-02T03:04:05Z")
			header.Set("Ce-Traceparent", "00-abc-def-01")
			if tc.contentType == "" {
				header.Del("Content-Type")
			} else {
				header.Set("Content-Type", tc.contentType)
			}
			got := post(t, f.url("team-a"), header, tc.body).accepted(t)
			if len(got.Events) != 1 || got.Events[0].ID != "bin-1" || got.Events[0].Duplicate {
				t.Fatalf("202 body = %+v", got)
			}
			msgs := fetchStored(t, f.q, 1)
			checkStoredHeaders(t, msgs[0], "team-a", "https://shop.example/orders", "bin-1")
			if tc.wantMember != "" && !bytes.Contains(msgs[0].Data, []byte(tc.wantMember)) {
				t.Errorf("stored %s, want it to contain %s", msgs[0].Data, tc.wantMember)
			}
			ev := decodeStoredEvent(t, msgs[0])
			if ev.Subject() != "order/42" || ev.Extensions()["traceparent"] != "00-abc-def-01" || ev.DataContentType() != tc.contentType {
				t.Errorf("stored attributes differ: %s", msgs[0].Data)
			}
			// JSON data is stored compacted (json.Marshal compacts), the
			// rest byte for byte.
			wantData := tc.body
			if tc.name == "json" {
				wantData = []byte(`{"order":42}`)
			}
			if !bytes.Equal(ev.Data(), wantData) {
				t.Errorf("stored data = %q, want %q", ev.Data(), wantData)
			}
		})
	}
}

func TestBatchIsStoredInOrder(t *testing.T) {
	f := newFixture(t)
	var events [][]byte
	for i := range 5 {
		events = append(events, eventJSON(t, map[string]any{"id": fmt.Sprintf("b-%d", i)}))
	}
	got := post(t, f.url("team-b"), batchHeader(), batchJSON(t, events...)).accepted(t)
	if len(got.Events) != 5 {
		t.Fatalf("202 names %d events, want 5: %+v", len(got.Events), got)
	}
	msgs := fetchStored(t, f.q, 5)
	for i, m := range msgs {
		id := fmt.Sprintf("b-%d", i)
		if got.Events[i].ID != id || got.Events[i].Duplicate {
			t.Errorf("response event %d = %+v, want id %s", i, got.Events[i], id)
		}
		if ev := decodeStoredEvent(t, m); ev.ID() != id {
			t.Errorf("stored event %d has id %s, want %s (batch order)", i, ev.ID(), id)
		}
		checkStoredHeaders(t, m, "team-b", "/orders", id)
	}

	// An empty batch is a valid batch with nothing to store.
	empty := post(t, f.url("team-b"), batchHeader(), []byte("[]")).accepted(t)
	if len(empty.Events) != 0 {
		t.Errorf("empty batch answered %+v", empty)
	}
	if n := storedCount(t, f.q); n != 0 {
		t.Errorf("empty batch stored %d events", n)
	}
}

// TestAcceptedOnlyAfterStored checks that every 202 is preceded by the
// JetStream acknowledgement: right after each answer, the queue holds
// exactly the events answered so far.
func TestAcceptedOnlyAfterStored(t *testing.T) {
	f := newFixture(t)
	accepted := 0
	for i := range 20 {
		var r response
		switch i % 3 {
		case 0:
			r = post(t, f.url("team-a"), structuredHeader(), eventJSON(t, map[string]any{"id": fmt.Sprintf("s-%d", i)}))
		case 1:
			r = post(t, f.url("team-a"), binaryHeader(fmt.Sprintf("b-%d", i), "/orders", "order.created"), []byte(`{}`))
		default:
			r = post(t, f.url("team-a"), batchHeader(), batchJSON(t,
				eventJSON(t, map[string]any{"id": fmt.Sprintf("x-%d", i)}),
				eventJSON(t, map[string]any{"id": fmt.Sprintf("y-%d", i)})))
		}
		accepted += len(r.accepted(t).Events)
		if n := storedCount(t, f.q); n != accepted {
			t.Fatalf("after request %d: %d events stored, %d accepted", i, n, accepted)
		}
	}
}

func TestDuplicatesAreStoredOnce(t *testing.T) {
	f := newFixture(t)
	first := post(t, f.url("team-a"), structuredHeader(), eventJSON(t, nil)).accepted(t)
	if first.Events[0].Duplicate {
		t.Fatalf("first publish reported as duplicate")
	}
	// The same source and id again, in every mode, even with other data.
	again := []response{
		post(t, f.url("team-a"), structuredHeader(), eventJSON(t, map[string]any{"data": "changed"})),
		post(t, f.url("team-a"), binaryHeader("evt-1", "/orders", "order.created"), []byte(`{"order":42}`)),
		post(t, f.url("team-a"), batchHeader(), batchJSON(t, eventJSON(t, nil), eventJSON(t, map[string]any{"id": "evt-2"}), eventJSON(t, map[string]any{"id": "evt-2"}))),
	}
	for i, r := range again {
		resp := r.accepted(t)
		if !resp.Events[0].Duplicate || resp.Events[0].WebhookID != first.Events[0].WebhookID {
			t.Errorf("republish %d: %+v, want a duplicate with webhook id %s", i, resp.Events[0], first.Events[0].WebhookID)
		}
	}
	batch := again[2].accepted(t)
	if batch.Events[1].Duplicate || !batch.Events[2].Duplicate {
		t.Errorf("batch with a repeated event: %+v, want the second copy marked duplicate", batch.Events)
	}
	// Same id from another source is another event.
	other := post(t, f.url("team-a"), structuredHeader(), eventJSON(t, map[string]any{"source": "/invoices"})).accepted(t)
	if other.Events[0].Duplicate {
		t.Errorf("same id from another source reported as duplicate")
	}

	msgs := fetchStored(t, f.q, 3)
	if n := storedCount(t, f.q); n != 0 {
		t.Fatalf("%d events stored beyond the 3 distinct ones", n)
	}
	if ev := decodeStoredEvent(t, msgs[0]); string(ev.Data()) != `{"order":42}` {
		t.Errorf("the first copy must be the stored one, got data %s", ev.Data())
	}
}

func TestNamespaceIsolation(t *testing.T) {
	f := newFixture(t)
	a := post(t, f.url("team-a"), structuredHeader(), eventJSON(t, nil)).accepted(t)
	b := post(t, f.url("team-b"), structuredHeader(), eventJSON(t, nil)).accepted(t)
	if a.Events[0].Duplicate || b.Events[0].Duplicate {
		t.Fatalf("the same event in two namespaces must be two events: %+v %+v", a, b)
	}
	if a.Events[0].WebhookID == b.Events[0].WebhookID {
		t.Errorf("two namespaces share webhook id %s", a.Events[0].WebhookID)
	}
	msgs := fetchStored(t, f.q, 2)
	seen := map[string]string{}
	for _, m := range msgs {
		seen[m.Namespace] = m.Subject
		checkStoredHeaders(t, m, m.Namespace, "/orders", "evt-1")
	}
	if seen["team-a"] != queue.EventSubject("team-a") || seen["team-b"] != queue.EventSubject("team-b") {
		t.Errorf("events stored under %v, want one on each namespace's subject", seen)
	}
}

// TestRejections covers every 4xx answer: status, the attribute and index
// named in the JSON body, the headers that go with it, and that nothing is
// stored.
func TestRejections(t *testing.T) {
	f := newFixture(t, func(o *Options) { o.MaxBatchEvents = 3 })
	structured := func(attrs map[string]any) []byte { return eventJSON(t, attrs) }
	withHeader := func(h http.Header, key, value string) http.Header {
		h = h.Clone()
		if value == "" {
			h.Del(key)
		} else {
			h.Set(key, value)
		}
		return h
	}
	binary := binaryHeader("bin-1", "/orders", "order.created")
	repeated := binary.Clone()
	repeated["Ce-Subject"] = []string{"order/1", "order/2"}
	oversized := bytes.Repeat([]byte("x"), DefaultMaxBodyBytes+1)

	tests := []struct {
		name       string
		method     string
		path       string // default: the team-a events URL
		header     http.Header
		body       []byte
		wantStatus int
		wantField  string
		wantIndex  *int
		wantText   string
		wantHeader map[string]string
	}{
		// Required attributes, structured and binary.
		{name: "structured without specversion", header: structuredHeader(), body: structured(map[string]any{"specversion": nil}), wantStatus: 400, wantField: "specversion", wantText: "missing required attribute specversion"},
		{name: "structured without id", header: structuredHeader(), body: structured(map[string]any{"id": nil}), wantStatus: 400, wantField: "id", wantText: "missing required attribute id"},
		{name: "structured without source", header: structuredHeader(), body: structured(map[string]any{"source": nil}), wantStatus: 400, wantField: "source", wantText: "missing required attribute source"},
		{name: "structured without type", header: structuredHeader(), body: structured(map[string]any{"type": nil}), wantStatus: 400, wantField: "type", wantText: "missing required attribute type"},
		{name: "structured with empty id", header: structuredHeader(), body: structured(map[string]any{"id": ""}), wantStatus: 400, wantField: "id", wantText: "must not be empty"},
		{name: "structured with numeric id", header: structuredHeader(), body: structured(map[string]any{"id": 7}), wantStatus: 400, wantField: "id", wantText: "must be a JSON string"},
		{name: "binary without specversion", header: withHeader(binary, "Ce-Specversion", ""), body: []byte(`{}`), wantStatus: 400, wantField: "specversion", wantText: "specversion"},
		{name: "binary without id", header: withHeader(binary, "Ce-Id", ""), body: []byte(`{}`), wantStatus: 400, wantField: "id", wantText: "missing required attribute id"},
		{name: "binary without source", header: withHeader(binary, "Ce-Source", ""), body: []byte(`{}`), wantStatus: 400, wantField: "source", wantText: "missing required attribute source"},
		{name: "binary without type", header: withHeader(binary, "Ce-Type", ""), body: []byte(`{}`), wantStatus: 400, wantField: "type", wantText: "missing required attribute type"},
		// Wrong specversion.
		{name: "structured specversion 0.3", header: structuredHeader(), body: structured(map[string]any{"specversion": "0.3"}), wantStatus: 400, wantField: "specversion", wantText: `must be "1.0", got "0.3"`},
		{name: "binary specversion 2.0", header: withHeader(binary, "Ce-Specversion", "2.0"), body: []byte(`{}`), wantStatus: 400, wantField: "specversion", wantText: `must be "1.0", got "2.0"`},
		// Malformed JSON and attribute values.
		{name: "invalid JSON", header: structuredHeader(), body: []byte(`{"specversion":"1.0","id":`), wantStatus: 400, wantText: "malformed JSON"},
		{name: "invalid JSON syntax", header: structuredHeader(), body: []byte(`{"specversion" "1.0"}`), wantStatus: 400, wantText: "malformed JSON"},
		{name: "JSON array in structured mode", header: structuredHeader(), body: []byte(`[]`), wantStatus: 400, wantText: "must be an object"},
		{name: "trailing data", header: structuredHeader(), body: append(structured(nil), []byte(` {}`)...), wantStatus: 400, wantText: "after the end"},
		{name: "duplicate attribute", header: structuredHeader(), body: []byte(`{"specversion":"1.0","id":"a","id":"b","source":"/s","type":"t"}`), wantStatus: 400, wantField: "id", wantText: "more than once"},
		{name: "invalid UTF-8", header: structuredHeader(), body: []byte("{\"specversion\":\"1.0\",\"id\":\"\xff\",\"source\":\"/s\",\"type\":\"t\"}"), wantStatus: 400, wantText: "UTF-8"},
		{name: "invalid time", header: structuredHeader(), body: structured(map[string]any{"time": "yesterday"}), wantStatus: 400, wantField: "time", wantText: "RFC 3339"},
		{name: "relative dataschema", header: structuredHeader(), body: structured(map[string]any{"dataschema": "schemas/order"}), wantStatus: 400, wantField: "dataschema", wantText: "absolute URI"},
		{name: "invalid datacontenttype", header: structuredHeader(), body: structured(map[string]any{"datacontenttype": "not a type"}), wantStatus: 400, wantField: "datacontenttype"},
		{name: "data and data_base64", header: structuredHeader(), body: structured(map[string]any{"data_base64": "aGk="}), wantStatus: 400, wantField: "data_base64", wantText: "not both"},
		{name: "extension with object value", header: structuredHeader(), body: structured(map[string]any{"tenant": map[string]any{"a": 1}}), wantStatus: 400, wantField: "tenant"},
		{name: "extension with fractional number", header: structuredHeader(), body: structured(map[string]any{"weight": 1.5}), wantStatus: 400, wantField: "weight", wantText: "integer"},
		{name: "upper-case extension name", header: structuredHeader(), body: structured(map[string]any{"Tenant": "x"}), wantStatus: 400, wantField: "Tenant", wantText: "lower-case"},
		{name: "binary data not JSON", header: binary, body: []byte(`{"order":`), wantStatus: 400, wantField: "data", wantText: "not valid JSON"},
		{name: "binary repeated attribute", header: repeated, body: []byte(`{}`), wantStatus: 400, wantField: "subject", wantText: "more than once"},
		// Control characters.
		{name: "structured id with control character", header: structuredHeader(), body: structured(map[string]any{"id": "evt\u00071"}), wantStatus: 400, wantField: "id", wantText: "control characters"},
		{name: "structured source with newline", header: structuredHeader(), body: structured(map[string]any{"source": "/orders\nX-Injected: 1"}), wantStatus: 400, wantField: "source", wantText: "control characters"},
		{name: "binary id with tab", header: withHeader(binary, "Ce-Id", "evt\t1"), body: []byte(`{}`), wantStatus: 400, wantField: "id", wantText: "control characters"},
		// Batches.
		{name: "batch with one bad event", header: batchHeader(), body: batchJSON(t, structured(map[string]any{"id": "ok-1"}), structured(map[string]any{"id": nil}), structured(map[string]any{"id": "ok-3"})), wantStatus: 400, wantField: "id", wantIndex: intPtr(1), wantText: "event 1: missing required attribute id"},
		{name: "batch not an array", header: batchHeader(), body: structured(nil), wantStatus: 400, wantText: "JSON array"},
		{name: "batch element not an object", header: batchHeader(), body: []byte(`[` + string(structured(nil)) + `, 3]`), wantStatus: 400, wantIndex: intPtr(1), wantText: "object"},
		{name: "batch over the event limit", header: batchHeader(), body: batchJSON(t, structured(map[string]any{"id": "1"}), structured(map[string]any{"id": "2"}), structured(map[string]any{"id": "3"}), structured(map[string]any{"id": "4"})), wantStatus: 413, wantText: "more than 3 events"},
		// Size.
		{name: "body over the limit", header: structuredHeader(), body: oversized, wantStatus: 413, wantText: "limit of 1048576 bytes (1 MiB)"},
		// Content types.
		{name: "unsupported content type", header: http.Header{"Content-Type": {"text/plain"}}, body: []byte("hi"), wantStatus: 415, wantText: "not a CloudEvents content type"},
		{name: "missing content type", header: http.Header{}, body: structured(nil), wantStatus: 415, wantText: "missing Content-Type"},
		{name: "unsupported event format", header: http.Header{"Content-Type": {"application/cloudevents+avro"}}, body: []byte("x"), wantStatus: 415, wantText: "not supported"},
		{name: "content encoding", header: withHeader(structuredHeader(), "Content-Encoding", "gzip"), body: structured(nil), wantStatus: 415, wantText: "Content-Encoding"},
		{name: "non-UTF-8 charset", header: http.Header{"Content-Type": {"application/cloudevents+json; charset=latin1"}}, body: structured(nil), wantStatus: 415, wantText: "charset"},
		// Routing.
		{name: "GET", method: http.MethodGet, wantStatus: 405, wantText: "POST", wantHeader: map[string]string{"Allow": "POST"}},
		{name: "PUT", method: http.MethodPut, header: structuredHeader(), body: structured(nil), wantStatus: 405, wantHeader: map[string]string{"Allow": "POST"}},
		{name: "unknown path", path: "/v1/events", header: structuredHeader(), body: structured(nil), wantStatus: 404, wantText: "no such endpoint"},
		{name: "trailing slash", path: "/v1/namespaces/team-a/events/", header: structuredHeader(), body: structured(nil), wantStatus: 404},
		{name: "unknown namespace", path: "/v1/namespaces/team-z/events", header: structuredHeader(), body: structured(nil), wantStatus: 404, wantText: `namespace "team-z" not found`},
		{name: "invalid namespace name", path: "/v1/namespaces/Team_A/events", header: structuredHeader(), body: structured(nil), wantStatus: 404, wantText: "not found"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			method := tc.method
			if method == "" {
				method = http.MethodPost
			}
			url := f.url("team-a")
			if tc.path != "" {
				url = f.server.URL + tc.path
			}
			r := do(t, method, url, tc.header, tc.body)
			if r.status != tc.wantStatus {
				t.Fatalf("status %d, want %d; body %s", r.status, tc.wantStatus, r.body)
			}
			if ct := r.header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q, want application/json", ct)
			}
			e := r.errorBody(t)
			if e.Field != tc.wantField {
				t.Errorf("field %q, want %q (error %q)", e.Field, tc.wantField, e.Error)
			}
			if (e.Index == nil) != (tc.wantIndex == nil) || (e.Index != nil && *e.Index != *tc.wantIndex) {
				t.Errorf("index %v, want %v (error %q)", deref(e.Index), deref(tc.wantIndex), e.Error)
			}
			if !strings.Contains(e.Error, tc.wantText) {
				t.Errorf("error %q does not contain %q", e.Error, tc.wantText)
			}
			for k, v := range tc.wantHeader {
				if got := r.header.Get(k); got != v {
					t.Errorf("header %s = %q, want %q", k, got, v)
				}
			}
			if n := storedCount(t, f.q); n != 0 {
				t.Fatalf("a rejected request stored %d events", n)
			}
		})
	}
}

func intPtr(i int) *int { return &i }

func deref(p *int) any {
	if p == nil {
		return nil
	}
	return *p
}

// TestBodyLimitIsConfigurable also covers a chunked body, which has no
// Content-Length to reject it early.
func TestBodyLimitIsConfigurable(t *testing.T) {
	f := newFixture(t, func(o *Options) { o.MaxBodyBytes = 4 << 10 })
	big := eventJSON(t, map[string]any{"data": strings.Repeat("x", 5<<10)})
	r := post(t, f.url("team-a"), structuredHeader(), big)
	if r.status != http.StatusRequestEntityTooLarge || !strings.Contains(r.errorBody(t).Error, "4096 bytes (4 KiB)") {
		t.Fatalf("status %d body %s, want 413 naming the 4 KiB limit", r.status, r.body)
	}
	req, err := http.NewRequestWithContext(testContext(t), http.MethodPost, f.url("team-a"), struct{ *bytes.Reader }{bytes.NewReader(big)})
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/cloudevents+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge || req.ContentLength > 0 {
		t.Fatalf("chunked body: status %d (content length %d), want 413", resp.StatusCode, req.ContentLength)
	}
	small := post(t, f.url("team-a"), structuredHeader(), eventJSON(t, nil))
	small.accepted(t)
}

func TestQueueUnavailable(t *testing.T) {
	f := newFixture(t)
	if err := f.q.Close(); err != nil {
		t.Fatal(err)
	}
	r := post(t, f.url("team-a"), structuredHeader(), eventJSON(t, nil))
	if r.status != http.StatusServiceUnavailable || r.header.Get("Retry-After") == "" {
		t.Fatalf("status %d Retry-After %q, want 503 with Retry-After; body %s", r.status, r.header.Get("Retry-After"), r.body)
	}
	r.errorBody(t)
}

// TestQueueFull fills a small JetStream store: publishing then fails with
// queue.ErrQueueFull, answered 503 with Retry-After, and exactly the events
// answered 202 are stored.
func TestQueueFull(t *testing.T) {
	q := openQueue(t, func(c *queue.Config) { c.MaxStoreBytes = 64 << 10 })
	h, err := NewHandler(Options{Queue: q, Namespaces: staticNamespaces("team-a"), Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	payload := strings.Repeat("x", 4<<10)
	accepted := 0
	deadline := time.Now().Add(20 * time.Second)
	for i := 0; ; i++ {
		if i > 200 || time.Now().After(deadline) {
			t.Fatalf("store of 64 KiB not full after %d events of 4 KiB", accepted)
		}
		r := post(t, srv.URL+"/v1/namespaces/team-a/events", structuredHeader(), eventJSON(t, map[string]any{"id": fmt.Sprint(i), "data": payload}))
		if r.status == http.StatusAccepted {
			accepted++
			continue
		}
		if r.status != http.StatusServiceUnavailable || r.header.Get("Retry-After") != "5" || !strings.Contains(r.errorBody(t).Error, "queue is full") {
			t.Fatalf("status %d Retry-After %q body %s, want 503 queue full with Retry-After 5", r.status, r.header.Get("Retry-After"), r.body)
		}
		break
	}
	if n := storedCount(t, q); n != accepted {
		t.Fatalf("%d events stored, %d accepted", n, accepted)
	}
}

// blockingQueue is a Publisher whose publishes wait for release.
type blockingQueue struct {
	entered chan struct{}
	release chan struct{}
}

func (b *blockingQueue) PublishEvents(ctx context.Context, _ string, batch []queue.EventPublish) []queue.PublishResult {
	b.entered <- struct{}{}
	results := make([]queue.PublishResult, len(batch))
	select {
	case <-b.release:
		for i := range results {
			results[i].Sequence = uint64(i + 1)
		}
	case <-ctx.Done():
		for i := range results {
			results[i].Err = ctx.Err()
		}
	}
	return results
}

func (b *blockingQueue) Connected() bool { return true }

func TestTooManyRequestsInFlight(t *testing.T) {
	bq := &blockingQueue{entered: make(chan struct{}, 1), release: make(chan struct{})}
	h, err := NewHandler(Options{Queue: bq, Namespaces: staticNamespaces("team-a"), Insecure: true, MaxConcurrentRequests: 1})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	url := srv.URL + "/v1/namespaces/team-a/events"

	var wg sync.WaitGroup
	var first response
	wg.Go(func() { first = post(t, url, structuredHeader(), eventJSON(t, nil)) })
	select {
	case <-bq.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("first request did not reach the queue within 10s")
	}
	r := post(t, url, structuredHeader(), eventJSON(t, map[string]any{"id": "second"}))
	close(bq.release)
	wg.Wait()
	if r.status != http.StatusTooManyRequests || r.header.Get("Retry-After") != "1" {
		t.Fatalf("second request: status %d Retry-After %q, want 429 with Retry-After 1; body %s", r.status, r.header.Get("Retry-After"), r.body)
	}
	r.errorBody(t)
	first.accepted(t)
}

func TestMetrics(t *testing.T) {
	f := newFixture(t)
	post(t, f.url("team-a"), structuredHeader(), eventJSON(t, nil)).accepted(t)
	post(t, f.url("team-a"), structuredHeader(), eventJSON(t, nil)).accepted(t)                                                             // duplicate
	post(t, f.url("team-a"), batchHeader(), batchJSON(t, eventJSON(t, map[string]any{"id": "2"}), eventJSON(t, map[string]any{"id": nil}))) // 2 rejected
	post(t, f.url("team-z"), structuredHeader(), eventJSON(t, nil))                                                                         // unknown namespace: no event series
	do(t, http.MethodGet, f.url("team-a"), nil, nil)

	got := gatherCounters(t, f.registry)
	want := map[string]float64{
		`herald_ingest_requests_total{code="202"}`:                          2,
		`herald_ingest_requests_total{code="400"}`:                          1,
		`herald_ingest_requests_total{code="404"}`:                          1,
		`herald_ingest_requests_total{code="405"}`:                          1,
		`herald_ingest_events_total{namespace="team-a",result="accepted"}`:  1,
		`herald_ingest_events_total{namespace="team-a",result="duplicate"}`: 1,
		`herald_ingest_events_total{namespace="team-a",result="rejected"}`:  2,
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("metrics:\n got %v\nwant %v", got, want)
	}

	// A second handler on the same registry shares the counters.
	if _, err := NewHandler(Options{Queue: f.q, Namespaces: staticNamespaces(), Insecure: true, Registerer: f.registry}); err != nil {
		t.Errorf("second handler on one registry: %v", err)
	}
}

// gatherCounters returns the registry's counters by name and labels, as
// name{label="value",...}.
func gatherCounters(t testing.TB, registry *prometheus.Registry) map[string]float64 {
	t.Helper()
	families, err := registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range families {
		for _, m := range mf.GetMetric() {
			got[mf.GetName()+labelString(m)] = m.GetCounter().GetValue()
		}
	}
	return got
}

func labelString(m *dto.Metric) string {
	var parts []string
	for _, l := range m.GetLabel() {
		parts = append(parts, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
	}
	return "{" + strings.Join(parts, ",") + "}"
}

func TestNewHandlerOptions(t *testing.T) {
	q := &blockingQueue{}
	ns := staticNamespaces()
	fakeAuthn := NewTokenReviewAuthenticator(nil, "", CacheOptions{}, ReviewLimit{})
	fakeAuthz := NewSubjectAccessReviewAuthorizer(nil, CacheOptions{})
	tests := []struct {
		name string
		opts Options
		want string
	}{
		{"no queue", Options{Namespaces: ns, Insecure: true}, "Queue is required"},
		{"no namespaces", Options{Queue: q, Insecure: true}, "Namespaces is required"},
		{"no authenticator", Options{Queue: q, Namespaces: ns, Authorizer: fakeAuthz}, "required unless Insecure"},
		{"no authorizer", Options{Queue: q, Namespaces: ns, Authenticator: fakeAuthn}, "required unless Insecure"},
		{"insecure with authenticator", Options{Queue: q, Namespaces: ns, Insecure: true, Authenticator: fakeAuthn}, "excludes"},
	}
	for _, tc := range tests {
		if _, err := NewHandler(tc.opts); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one containing %q", tc.name, err, tc.want)
		}
	}
	if _, err := NewHandler(Options{Queue: q, Namespaces: ns, Authenticator: fakeAuthn, Authorizer: fakeAuthz}); err != nil {
		t.Errorf("secure handler: %v", err)
	}
}

func TestInsecureModeWarns(t *testing.T) {
	var logged []string
	log := funcr.New(func(prefix, args string) { logged = append(logged, args) }, funcr.Options{})
	if _, err := NewHandler(Options{Queue: &blockingQueue{}, Namespaces: staticNamespaces(), Insecure: true, Log: log}); err != nil {
		t.Fatal(err)
	}
	if len(logged) != 1 || !strings.Contains(logged[0], "INSECURE MODE") || !strings.Contains(logged[0], "local development only") {
		t.Fatalf("insecure handler logged %q, want one loud warning", logged)
	}
	logged = nil
	if _, err := NewHandler(Options{Queue: &blockingQueue{}, Namespaces: staticNamespaces(), Authenticator: NewTokenReviewAuthenticator(nil, "", CacheOptions{}, ReviewLimit{}), Authorizer: NewSubjectAccessReviewAuthorizer(nil, CacheOptions{}), Log: log}); err != nil {
		t.Fatal(err)
	}
	if len(logged) != 0 {
		t.Fatalf("secure handler logged %q", logged)
	}
}
