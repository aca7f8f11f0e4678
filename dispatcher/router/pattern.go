package router

import "strings"

// Wildcard is the pattern that matches every type or every source.
const Wildcard = "*"

// MatchType reports whether a CloudEvents type matches a Subscription type
// pattern (spec.types):
//
//   - "*" matches every type;
//   - a pattern ending in ".*" matches the types that start with the pattern
//     up to and including the dot and continue after it: "order.*" matches
//     "order.created" and "order.item.added", not "order", "order." or
//     "orders.created";
//   - any other pattern matches exactly that type.
func MatchType(pattern, eventType string) bool {
	return matchPattern(pattern, eventType, '.')
}

// MatchSource reports whether a CloudEvents source matches a Subscription
// source pattern (spec.sources): "*" matches every source, a pattern ending
// in "/*" matches the sources that continue after its slash ("/orders/*"
// matches "/orders/eu/17", not "/orders" or "/orders/"), any other pattern
// matches exactly.
func MatchSource(pattern, source string) bool {
	return matchPattern(pattern, source, '/')
}

func matchPattern(pattern, value string, separator byte) bool {
	if pattern == Wildcard {
		return true
	}
	if prefix, ok := patternPrefix(pattern, separator); ok {
		return len(value) > len(prefix) && strings.HasPrefix(value, prefix)
	}
	return pattern == value
}

// patternPrefix returns the literal prefix of a prefix pattern ("order.*"
// gives "order."), ending in separator, and whether pattern is one.
func patternPrefix(pattern string, separator byte) (string, bool) {
	n := len(pattern)
	if n >= 2 && pattern[n-1] == '*' && pattern[n-2] == separator {
		return pattern[:n-1], true
	}
	return "", false
}

// sourceMatcher is a Subscription's compiled spec.sources.
type sourceMatcher struct {
	any      bool
	exact    []string
	prefixes []string
}

func compileSources(patterns []string) sourceMatcher {
	var m sourceMatcher
	if len(patterns) == 0 {
		m.any = true
		return m
	}
	for _, p := range patterns {
		if p == Wildcard {
			return sourceMatcher{any: true}
		}
		if prefix, ok := patternPrefix(p, '/'); ok {
			m.prefixes = append(m.prefixes, prefix)
			continue
		}
		m.exact = append(m.exact, p)
	}
	return m
}

func (m *sourceMatcher) match(source string) bool {
	if m.any {
		return true
	}
	for _, e := range m.exact {
		if e == source {
			return true
		}
	}
	for _, p := range m.prefixes {
		if len(source) > len(p) && strings.HasPrefix(source, p) {
			return true
		}
	}
	return false
}
