package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// PayloadFormat selects how an event is written into the webhook request.
// +kubebuilder:validation:Enum=StandardWebhooks;CloudEventsBinary;CloudEventsStructured
type PayloadFormat string

const (
	// PayloadStandardWebhooks sends a JSON body {"type","timestamp","data"}.
	PayloadStandardWebhooks PayloadFormat = "StandardWebhooks"
	// PayloadCloudEventsBinary sends the event data as the body and the
	// CloudEvents attributes as ce-* headers.
	PayloadCloudEventsBinary PayloadFormat = "CloudEventsBinary"
	// PayloadCloudEventsStructured sends the whole event as
	// application/cloudevents+json.
	PayloadCloudEventsStructured PayloadFormat = "CloudEventsStructured"
)

// Ordering selects whether deliveries to an endpoint keep publish order.
// +kubebuilder:validation:Enum=Unordered;Ordered
type Ordering string

const (
	// Unordered delivers with up to maxInFlight concurrent requests.
	Unordered Ordering = "Unordered"
	// Ordered delivers strictly first-in first-out, one request at a time; a
	// failing event blocks the ones behind it until it succeeds or is
	// dead-lettered.
	Ordered Ordering = "Ordered"
)

// SigningAlgorithm is a Standard Webhooks signature scheme.
// +kubebuilder:validation:Enum=HMACSHA256;Ed25519
type SigningAlgorithm string

const (
	// HMACSHA256 is the symmetric scheme (signature prefix v1, secret whsec_…).
	HMACSHA256 SigningAlgorithm = "HMACSHA256"
	// Ed25519 is the asymmetric scheme (signature prefix v1a, secret key
	// whsk_…, public key whpk_…).
	Ed25519 SigningAlgorithm = "Ed25519"
)

// LocalObjectReference names an object in the same namespace.
type LocalObjectReference struct {
	// Name of the referent.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`
}

// SecretKeyReference names one key of a Secret in the same namespace.
type SecretKeyReference struct {
	// Name of the Secret.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`

	// Key within the Secret. Each reference documents its default.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[-._a-zA-Z0-9]+$`
	Key string `json:"key,omitempty"`
}

// SigningSpec configures how deliveries are signed.
type SigningSpec struct {
	// Algorithm is the Standard Webhooks signature scheme: HMACSHA256
	// (default, "v1" signatures) or Ed25519 ("v1a" signatures).
	// +optional
	Algorithm SigningAlgorithm `json:"algorithm,omitempty"`

	// SecretRef names a Secret holding the signing secret (key "secret" by
	// default): "whsec_" + base64 for HMACSHA256, "whsk_" + base64 of the
	// 64-byte private key for Ed25519. When absent, Herald generates one and
	// names the Secret in status.signingSecretRef. Herald never modifies or
	// deletes a Secret named here; when its value changes, the previous value
	// stays valid for rotationOverlap.
	// +optional
	SecretRef *SecretKeyReference `json:"secretRef,omitempty"`

	// RotationOverlap is how long a replaced signing key keeps signing
	// deliveries after a rotation, so receivers can switch over. Default 24h.
	// Trigger a rotation of a generated key by setting the annotation
	// herald.dev/rotate-signing-key to a new value.
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) <= duration('720h')",message="rotationOverlap must be at most 720h (30 days)"
	RotationOverlap *metav1.Duration `json:"rotationOverlap,omitempty"`
}

// HeaderSpec is one extra request header.
// +kubebuilder:validation:XValidation:rule="has(self.value) != has(self.valueFrom)",message="exactly one of value or valueFrom must be set"
// +kubebuilder:validation:XValidation:rule="!self.name.lowerAscii().startsWith('webhook-')",message="header names starting with webhook- are reserved for the Standard Webhooks headers Herald sets"
// +kubebuilder:validation:XValidation:rule="!self.name.lowerAscii().startsWith('ce-')",message="header names starting with ce- are reserved for CloudEvents attributes"
// +kubebuilder:validation:XValidation:rule="!(self.name.lowerAscii() in ['host', 'content-type', 'content-length', 'transfer-encoding', 'connection', 'user-agent'])",message="this header is set by Herald and cannot be overridden"
type HeaderSpec struct {
	// Name of the header (an HTTP token).
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=128
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9!#$%&'*+.^_|~-]+$`
	Name string `json:"name"`

	// Value is a literal value. Use valueFrom for credentials.
	// +optional
	// +kubebuilder:validation:MaxLength=4096
	Value *string `json:"value,omitempty"`

	// ValueFrom takes the value from a Secret key (key "value" by default).
	// +optional
	ValueFrom *SecretKeyReference `json:"valueFrom,omitempty"`
}

