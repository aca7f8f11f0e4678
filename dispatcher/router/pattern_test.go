package router

import "testing"

func TestMatchType(t *testing.T) {
	tests := []struct {
		pattern, eventType string
		want               bool
	}{
		{"order.created", "order.created", true},
		{"order.created", "order.created.v2", false},
		{"order.created", "order.create", false},
		{"order.created", "Order.created", false},
		{"order.*", "order.created", true},
		{"order.*", "order.item.added", true},
		{"order.*", "order", false},
		{"order.*", "order.", false},
		{"order.*", "orders.created", false},
		{"order.*", "xorder.created", false},
		{"order.item.*", "order.item.added", true},
		{"order.item.*", "order.created", false},
		{"*", "anything", true},
		{"*", "a.b.c", true},
		// "*" is a wildcard only alone or after the final dot.
		{"order*", "order*", true},
		{"order*", "orders", false},
		{"*.created", "order.created", false},
		{"*.created", "*.created", true},
	}
	for _, tt := range tests {
		if got := MatchType(tt.pattern, tt.eventType); got != tt.want {
			t.Errorf("MatchType(%q, %q) = %v, want %v", tt.pattern, tt.eventType, got, tt.want)
		}
	}
}

func TestMatchSource(t *testing.T) {
	tests := []struct {
		pattern, source string
		want            bool
	}{
		{"/orders", "/orders", true},
		{"/orders", "/orders/1", false},
		{"/orders/*", "/orders/1", true},
		{"/orders/*", "/orders/eu/17", true},
		{"/orders/*", "/orders", false},
		{"/orders/*", "/orders/", false},
		{"/orders/*", "/ordersx/1", false},
		{"https://shop.example.com/*", "https://shop.example.com/orders", true},
		{"urn:shop:orders", "urn:shop:orders", true},
		// Only "/*" is a source wildcard; ".*" is literal.
		{"shop.*", "shop.orders", false},
		{"*", "/anything", true},
	}
	for _, tt := range tests {
		if got := MatchSource(tt.pattern, tt.source); got != tt.want {
			t.Errorf("MatchSource(%q, %q) = %v, want %v", tt.pattern, tt.source, got, tt.want)
		}
	}
}

func TestSourceMatcher(t *testing.T) {
	tests := []struct {
		patterns []string
		source   string
		want     bool
	}{
		{nil, "/x", true},
		{[]string{"/a", "/b/*"}, "/a", true},
		{[]string{"/a", "/b/*"}, "/b/c", true},
		{[]string{"/a", "/b/*"}, "/c", false},
		{[]string{"/a", "*"}, "/c", true},
	}
	for _, tt := range tests {
		m := compileSources(tt.patterns)
		if got := m.match(tt.source); got != tt.want {
			t.Errorf("sources %q match %q = %v, want %v", tt.patterns, tt.source, got, tt.want)
		}
	}
}
