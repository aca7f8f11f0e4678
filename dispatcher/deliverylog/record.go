package deliverylog

import (
	"encoding/json"
	"time"

	deliveryv1 "github.com/herald-dev/herald/api/delivery/v1alpha1"
)

// Event holds the CloudEvents context attributes of a delivered event.
type Event struct {
	ID      string    `json:"id,omitempty"`
	Source  string    `json:"source,omitempty"`
	Type    string    `json:"type,omitempty"`
	Subject string    `json:"subject,omitempty"`
	Time    time.Time `json:"time,omitzero"`
}

// Entry is one record of a delivery: a processed attempt, or a requeue.
type Entry struct {
	// Namespace, Endpoint and WebhookID identify the delivery.
	Namespace string `json:"-"`
	Endpoint  string `json:"-"`
	WebhookID string `json:"-"`

	// Event is the delivered event's context.
	Event Event `json:"ev"`
	// IngestedAt is when the event was accepted.
	IngestedAt time.Time `json:"in,omitzero"`
	// Requeued marks a requeue record (Redelivery, ping): the delivery is
	// Pending again with a fresh attempt budget.
	Requeued bool `json:"rq,omitempty"`
	// Attempt is the attempt number since the delivery was last queued,
	// 1 for the first.
	Attempt int `json:"n,omitempty"`
	// Time is when the attempt ended, or when the delivery was requeued.
	Time time.Time `json:"t"`
	// Duration is how long the attempt took.
	Duration time.Duration `json:"d,omitempty"`
	// StatusCode is the receiver's HTTP status; 0 without an answer.
	StatusCode int `json:"c,omitempty"`
	// Error is the failure reason; empty on success.
	Error string `json:"e,omitempty"`
	// Response is the start of the response body (at most
	// MaxResponseBytes).
	Response []byte `json:"r,omitempty"`
	// Phase is where the delivery stands after this record.
	Phase deliveryv1.DeliveryPhase `json:"p"`
	// NextAttempt is when a Retrying delivery is attempted next.
	NextAttempt time.Time `json:"x,omitzero"`
	// DeadLetterReason says why a DeadLettered delivery was given up.
	DeadLetterReason string `json:"dl,omitempty"`
	// Payload is the queued delivery message (the stored CloudEvent). It
	// is kept on records that end a delivery (Succeeded, DeadLettered) and
	// on requeue records, so that a Redelivery can queue it again. It is
	// stored as it is: Herald's stored form is compact JSON already.
	Payload json.RawMessage `json:"pl,omitempty"`
	// PayloadValid says the caller has checked that Payload is valid JSON
	// (the delivery worker parsed it to deliver it), so that Record need not
	// check it again. Record drops an entry whose Payload is not valid JSON.
	PayloadValid bool `json:"-"`
}

// MaxResponseBytes is how much of a response body an attempt record keeps.
const MaxResponseBytes = 4 << 10
