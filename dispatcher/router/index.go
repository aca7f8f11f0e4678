package router

import (
	"slices"
	"strings"

	"github.com/herald-dev/herald/dispatcher/catalog"
)

// Index matches events against the Subscriptions of one namespace. Lookup
// by type costs one map access for the exact type, one per dot in the type
// for prefix patterns, and a scan of the "*" subscriptions only; sources and
// filters are checked on those candidates alone. An Index is immutable and
// safe for concurrent use.
type Index struct {
	subs     []indexedSubscription
	exact    map[string][]int32 // exact type → subscriptions
	prefixes map[string][]int32 // "order." (from "order.*") → subscriptions
	wildcard []int32            // subscriptions with type "*"
	filters  bool               // some subscription has a filter
}

type indexedSubscription struct {
	sub     *catalog.Subscription
	sources sourceMatcher
}

// NewIndex builds the index of subs (one namespace's Subscriptions).
//
// Each Subscription's type patterns are first reduced so that at most one of
// them can match any type: "*" makes the others redundant, a prefix pattern
// covers the longer prefixes and the exact types under it, and duplicates go.
// Then a lookup never finds the same Subscription twice and needs no
// de-duplication.
func NewIndex(subs []*catalog.Subscription) *Index {
	ix := &Index{
		subs:     make([]indexedSubscription, 0, len(subs)),
		exact:    make(map[string][]int32),
		prefixes: make(map[string][]int32),
	}
	for _, s := range subs {
		if s == nil {
			continue
		}
		i := int32(len(ix.subs))
		ix.subs = append(ix.subs, indexedSubscription{sub: s, sources: compileSources(s.Sources)})
		if s.Filter != nil {
			ix.filters = true
		}
		wildcard, prefixes, exact := reduceTypePatterns(s.Types)
		if wildcard {
			ix.wildcard = append(ix.wildcard, i)
			continue
		}
		for _, p := range prefixes {
			ix.prefixes[p] = append(ix.prefixes[p], i)
		}
		for _, e := range exact {
			ix.exact[e] = append(ix.exact[e], i)
		}
	}
	return ix
}

// reduceTypePatterns splits a Subscription's type patterns into "*", prefix
// literals ("order.") and exact types such that no two of them match the
// same type.
func reduceTypePatterns(patterns []string) (wildcard bool, prefixes, exact []string) {
	for _, p := range patterns {
		if p == Wildcard {
			return true, nil, nil
		}
		if prefix, ok := patternPrefix(p, '.'); ok {
			prefixes = append(prefixes, prefix)
		} else {
			exact = append(exact, p)
		}
	}
	// Shorter prefixes first, so a prefix is kept only when no kept one
	// covers it ("order." covers "order.item.").
	slices.SortFunc(prefixes, func(a, b string) int { return len(a) - len(b) })
	var kept []string
	for _, p := range prefixes {
		if !slices.ContainsFunc(kept, func(k string) bool { return strings.HasPrefix(p, k) }) {
			kept = append(kept, p)
		}
	}
	var keptExact []string
	for _, e := range exact {
		covered := slices.ContainsFunc(kept, func(k string) bool { return len(e) > len(k) && strings.HasPrefix(e, k) })
		if !covered && !slices.Contains(keptExact, e) {
			keptExact = append(keptExact, e)
		}
	}
	return false, kept, keptExact
}

// Len is the number of indexed Subscriptions.
func (ix *Index) Len() int { return len(ix.subs) }

// HasFilters reports whether some indexed Subscription has a filter.
func (ix *Index) HasFilters() bool { return ix.filters }

// Candidates calls fn for every Subscription whose type and source patterns
// match, once each, without evaluating filters.
func (ix *Index) Candidates(eventType, source string, fn func(*catalog.Subscription)) {
	visit := func(ids []int32) {
		for _, i := range ids {
			if s := &ix.subs[i]; s.sources.match(source) {
				fn(s.sub)
			}
		}
	}
	visit(ix.exact[eventType])
	if len(ix.prefixes) > 0 {
		// A prefix pattern's literal ends with a dot, so it can only be the
		// type up to one of its dots, with something after that dot.
		for i := 0; i < len(eventType)-1; i++ {
			if eventType[i] == '.' {
				visit(ix.prefixes[eventType[:i+1]])
			}
		}
	}
	visit(ix.wildcard)
}

// Match returns the Subscriptions ev matches: type and source patterns
// first, then the filter of each remaining candidate. The event data is
// decoded at most once, and only when a candidate has a filter. A filter
// that fails to evaluate (a missing field, a cost overrun) does not match;
// onFilterError, when not nil, is told about it.
func (ix *Index) Match(ev *Event, onFilterError func(*catalog.Subscription, error)) []*catalog.Subscription {
	var matched []*catalog.Subscription
	ix.Candidates(ev.Type(), ev.Source(), func(s *catalog.Subscription) {
		if s.Filter == nil {
			matched = append(matched, s)
			return
		}
		ok, err := s.Filter.Match(ev.Attributes, ev.Data())
		if err != nil {
			if onFilterError != nil {
				onFilterError(s, err)
			}
			return
		}
		if ok {
			matched = append(matched, s)
		}
	})
	return matched
}
