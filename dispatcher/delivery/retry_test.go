package delivery

import (
	"math"
	"net/http"
	"strings"
	"testing"
	"time"

	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
)

func TestBackoffCap(t *testing.T) {
	const initial, maxBackoff = 5 * time.Second, 2 * time.Hour
	for _, tc := range []struct {
		attempt int
		want    time.Duration
	}{
		{0, initial},
		{1, initial},
		{2, 10 * time.Second},
		{3, 20 * time.Second},
		{8, 640 * time.Second},
		{11, 5120 * time.Second},
		{12, maxBackoff}, // 10240s > 7200s
		{25, maxBackoff},
		{100, maxBackoff},
		{math.MaxInt, maxBackoff},
	} {
		if got := BackoffCap(tc.attempt, initial, maxBackoff); got != tc.want {
			t.Errorf("BackoffCap(%d) = %s, want %s", tc.attempt, got, tc.want)
		}
	}
	if got := BackoffCap(3, time.Minute, time.Second); got != time.Second {
		t.Errorf("initial above max: BackoffCap = %s, want the max", got)
	}
}

// TestBackoffFullJitterBounds checks that every drawn delay lies in
// [0, min(maxBackoff, initialBackoff*2^(n-1))] and that the draws use the
// whole range (full jitter, not "cap minus a little").
func TestBackoffFullJitterBounds(t *testing.T) {
	const initial, maxBackoff = 100 * time.Millisecond, 10 * time.Second
	for _, tc := range []struct {
		attempt  int
		upperCap time.Duration
	}{
		{1, 100 * time.Millisecond},
		{2, 200 * time.Millisecond},
		{4, 800 * time.Millisecond},
		{7, 6400 * time.Millisecond},
		{8, maxBackoff},
		{60, maxBackoff},
	} {
		var lowest, highest time.Duration = math.MaxInt64, 0
		for range 2000 {
			d := Backoff(tc.attempt, initial, maxBackoff)
			if d < 0 || d > tc.upperCap {
				t.Fatalf("attempt %d: delay %s outside [0, %s]", tc.attempt, d, tc.upperCap)
			}
			lowest, highest = min(lowest, d), max(highest, d)
		}
		// With 2000 uniform draws the extremes fall within 1% of the bounds
		// except with negligible probability.
		if lowest > tc.upperCap/100 || highest < tc.upperCap*99/100 {
			t.Errorf("attempt %d: draws spanned [%s, %s], want about [0, %s]", tc.attempt, lowest, highest, tc.upperCap)
		}
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, tc := range []struct {
		value string
		want  time.Duration
		ok    bool
	}{
		{"0", 0, true},
		{"120", 120 * time.Second, true},
		{" 7 ", 7 * time.Second, true},
		{"Fri, 02 Jan 2026 03:05:05 GMT", time.Minute, true},       // RFC 1123
		{"Friday, 02-Jan-26 03:04:15 GMT", 10 * time.Second, true}, // RFC 850
		{"Fri Jan  2 03:04:35 2026", 30 * time.Second, true},       // ANSI C
		{"Thu, 01 Jan 2026 00:00:00 GMT", 0, true},                 // past
		{"99999999999999999999999", maxRetryAfter, true},
		{"31536001", maxRetryAfter, true},
		{"", 0, false},
		{"-1", 0, false},
		{"1.5", 0, false},
		{"soon", 0, false},
		{"12s", 0, false},
	} {
		got, ok := ParseRetryAfter(tc.value, now)
		if got != tc.want || ok != tc.ok {
			t.Errorf("ParseRetryAfter(%q) = %s, %v; want %s, %v", tc.value, got, ok, tc.want, tc.ok)
		}
	}
}

func TestClampRetryAfter(t *testing.T) {
	const initial, maxBackoff = time.Second, time.Minute
	for _, tc := range []struct{ in, want time.Duration }{
		{0, initial},
		{500 * time.Millisecond, initial},
		{30 * time.Second, 30 * time.Second},
		{time.Hour, maxBackoff},
	} {
		if got := ClampRetryAfter(tc.in, initial, maxBackoff); got != tc.want {
			t.Errorf("ClampRetryAfter(%s) = %s, want %s", tc.in, got, tc.want)
		}
	}
}

func TestDecide(t *testing.T) {
	policy := heraldv1.RetryPolicy{
		MaxAttempts:    5,
		InitialBackoff: time.Second,
		MaxBackoff:     time.Minute,
		MaxAge:         time.Hour,
	}
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	fresh := now.Add(-time.Minute)
	for _, tc := range []struct {
		name       string
		res        attemptResult
		attempt    int
		ingestedAt time.Time
		want       action
		delay      time.Duration // exact when wantDelay; else bound
		wantDelay  bool
		reason     string
	}{
		{name: "2xx", res: attemptResult{success: true, statusCode: 200}, attempt: 1, ingestedAt: fresh, want: actionAck},
		{name: "410", res: attemptResult{statusCode: 410, reason: "HTTP 410"}, attempt: 1, ingestedAt: fresh, want: actionGone},
		{name: "410 on the last attempt is still Gone", res: attemptResult{statusCode: 410, reason: "HTTP 410"}, attempt: 5, ingestedAt: fresh, want: actionGone},
		{name: "500 retries within the backoff cap", res: attemptResult{statusCode: 500, reason: "HTTP 500"}, attempt: 3, ingestedAt: fresh, want: actionRetry, delay: 4 * time.Second},
		{name: "timeout retries", res: attemptResult{reason: ReasonTimeout}, attempt: 1, ingestedAt: fresh, want: actionRetry, delay: time.Second},
		{name: "302 retries", res: attemptResult{statusCode: 302, reason: "HTTP 302"}, attempt: 1, ingestedAt: fresh, want: actionRetry, delay: time.Second},
		{name: "429 Retry-After honoured", res: attemptResult{statusCode: 429, reason: "HTTP 429", retryAfter: "30"}, attempt: 1, ingestedAt: fresh, want: actionRetry, delay: 30 * time.Second, wantDelay: true},
		{name: "503 Retry-After clamped up", res: attemptResult{statusCode: 503, reason: "HTTP 503", retryAfter: "0"}, attempt: 4, ingestedAt: fresh, want: actionRetry, delay: time.Second, wantDelay: true},
		{name: "429 Retry-After clamped down", res: attemptResult{statusCode: 429, reason: "HTTP 429", retryAfter: "86400"}, attempt: 1, ingestedAt: fresh, want: actionRetry, delay: time.Minute, wantDelay: true},
		{name: "429 Retry-After as date", res: attemptResult{statusCode: 429, reason: "HTTP 429", retryAfter: now.Add(20 * time.Second).Format(http.TimeFormat)}, attempt: 1, ingestedAt: fresh, want: actionRetry, delay: 20 * time.Second, wantDelay: true},
		{name: "500 Retry-After ignored", res: attemptResult{statusCode: 500, reason: "HTTP 500", retryAfter: "30"}, attempt: 1, ingestedAt: fresh, want: actionRetry, delay: time.Second},
		{name: "max attempts", res: attemptResult{statusCode: 503, reason: "HTTP 503"}, attempt: 5, ingestedAt: fresh, want: actionDeadLetter, reason: "MaxAttempts: HTTP 503"},
		{name: "retry would pass max age", res: attemptResult{statusCode: 429, reason: "HTTP 429", retryAfter: "60"}, attempt: 1, ingestedAt: now.Add(-time.Hour + 30*time.Second), want: actionDeadLetter, reason: "MaxAge: HTTP 429"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := decide(tc.res, policy, tc.attempt, tc.ingestedAt, now)
			if d.action != tc.want {
				t.Fatalf("action = %v, want %v (%+v)", d.action, tc.want, d)
			}
			if d.deadLetterReason != tc.reason {
				t.Errorf("dead-letter reason = %q, want %q", d.deadLetterReason, tc.reason)
			}
			if tc.want != actionRetry {
				return
			}
			if tc.wantDelay && d.delay != tc.delay {
				t.Errorf("delay = %s, want exactly %s", d.delay, tc.delay)
			}
			if !tc.wantDelay && (d.delay < 0 || d.delay > tc.delay) {
				t.Errorf("delay = %s, want within [0, %s]", d.delay, tc.delay)
			}
		})
	}
}

