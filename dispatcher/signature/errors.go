package signature

import "errors"

// Sentinel errors returned (wrapped, with detail) by [Verifier.Verify] and
// [Verifier.VerifyRequest]. Test for them with [errors.Is]. None of them, nor
// the detail wrapped around them, ever contains key material.
var (
	// ErrMissingHeaders means webhook-id, webhook-timestamp or
	// webhook-signature is absent or empty.
	ErrMissingHeaders = errors.New("missing webhook headers")
	// ErrInvalidHeader means webhook-timestamp is not unix seconds, or
	// webhook-signature holds no well-formed "version,signature" entry.
	ErrInvalidHeader = errors.New("invalid webhook header")
	// ErrTimestampTooOld means webhook-timestamp is further in the past than
	// the verifier's tolerance: a stale or replayed message.
	ErrTimestampTooOld = errors.New("webhook timestamp too old")
	// ErrTimestampTooNew means webhook-timestamp is further in the future than
	// the verifier's tolerance.
	ErrTimestampTooNew = errors.New("webhook timestamp too new")
	// ErrNoMatchingSignature means no signature in webhook-signature matches
	// any of the verifier's keys: wrong key, or altered id, timestamp or body.
	ErrNoMatchingSignature = errors.New("no matching webhook signature")
	// ErrBodyTooLarge means the request body exceeds the verifier's limit.
	ErrBodyTooLarge = errors.New("webhook body too large")
)
