package router

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/herald-dev/herald/api/filter"
	"github.com/herald-dev/herald/dispatcher/catalog"
)

// bruteForce is the specification the index must agree with: every
// Subscription, every pattern, no index.
func bruteForce(subs []*catalog.Subscription, eventType, source string) []*catalog.Subscription {
	var out []*catalog.Subscription
	for _, s := range subs {
		if !slices.ContainsFunc(s.Types, func(p string) bool { return MatchType(p, eventType) }) {
			continue
		}
		if len(s.Sources) > 0 && !slices.ContainsFunc(s.Sources, func(p string) bool { return MatchSource(p, source) }) {
			continue
		}
		out = append(out, s)
	}
	return out
}

func candidates(ix *Index, eventType, source string) []*catalog.Subscription {
	var out []*catalog.Subscription
	ix.Candidates(eventType, source, func(s *catalog.Subscription) { out = append(out, s) })
	return out
}

// sameSubscriptions compares as multisets: the index must not report a
// Subscription twice.
func sameSubscriptions(a, b []*catalog.Subscription) bool {
	key := func(s *catalog.Subscription) string { return s.Name }
	ka, kb := make([]string, len(a)), make([]string, len(b))
	for i, s := range a {
		ka[i] = key(s)
	}
	for i, s := range b {
		kb[i] = key(s)
	}
	slices.Sort(ka)
	slices.Sort(kb)
	return slices.Equal(ka, kb)
}

func names(subs []*catalog.Subscription) []string {
	out := make([]string, len(subs))
	for i, s := range subs {
		out[i] = s.Name
	}
	slices.Sort(out)
	return out
}

func TestReduceTypePatterns(t *testing.T) {
	tests := []struct {
		patterns         []string
		wildcard         bool
		prefixes, exacts []string
	}{
		{[]string{"a.b"}, false, nil, []string{"a.b"}},
		{[]string{"a.b", "a.b"}, false, nil, []string{"a.b"}},
		{[]string{"a.*", "a.b"}, false, []string{"a."}, nil},
		{[]string{"a.*", "a"}, false, []string{"a."}, []string{"a"}},
		{[]string{"a.b.*", "a.*"}, false, []string{"a."}, nil},
		{[]string{"a.b.*", "a.c.*", "a.b.x"}, false, []string{"a.b.", "a.c."}, nil},
		{[]string{"a.b", "*", "c.*"}, true, nil, nil},
	}
	for _, tt := range tests {
		w, p, e := reduceTypePatterns(tt.patterns)
		if w != tt.wildcard || !slices.Equal(p, tt.prefixes) || !slices.Equal(e, tt.exacts) {
			t.Errorf("reduceTypePatterns(%q) = %v %q %q, want %v %q %q", tt.patterns, w, p, e, tt.wildcard, tt.prefixes, tt.exacts)
		}
	}
}

func TestIndexMatchesLikeBruteForce(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	tokens := []string{"a", "b", "order", "item", "x"}
	randomType := func() string {
		n := 1 + rng.IntN(4)
		parts := make([]string, n)
		for i := range parts {
			parts[i] = tokens[rng.IntN(len(tokens))]
		}
		return strings.Join(parts, ".")
	}
	randomTypePattern := func() string {
		switch rng.IntN(10) {
		case 0:
			return "*"
		case 1, 2, 3, 4:
			return randomType() + ".*"
		default:
			return randomType()
		}
	}
	sources := []string{"/a", "/a/b", "/a/b/c", "/b", "urn:x"}
	randomSourcePattern := func() string {
		switch rng.IntN(6) {
		case 0:
			return "*"
		case 1, 2:
			return sources[rng.IntN(len(sources))] + "/*"
		default:
			return sources[rng.IntN(len(sources))]
		}
	}

	for round := range 20 {
		var subs []*catalog.Subscription
		for i := range 300 {
			s := &catalog.Subscription{Namespace: "ns", Name: fmt.Sprintf("s%d", i), Endpoint: "ep"}
			for range 1 + rng.IntN(4) {
				s.Types = append(s.Types, randomTypePattern())
			}
			if rng.IntN(3) == 0 {
				for range 1 + rng.IntN(2) {
					s.Sources = append(s.Sources, randomSourcePattern())
				}
			}
			subs = append(subs, s)
		}
		ix := NewIndex(subs)
		for range 300 {
			eventType, source := randomType(), sources[rng.IntN(len(sources))]
			got, want := candidates(ix, eventType, source), bruteForce(subs, eventType, source)
			if !sameSubscriptions(got, want) {
				t.Fatalf("round %d: type %q source %q: index %v, brute force %v", round, eventType, source, names(got), names(want))
			}
		}
	}
}

