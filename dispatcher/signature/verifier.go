package signature

import (
	"bytes"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"hash"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Verification defaults.
const (
	// DefaultTolerance is how far webhook-timestamp may be from the
	// receiver's clock, in either direction, as Standard Webhooks recommends.
	DefaultTolerance = 5 * time.Minute
	// DefaultMaxBodyBytes caps the body VerifyRequest reads.
	DefaultMaxBodyBytes int64 = 1 << 20
	// MaxSignatureEntries is how many entries of webhook-signature are
	// examined. A sender has one per valid key, a handful at most; the bound
	// keeps a hostile header from costing unbounded CPU.
	MaxSignatureEntries = 32
)

// Encoded lengths of the two signature versions (standard base64, padded).
var (
	encodedHMACLen    = base64.StdEncoding.EncodedLen(sha256.Size)
	encodedEd25519Len = base64.StdEncoding.EncodedLen(ed25519.SignatureSize)
)

// Verifier checks Standard Webhooks headers against a set of keys: "whsec_"
// HMAC secrets verify "v1" entries, "whpk_" Ed25519 public keys (or the
// public half of a "whsk_" private key) verify "v1a" entries. It is safe for
// concurrent use; build one with [NewVerifier] and reuse it. The zero
// Verifier is not usable.
type Verifier struct {
	hmacKeys     [][]byte
	publicKeys   []ed25519.PublicKey
	tolerance    time.Duration
	maxBodyBytes int64
	now          func() time.Time
	scratch      sync.Pool // of *verifyScratch
}

// verifyScratch is the per-call working state, pooled like signScratch.
type verifyScratch struct {
	macs     []hash.Hash // parallel to Verifier.hmacKeys
	expected [][sha256.Size]byte
	msg      []byte
	encoded  []byte
	// decoded holds one signature; it is sized for the decoder's worst case
	// for an Ed25519 entry (DecodedLen of 88 characters).
	decoded [ed25519.SignatureSize + 2]byte
}

// VerifierOption configures a [Verifier].
type VerifierOption func(*Verifier)

// WithTolerance sets how far webhook-timestamp may lie from the current time,
// in the past or in the future. It must be positive; the default is
// [DefaultTolerance].
func WithTolerance(d time.Duration) VerifierOption {
	return func(v *Verifier) { v.tolerance = d }
}

// WithMaxBodyBytes sets the largest body [Verifier.VerifyRequest] reads. It
// must be positive; the default is [DefaultMaxBodyBytes].
func WithMaxBodyBytes(n int64) VerifierOption {
	return func(v *Verifier) { v.maxBodyBytes = n }
}

// WithClock sets the source of the current time, for tests.
func WithClock(now func() time.Time) VerifierOption {
	return func(v *Verifier) { v.now = now }
}

// NewVerifier returns a Verifier for the given "whsec_" secrets and "whpk_"
// (or "whsk_") Ed25519 keys, in the encodings [ParseKey] reads. Pass every
// key currently valid for the sender: during a rotation, the old and the new
// one. Errors never contain key material.
func NewVerifier(keys []string, opts ...VerifierOption) (*Verifier, error) {
	parsed := make([]Key, 0, len(keys))
	for i, s := range keys {
		k, err := ParseKey(s)
		if err != nil {
			return nil, fmt.Errorf("verification key %d: %w", i, err)
		}
		parsed = append(parsed, k)
	}
	return NewVerifierFromKeys(parsed, opts...)
}

// NewVerifierFromKeys is [NewVerifier] for keys already parsed with
// [ParseKey]. The Verifier keeps its own copy of the key material.
func NewVerifierFromKeys(keys []Key, opts ...VerifierOption) (*Verifier, error) {
	if len(keys) == 0 {
		return nil, fmt.Errorf("%w: a verifier needs at least one key", ErrInvalidKey)
	}
	v := &Verifier{
		tolerance:    DefaultTolerance,
		maxBodyBytes: DefaultMaxBodyBytes,
		now:          time.Now,
	}
	for i, k := range keys {
		switch k.Kind {
		case KindHMAC:
			if len(k.HMAC) < minHMACBytes || len(k.HMAC) > maxHMACBytes {
				return nil, fmt.Errorf("verification key %d: %w: HMAC secret must be %d to %d bytes, got %d",
					i, ErrInvalidKey, minHMACBytes, maxHMACBytes, len(k.HMAC))
			}
			v.hmacKeys = append(v.hmacKeys, bytes.Clone(k.HMAC))
		case KindEd25519Private:
			if err := checkEd25519Private(k.Private); err != nil {
				return nil, fmt.Errorf("verification key %d: %w", i, err)
			}
			v.publicKeys = append(v.publicKeys, bytes.Clone(k.Private[ed25519.SeedSize:]))
		case KindEd25519Public:
			if len(k.Public) != ed25519.PublicKeySize {
				return nil, fmt.Errorf("verification key %d: %w: Ed25519 public key must be %d bytes, got %d",
					i, ErrInvalidKey, ed25519.PublicKeySize, len(k.Public))
			}
			v.publicKeys = append(v.publicKeys, bytes.Clone(k.Public))
		default:
			return nil, fmt.Errorf("verification key %d: %w: unknown key kind", i, ErrInvalidKey)
		}
	}
	for _, opt := range opts {
		opt(v)
	}
	if v.tolerance <= 0 {
		return nil, fmt.Errorf("signature: tolerance must be positive, got %s", v.tolerance)
	}
	if v.maxBodyBytes <= 0 || v.maxBodyBytes == math.MaxInt64 {
		return nil, fmt.Errorf("signature: max body bytes must be positive and finite, got %d", v.maxBodyBytes)
	}
	if v.now == nil {
		return nil, fmt.Errorf("signature: clock must not be nil")
	}
	v.scratch.New = func() any {
		sc := &verifyScratch{
			macs:     make([]hash.Hash, len(v.hmacKeys)),
			expected: make([][sha256.Size]byte, len(v.hmacKeys)),
		}
		for i, key := range v.hmacKeys {
			sc.macs[i] = hmac.New(sha256.New, key)
		}
		return sc
	}
	return v, nil
}

// Verify checks a received webhook: the three headers are present, the
// timestamp is within tolerance, and at least one entry of
// webhook-signature is a valid signature of the id, timestamp and body by
// one of the verifier's keys. The returned error wraps one of the package's
// sentinel errors.
func (v *Verifier) Verify(header http.Header, body []byte) error {
	msgID, unix, signatures, err := v.checkHeaders(header)
	if err != nil {
		return err
	}
	return v.checkSignatures(msgID, unix, signatures, body)
}

// VerifyRequest verifies r and returns its body. Headers and timestamp are
// checked before the body is read; the body is read up to the verifier's
// limit ([ErrBodyTooLarge] beyond it) and returned only when a signature
// matches. r.Body is consumed but not closed; net/http servers close it.
func (v *Verifier) VerifyRequest(r *http.Request) ([]byte, error) {
	msgID, unix, signatures, err := v.checkHeaders(r.Header)
	if err != nil {
		return nil, err
	}
	if r.ContentLength > v.maxBodyBytes {
		return nil, fmt.Errorf("%w: %d bytes declared, limit %d", ErrBodyTooLarge, r.ContentLength, v.maxBodyBytes)
	}
	var body []byte
	if r.Body != nil {
		body, err = io.ReadAll(io.LimitReader(r.Body, v.maxBodyBytes+1))
		if err != nil {
			return nil, fmt.Errorf("signature: read webhook body: %w", err)
		}
		if int64(len(body)) > v.maxBodyBytes {
			return nil, fmt.Errorf("%w: limit %d bytes", ErrBodyTooLarge, v.maxBodyBytes)
		}
	}
	if err := v.checkSignatures(msgID, unix, signatures, body); err != nil {
		return nil, err
	}
	return body, nil
}

// checkHeaders reads the three headers and checks the timestamp.
func (v *Verifier) checkHeaders(header http.Header) (msgID string, unix int64, signatures string, err error) {
	msgID = headerValue(header, canonicalHeaderID, HeaderID)
	timestamp := headerValue(header, canonicalHeaderTimestamp, HeaderTimestamp)
	signatures = headerValue(header, canonicalHeaderSignature, HeaderSignature)
	switch {
	case msgID == "":
		return "", 0, "", fmt.Errorf("%w: %s", ErrMissingHeaders, HeaderID)
	case timestamp == "":
		return "", 0, "", fmt.Errorf("%w: %s", ErrMissingHeaders, HeaderTimestamp)
	case signatures == "":
		return "", 0, "", fmt.Errorf("%w: %s", ErrMissingHeaders, HeaderSignature)
	}
	unix, ok := parseUnixSeconds(timestamp)
	if !ok {
		return "", 0, "", fmt.Errorf("%w: %s is not unix seconds", ErrInvalidHeader, HeaderTimestamp)
	}
	sent := time.Unix(unix, 0)
	now := v.now()
	// time.Time.Sub saturates, so absurd timestamps cannot overflow here.
	if age := now.Sub(sent); age > v.tolerance {
		return "", 0, "", fmt.Errorf("%w: sent %s ago, tolerance %s", ErrTimestampTooOld, age.Truncate(time.Second), v.tolerance)
	}
	if ahead := sent.Sub(now); ahead > v.tolerance {
		return "", 0, "", fmt.Errorf("%w: sent %s ahead, tolerance %s", ErrTimestampTooNew, ahead.Truncate(time.Second), v.tolerance)
	}
	return msgID, unix, signatures, nil
}

// headerValue returns the first value of a header, also finding it under its
// lower-case name in maps built by hand rather than by net/http.
func headerValue(h http.Header, canonical, lower string) string {
	if vs := h[canonical]; len(vs) > 0 {
		return vs[0]
	}
	if vs := h[lower]; len(vs) > 0 {
		return vs[0]
	}
	return ""
}

// parseUnixSeconds accepts only ASCII digits: no sign, no spaces, and at
// most 18 of them so the value cannot overflow.
func parseUnixSeconds(s string) (int64, bool) {
	if len(s) == 0 || len(s) > 18 {
		return 0, false
	}
	var n int64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// checkSignatures walks the entries of webhook-signature, skipping malformed
// ones and unknown versions, and succeeds at the first that matches a key.
// Expected HMACs are computed once, on the first "v1" entry; Ed25519 entries
// are checked against each public key.
func (v *Verifier) checkSignatures(msgID string, unix int64, header string, body []byte) error {
	sc := v.scratch.Get().(*verifyScratch)
	defer func() {
		if cap(sc.msg) > maxPooledMessage {
			sc.msg = nil
		}
		v.scratch.Put(sc)
	}()

	msg := sc.msg[:0]
	msg = append(msg, msgID...)
	msg = append(msg, '.')
	msg = strconv.AppendInt(msg, unix, 10)
	msg = append(msg, '.')
	prefixLen := len(msg)
	sc.msg = msg

	var (
		entries, wellFormed int
		hmacsComputed       bool
		messageComplete     bool
	)
	rest := header
	for entries < MaxSignatureEntries {
		var entry string
		entry, rest = nextEntry(rest)
		if entry == "" {
			break
		}
		entries++
		version, encoded, ok := cutComma(entry)
		if !ok {
			continue
		}
		wellFormed++
		switch version {
		case versionHMAC:
			if len(v.hmacKeys) == 0 || len(encoded) != encodedHMACLen {
				continue
			}
			sig, ok := sc.decode(encoded, sha256.Size)
			if !ok {
				continue
			}
			if !hmacsComputed {
				for i, mac := range sc.macs {
					mac.Reset()
					mac.Write(sc.msg[:prefixLen])
					mac.Write(body)
					mac.Sum(sc.expected[i][:0])
				}
				hmacsComputed = true
			}
			for i := range sc.expected {
				if hmac.Equal(sig, sc.expected[i][:]) {
					return nil
				}
			}
		case versionEd25519:
			if len(v.publicKeys) == 0 || len(encoded) != encodedEd25519Len {
				continue
			}
			sig, ok := sc.decode(encoded, ed25519.SignatureSize)
			if !ok {
				continue
			}
			if !messageComplete {
				sc.msg = append(sc.msg[:prefixLen], body...)
				messageComplete = true
			}
			for _, pub := range v.publicKeys {
				if ed25519.Verify(pub, sc.msg, sig) {
					return nil
				}
			}
		}
	}
	if wellFormed == 0 {
		return fmt.Errorf("%w: %s has no \"version,signature\" entry", ErrInvalidHeader, HeaderSignature)
	}
	if next, _ := nextEntry(rest); next != "" {
		return fmt.Errorf("%w: only the first %d entries are checked", ErrNoMatchingSignature, MaxSignatureEntries)
	}
	return ErrNoMatchingSignature
}

// decode decodes a base64 signature into the scratch array and reports
// whether it has exactly size bytes.
func (sc *verifyScratch) decode(encoded string, size int) ([]byte, bool) {
	// Copy into a reused buffer: converting the string would allocate.
	sc.encoded = append(sc.encoded[:0], encoded...)
	n, err := base64.StdEncoding.Decode(sc.decoded[:], sc.encoded)
	if err != nil || n != size {
		return nil, false
	}
	return sc.decoded[:n], true
}

// nextEntry returns the next space- or tab-separated entry of s and what
// follows it; entry is empty when s holds no more entries.
func nextEntry(s string) (entry, rest string) {
	start := 0
	for start < len(s) && (s[start] == ' ' || s[start] == '\t') {
		start++
	}
	end := start
	for end < len(s) && s[end] != ' ' && s[end] != '\t' {
		end++
	}
	return s[start:end], s[end:]
}

// cutComma splits "version,signature"; both parts must be non-empty.
func cutComma(entry string) (version, encoded string, ok bool) {
	version, encoded, ok = strings.Cut(entry, ",")
	return version, encoded, ok && version != "" && encoded != ""
}
