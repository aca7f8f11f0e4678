package signature

import (
	"bytes"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"hash"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// maxPooledMessage bounds the message buffer a pooled scratch keeps between
// calls, so that one huge body does not pin its size in memory for good.
const maxPooledMessage = 1 << 20

// Signer produces the webhook-signature header value for a set of signing
// keys: one "v1" entry per HMAC secret and one "v1a" entry per Ed25519
// private key, in the order the keys were given. It is safe for concurrent
// use; build one per key set with [NewSigner] and reuse it, since it keeps
// per-key HMAC state and buffers between calls. The zero Signer is not
// usable.
type Signer struct {
	keys       []signingKey
	hasEd25519 bool
	// headerLen is the exact length of the header value Sign returns.
	headerLen int
	scratch   sync.Pool // of *signScratch
}

type signingKey struct {
	hmacKey []byte             // set for "v1"
	private ed25519.PrivateKey // set for "v1a"
}

// signScratch is the per-call working state, pooled so that the hot path
// neither rebuilds HMAC state nor allocates buffers.
type signScratch struct {
	macs []hash.Hash // parallel to Signer.keys; nil for Ed25519 keys
	msg  []byte      // signed content (only the prefix for HMAC-only signers)
	out  []byte      // header value being built
	sum  [sha256.Size]byte
}

// NewSigner returns a Signer for the given "whsec_" secrets and "whsk_"
// Ed25519 private keys, in the encodings [ParseKey] reads. At least one key
// is required; public keys cannot sign. Errors never contain key material.
func NewSigner(keys ...string) (*Signer, error) {
	parsed := make([]Key, 0, len(keys))
	for i, s := range keys {
		k, err := ParseKey(s)
		if err != nil {
			return nil, fmt.Errorf("signing key %d: %w", i, err)
		}
		parsed = append(parsed, k)
	}
	return NewSignerFromKeys(parsed...)
}

// NewSignerFromKeys is [NewSigner] for keys already parsed with [ParseKey].
// The Signer keeps its own copy of the key material.
func NewSignerFromKeys(keys ...Key) (*Signer, error) {
	if len(keys) == 0 {
		return nil, fmt.Errorf("%w: a signer needs at least one key", ErrInvalidKey)
	}
	s := &Signer{keys: make([]signingKey, 0, len(keys))}
	for i, k := range keys {
		switch k.Kind {
		case KindHMAC:
			if len(k.HMAC) < minHMACBytes || len(k.HMAC) > maxHMACBytes {
				return nil, fmt.Errorf("signing key %d: %w: HMAC secret must be %d to %d bytes, got %d",
					i, ErrInvalidKey, minHMACBytes, maxHMACBytes, len(k.HMAC))
			}
			s.keys = append(s.keys, signingKey{hmacKey: bytes.Clone(k.HMAC)})
			s.headerLen += len(versionHMAC) + 1 + base64.StdEncoding.EncodedLen(sha256.Size)
		case KindEd25519Private:
			if err := checkEd25519Private(k.Private); err != nil {
				return nil, fmt.Errorf("signing key %d: %w", i, err)
			}
			s.keys = append(s.keys, signingKey{private: bytes.Clone(k.Private)})
			s.hasEd25519 = true
			s.headerLen += len(versionEd25519) + 1 + base64.StdEncoding.EncodedLen(ed25519.SignatureSize)
		case KindEd25519Public:
			return nil, fmt.Errorf("signing key %d: %w: a public key (%s) cannot sign; use the %s private key",
				i, ErrInvalidKey, Ed25519PublicPfx, Ed25519SecretPfx)
		default:
			return nil, fmt.Errorf("signing key %d: %w: unknown key kind", i, ErrInvalidKey)
		}
	}
	s.headerLen += len(s.keys) - 1 // separating spaces
	s.scratch.New = func() any {
		sc := &signScratch{
			macs: make([]hash.Hash, len(s.keys)),
			out:  make([]byte, 0, s.headerLen),
		}
		for i, k := range s.keys {
			if k.hmacKey != nil {
				sc.macs[i] = hmac.New(sha256.New, k.hmacKey)
			}
		}
		return sc
	}
	return s, nil
}

// checkEd25519Private refuses a 64-byte private key whose public half does
// not belong to its seed: its signatures would never verify.
func checkEd25519Private(priv ed25519.PrivateKey) error {
	if len(priv) != ed25519.PrivateKeySize {
		return fmt.Errorf("%w: Ed25519 private key must be %d bytes, got %d", ErrInvalidKey, ed25519.PrivateKeySize, len(priv))
	}
	derived := ed25519.NewKeyFromSeed(priv.Seed())
	if subtle.ConstantTimeCompare(derived[ed25519.SeedSize:], priv[ed25519.SeedSize:]) != 1 {
		return fmt.Errorf("%w: Ed25519 private key's public half does not match its seed", ErrInvalidKey)
	}
	return nil
}

// Sign returns the webhook-signature header value for one delivery attempt:
// space-separated "v1,<base64>" and "v1a,<base64>" entries, one per key. The
// signed content is msgID + "." + timestamp in unix seconds + "." + body.
func (s *Signer) Sign(msgID string, timestamp time.Time, body []byte) string {
	sc := s.scratch.Get().(*signScratch)
	sc.out = s.appendSignatures(sc.out[:0], sc, msgID, timestamp.Unix(), body)
	header := string(sc.out)
	if cap(sc.msg) > maxPooledMessage {
		sc.msg = nil
	}
	s.scratch.Put(sc)
	return header
}

// Headers returns the three Standard Webhooks header values for one delivery
// attempt: webhook-id (msgID itself), webhook-timestamp and
// webhook-signature.
func (s *Signer) Headers(msgID string, timestamp time.Time, body []byte) (id, unixTimestamp, signature string) {
	return msgID, strconv.FormatInt(timestamp.Unix(), 10), s.Sign(msgID, timestamp, body)
}

// SetHeaders signs one delivery attempt and sets webhook-id,
// webhook-timestamp and webhook-signature on h, replacing any values there.
func (s *Signer) SetHeaders(h http.Header, msgID string, timestamp time.Time, body []byte) {
	id, ts, sig := s.Headers(msgID, timestamp, body)
	h[canonicalHeaderID] = []string{id}
	h[canonicalHeaderTimestamp] = []string{ts}
	h[canonicalHeaderSignature] = []string{sig}
}

// appendSignatures appends the header value to out. HMAC keys hash the
// prefix and the body in two writes, so the body is copied only when an
// Ed25519 key needs the whole message in one slice.
func (s *Signer) appendSignatures(out []byte, sc *signScratch, msgID string, unix int64, body []byte) []byte {
	msg := sc.msg[:0]
	msg = append(msg, msgID...)
	msg = append(msg, '.')
	msg = strconv.AppendInt(msg, unix, 10)
	msg = append(msg, '.')
	prefix := msg
	if s.hasEd25519 {
		msg = append(msg, body...)
	}
	sc.msg = msg

	for i, k := range s.keys {
		if i > 0 {
			out = append(out, ' ')
		}
		if k.hmacKey != nil {
			mac := sc.macs[i]
			mac.Reset()
			mac.Write(prefix)
			mac.Write(body)
			out = append(out, versionHMAC...)
			out = append(out, ',')
			out = base64.StdEncoding.AppendEncode(out, mac.Sum(sc.sum[:0]))
			continue
		}
		out = append(out, versionEd25519...)
		out = append(out, ',')
		out = base64.StdEncoding.AppendEncode(out, ed25519.Sign(k.private, msg))
	}
	return out
}
