package mediatype

import (
	"strings"
	"testing"
)

func TestIsJSON(t *testing.T) {
	tests := []struct {
		contentType string
		want        bool
	}{
		// No content type: the JSON format reads the data as application/json.
		{"", true},
		{"  ", true},
		// Subtype json, whatever the type.
		{"application/json", true},
		{"text/json", true},
		{"Application/JSON", true},
		{"application/json; charset=utf-8", true},
		{"  application/json  ; charset=utf-8 ", true},
		// A "+json" structured syntax suffix (RFC 6839).
		{"application/vnd.foo+json", true},
		{"APPLICATION/VND.FOO+JSON", true},
		{"application/vnd.foo+json; charset=utf-8; version=2", true},
		{"application/problem+json", true},
		{"application/cloudevents+json", true},
		{"application/cloudevents-batch+json", true},
		{"application/vnd.api.v2+json", true},
		// Parameters do not matter, even malformed ones.
		{"application/json; charset=", true},
		{"application/vnd.foo+json; =", true},
		// Only the last suffix counts, and only as a suffix.
		{"application/vnd.foo+json+gzip", false},
		{"application/vnd.api+json-fork", false},
		{"application/json-seq", false},
		{"application/geo+json-seq", false},
		{"application/foojson", false},
		{"application/x-json-stream", false},
		// Not JSON.
		{"text/plain", false},
		{"text/plain; charset=utf-8", false},
		{"application/xml", false},
		{"application/vnd.foo+xml", false},
		{"application/octet-stream", false},
		// Not media types.
		{"json", false},
		{"foojson", false},
		{"/json", false},
		{"application/", false},
		{"application json", false},
	}
	for _, tt := range tests {
		if got := IsJSON(tt.contentType); got != tt.want {
			t.Errorf("IsJSON(%q) = %v, want %v", tt.contentType, got, tt.want)
		}
	}
}

func FuzzIsJSON(f *testing.F) {
	for _, s := range []string{"", "application/json", "application/vnd.foo+json; charset=utf-8", "text/plain", "a/b; =", "/json"} {
		f.Add(s)
	}
	// Content types are case-insensitive: changing the case of ASCII
	// letters never changes the verdict.
	asciiUpper := func(r rune) rune {
		if 'a' <= r && r <= 'z' {
			return r - 'a' + 'A'
		}
		return r
	}
	f.Fuzz(func(t *testing.T, contentType string) {
		if IsJSON(contentType) != IsJSON(strings.Map(asciiUpper, contentType)) {
			t.Fatalf("IsJSON(%q) depends on letter case", contentType)
		}
	})
}
