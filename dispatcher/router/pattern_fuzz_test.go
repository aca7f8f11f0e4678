package router

import (
	"fmt"
	"strings"
	"testing"

	"github.com/herald-dev/herald/dispatcher/catalog"
)

// FuzzPatternSemantics checks MatchType and MatchSource against the
// definition Subscription authors read in the API documentation, for
// arbitrary patterns and values: "*" matches everything; "<p>.*" (types)
// and "<p>/*" (sources) match exactly the values that start with "<p>." or
// "<p>/" and continue after it; any other pattern matches only itself.
func FuzzPatternSemantics(f *testing.F) {
	for _, s := range []struct{ pattern, value string }{
		{"*", ""}, {"*", "order.created"}, {"order.*", "order.created"}, {"order.*", "order."},
		{"order.*", "order"}, {"order.*", "orders.created"}, {"/shop/*", "/shop/eu/17"}, {"/shop/*", "/shop/"},
		{"/shop/*", "/shop"}, {".*", "."}, {".*", ".."}, {"/*", "/"}, {"/*", "//"}, {"a*", "a*"}, {"a*", "ab"},
		{"**", "**"}, {"*.*", "*.x"}, {"", ""}, {"x", "x"}, {"x", "X"},
	} {
		f.Add(s.pattern, s.value)
	}
	f.Fuzz(func(t *testing.T, pattern, value string) {
		for _, m := range []struct {
			name  string
			sep   string
			match func(string, string) bool
		}{{"MatchType", ".", MatchType}, {"MatchSource", "/", MatchSource}} {
			want := pattern == value
			switch {
			case pattern == "*":
				want = true
			case strings.HasSuffix(pattern, m.sep+"*"):
				prefix := strings.TrimSuffix(pattern, "*")
				want = strings.HasPrefix(value, prefix) && len(value) > len(prefix)
			}
			if got := m.match(pattern, value); got != want {
				t.Fatalf("%s(%q, %q) = %v, want %v", m.name, pattern, value, got, want)
			}
		}
	})
}

// FuzzSourcePatterns checks the index's compiled source matching (exact
// and prefix lists, wildcard short cut) against MatchSource applied to each
// pattern, for arbitrary spec.sources. patterns is a ";"-separated list of
// Subscriptions, each a ","-separated list of source patterns ("" for a
// Subscription without sources, which matches every source).
func FuzzSourcePatterns(f *testing.F) {
	for _, s := range []struct{ patterns, source string }{
		{"/orders/*", "/orders/eu/17"},
		{"/orders/*", "/orders"},
		{"/orders/*", "/orders/"},
		{"/orders/*,/invoices", "/invoices"},
		{"/orders/*;/orders/eu/*;/orders/eu/17", "/orders/eu/17"},
		{"*;/a;/a/*", "/a/b"},
		{";/a", "/b"},
		{"/*", "/"},
		{"//*", "//x"},
		{"https://example.com/*", "https://example.com/a"},
		{"/a*", "/ab"},
		{"", ""},
	} {
		f.Add(s.patterns, s.source)
	}
	f.Fuzz(func(t *testing.T, patterns, source string) {
		var subs []*catalog.Subscription
		for i, group := range strings.Split(patterns, ";") {
			var sources []string
			if group != "" {
				sources = strings.Split(group, ",")
			}
			subs = append(subs, &catalog.Subscription{Name: fmt.Sprintf("s%d", i), Types: []string{"*"}, Sources: sources})
		}
		for _, s := range subs {
			m := compileSources(s.Sources)
			want := len(s.Sources) == 0
			for _, p := range s.Sources {
				want = want || MatchSource(p, source)
			}
			if got := m.match(source); got != want {
				t.Fatalf("sources %q, source %q: compiled matcher %v, MatchSource %v", s.Sources, source, got, want)
			}
		}
		ix := NewIndex(subs)
		got, want := candidates(ix, "any.type", source), bruteForce(subs, "any.type", source)
		if !sameSubscriptions(got, want) {
			t.Fatalf("patterns %q source %q: index %v, brute force %v", patterns, source, names(got), names(want))
		}
	})
}