// FuzzRetryAfter checks that no header value makes ParseRetryAfter panic or
// return a negative or unbounded delay, and that the clamped value always
// lies within the retry policy's bounds.
func FuzzRetryAfter(f *testing.F) {
	for _, s := range []string{
		"0", "120", "-1", "1e9", "99999999999999999999", "Fri, 02 Jan 2026 03:05:05 GMT",
		"Friday, 02-Jan-26 03:04:15 GMT", "Fri Jan  2 03:04:35 2026", "", " ", "soon",
		"Mon, 01 Jan 0001 00:00:00 GMT", "Fri, 31 Dec 9999 23:59:59 GMT", "\x00",
	} {
		f.Add(s)
	}
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	f.Fuzz(func(t *testing.T, value string) {
		d, ok := ParseRetryAfter(value, now)
		if d < 0 || d > maxRetryAfter {
			t.Fatalf("ParseRetryAfter(%q) = %s, outside [0, %s]", value, d, maxRetryAfter)
		}
		if !ok && d != 0 {
			t.Fatalf("ParseRetryAfter(%q) = %s with ok=false", value, d)
		}
		if ok && isDigits(strings.TrimSpace(value)) && len(strings.TrimSpace(value)) < 8 {
			if d%time.Second != 0 {
				t.Fatalf("ParseRetryAfter(%q) = %s, not whole seconds", value, d)
			}
		}
		if c := ClampRetryAfter(d, time.Second, time.Hour); c < time.Second || c > time.Hour {
			t.Fatalf("ClampRetryAfter(%s) = %s outside the policy bounds", d, c)
		}
	})
}
