package filter

import (
	"errors"
	"strings"
	"sync"
	"testing"
)

// orderEvent is the attributes map the dispatcher builds for an event (see
// EventVar): every attribute as a string, absent optional ones empty.
func orderEvent() map[string]string {
	return map[string]string{
		"id": "o-1", "type": "order.created", "source": "/shop/eu", "specversion": "1.0",
		"subject": "eu/orders/17", "time": "2026-01-02T03:04:05Z", "datacontenttype": "application/json",
		"dataschema": "", "region": "eu",
	}
}

func orderData() any {
	return map[string]any{"total": 250.0, "customer": map[string]any{"tier": "vip"}, "items": []any{"a", "b"}}
}

func mustCompile(t *testing.T, expr string) *Filter {
	t.Helper()
	f, err := Compile(expr)
	if err != nil {
		t.Fatalf("Compile(%q): %v", expr, err)
	}
	return f
}

func TestMatch(t *testing.T) {
	for _, tc := range []struct {
		expr string
		data any
		want bool
	}{
		{`event.type == "order.created"`, nil, true},
		{`event.subject.startsWith("eu/") && data.total >= 100`, orderData(), true},
		{`event.subject.startsWith("us/") || data.total < 100`, orderData(), false},
		{`data.customer.tier == "vip"`, orderData(), true},
		{`"region" in event && event.region == "eu"`, nil, true},
		{`"missing" in event`, nil, false},
		{`event.dataschema == ""`, nil, true},
		{`size(data.items) == 2 && "a" in data.items`, orderData(), true},
		{`data == null`, nil, true},
		{`event.source.matches("^/shop/(eu|us)$")`, nil, true},
		// ext.Strings, ext.Lists, ext.Sets, ext.Math, ext.Encoders.
		{`event.type.split(".")[0] == "order"`, nil, true},
		{`event.subject.lowerAscii().indexOf("orders") == 3`, nil, true},
		{`sets.contains(["a", "b", "c"], data.items)`, orderData(), true},
		{`math.greatest([1, 5, 3]) == 5`, nil, true},
		{`base64.encode(b"eu") == "ZXU="`, nil, true},
		{`lists.range(3) == [0, 1, 2]`, nil, true},
	} {
		t.Run(tc.expr, func(t *testing.T) {
			got, err := mustCompile(t, tc.expr).Match(orderEvent(), tc.data)
			if err != nil || got != tc.want {
				t.Fatalf("Match = %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

// TestCompileErrorsSayWhatAndWhere: the message ends up in the
// Subscription's Ready condition, so it must name the problem and its
// position, and it must be stable for the same input.
func TestCompileErrorsSayWhatAndWhere(t *testing.T) {
	for _, tc := range []struct {
		expr string
		want []string
	}{
		{`event.type ==`, []string{"filter does not compile", "<input>:1:"}},
		{`event.type == "a" &&& true`, []string{"filter does not compile", "<input>:1:"}},
		{`evnt.type == "a"`, []string{"undeclared reference to 'evnt'", "<input>:1:1"}},
		{`event.type.nosuchfn()`, []string{"filter does not compile", "nosuchfn"}},
		{`event.type`, []string{"filter must evaluate to a bool, not string"}},
		{`1 + 2`, []string{"filter must evaluate to a bool, not int"}},
		{`event.type == 1`, []string{"filter does not compile", "no matching overload"}},
		{``, []string{"filter does not compile"}},
		{strings.Repeat("(", 300) + "true" + strings.Repeat(")", 300), []string{"filter does not compile"}},
	} {
		t.Run(tc.expr[:min(len(tc.expr), 40)], func(t *testing.T) {
			f, err := Compile(tc.expr)
			if err == nil {
				t.Fatalf("Compile(%q) = %v, want an error", tc.expr, f)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if _, again := Compile(tc.expr); again == nil || again.Error() != err.Error() {
				t.Errorf("error is not stable: %q then %v", err, again)
			}
		})
	}
}

// TestEvaluationErrorsAreNoMatch: a field missing from the data, a
// non-bool result of dynamic data, and a cost overrun are errors the caller
// counts and treats as no match.
func TestEvaluationErrorsAreNoMatch(t *testing.T) {
	for _, tc := range []struct {
		name, expr string
		data       any
		is         error
		contains   string
	}{
		{"missing field", `data.nosuch == 1`, orderData(), nil, "no such key"},
		{"data absent", `data.total > 1`, nil, nil, "evaluate filter"},
		{"dynamic non-bool", `data.total`, orderData(), ErrNotBool, ""},
		{"cost limit", `lists.range(1000).map(x, lists.range(1000).map(y, x * y)).size() > 0`, nil, nil, "cost limit exceeded"},
		{"range beyond its bound", `lists.range(100000000).size() > 0`, nil, nil, "exceeds maximum"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := mustCompile(t, tc.expr).Match(orderEvent(), tc.data)
			if got || err == nil {
				t.Fatalf("Match = %v, %v; want false and an error", got, err)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("error %v is not %v", err, tc.is)
			}
			if tc.contains != "" && !strings.Contains(err.Error(), tc.contains) {
				t.Errorf("error %q does not contain %q", err, tc.contains)
			}
		})
	}
}

func TestStringIsTheSource(t *testing.T) {
	const expr = `event.type == "order.created"`
	if got := mustCompile(t, expr).String(); got != expr {
		t.Fatalf("String() = %q", got)
	}
}

// TestFilterIsSafeForConcurrentUse: one compiled filter is shared by every
// routing goroutine (run with -race).
func TestFilterIsSafeForConcurrentUse(t *testing.T) {
	f := mustCompile(t, `event.subject.startsWith("eu/") && data.total >= 100`)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for j := range 200 {
				total := float64((i*200 + j) % 200)
				got, err := f.Match(orderEvent(), map[string]any{"total": total})
				if err != nil || got != (total >= 100) {
					t.Errorf("total %v: Match = %v, %v", total, got, err)
					return
				}
			}
		})
	}
	wg.Wait()
}
