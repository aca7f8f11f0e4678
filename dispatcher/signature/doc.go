// Package signature signs and verifies webhooks as the Standard Webhooks
// specification (https://www.standardwebhooks.com) defines them. Herald's
// dispatcher signs every delivery attempt with a [Signer]; receivers written
// in Go verify them with a [Verifier]. The package depends on the standard
// library only.
//
// Every delivery carries three headers:
//
//	webhook-id:        msg_p5jXN8AQM9LWM0D4loKWxJek   stable across retries
//	webhook-timestamp: 1614265330                     unix seconds of this attempt
//	webhook-signature: v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE= v1a,…
//
// The signed content is webhook-id, ".", webhook-timestamp, "." and the raw
// body, byte for byte. "v1" signatures are HMAC-SHA256 with a "whsec_"
// secret; "v1a" signatures are Ed25519 with a "whsk_" private key, verified
// with the matching "whpk_" public key. While a key is being rotated the
// header carries one signature per valid key, and a receiver that knows any
// one of them accepts the message.
//
// The webhook-id is signed verbatim, as the specification requires. An id
// containing "." followed by digits could let two different (id, timestamp,
// body) triples share signed content, so Herald restricts the ids it issues
// upstream, in the dispatcher, to an alphabet without "." or whitespace; this
// package signs and verifies whatever id it is given.
//
// # Receiving webhooks
//
// A receiver builds one [Verifier] at start-up and calls
// [Verifier.VerifyRequest] in its handler. The verifier checks that the three
// headers are present, that the timestamp is within the tolerance (five
// minutes either way by default) and that at least one signature matches a
// known key, comparing in constant time. Signature versions it does not know
// are ignored, so a sender may add new schemes without breaking receivers.
// The body is returned only once it is verified; treat webhook-id as the
// idempotency key, since deliveries are at least once.
//
//	verifier, err := signature.NewVerifier([]string{os.Getenv("WEBHOOK_SECRET")})
//	if err != nil {
//		log.Fatal(err) // the error never contains the secret
//	}
//	http.HandleFunc("/webhooks", func(w http.ResponseWriter, r *http.Request) {
//		body, err := verifier.VerifyRequest(r)
//		if err != nil {
//			http.Error(w, "invalid webhook", http.StatusUnauthorized)
//			return
//		}
//		handle(r.Header.Get(signature.HeaderID), body)
//		w.WriteHeader(http.StatusNoContent)
//	})
//
// Errors from verification wrap one of the sentinel errors
// ([ErrMissingHeaders], [ErrInvalidHeader], [ErrTimestampTooOld],
// [ErrTimestampTooNew], [ErrNoMatchingSignature], [ErrBodyTooLarge]) for
// [errors.Is], and never contain key material.
package signature

// Header names defined by Standard Webhooks. net/http canonicalises them as
// "Webhook-Id", "Webhook-Timestamp" and "Webhook-Signature".
const (
	HeaderID        = "webhook-id"
	HeaderTimestamp = "webhook-timestamp"
	HeaderSignature = "webhook-signature"
)

// Canonical MIME forms, used to index http.Header without re-canonicalising
// on every request.
const (
	canonicalHeaderID        = "Webhook-Id"
	canonicalHeaderTimestamp = "Webhook-Timestamp"
	canonicalHeaderSignature = "Webhook-Signature"
)

// Signature version identifiers.
const (
	versionHMAC    = "v1"
	versionEd25519 = "v1a"
)
