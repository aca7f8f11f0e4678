package ingest

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestModeOf(t *testing.T) {
	tests := []struct {
		name       string
		header     http.Header
		want       requestMode
		wantStatus int
	}{
		{"structured", http.Header{"Content-Type": {"application/cloudevents+json"}}, modeStructured, 0},
		{"structured with charset", http.Header{"Content-Type": {"Application/CloudEvents+JSON; charset=UTF-8"}}, modeStructured, 0},
		{"structured wins over ce headers", http.Header{"Content-Type": {"application/cloudevents+json"}, "Ce-Specversion": {"1.0"}}, modeStructured, 0},
		{"batch", http.Header{"Content-Type": {"application/cloudevents-batch+json"}}, modeBatch, 0},
		{"binary", http.Header{"Content-Type": {"application/xml"}, "Ce-Specversion": {"1.0"}}, modeBinary, 0},
		{"binary without content type", http.Header{"Ce-Specversion": {"1.0"}}, modeBinary, 0},
		{"ce headers without specversion", http.Header{"Content-Type": {"application/json"}, "Ce-Id": {"1"}}, 0, 400},
		{"plain JSON", http.Header{"Content-Type": {"application/json"}}, 0, 415},
		{"nothing", http.Header{}, 0, 415},
		{"invalid media type", http.Header{"Content-Type": {"a/b; ="}}, 0, 415},
		{"other event format", http.Header{"Content-Type": {"application/cloudevents+protobuf"}, "Ce-Specversion": {"1.0"}}, 0, 415},
		{"compressed", http.Header{"Content-Type": {"application/cloudevents+json"}, "Content-Encoding": {"gzip"}}, 0, 415},
		{"identity encoding", http.Header{"Content-Type": {"application/cloudevents+json"}, "Content-Encoding": {"identity"}}, modeStructured, 0},
	}
	for _, tc := range tests {
		r := httptest.NewRequest(http.MethodPost, "/", nil)
		r.Header = tc.header
		got, rerr := modeOf(r)
		status := 0
		if rerr != nil {
			status = rerr.status
		}
		if got != tc.want || status != tc.wantStatus {
			t.Errorf("%s: mode %d status %d, want mode %d status %d (%v)", tc.name, got, status, tc.want, tc.wantStatus, rerr)
		}
	}
}

func TestDecodeStructuredStoredForm(t *testing.T) {
	tests := []struct {
		name string
		in   string
		// want is the stored payload.
		want string
	}{
		{
			name: "attribute order and whitespace are canonicalised",
			in:   `{ "type":"t", "data": {"b": [1, 2]}, "id":"1", "source":"/s", "specversion":"1.0" }`,
			want: `{"specversion":"1.0","id":"1","source":"/s","type":"t","data":{"b":[1,2]}}`,
		},
		{
			name: "base64 data stays base64",
			in:   `{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"application/octet-stream","data_base64":"AAEC"}`,
			want: `{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"application/octet-stream","data_base64":"AAEC"}`,
		},
		{
			name: "text data stays a string",
			in:   `{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"text/plain","data":"a <b> & c"}`,
			want: `{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"text/plain","data":"a \u003cb\u003e \u0026 c"}`,
		},
		{
			name: "+json data is a JSON value, laid out as application/json data",
			in:   `{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"application/vnd.foo+json","ext":"e","data":{ "x" : 1 }}`,
			want: `{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"application/vnd.foo+json","data":{"x":1},"ext":"e"}`,
		},
		{
			name: "time in UTC, null attributes absent, extensions sorted and typed",
			in:   `{"specversion":"1.0","id":"1","source":"/s","type":"t","time":"2026-01-02T05:04:05+02:00","subject":null,"zeta":"z","alpha":5,"flag":false,"gone":null}`,
			want: `{"specversion":"1.0","id":"1","source":"/s","type":"t","time":"2026-01-02T03:04:05Z","alpha":5,"flag":false,"zeta":"z"}`,
		},
		{
			name: "source scheme is normalised, as net/url does",
			in:   `{"specversion":"1.0","id":"1","source":"HTTPS://Shop.example/Orders","type":"t"}`,
			want: `{"specversion":"1.0","id":"1","source":"https://Shop.example/Orders","type":"t"}`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ev, rerr := decodeStructured([]byte(tc.in))
			if rerr != nil {
				t.Fatalf("decode: %v", rerr)
			}
			if string(ev.payload) != tc.want {
				t.Errorf("stored\n %s\nwant\n %s", ev.payload, tc.want)
			}
			checkDecoded(t, ev)
		})
	}
}

