package health

import (
	"time"
)

// Outcome is the result of one delivery attempt, as the delivery stage
// reports it to Reporter.Record.
type Outcome struct {
	// Namespace and Endpoint name the WebhookEndpoint.
	Namespace string
	Endpoint  string
	// Time is when the attempt finished; zero means now.
	Time time.Time
	// Success is true for a 2xx answer.
	Success bool
	// NotSent is true when no request was sent: a delivery dead-lettered
	// before its attempt (too old, undecodable) or held back for want of a
	// signing key. It says nothing about the receiver, so it counts as
	// neither success nor failure — except Reason SigningKeyMissing, which
	// is a failure to deliver the user must fix.
	NotSent bool
	// Reason classifies a failure: the HTTP status ("HTTP 503") or an error
	// class ("Timeout", "ConnectionRefused", "BlockedAddress",
	// "SigningKeyMissing", …). It becomes status.delivery.lastFailureReason,
	// so it must never hold secrets, URLs with credentials or response bodies.
	Reason string
	// Gone is true when the receiver answered 410 Gone; GoneGeneration is the
	// endpoint generation the attempt was made for. Delivery to the endpoint
	// stops until its spec changes.
	Gone           bool
	GoneGeneration int64
	// CircuitOpen is true when, after this attempt, the endpoint's circuit
	// breaker is open (the attempt opened it or was a failed probe). A later
	// successful attempt closes it.
	CircuitOpen bool
	// DeadLettered is true when the delivery was moved to the dead-letter
	// stream after this attempt.
	DeadLettered bool
	// Subscriptions are the Subscriptions the delivered event matched (the
	// delivery's queue.HeaderSubscriptions); a successful attempt counts as
	// delivered for each of them.
	Subscriptions []string
}

// endpointState is the aggregate of an endpoint's attempts. The same type is
// a replica's local delta (what it recorded since its last flush) and the
// cluster-wide total stored in the KV bucket; merge combines them.
type endpointState struct {
	// UID of the WebhookEndpoint the totals belong to; set by the status
	// writer, which resets the totals when the object was re-created.
	UID string `json:"uid,omitempty"`

	Attempts     int64 `json:"attempts,omitempty"`
	Delivered    int64 `json:"delivered,omitempty"`
	Failed       int64 `json:"failed,omitempty"`
	DeadLettered int64 `json:"deadLettered,omitempty"`

	LastAttemptTime   time.Time `json:"lastAttemptTime,omitzero"`
	LastSuccessTime   time.Time `json:"lastSuccessTime,omitzero"`
	LastFailureTime   time.Time `json:"lastFailureTime,omitzero"`
	LastFailureReason string    `json:"lastFailureReason,omitempty"`
	// ConsecutiveFailures counts the failures after LastSuccessTime (all of
	// them when there was none).
	ConsecutiveFailures int64 `json:"consecutiveFailures,omitempty"`

	GoneGeneration  int64     `json:"goneGeneration,omitempty"`
	CircuitOpenTime time.Time `json:"circuitOpenTime,omitzero"`
}

// outcomeState is one attempt as a delta.
func outcomeState(o Outcome) endpointState {
	s := endpointState{Attempts: 1, LastAttemptTime: o.Time}
	if o.Success {
		s.Delivered = 1
		s.LastSuccessTime = o.Time
	} else {
		s.Failed = 1
		s.LastFailureTime = o.Time
		s.LastFailureReason = o.Reason
		s.ConsecutiveFailures = 1
	}
	if o.DeadLettered {
		s.DeadLettered = 1
	}
	if o.Gone {
		s.GoneGeneration = o.GoneGeneration
	}
	if o.CircuitOpen {
		s.CircuitOpenTime = o.Time
	}
	return s
}

// merge adds d (attempts recorded elsewhere, or later) to s.
//
// Counters add; times take the later one; the failure reason is the newest
// failure's; goneGeneration the highest. Consecutive failures are failures
// after the newest success: if d holds the newest success, s's failures
// count only if some of them are newer than it (then all of s's are counted,
// an over-estimate only when failures and successes from several replicas
// interleave within one flush interval), and vice versa. So a success newer
// than every known failure resets the count, and failures older than a
// known success never raise it. merge is commutative and, for counters and
// times, associative.
func (s *endpointState) merge(d endpointState) {
	if s.UID == "" {
		s.UID = d.UID
	}
	s.Attempts += d.Attempts
	s.Delivered += d.Delivered
	s.Failed += d.Failed
	s.DeadLettered += d.DeadLettered

	if d.LastSuccessTime.After(s.LastSuccessTime) {
		consecutive := d.ConsecutiveFailures
		if s.LastFailureTime.After(d.LastSuccessTime) {
			consecutive += s.ConsecutiveFailures
		}
		s.ConsecutiveFailures = consecutive
	} else if d.LastFailureTime.After(s.LastSuccessTime) {
		s.ConsecutiveFailures += d.ConsecutiveFailures
	}

	if d.LastFailureTime.After(s.LastFailureTime) || (s.LastFailureReason == "" && d.LastFailureTime.Equal(s.LastFailureTime)) {
		s.LastFailureReason = d.LastFailureReason
	}
	s.LastAttemptTime = later(s.LastAttemptTime, d.LastAttemptTime)
	s.LastSuccessTime = later(s.LastSuccessTime, d.LastSuccessTime)
	s.LastFailureTime = later(s.LastFailureTime, d.LastFailureTime)
	s.CircuitOpenTime = later(s.CircuitOpenTime, d.CircuitOpenTime)
	s.GoneGeneration = max(s.GoneGeneration, d.GoneGeneration)
}

// subscriptionState is the aggregate of a Subscription's matches and
// deliveries, as a delta and in the KV bucket.
type subscriptionState struct {
	UID             string    `json:"uid,omitempty"`
	Matched         int64     `json:"matched,omitempty"`
	Delivered       int64     `json:"delivered,omitempty"`
	LastMatchedTime time.Time `json:"lastMatchedTime,omitzero"`
}

func (s *subscriptionState) merge(d subscriptionState) {
	if s.UID == "" {
		s.UID = d.UID
	}
	s.Matched += d.Matched
	s.Delivered += d.Delivered
	s.LastMatchedTime = later(s.LastMatchedTime, d.LastMatchedTime)
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
