package deliverylog

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
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

// errInvalidPayload is the encoding error of an entry whose Payload is not
// valid JSON.
var errInvalidPayload = errors.New("payload is not valid JSON")

// encode is json.Marshal(e), except that Payload is appended as it is.
// json.Marshal validates and compacts a json.RawMessage byte by byte: that
// was two thirds of a record's encoding with a 1 KB payload, to copy bytes
// that are Herald's compact stored form (and that the worker validated when
// it parsed them). Appending is safe only for valid JSON, or a crafted
// payload could add members to the record, so an unchecked Payload is
// still validated.
func (e *Entry) encode() ([]byte, error) {
	payload := e.Payload
	if len(payload) == 0 {
		return json.Marshal(e)
	}
	if !e.PayloadValid && !json.Valid(payload) {
		return nil, errInvalidPayload
	}
	e.Payload = nil
	defer func() { e.Payload = payload }()
	// The other members take about 300 bytes, plus the response in base64.
	buf := bytes.NewBuffer(make([]byte, 0, 320+base64.StdEncoding.EncodedLen(len(e.Response))+len(payload)))
	// Encode is json.Marshal followed by a newline.
	if err := json.NewEncoder(buf).Encode(e); err != nil {
		return nil, err
	}
	// Payload is the last member, and never the only one: "ev", "t" and
	// "p" are always written.
	data := buf.Bytes()
	data = append(data[:len(data)-len("}\n")], `,"pl":`...)
	data = append(data, payload...)
	return append(data, '}'), nil
}

// MaxResponseBytes is how much of a response body an attempt record keeps.
const MaxResponseBytes = 4 << 10