func TestDecodeBinaryHeaders(t *testing.T) {
	base := func() http.Header {
		return http.Header{"Ce-Specversion": {"1.0"}, "Ce-Id": {"1"}, "Ce-Source": {"/s"}, "Ce-Type": {"t"}}
	}
	tests := []struct {
		name      string
		mutate    func(http.Header)
		wantField string // "" and wantOK: accepted
		wantOK    bool
	}{
		{"minimal", func(http.Header) {}, "", true},
		{"lower-case header names", func(h http.Header) {
			for k, v := range h {
				delete(h, k)
				h[strings.ToLower(k)] = v
			}
		}, "", true},
		{"empty Content-Type is absent", func(h http.Header) { h["Content-Type"] = []string{""} }, "", true},
		{"bare ce- header", func(h http.Header) { h["Ce-"] = []string{"x"} }, "", false},
		{"ce-datacontenttype", func(h http.Header) { h.Set("Ce-Datacontenttype", "text/plain") }, "datacontenttype", false},
		{"invalid extension name", func(h http.Header) { h["Ce-Trace_id"] = []string{"x"} }, "trace_id", false},
		{"id twice under two spellings", func(h http.Header) { h["ce-id"] = []string{"2"} }, "id", false},
		{"empty subject", func(h http.Header) { h["Ce-Subject"] = []string{" "} }, "subject", false},
		{"invalid time", func(h http.Header) { h.Set("Ce-Time", "now") }, "time", false},
		{"structured media type as data type", func(h http.Header) { h.Set("Content-Type", "application/cloudevents+json") }, "datacontenttype", false},
		{"non-UTF-8 source", func(h http.Header) { h.Set("Ce-Source", "/s\xff") }, "source", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := base()
			tc.mutate(h)
			ev, rerr := decodeBinary(h, []byte(`{"a":1}`))
			if tc.wantOK {
				if rerr != nil {
					t.Fatalf("rejected: %v", rerr)
				}
				checkDecoded(t, ev)
				return
			}
			if rerr == nil {
				t.Fatalf("accepted %s", ev.payload)
			}
			if rerr.status != http.StatusBadRequest || rerr.field != tc.wantField {
				t.Errorf("status %d field %q, want 400 field %q (%v)", rerr.status, rerr.field, tc.wantField, rerr)
			}
		})
	}
}

// checkDecoded asserts the properties of every accepted event: valid, its
// stored form plain JSON that decodes to itself with the same identity.
func checkDecoded(t *testing.T, ev *decodedEvent) {
	t.Helper()
	if ev == nil || ev.event == nil {
		t.Fatal("accepted without an event")
	}
	if err := ev.event.Validate(); err != nil {
		t.Fatalf("accepted an event the SDK finds invalid: %v", err)
	}
	if !json.Valid(ev.payload) {
		t.Fatalf("stored form is not valid JSON: %q", ev.payload)
	}
	again, rerr := decodeStructured(ev.payload)
	if rerr != nil {
		t.Fatalf("stored form %s does not decode: %v", ev.payload, rerr)
	}
	if !bytes.Equal(again.payload, ev.payload) {
		t.Fatalf("stored form is not a fixed point:\n %s\n %s", ev.payload, again.payload)
	}
	if again.id() != ev.id() || again.source() != ev.source() {
		t.Fatalf("identity changed: %q %q -> %q %q", ev.source(), ev.id(), again.source(), again.id())
	}
	// finish skips decoding the stored form again when it is the input;
	// the full check must agree with every event the shortcut accepts.
	full, rerr := finish(ev.event, nil)
	if rerr != nil {
		t.Fatalf("accepted an event the full fixed-point check rejects: %v", rerr)
	}
	if !bytes.Equal(full.payload, ev.payload) {
		t.Fatalf("stored form differs from the full check's:\n %s\n %s", ev.payload, full.payload)
	}
}

// checkRejected asserts the properties of every rejection.
func checkRejected(t *testing.T, rerr *requestError) {
	t.Helper()
	if rerr.status != http.StatusBadRequest && rerr.status != http.StatusRequestEntityTooLarge {
		t.Fatalf("decode error with status %d: %v", rerr.status, rerr)
	}
	if rerr.message == "" {
		t.Fatal("decode error without a message")
	}
}
