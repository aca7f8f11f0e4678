package filter

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

// FuzzCompile feeds arbitrary expressions and event data to the filter
// language. Filters are written by any tenant who can create a
// Subscription, and the manager and every dispatcher compile them, so
// compiling must never panic, errors must be messages a condition can carry
// (non-empty, prefixed as documented), compiling must be deterministic (the
// manager and the dispatcher must agree), and a compiled filter must
// evaluate any JSON data to a bool or an error, never panic.
func FuzzCompile(f *testing.F) {
	for _, s := range []struct{ expr, data string }{
		{`event.type == "order.created"`, `{}`},
		{`event.subject.startsWith("eu/") && data.total >= 100`, `{"total": 250}`},
		{`data.customer.tier == "vip"`, `{"customer": {"tier": "vip"}}`},
		{`"region" in event && event.region == "eu"`, `null`},
		{`data.items.exists(i, i.sku == "x")`, `{"items": [{"sku": "x"}, 1, "y"]}`},
		{`data.total`, `{"total": "not a number"}`},
		{`size(data) > 2`, `"abc"`},
		{`lists.range(1000).map(x, lists.range(1000).map(y, x * y)).size() > 0`, `{}`},
		{`event.source.matches("^(a+)+$")`, `{}`},
		{`base64.decode(event.id) == b""`, `{}`},
		{`math.bitShiftLeft(1, 63) > 0`, `{}`},
		{`sets.equivalent(data, [1, 2])`, `[2, 1]`},
		{`dyn(data).x.y.z`, `{"x": {"y": {"z": true}}}`},
		{`event.type ==`, `{}`},
		{`[[[[[[[[[[1]]]]]]]]]]`, `{}`},
		{`(((((((((((true)))))))))))`, `{}`},
		{`"\u0000" == event.id`, `{}`},
		{``, ``},
	} {
		f.Add(s.expr, []byte(s.data))
	}
	event := map[string]string{
		"id": "o-1", "type": "order.created", "source": "/shop/eu", "specversion": "1.0",
		"subject": "eu/orders/17", "time": "2026-01-02T03:04:05Z", "datacontenttype": "application/json",
		"dataschema": "",
	}
	f.Fuzz(func(t *testing.T, expr string, data []byte) {
		if len(expr) > 4096 {
			return // the CRD's MaxLength for spec.filter
		}
		filter, err := Compile(expr)
		_, again := Compile(expr)
		if (err == nil) != (again == nil) || (err != nil && err.Error() != again.Error()) {
			t.Fatalf("Compile(%q) is not deterministic: %v, then %v", expr, err, again)
		}
		if err != nil {
			msg := err.Error()
			if filter != nil {
				t.Fatalf("Compile(%q) returned a filter and an error", expr)
			}
			if !strings.HasPrefix(msg, "filter does not compile: ") &&
				!strings.HasPrefix(msg, "filter must evaluate to a bool") &&
				!strings.HasPrefix(msg, "filter cannot be planned") {
				t.Fatalf("Compile(%q): unexpected error form %q", expr, msg)
			}
			return
		}
		if filter.String() != expr {
			t.Fatalf("String() = %q, want %q", filter.String(), expr)
		}
		var value any
		if json.Unmarshal(data, &value) != nil {
			value = nil // not JSON: the dispatcher passes null
		}
		got, err := filter.Match(event, value)
		if err != nil {
			if got {
				t.Fatalf("Match(%q) returned true with an error", expr)
			}
			if errors.Is(err, ErrNotBool) {
				return
			}
			if !strings.HasPrefix(err.Error(), "evaluate filter: ") {
				t.Fatalf("Match(%q): unexpected error form %q", expr, err)
			}
		}
	})
}