// FuzzMatchType checks the index against brute force for arbitrary
// patterns. patterns is a ";"-separated list of Subscriptions, each a
// ","-separated list of type patterns.
func FuzzMatchType(f *testing.F) {
	seeds := []struct{ patterns, eventType string }{
		{"order.*", "order.created"},
		{"order.*", "order"},
		{"order.*", "order."},
		{"order.*,order.created;order.item.*", "order.item.added"},
		{"order.*,order.item.*,order.item.added", "order.item.added"},
		{"*;a.b;a.*", "a.b"},
		{"a.*;a.b.*;a.b.c", "a.b.c"},
		{".*;..*", ".."},
		{"*.*", "*.x"},
		{"a..*", "a..b"},
		{"", ""},
		{"order*", "order*"},
	}
	for _, s := range seeds {
		f.Add(s.patterns, s.eventType)
	}
	f.Fuzz(func(t *testing.T, patterns, eventType string) {
		var subs []*catalog.Subscription
		for i, group := range strings.Split(patterns, ";") {
			subs = append(subs, &catalog.Subscription{Name: fmt.Sprintf("s%d", i), Types: strings.Split(group, ",")})
		}
		ix := NewIndex(subs)
		got, want := candidates(ix, eventType, "/src"), bruteForce(subs, eventType, "/src")
		if !sameSubscriptions(got, want) {
			t.Fatalf("patterns %q type %q: index %v, brute force %v", patterns, eventType, names(got), names(want))
		}
	})
}

func mustFilter(t testing.TB, expr string) *filter.Filter {
	t.Helper()
	f, err := filter.Compile(expr)
	if err != nil {
		t.Fatalf("compile %q: %v", expr, err)
	}
	return f
}

func mustEvent(t testing.TB, payload string) *Event {
	t.Helper()
	ev, err := ParseEvent([]byte(payload))
	if err != nil {
		t.Fatalf("ParseEvent(%s): %v", payload, err)
	}
	return ev
}

func TestIndexFilter(t *testing.T) {
	subs := []*catalog.Subscription{
		{Name: "big-eu", Types: []string{"order.*"}, Filter: mustFilter(t, `event.subject.startsWith("eu/") && data.total > 100`)},
		{Name: "vip", Types: []string{"order.created"}, Filter: mustFilter(t, `data.customer.tier == "vip"`)},
		{Name: "ext", Types: []string{"*"}, Filter: mustFilter(t, `"region" in event && event.region == "eu" && event.priority == "3"`)},
		{Name: "all-orders", Types: []string{"order.*"}},
	}
	ix := NewIndex(subs)
	tests := []struct {
		name       string
		event      string
		want       []string
		wantErrors []string
	}{
		{
			name:  "data and subject match",
			event: `{"specversion":"1.0","id":"1","source":"/s","type":"order.created","subject":"eu/de","data":{"total":150,"customer":{"tier":"vip"}}}`,
			want:  []string{"all-orders", "big-eu", "vip"},
		},
		{
			name:  "subject does not match",
			event: `{"specversion":"1.0","id":"1","source":"/s","type":"order.created","subject":"us/ny","data":{"total":150,"customer":{"tier":"basic"}}}`,
			want:  []string{"all-orders"},
		},
		{
			name:  "data below threshold",
			event: `{"specversion":"1.0","id":"1","source":"/s","type":"order.paid","subject":"eu/fr","data":{"total":99.5}}`,
			want:  []string{"all-orders"},
		},
		{
			name:       "missing data field is an error, not a match",
			event:      `{"specversion":"1.0","id":"1","source":"/s","type":"order.created","subject":"eu/de"}`,
			want:       []string{"all-orders"},
			wantErrors: []string{"big-eu", "vip"},
		},
		{
			name:       "extension attributes as strings",
			event:      `{"specversion":"1.0","id":"1","source":"/s","type":"user.created","region":"eu","priority":3}`,
			want:       []string{"ext"},
			wantErrors: nil,
		},
		{
			name:  "data_base64 with JSON content type",
			event: `{"specversion":"1.0","id":"1","source":"/s","type":"order.created","subject":"eu/x","datacontenttype":"application/json","data_base64":"eyJ0b3RhbCI6NTAwLCJjdXN0b21lciI6eyJ0aWVyIjoidmlwIn19"}`,
			want:  []string{"all-orders", "big-eu", "vip"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var errs []string
			got := ix.Match(mustEvent(t, tt.event), func(s *catalog.Subscription, err error) { errs = append(errs, s.Name) })
			slices.Sort(errs)
			if !slices.Equal(names(got), tt.want) {
				t.Errorf("matched %v, want %v", names(got), tt.want)
			}
			if !slices.Equal(errs, tt.wantErrors) && len(errs)+len(tt.wantErrors) > 0 {
				t.Errorf("filter errors for %v, want %v", errs, tt.wantErrors)
			}
		})
	}
}

func TestIndexDecodesDataOnlyForFilters(t *testing.T) {
	subs := []*catalog.Subscription{
		{Name: "plain", Types: []string{"order.created"}},
		{Name: "filtered", Types: []string{"invoice.*"}, Filter: mustFilter(t, `data.n == 1`)},
	}
	ix := NewIndex(subs)
	ev := mustEvent(t, `{"specversion":"1.0","id":"1","source":"/s","type":"order.created","data":{"n":1}}`)
	if got := ix.Match(ev, nil); len(got) != 1 {
		t.Fatalf("matched %v", names(got))
	}
	if ev.dataDecoded {
		t.Error("data was decoded although no candidate has a filter")
	}
	ev = mustEvent(t, `{"specversion":"1.0","id":"1","source":"/s","type":"invoice.paid","data":{"n":1}}`)
	if got := ix.Match(ev, nil); len(got) != 1 {
		t.Fatalf("matched %v", names(got))
	}
	if !ev.dataDecoded {
		t.Error("data was not decoded for a filter")
	}
}
