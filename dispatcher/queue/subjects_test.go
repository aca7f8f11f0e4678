package queue

import (
	"strings"
	"testing"
)

func TestSubjectTokenRoundTrip(t *testing.T) {
	tests := []struct {
		name  string
		token string
	}{
		{"default", "default"},
		{"team-a", "team-a"},
		{"hooks.example.com", "hooks_2eexample_2ecom"},
		{"a.b-c.d", "a_2eb-c_2ed"},
		{"a-2eb", "a-2eb"},         // looks like an escape but is plain
		{"a_2eb", "a_5f2eb"},       // underscore itself is escaped
		{".leading", "_2eleading"}, // not a Kubernetes name, still reversible
		{"trailing.", "trailing_2e"},
		{"..", "_2e_2e"},
		{"UPPER", "_55_50_50_45_52"},
		{"wild*card>", "wild_2acard_3e"},
		{"sp ace", "sp_20ace"},
		{"ü", "_c3_bc"},
		{strings.Repeat("a", 253), strings.Repeat("a", 253)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := SubjectToken(tt.name)
			if got != tt.token {
				t.Fatalf("SubjectToken(%q) = %q, want %q", tt.name, got, tt.token)
			}
			back, err := ParseSubjectToken(got)
			if err != nil || back != tt.name {
				t.Fatalf("ParseSubjectToken(%q) = %q, %v; want %q", got, back, err, tt.name)
			}
		})
	}
}

func TestParseSubjectTokenRejectsForeignTokens(t *testing.T) {
	for _, token := range []string{
		"UPPER",       // bytes SubjectToken always escapes
		"a.b",         // a separator
		"trunc_2",     // truncated escape
		"trunc_",      // truncated escape
		"bad_zz",      // not hex
		"upper_2E",    // upper-case hex is never produced
		"needless_61", // 'a' escaped although it is plain
		"*",
	} {
		if name, err := ParseSubjectToken(token); err == nil {
			t.Errorf("ParseSubjectToken(%q) = %q, want an error", token, name)
		}
	}
}

func TestSubjectsAndParse(t *testing.T) {
	tests := []struct {
		subject             string
		namespace, endpoint string
	}{
		{EventSubject("team.a"), "team.a", ""},
		{DeliverySubject("team-a", "hooks.example.com"), "team-a", "hooks.example.com"},
		{DeadLetterSubject("ns", "ep"), "ns", "ep"},
	}
	for _, tt := range tests {
		ns, ep, err := parseSubject(tt.subject)
		if err != nil || ns != tt.namespace || ep != tt.endpoint {
			t.Errorf("parseSubject(%q) = %q, %q, %v; want %q, %q", tt.subject, ns, ep, err, tt.namespace, tt.endpoint)
		}
	}
	if got := DeliverySubject("team-a", "hooks.example.com"); got != "herald.deliveries.team-a.hooks_2eexample_2ecom" {
		t.Errorf("DeliverySubject = %q", got)
	}
	for _, subject := range []string{"herald.events", "herald.events.a.b", "herald.deliveries.a", "other.events.a", "herald.events.A"} {
		if _, _, err := parseSubject(subject); err == nil {
			t.Errorf("parseSubject(%q) succeeded, want an error", subject)
		}
	}
}

func TestDedupIDs(t *testing.T) {
	a := EventDedupID("ns", "src", "id")
	if a != EventDedupID("ns", "src", "id") {
		t.Fatal("EventDedupID is not stable")
	}
	if len(a) != 64 || strings.Trim(a, "0123456789abcdef") != "" {
		t.Fatalf("EventDedupID = %q, want 64 lower-case hex digits", a)
	}
	distinct := []string{
		a,
		EventDedupID("ns", "srcid", ""),
		EventDedupID("ns", "", "srcid"),
		EventDedupID("other", "src", "id"),
		EventDedupID("ns", "src|id", ""),
		DeliveryDedupID("ns", "src", "id"), // other domain, same fields
		DeliveryDedupID(a, "ns", "ep"),
		DeliveryDedupID(a, "ns", "ep2"),
		DeliveryDedupID(a, "ns2", "ep"),
	}
	seen := map[string]int{}
	for i, id := range distinct {
		if j, ok := seen[id]; ok {
			t.Errorf("dedup ids #%d and #%d collide: %s", j, i, id)
		}
		seen[id] = i
	}
}

func TestDeliveryConsumerNames(t *testing.T) {
	long := strings.Repeat("a.", 126) + "a" // 253 characters, escapes to 631
	tests := []struct{ namespace, endpoint string }{
		{"ns", "ep"}, {"ns", "a.b"}, {"ns.a", "b"}, {"ns", long}, {"ns2", long},
	}
	seen := map[string]bool{}
	for _, tt := range tests {
		name := deliveryConsumerName(tt.namespace, tt.endpoint)
		if len(name) > maxConsumerNameLen || strings.ContainsAny(name, ".*> \t") {
			t.Errorf("deliveryConsumerName(%q, %q) = %q: not a valid consumer name", tt.namespace, tt.endpoint, name)
		}
		if seen[name] {
			t.Errorf("deliveryConsumerName(%q, %q) = %q collides", tt.namespace, tt.endpoint, name)
		}
		seen[name] = true
	}
}

// FuzzSubjectToken checks, for any name, that the token decodes back to the
// name, is a single valid subject token made of [a-z0-9_-], and that
// ParseSubjectToken never accepts two tokens for one name.
func FuzzSubjectToken(f *testing.F) {
	for _, seed := range []string{
		"", "default", "team-a", "hooks.example.com", "a..b", ".", "-", "_", "_2e", "a_2eb",
		"UPPER.case", "wild*card>", "sp ace\t", "ü.ñ", "\x00\xff", strings.Repeat("x.", 127),
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, name string) {
		token := SubjectToken(name)
		back, err := ParseSubjectToken(token)
		if err != nil {
			t.Fatalf("ParseSubjectToken(SubjectToken(%q) = %q): %v", name, token, err)
		}
		if back != name {
			t.Fatalf("round trip of %q via %q gave %q", name, token, back)
		}
		if name != "" && token == "" {
			t.Fatalf("SubjectToken(%q) is empty", name)
		}
		for i := 0; i < len(token); i++ {
			if c := token[i]; !isPlainTokenByte(c) && c != escapeMark {
				t.Fatalf("SubjectToken(%q) = %q contains %q", name, token, c)
			}
		}
		if strings.Contains(token, "__") {
			t.Fatalf("SubjectToken(%q) = %q contains the consumer-name separator", name, token)
		}
		// The name read as a token: if it parses, it must encode back to
		// itself, or one name would have two subjects.
		if decoded, err := ParseSubjectToken(name); err == nil && SubjectToken(decoded) != name {
			t.Fatalf("ParseSubjectToken(%q) = %q, which encodes to %q", name, decoded, SubjectToken(decoded))
		}
	})
}
