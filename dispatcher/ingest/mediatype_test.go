package ingest

import (
	"encoding/json"
	"fmt"
	"net/http"
	"reflect"
	"testing"
)

// TestPlusJSONDataIsStoredAsJSON publishes events whose datacontenttype is
// a "+json" media type, in every mode, and checks the stored structured
// form from the outside: data is the JSON value (not a string, not
// base64) and datacontenttype is kept as sent. The CloudEvents JSON format
// makes every */json and */*+json type JSON, and the router's filters and
// every delivery format read the stored data member as such.
func TestPlusJSONDataIsStoredAsJSON(t *testing.T) {
	const (
		vendorJSON = "application/vnd.foo+json"
		dataObject = `{"x":1,"tags":["a","<b>"]}`
	)
	structured := func(contentType, data string) []byte {
		return fmt.Appendf(nil, `{"specversion":"1.0","id":"evt-1","source":"/orders","type":"order.created","datacontenttype":%q,"data":%s}`, contentType, data)
	}
	tests := []struct {
		name   string
		header http.Header
		body   []byte
		// wantContentType and wantData are the stored datacontenttype
		// and data member (compact JSON).
		wantContentType string
		wantData        string
	}{
		{
			name:            "structured, object data",
			header:          structuredHeader(),
			body:            structured(vendorJSON, ` { "x" : 1, "tags" : ["a", "<b>"] } `),
			wantContentType: vendorJSON,
			wantData:        dataObject,
		},
		{
			name:            "structured, string data is a JSON string",
			header:          structuredHeader(),
			body:            structured(vendorJSON, `"plain"`),
			wantContentType: vendorJSON,
			wantData:        `"plain"`,
		},
		{
			name:            "structured, upper case and parameters",
			header:          structuredHeader(),
			body:            structured("Application/Problem+JSON; charset=utf-8", `{"x":1}`),
			wantContentType: "Application/Problem+JSON; charset=utf-8",
			wantData:        `{"x":1}`,
		},
		{
			name:            "batch, object data",
			header:          batchHeader(),
			body:            []byte(`[` + string(structured(vendorJSON, dataObject)) + `]`),
			wantContentType: vendorJSON,
			wantData:        dataObject,
		},
		{
			name:            "binary, object body",
			header:          binaryWith(vendorJSON),
			body:            []byte("{\"x\": 1, \"tags\": [\"a\", \"<b>\"]}\n"),
			wantContentType: vendorJSON,
			wantData:        dataObject,
		},
		{
			name:            "binary, parameters",
			header:          binaryWith(vendorJSON + "; charset=utf-8"),
			body:            []byte(`{"x":1}`),
			wantContentType: vendorJSON + "; charset=utf-8",
			wantData:        `{"x":1}`,
		},
		{
			name:            "binary, text/json",
			header:          binaryWith("text/json"),
			body:            []byte(`{"x":1}`),
			wantContentType: "text/json",
			wantData:        `{"x":1}`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			post(t, f.url("team-a"), tc.header, tc.body).accepted(t)
			msgs := fetchStored(t, f.q, 1)
			var stored map[string]json.RawMessage
			if err := json.Unmarshal(msgs[0].Data, &stored); err != nil {
				t.Fatalf("stored payload %s: %v", msgs[0].Data, err)
			}
			if _, ok := stored["data_base64"]; ok {
				t.Errorf("JSON data stored as data_base64: %s", msgs[0].Data)
			}
			var contentType string
			if err := json.Unmarshal(stored["datacontenttype"], &contentType); err != nil || contentType != tc.wantContentType {
				t.Errorf("stored datacontenttype %s, want %q", stored["datacontenttype"], tc.wantContentType)
			}
			if !jsonEqual(t, stored["data"], []byte(tc.wantData)) {
				t.Errorf("stored data %s, want the JSON value %s (payload %s)", stored["data"], tc.wantData, msgs[0].Data)
			}
		})
	}
}

// TestPlusJSONDataMustBeJSON: binary-mode data declared JSON by a "+json"
// Content-Type is checked like application/json.
func TestPlusJSONDataMustBeJSON(t *testing.T) {
	f := newFixture(t)
	r := post(t, f.url("team-a"), binaryWith("application/vnd.foo+json"), []byte("not json"))
	if r.status != http.StatusBadRequest || r.errorBody(t).Field != "data" {
		t.Fatalf("status %d body %s, want 400 about data", r.status, r.body)
	}
	if n := storedCount(t, f.q); n != 0 {
		t.Errorf("stored %d events", n)
	}
}

func binaryWith(contentType string) http.Header {
	h := binaryHeader("evt-1", "/orders", "order.created")
	h.Set("Content-Type", contentType)
	return h
}

// jsonEqual compares two JSON values, ignoring insignificant whitespace.
func jsonEqual(t *testing.T, a, b []byte) bool {
	t.Helper()
	var va, vb any
	if err := json.Unmarshal(a, &va); err != nil {
		return false
	}
	if err := json.Unmarshal(b, &vb); err != nil {
		t.Fatalf("want %s: %v", b, err)
	}
	return reflect.DeepEqual(va, vb)
}
