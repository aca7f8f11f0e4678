package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// LabelEndpoint is the label of a Delivery that names its WebhookEndpoint;
// `kubectl get deliveries -l herald.dev/endpoint=NAME` selects on it.
const LabelEndpoint = "herald.dev/endpoint"

// FieldPhase is the field selector of a Delivery's phase:
// `kubectl get deliveries --field-selector status.phase=DeadLettered`.
const FieldPhase = "status.phase"

// DeliveryPhase is where a delivery stands.
type DeliveryPhase string

const (
	// DeliveryPending is a delivery queued and not attempted yet since it
	// was (re)queued.
	DeliveryPending DeliveryPhase = "Pending"
	// DeliveryRetrying is a delivery whose last attempt failed and that
	// will be attempted again.
	DeliveryRetrying DeliveryPhase = "Retrying"
	// DeliverySucceeded is a delivery the receiver answered with a 2xx.
	DeliverySucceeded DeliveryPhase = "Succeeded"
	// DeliveryDeadLettered is a delivery that ran out of attempts or age,
	// or that can never be delivered; it is kept in the dead-letter queue
	// for a Redelivery.
	DeliveryDeadLettered DeliveryPhase = "DeadLettered"
)

// Phases lists every phase, in the order a delivery passes through them.
var Phases = []DeliveryPhase{DeliveryPending, DeliveryRetrying, DeliverySucceeded, DeliveryDeadLettered}

// Delivery is one event delivered to one WebhookEndpoint: the event, the
// endpoint, where the delivery stands and its attempts. It is named by the
// delivery's webhook-id, the header receivers deduplicate on.
// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object
type Delivery struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   DeliverySpec   `json:"spec"`
	Status DeliveryStatus `json:"status"`
}

// DeliverySpec says what is delivered where.
type DeliverySpec struct {
	// EndpointRef names the WebhookEndpoint, in the Delivery's namespace.
	EndpointRef EndpointReference `json:"endpointRef"`
	// Event identifies the CloudEvent delivered.
	Event EventReference `json:"event"`
}

// EndpointReference names a WebhookEndpoint in the same namespace.
type EndpointReference struct {
	Name string `json:"name"`
}

// EventReference holds the CloudEvents context attributes of a delivered
// event; its data is not part of the log's API.
type EventReference struct {
	ID      string       `json:"id"`
	Source  string       `json:"source"`
	Type    string       `json:"type"`
	Subject string       `json:"subject,omitempty"`
	Time    *metav1.Time `json:"time,omitempty"`
}

// DeliveryStatus is where the delivery stands and how its attempts went.
type DeliveryStatus struct {
	// Phase is Pending, Retrying, Succeeded or DeadLettered.
	Phase DeliveryPhase `json:"phase"`
	// AttemptCount is the number of attempts since the delivery was last
	// queued (by fan-out, or by a Redelivery, which grants a fresh budget).
	AttemptCount int32 `json:"attemptCount"`
	// NextAttemptTime is when a Retrying delivery is attempted next.
	NextAttemptTime *metav1.Time `json:"nextAttemptTime,omitempty"`
	// QueuedTime is when the delivery was last queued by a Redelivery or a
	// ping; unset for deliveries queued by fan-out.
	QueuedTime *metav1.Time `json:"queuedTime,omitempty"`
	// DeadLetterReason says why a DeadLettered delivery was given up, as
	// "MaxAttempts: HTTP 503".
	DeadLetterReason string `json:"deadLetterReason,omitempty"`
	// Attempts are the most recent attempts, oldest first (the log keeps a
	// bounded number per delivery).
	Attempts []DeliveryAttempt `json:"attempts,omitempty"`
}

// DeliveryAttempt is one attempt of a delivery.
type DeliveryAttempt struct {
	// Time is when the attempt ended.
	Time metav1.Time `json:"time"`
	// Duration is how long the request took.
	Duration metav1.Duration `json:"duration"`
	// StatusCode is the receiver's HTTP status; absent when no answer came.
	StatusCode int32 `json:"statusCode,omitempty"`
	// Error is empty on success, otherwise the reason, in the words of the
	// endpoint's status.delivery.lastFailureReason ("HTTP 503", "Timeout",
	// "ConnectionRefused", "BlockedAddress", …).
	Error string `json:"error,omitempty"`
	// Response is the start of the response body (at most 4 KiB, invalid
	// UTF-8 replaced).
	Response string `json:"response,omitempty"`
}

// DeliveryList is a list of Deliveries.
// +k8s:deepcopy-gen:interfaces=k8s.io/apimachinery/pkg/runtime.Object
type DeliveryList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Delivery `json:"items"`
}
