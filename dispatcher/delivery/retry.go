package delivery

import (
	"math"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"

	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
)

// BackoffCap is the upper bound of the delay after failed attempt number
// attempt (1 for the first attempt): min(maxBackoff, initialBackoff *
// 2^(attempt-1)), without overflow for any attempt.
func BackoffCap(attempt int, initialBackoff, maxBackoff time.Duration) time.Duration {
	if initialBackoff <= 0 || maxBackoff <= 0 {
		return max(0, min(initialBackoff, maxBackoff))
	}
	if initialBackoff >= maxBackoff {
		return maxBackoff
	}
	c := initialBackoff
	for i := 1; i < attempt; i++ {
		if c > maxBackoff/2 {
			return maxBackoff
		}
		c *= 2
	}
	return min(c, maxBackoff)
}

// Backoff draws the delay after failed attempt number attempt with full
// jitter: uniformly from [0, BackoffCap]. Full jitter spreads the retries of
// many deliveries that failed together (a receiver outage) instead of
// sending them back in synchronised waves.
func Backoff(attempt int, initialBackoff, maxBackoff time.Duration) time.Duration {
	c := BackoffCap(attempt, initialBackoff, maxBackoff)
	switch {
	case c <= 0:
		return 0
	case c == math.MaxInt64:
		return rand.N(c)
	}
	return rand.N(c + 1)
}

// maxRetryAfter bounds what ParseRetryAfter returns, so that absurd values
// cannot overflow; callers clamp to maxBackoff anyway.
const maxRetryAfter = 365 * 24 * time.Hour

// ParseRetryAfter reads a Retry-After header value: a non-negative number
// of seconds, or an HTTP date (a date in the past means now). ok is false
// for anything else.
func ParseRetryAfter(value string, now time.Time) (delay time.Duration, ok bool) {
	value = strings.TrimSpace(value)
	if value == "" {
		return 0, false
	}
	if isDigits(value) {
		secs, err := strconv.ParseUint(value, 10, 64)
		if err != nil || secs > uint64(maxRetryAfter/time.Second) {
			// All digits but too large for uint64, or beyond the bound.
			return maxRetryAfter, true
		}
		return time.Duration(secs) * time.Second, true
	}
	t, err := http.ParseTime(value)
	if err != nil {
		return 0, false
	}
	d := t.Sub(now)
	switch {
	case d < 0:
		return 0, true
	case d > maxRetryAfter:
		return maxRetryAfter, true
	}
	return d, true
}

func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

// ClampRetryAfter bounds a receiver's Retry-After by the endpoint's retry
// policy: never sooner than initialBackoff (a receiver cannot make Herald
// hammer it) and never later than maxBackoff (nor make it wait for ever).
func ClampRetryAfter(d, initialBackoff, maxBackoff time.Duration) time.Duration {
	return min(max(d, initialBackoff), maxBackoff)
}

// action is what becomes of a delivery after an attempt.
type action int

const (
	actionAck action = iota
	actionRetry
	actionDeadLetter
	// actionGone stops the endpoint and leaves the delivery queued.
	actionGone
)

// decision is the verdict on one attempt.
type decision struct {
	action action
	// delay before the retry (actionRetry).
	delay time.Duration
	// deadLetterReason is stored with a dead-lettered delivery.
	deadLetterReason string
}

// attemptResult is what an attempt produced, as far as retrying goes.
type attemptResult struct {
	// body is the start of the response body, for the delivery log.
	body       []byte
	success    bool
	statusCode int
	reason     string
	// retryAfter is the raw Retry-After header of a 429 or 503 answer.
	retryAfter string
}

// decide applies the retry policy to the attempt number attempt (1 for the
// first) of a delivery queued at queuedAt (ingested, or requeued).
func decide(res attemptResult, policy heraldv1.RetryPolicy, attempt int, queuedAt, now time.Time) decision {
	switch {
	case res.success:
		return decision{action: actionAck}
	case res.statusCode == http.StatusGone:
		return decision{action: actionGone}
	}
	if attempt >= policy.MaxAttempts {
		return decision{action: actionDeadLetter, deadLetterReason: ReasonMaxAttempts + ": " + res.reason}
	}
	var delay time.Duration
	retryAfter, ok := time.Duration(0), false
	if res.statusCode == http.StatusTooManyRequests || res.statusCode == http.StatusServiceUnavailable {
		retryAfter, ok = ParseRetryAfter(res.retryAfter, now)
	}
	if ok {
		delay = ClampRetryAfter(retryAfter, policy.InitialBackoff, policy.MaxBackoff)
	} else {
		delay = Backoff(attempt, policy.InitialBackoff, policy.MaxBackoff)
	}
	if !queuedAt.IsZero() && now.Add(delay).Sub(queuedAt) > policy.MaxAge {
		return decision{action: actionDeadLetter, deadLetterReason: ReasonMaxAge + ": " + res.reason}
	}
	return decision{action: actionRetry, delay: delay}
}

// breakerResult is what an attempt tells the circuit breaker, and how long
// the whole endpoint pauses before its next request. A 429, or a 503 with
// Retry-After, is the receiver pacing us, not a dead receiver: it pauses
// the endpoint for the Retry-After (at most maxBackoff) and is not a
// failure. An attempt that got no connection at all is a connection
// failure; any other error answer or a timeout is a failure.
func breakerResult(res attemptResult, maxBackoff time.Duration, now time.Time) (Result, time.Duration) {
	switch {
	case res.success:
		return ResultSuccess, 0
	case res.statusCode == http.StatusTooManyRequests || res.statusCode == http.StatusServiceUnavailable:
		retryAfter, ok := ParseRetryAfter(res.retryAfter, now)
		switch {
		case ok:
			return ResultPaced, min(retryAfter, maxBackoff)
		case res.statusCode == http.StatusTooManyRequests:
			return ResultPaced, 0
		}
		return ResultFailure, 0
	case res.statusCode == 0 && isConnectionFailure(res.reason):
		return ResultConnectionFailure, 0
	}
	return ResultFailure, 0
}

// isConnectionFailure reports whether a failure reason means that no
// connection to the receiver could be made or kept.
func isConnectionFailure(reason string) bool {
	switch reason {
	case ReasonConnectionRefused, ReasonConnectionReset, ReasonDNSFailure, ReasonTLSError, ReasonBlockedAddress:
		return true
	}
	return false
}