// RetrySpec configures retries of failed attempts. Delays grow
// exponentially from initialBackoff up to maxBackoff, each drawn with full
// jitter; a Retry-After header on 429 or 503 is honoured within the same
// bounds. A delivery that fails maxAttempts times or is older than maxAge
// goes to the dead-letter stream.
// +kubebuilder:validation:XValidation:rule="!has(self.initialBackoff) || !has(self.maxBackoff) || duration(self.initialBackoff) <= duration(self.maxBackoff)",message="initialBackoff must not exceed maxBackoff"
type RetrySpec struct {
	// MaxAttempts is the number of attempts, the first included. Default 25.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100
	MaxAttempts *int32 `json:"maxAttempts,omitempty"`

	// InitialBackoff is the upper bound of the first retry delay. Default 5s.
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('100ms') && duration(self) <= duration('24h')",message="initialBackoff must be between 100ms and 24h"
	InitialBackoff *metav1.Duration `json:"initialBackoff,omitempty"`

	// MaxBackoff caps every retry delay. Default 2h.
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('100ms') && duration(self) <= duration('24h')",message="maxBackoff must be between 100ms and 24h"
	MaxBackoff *metav1.Duration `json:"maxBackoff,omitempty"`

	// MaxAge is how long after ingest a delivery is still attempted.
	// Default 72h.
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1s') && duration(self) <= duration('720h')",message="maxAge must be between 1s and 720h"
	MaxAge *metav1.Duration `json:"maxAge,omitempty"`
}

// RateLimitSpec is a token bucket applied to requests sent to the endpoint.
// +kubebuilder:validation:XValidation:rule="!has(self.burst) || self.burst >= 1",message="burst must be at least 1"
type RateLimitSpec struct {
	// RequestsPerSecond is the sustained request rate.
	// +required
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100000
	RequestsPerSecond int32 `json:"requestsPerSecond"`

	// Burst is the bucket size. Default: requestsPerSecond.
	// +optional
	// +kubebuilder:validation:Maximum=100000
	Burst *int32 `json:"burst,omitempty"`
}

// TLSSpec configures TLS towards the receiver.
type TLSSpec struct {
	// CASecretRef names a Secret key (default "ca.crt") holding PEM CA
	// certificates that verify the receiver, replacing the system roots.
	// +optional
	CASecretRef *SecretKeyReference `json:"caSecretRef,omitempty"`

	// ClientCertificateSecretRef names a kubernetes.io/tls Secret (keys
	// tls.crt and tls.key) presented as client certificate.
	// +optional
	ClientCertificateSecretRef *LocalObjectReference `json:"clientCertificateSecretRef,omitempty"`
}

// WebhookEndpointSpec defines where and how events are delivered.
// +kubebuilder:validation:XValidation:rule="url(self.url).getScheme() == 'https' || (has(self.allowInsecureHTTP) && self.allowInsecureHTTP && url(self.url).getScheme() == 'http')",message="url must use https; set allowInsecureHTTP: true to allow plain http"
// +kubebuilder:validation:XValidation:rule="!has(self.ordering) || self.ordering != 'Ordered' || !has(self.maxInFlight) || self.maxInFlight == 1",message="maxInFlight must be 1 or unset when ordering is Ordered"
type WebhookEndpointSpec struct {
	// URL receives the webhooks: an absolute https URL (http with
	// allowInsecureHTTP). It must not embed credentials; use headers.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:XValidation:rule="isURL(self) && url(self).getHostname() != ''",message="url must be an absolute URL with a host, such as https://example.com/webhooks"
	URL string `json:"url"`

	// AllowInsecureHTTP permits an http:// url. The SSRF guard still applies.
	// +optional
	AllowInsecureHTTP bool `json:"allowInsecureHTTP,omitempty"`

	// Signing configures the signing key. Default: a generated HMACSHA256
	// secret.
	// +optional
	Signing *SigningSpec `json:"signing,omitempty"`

	// PayloadFormat selects the request body: StandardWebhooks (default),
	// CloudEventsBinary or CloudEventsStructured. Every format carries the
	// webhook-id, webhook-timestamp and webhook-signature headers.
	// +optional
	PayloadFormat PayloadFormat `json:"payloadFormat,omitempty"`

	// Headers are extra request headers. The webhook-* and ce-* headers,
	// Host, Content-Type, Content-Length, Transfer-Encoding, Connection and
	// User-Agent cannot be set.
	// +optional
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=32
	Headers []HeaderSpec `json:"headers,omitempty"`

	// Timeout bounds one attempt, connection included. Default 15s.
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('100ms') && duration(self) <= duration('5m')",message="timeout must be between 100ms and 5m"
	Timeout *metav1.Duration `json:"timeout,omitempty"`

	// Retry configures retries and when a delivery is dead-lettered.
	// +optional
	Retry *RetrySpec `json:"retry,omitempty"`

	// RateLimit caps the request rate to this endpoint. Default: unlimited.
	// +optional
	RateLimit *RateLimitSpec `json:"rateLimit,omitempty"`

	// MaxInFlight caps concurrent requests to this endpoint. Default 16.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1024
	MaxInFlight *int32 `json:"maxInFlight,omitempty"`

	// Ordering is Unordered (default) or Ordered (first-in first-out, one
	// request in flight).
	// +optional
	Ordering Ordering `json:"ordering,omitempty"`

	// TLS configures the CA bundle and client certificate.
	// +optional
	TLS *TLSSpec `json:"tls,omitempty"`

	// Suspend stops deliveries to this endpoint; events keep queueing and
	// are delivered when it is resumed.
	// +optional
	Suspend bool `json:"suspend,omitempty"`
}

