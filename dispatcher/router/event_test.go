package router

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseEvent(t *testing.T) {
	tests := []struct {
		name     string
		payload  string
		wantErr  string
		wantAttr map[string]string
		wantData any
	}{
		{
			name:    "minimal",
			payload: `{"specversion":"1.0","id":"1","source":"/s","type":"t"}`,
			wantAttr: map[string]string{"specversion": "1.0", "id": "1", "source": "/s", "type": "t",
				"subject": "", "time": "", "datacontenttype": "", "dataschema": ""},
		},
		{
			name:    "extensions and data",
			payload: `{"specversion":"1.0","id":"1","source":"/s","type":"t","subject":"eu/1","traceparent":"00-x","count":3,"flag":true,"obj":{"a":1},"nil":null,"data":{"k":[1,"x"]}}`,
			wantAttr: map[string]string{"specversion": "1.0", "id": "1", "source": "/s", "type": "t",
				"subject": "eu/1", "time": "", "datacontenttype": "", "dataschema": "",
				"traceparent": "00-x", "count": "3", "flag": "true"},
			wantData: map[string]any{"k": []any{float64(1), "x"}},
		},
		{
			name:     "text data is a string",
			payload:  `{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"text/plain","data":"hello"}`,
			wantData: "hello",
		},
		{
			name:     "base64 data with a non-JSON content type is not decoded",
			payload:  `{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"application/octet-stream","data_base64":"AAEC"}`,
			wantData: nil,
		},
		{
			name:     "base64 JSON data",
			payload:  `{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"application/vnd.x+json; charset=utf-8","data_base64":"eyJhIjoxfQ=="}`,
			wantData: map[string]any{"a": float64(1)},
		},
		{name: "not JSON", payload: `not json`, wantErr: "decode"},
		{name: "not an object", payload: `[1]`, wantErr: "decode"},
		{name: "null", payload: `null`, wantErr: "not a JSON object"},
		{name: "missing id", payload: `{"specversion":"1.0","source":"/s","type":"t"}`, wantErr: `"id"`},
		{name: "empty type", payload: `{"specversion":"1.0","id":"1","source":"/s","type":""}`, wantErr: `"type"`},
		{name: "numeric id", payload: `{"specversion":"1.0","id":1,"source":"/s","type":"t"}`, wantErr: `"id"`},
		{name: "specversion 0.3", payload: `{"specversion":"0.3","id":"1","source":"/s","type":"t"}`, wantErr: "specversion"},
		{name: "data_base64 not a string", payload: `{"specversion":"1.0","id":"1","source":"/s","type":"t","data_base64":1}`, wantErr: "data_base64"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev, err := ParseEvent([]byte(tt.payload))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseEvent: %v", err)
			}
			if tt.wantAttr != nil && !reflect.DeepEqual(ev.Attributes, tt.wantAttr) {
				t.Errorf("attributes %v, want %v", ev.Attributes, tt.wantAttr)
			}
			if got := ev.Data(); !reflect.DeepEqual(got, tt.wantData) {
				t.Errorf("data %#v, want %#v", got, tt.wantData)
			}
		})
	}
}

// FuzzParseEvent: stored payloads are untrusted input to the router; parsing
// must never panic, and an accepted event has its required attributes.
func FuzzParseEvent(f *testing.F) {
	for _, s := range []string{
		`{"specversion":"1.0","id":"1","source":"/s","type":"t","data":{"a":1}}`,
		`{"specversion":"1.0","id":"1","source":"/s","type":"t","data_base64":"eyJhIjoxfQ=="}`,
		`{"specversion":"1.0","id":"1","source":"/s","type":"t","x":[1]}`,
		`{}`, `[]`, `null`, `"x"`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		ev, err := ParseEvent(payload)
		if err != nil {
			return
		}
		for _, name := range []string{"specversion", "id", "source", "type"} {
			if ev.Attributes[name] == "" {
				t.Fatalf("accepted event without %s: %q", name, payload)
			}
		}
		_ = ev.Data()
	})
}
