package delivery

import "time"

// Outcome is the result of one processed delivery message: normally one
// HTTP attempt (Sent), sometimes a delivery given up without one (expired,
// undecodable). It never contains headers, bodies or key material.
type Outcome struct {
	// Namespace, Endpoint and Generation identify the endpoint and the spec
	// generation the attempt was made for (the generation a 410 Gone stops).
	Namespace  string
	Endpoint   string
	Generation int64
	// Time is when the attempt finished.
	Time time.Time
	// Attempt is the delivery's attempt number, 1 for the first: how often
	// the queue has handed the message out, this time included.
	Attempt int
	// Sent is true when a request was sent. A delivery dead-lettered before
	// its attempt (MaxAge, InvalidPayload) or held back for want of a
	// signing key has Sent false; it says nothing about the receiver.
	Sent bool
	// Success is true for a 2xx answer.
	Success bool
	// StatusCode is the HTTP status; 0 when no response arrived.
	StatusCode int
	// Reason is empty on success, otherwise "HTTP <code>" or one of the
	// Reason* constants.
	Reason string
	// Latency is the duration of the attempt.
	Latency time.Duration
	// RetryDelay is the delay the retry was scheduled with (0 when the
	// delivery was not retried).
	RetryDelay time.Duration
	// DeadLettered is true when the delivery was moved to the dead-letter
	// stream; DeadLetterReason says why ("MaxAttempts: HTTP 503").
	DeadLettered     bool
	DeadLetterReason string
	// Gone is true when the receiver answered 410 Gone: delivery to the
	// endpoint stopped until its generation changes.
	Gone bool
	// CircuitOpen is true when the endpoint's circuit breaker is open (or
	// probing) after this attempt.
	CircuitOpen bool
	// WebhookID is the delivery's webhook-id.
	WebhookID string
	// Subscriptions is the queue.HeaderSubscriptions value of the delivery:
	// the comma-separated Subscriptions that matched the event.
	Subscriptions string
}

// Reporter receives the outcome of every processed delivery message. The
// health stage implements it. Attempted is called from the delivery
// goroutines of the endpoint and must not block; implementations must be
// safe for concurrent use.
type Reporter interface {
	Attempted(endpointKey string, o Outcome)
}

// ReporterFunc adapts a function to Reporter.
type ReporterFunc func(endpointKey string, o Outcome)

// Attempted calls f.
func (f ReporterFunc) Attempted(endpointKey string, o Outcome) { f(endpointKey, o) }

type nopReporter struct{}

func (nopReporter) Attempted(string, Outcome) {}
