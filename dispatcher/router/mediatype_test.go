package router

import (
	"slices"
	"testing"

	"github.com/herald-dev/herald/dispatcher/catalog"
)

// TestFilterSeesPlusJSONData routes events with "+json" datacontenttypes,
// in the stored form ingest writes, through an index with a filter on
// data: the filter's data variable is the decoded JSON value for every
// JSON media type, from data and from data_base64 alike, and a string for
// other types.
func TestFilterSeesPlusJSONData(t *testing.T) {
	ix := NewIndex([]*catalog.Subscription{
		{Name: "x-is-1", Types: []string{"*"}, Filter: mustFilter(t, `data.x == 1`)},
	})
	const head = `{"specversion":"1.0","id":"1","source":"/s","type":"order.created",`
	tests := []struct {
		name      string
		event     string
		wantMatch bool
	}{
		{"object data", head + `"datacontenttype":"application/vnd.foo+json","data":{"x":1}}`, true},
		{"upper case and parameters", head + `"datacontenttype":"Application/Vnd.Foo+JSON; charset=utf-8","data":{"x":1}}`, true},
		{"data_base64", head + `"datacontenttype":"application/vnd.foo+json","data_base64":"eyJ4IjoxfQ=="}`, true},
		{"text/json", head + `"datacontenttype":"text/json","data":{"x":1}}`, true},
		{"no match on another value", head + `"datacontenttype":"application/vnd.foo+json","data":{"x":2}}`, false},
		// A JSON string is a string, even when it holds JSON text: this
		// is how data arrived when ingest stored binary-mode "+json" data
		// as text.
		{"JSON text in a string", head + `"datacontenttype":"application/vnd.foo+json","data":"{\"x\":1}"}`, false},
		{"text type with base64 data", head + `"datacontenttype":"text/plain","data_base64":"eyJ4IjoxfQ=="}`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ix.Match(mustEvent(t, tt.event), nil)
			if matched := slices.ContainsFunc(got, func(s *catalog.Subscription) bool { return s.Name == "x-is-1" }); matched != tt.wantMatch {
				t.Errorf("matched %v, want %v", matched, tt.wantMatch)
			}
		})
	}
}
