package v1alpha1

import (
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Defaults of optional fields. They live here, in accessor methods, and
// nowhere else: callers never read the optional fields directly.
const (
	DefaultTimeout         = 15 * time.Second
	DefaultMaxAttempts     = 25
	DefaultInitialBackoff  = 5 * time.Second
	DefaultMaxBackoff      = 2 * time.Hour
	DefaultMaxAge          = 72 * time.Hour
	DefaultMaxInFlight     = 16
	DefaultRotationOverlap = 24 * time.Hour
	// DefaultSigningSecretKey is the Secret key read by spec.signing.secretRef.
	DefaultSigningSecretKey = "secret"
	// DefaultHeaderSecretKey is the Secret key read by headers[].valueFrom.
	DefaultHeaderSecretKey = "value"
	// DefaultCASecretKey is the Secret key read by tls.caSecretRef.
	DefaultCASecretKey = "ca.crt"
)

func durationOr(d *metav1.Duration, def time.Duration) time.Duration {
	if d == nil {
		return def
	}
	return d.Duration
}

// KeyOr returns the referenced key, or def when none is named.
func (r *SecretKeyReference) KeyOr(def string) string {
	if r == nil || r.Key == "" {
		return def
	}
	return r.Key
}

// GetTimeout returns the attempt timeout.
func (s *WebhookEndpointSpec) GetTimeout() time.Duration {
	return durationOr(s.Timeout, DefaultTimeout)
}

// GetPayloadFormat returns the payload format.
func (s *WebhookEndpointSpec) GetPayloadFormat() PayloadFormat {
	if s.PayloadFormat == "" {
		return PayloadStandardWebhooks
	}
	return s.PayloadFormat
}

// GetOrdering returns the ordering mode.
func (s *WebhookEndpointSpec) GetOrdering() Ordering {
	if s.Ordering == "" {
		return Unordered
	}
	return s.Ordering
}

// GetMaxInFlight returns the concurrency cap; 1 for Ordered endpoints.
func (s *WebhookEndpointSpec) GetMaxInFlight() int {
	if s.GetOrdering() == Ordered {
		return 1
	}
	if s.MaxInFlight == nil {
		return DefaultMaxInFlight
	}
	return int(*s.MaxInFlight)
}

// GetSigningAlgorithm returns the signature scheme.
func (s *WebhookEndpointSpec) GetSigningAlgorithm() SigningAlgorithm {
	if s.Signing == nil || s.Signing.Algorithm == "" {
		return HMACSHA256
	}
	return s.Signing.Algorithm
}

// GetRotationOverlap returns how long a replaced key keeps signing.
func (s *WebhookEndpointSpec) GetRotationOverlap() time.Duration {
	if s.Signing == nil {
		return DefaultRotationOverlap
	}
	return durationOr(s.Signing.RotationOverlap, DefaultRotationOverlap)
}

// RetryPolicy is the effective retry configuration of an endpoint.
type RetryPolicy struct {
	MaxAttempts    int
	InitialBackoff time.Duration
	MaxBackoff     time.Duration
	MaxAge         time.Duration
}

// GetRetry returns the effective retry policy.
func (s *WebhookEndpointSpec) GetRetry() RetryPolicy {
	p := RetryPolicy{
		MaxAttempts:    DefaultMaxAttempts,
		InitialBackoff: DefaultInitialBackoff,
		MaxBackoff:     DefaultMaxBackoff,
		MaxAge:         DefaultMaxAge,
	}
	if r := s.Retry; r != nil {
		if r.MaxAttempts != nil {
			p.MaxAttempts = int(*r.MaxAttempts)
		}
		p.InitialBackoff = durationOr(r.InitialBackoff, p.InitialBackoff)
		p.MaxBackoff = durationOr(r.MaxBackoff, p.MaxBackoff)
		p.MaxAge = durationOr(r.MaxAge, p.MaxAge)
	}
	return p
}

// GetBurst returns the token-bucket size.
func (r *RateLimitSpec) GetBurst() int {
	if r.Burst == nil {
		return int(r.RequestsPerSecond)
	}
	return int(*r.Burst)
}
