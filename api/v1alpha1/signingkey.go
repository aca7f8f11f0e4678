package v1alpha1

import "time"

// SigningKey is one entry of the SigningKeysKey document in an endpoint's
// managed Secret. Every key whose NotAfter is unset or in the future signs
// each attempt.
// +kubebuilder:object:generate=false
type SigningKey struct {
	// Secret is the Standard Webhooks secret: "whsec_…" (HMACSHA256) or
	// "whsk_…" (Ed25519 private key).
	Secret string `json:"secret"`
	// Since is when the key became current.
	Since time.Time `json:"since"`
	// NotAfter is when a replaced key stops signing; nil for the current key.
	NotAfter *time.Time `json:"notAfter,omitempty"`
	// Generated is true for keys Herald generated, false for keys copied
	// from the user's spec.signing.secretRef.
	Generated bool `json:"generated,omitempty"`
}

// String never reveals key material.
func (k SigningKey) String() string { return "SigningKey{redacted}" }

// GoString never reveals key material.
func (k SigningKey) GoString() string { return k.String() }