// SigningStatus describes the signing keys in use, never their material.
type SigningStatus struct {
	// Algorithm in use.
	// +optional
	Algorithm SigningAlgorithm `json:"algorithm,omitempty"`

	// PublicKey is the Ed25519 public key ("whpk_…") receivers verify with.
	// +optional
	PublicKey string `json:"publicKey,omitempty"`

	// ValidKeys is how many keys currently sign each attempt: more than one
	// during a rotation overlap.
	// +optional
	ValidKeys int32 `json:"validKeys,omitempty"`

	// CurrentKeySince is when the current key was created or first seen.
	// +optional
	CurrentKeySince *metav1.Time `json:"currentKeySince,omitempty"`

	// PreviousKeysExpireAt is when the last replaced key stops signing.
	// +optional
	PreviousKeysExpireAt *metav1.Time `json:"previousKeysExpireAt,omitempty"`

	// LastHandledRotation is the value of the herald.dev/rotate-signing-key
	// annotation the manager last acted on.
	// +optional
	LastHandledRotation string `json:"lastHandledRotation,omitempty"`
}

// DeliveryStatus summarises delivery to an endpoint. The dispatcher writes
// it under its own field manager. The counters are always present (0 is an
// answer), so `kubectl get` shows them.
type DeliveryStatus struct {
	// LastAttemptTime is when the last attempt finished.
	// +optional
	LastAttemptTime *metav1.Time `json:"lastAttemptTime,omitempty"`
	// LastSuccessTime is when the last attempt succeeded (2xx).
	// +optional
	LastSuccessTime *metav1.Time `json:"lastSuccessTime,omitempty"`
	// LastFailureTime is when the last attempt failed.
	// +optional
	LastFailureTime *metav1.Time `json:"lastFailureTime,omitempty"`
	// LastFailureReason is the HTTP status ("HTTP 503") or error class
	// ("Timeout", "ConnectionRefused", "BlockedAddress", …) of the last
	// failure.
	// +optional
	LastFailureReason string `json:"lastFailureReason,omitempty"`
	// ConsecutiveFailures counts failed attempts since the last success.
	// +optional
	ConsecutiveFailures int64 `json:"consecutiveFailures"`
	// Delivered counts successful deliveries.
	// +optional
	Delivered int64 `json:"delivered"`
	// Pending counts deliveries waiting to be sent or retried.
	// +optional
	Pending int64 `json:"pending"`
	// DeadLettered counts deliveries that exhausted their retries.
	// +optional
	DeadLettered int64 `json:"deadLettered"`
	// GoneGeneration is the generation for which the receiver answered
	// 410 Gone; delivery stays stopped while metadata.generation equals it.
	// +optional
	GoneGeneration int64 `json:"goneGeneration,omitempty"`
}

// WebhookEndpointStatus is the observed state of a WebhookEndpoint.
type WebhookEndpointStatus struct {
	// ObservedGeneration is the generation the manager last fully processed.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// Conditions: Ready, Reconciling and Stalled from the manager,
	// DeliveryHealthy from the dispatcher.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +patchStrategy=merge
	// +patchMergeKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty" patchStrategy:"merge" patchMergeKey:"type"`

	// SigningSecretRef names the Secret Herald manages for this endpoint.
	// Its key "secret" holds the current signing secret (HMACSHA256) or
	// public key (Ed25519) for receivers.
	// +optional
	SigningSecretRef *LocalObjectReference `json:"signingSecretRef,omitempty"`

	// Signing describes the keys in use.
	// +optional
	Signing *SigningStatus `json:"signing,omitempty"`

	// Delivery summarises delivery health.
	// +optional
	Delivery *DeliveryStatus `json:"delivery,omitempty"`
}

// WebhookEndpoint is where and how Herald delivers signed webhooks.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=whep,categories=webhooks
// +kubebuilder:printcolumn:name="URL",type=string,JSONPath=`.spec.url`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Healthy",type=string,JSONPath=`.status.conditions[?(@.type=="DeliveryHealthy")].status`
// +kubebuilder:printcolumn:name="Pending",type=integer,JSONPath=`.status.delivery.pending`
// +kubebuilder:printcolumn:name="Last Success",type=date,JSONPath=`.status.delivery.lastSuccessTime`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="DeliveryHealthy")].reason`,priority=1
// +kubebuilder:printcolumn:name="Delivered",type=integer,JSONPath=`.status.delivery.delivered`,priority=1
type WebhookEndpoint struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +required
	Spec WebhookEndpointSpec `json:"spec"`
	// +optional
	Status WebhookEndpointStatus `json:"status,omitempty"`
}

// WebhookEndpointList contains a list of WebhookEndpoint.
// +kubebuilder:object:root=true
type WebhookEndpointList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []WebhookEndpoint `json:"items"`
}
