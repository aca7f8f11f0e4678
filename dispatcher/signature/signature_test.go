package signature_test

import (
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/herald-dev/herald/dispatcher/signature"
)

// The test vector published with the Standard Webhooks specification.
const (
	specSecret    = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	specMsgID     = "msg_p5jXN8AQM9LWM0D4loKWxJek"
	specTimestamp = 1614265330
	specBody      = `{"test": 2432232314}`
	specSignature = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
)

var specTime = time.Unix(specTimestamp, 0)

// Fixed keys, so that failures reproduce.
var (
	otherSecret = "whsec_" + base64.StdEncoding.EncodeToString([]byte("another-32-byte-secret-for-tests"))
	thirdSecret = "whsec_" + base64.StdEncoding.EncodeToString([]byte("a-third-32-byte-secret-for-test!"))

	edPrivate      = ed25519.NewKeyFromSeed([]byte("herald-ed25519-seed-for-tests-32"))
	edSecretKey    = "whsk_" + base64.StdEncoding.EncodeToString(edPrivate)
	edPublicKey    = "whpk_" + base64.StdEncoding.EncodeToString(edPrivate.Public().(ed25519.PublicKey))
	otherEdPrivate = ed25519.NewKeyFromSeed([]byte("another-ed25519-seed-for-tests!!"))
	otherEdPublic  = "whpk_" + base64.StdEncoding.EncodeToString(otherEdPrivate.Public().(ed25519.PublicKey))
)

func fixedClock(t time.Time) signature.VerifierOption {
	return signature.WithClock(func() time.Time { return t })
}

func mustSigner(t testing.TB, keys ...string) *signature.Signer {
	t.Helper()
	s, err := signature.NewSigner(keys...)
	if err != nil {
		t.Fatalf("NewSigner: %v", err)
	}
	return s
}

func mustVerifier(t testing.TB, keys []string, opts ...signature.VerifierOption) *signature.Verifier {
	t.Helper()
	v, err := signature.NewVerifier(keys, opts...)
	if err != nil {
		t.Fatalf("NewVerifier: %v", err)
	}
	return v
}

func headers(id, ts, sig string) http.Header {
	h := http.Header{}
	if id != "" {
		h.Set(signature.HeaderID, id)
	}
	if ts != "" {
		h.Set(signature.HeaderTimestamp, ts)
	}
	if sig != "" {
		h.Set(signature.HeaderSignature, sig)
	}
	return h
}

func TestSignSpecVector(t *testing.T) {
	s := mustSigner(t, specSecret)
	if got := s.Sign(specMsgID, specTime, []byte(specBody)); got != specSignature {
		t.Fatalf("Sign = %q, want %q", got, specSignature)
	}
	// The unprefixed form of the secret is the same key.
	s = mustSigner(t, strings.TrimPrefix(specSecret, "whsec_"))
	if got := s.Sign(specMsgID, specTime, []byte(specBody)); got != specSignature {
		t.Fatalf("Sign with unprefixed secret = %q, want %q", got, specSignature)
	}
	// Sub-second precision is dropped: the timestamp is unix seconds.
	if got := s.Sign(specMsgID, specTime.Add(999*time.Millisecond), []byte(specBody)); got != specSignature {
		t.Fatalf("Sign with fractional second = %q, want %q", got, specSignature)
	}
}

func TestVerifySpecVector(t *testing.T) {
	v := mustVerifier(t, []string{specSecret}, fixedClock(specTime))
	h := headers(specMsgID, strconv.Itoa(specTimestamp), specSignature)
	if err := v.Verify(h, []byte(specBody)); err != nil {
		t.Fatalf("Verify: %v", err)
	}
}

func TestHeaders(t *testing.T) {
	s := mustSigner(t, specSecret)
	id, ts, sig := s.Headers(specMsgID, specTime, []byte(specBody))
	if id != specMsgID || ts != "1614265330" || sig != specSignature {
		t.Fatalf("Headers = %q, %q, %q", id, ts, sig)
	}

	h := http.Header{"Webhook-Signature": {"stale"}}
	s.SetHeaders(h, specMsgID, specTime, []byte(specBody))
	for name, want := range map[string]string{
		signature.HeaderID:        specMsgID,
		signature.HeaderTimestamp: "1614265330",
		signature.HeaderSignature: specSignature,
	} {
		if got := h.Values(name); len(got) != 1 || got[0] != want {
			t.Errorf("header %s = %q, want [%q]", name, got, want)
		}
	}
	if err := mustVerifier(t, []string{specSecret}, fixedClock(specTime)).Verify(h, []byte(specBody)); err != nil {
		t.Fatalf("Verify(SetHeaders): %v", err)
	}
}

func TestRoundTrip(t *testing.T) {
	bodies := map[string][]byte{
		"empty":  nil,
		"json":   []byte(`{"type":"order.created","data":{"id":42}}`),
		"binary": {0, 1, 2, 0xff, '.', ' ', '\n'},
		"large":  []byte(strings.Repeat("x", 2<<20)), // beyond the pooled-buffer cap
	}
	now := time.Now()
	for _, tc := range []struct {
		name     string
		signWith []string
		verifyBy []string
		wantSigs []string // version of each entry, in order
	}{
		{"hmac", []string{specSecret}, []string{specSecret}, []string{"v1"}},
		{"ed25519 public", []string{edSecretKey}, []string{edPublicKey}, []string{"v1a"}},
		{"ed25519 private verifies", []string{edSecretKey}, []string{edSecretKey}, []string{"v1a"}},
		{"mixed, hmac receiver", []string{specSecret, edSecretKey}, []string{specSecret}, []string{"v1", "v1a"}},
		{"mixed, ed25519 receiver", []string{specSecret, edSecretKey}, []string{edPublicKey}, []string{"v1", "v1a"}},
	} {
		for bodyName, body := range bodies {
			t.Run(tc.name+"/"+bodyName, func(t *testing.T) {
				s := mustSigner(t, tc.signWith...)
				sig := s.Sign("msg_2b6YbXzGk7hQ1vBfN0sR3Lq9", now, body)
				entries := strings.Split(sig, " ")
				if len(entries) != len(tc.wantSigs) {
					t.Fatalf("Sign = %q, want %d entries", sig, len(tc.wantSigs))
				}
				for i, e := range entries {
					if !strings.HasPrefix(e, tc.wantSigs[i]+",") {
						t.Errorf("entry %d = %q, want version %s", i, e, tc.wantSigs[i])
					}
				}
				v := mustVerifier(t, tc.verifyBy)
				h := headers("msg_2b6YbXzGk7hQ1vBfN0sR3Lq9", strconv.FormatInt(now.Unix(), 10), sig)
				if err := v.Verify(h, body); err != nil {
					t.Fatalf("Verify: %v", err)
				}
				tampered := append([]byte("!"), body...)
				if err := v.Verify(h, tampered); !errors.Is(err, signature.ErrNoMatchingSignature) {
					t.Fatalf("Verify(tampered) = %v, want ErrNoMatchingSignature", err)
				}
			})
		}
	}
}

func TestEd25519GeneratedKeys(t *testing.T) {
	sk, pk, err := signature.NewEd25519Key()
	if err != nil {
		t.Fatal(err)
	}
	sig := mustSigner(t, sk).Sign("msg_1", specTime, []byte(specBody))
	h := headers("msg_1", strconv.Itoa(specTimestamp), sig)
	if err := mustVerifier(t, []string{pk}, fixedClock(specTime)).Verify(h, []byte(specBody)); err != nil {
		t.Fatalf("Verify with own public key: %v", err)
	}
	if err := mustVerifier(t, []string{otherEdPublic}, fixedClock(specTime)).Verify(h, []byte(specBody)); !errors.Is(err, signature.ErrNoMatchingSignature) {
		t.Fatalf("Verify with another public key = %v, want ErrNoMatchingSignature", err)
	}
}

func TestRotation(t *testing.T) {
	// During rotation every attempt carries one signature per valid key, and
	// a receiver that knows either key alone accepts it.
	s := mustSigner(t, specSecret, otherSecret)
	sig := s.Sign(specMsgID, specTime, []byte(specBody))
	entries := strings.Split(sig, " ")
	if len(entries) != 2 || entries[0] != specSignature {
		t.Fatalf("Sign = %q, want the spec signature then a second entry", sig)
	}
	h := headers(specMsgID, strconv.Itoa(specTimestamp), sig)
	for _, tc := range []struct {
		name string
		keys []string
		want error
	}{
		{"old key alone", []string{specSecret}, nil},
		{"new key alone", []string{otherSecret}, nil},
		{"both keys", []string{thirdSecret, otherSecret}, nil},
		{"unrelated key", []string{thirdSecret}, signature.ErrNoMatchingSignature},
		{"unrelated ed25519 key", []string{edPublicKey}, signature.ErrNoMatchingSignature},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := mustVerifier(t, tc.keys, fixedClock(specTime)).Verify(h, []byte(specBody))
			if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
				t.Fatalf("Verify = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestVerifyRejects(t *testing.T) {
	body := []byte(specBody)
	ts := strconv.Itoa(specTimestamp)
	sign := func(id string, at time.Time, b []byte) string {
		return mustSigner(t, specSecret).Sign(id, at, b)
	}
	valid := specSignature
	junk32 := strings.TrimSpace(strings.Repeat("v1,AAAA ", signature.MaxSignatureEntries))
	unpadded := strings.TrimSuffix(specSignature, "=")

	tests := []struct {
		name    string
		header  http.Header
		body    []byte
		opts    []signature.VerifierOption
		wantErr error // nil: must verify
	}{
		{name: "valid", header: headers(specMsgID, ts, valid), body: body},
		{name: "lower-case header keys", body: body, header: http.Header{
			"webhook-id": {specMsgID}, "webhook-timestamp": {ts}, "webhook-signature": {valid},
		}},
		{name: "extra whitespace between entries", header: headers(specMsgID, ts, "  v1,bogus=\t "+valid+"  "), body: body},
		{name: "malformed and unknown entries skipped", body: body,
			header: headers(specMsgID, ts, "garbage v2,zzzz ,x v1, v1,!!!! v1a,"+strings.Repeat("A", 88)+" "+valid)},
		{name: "valid entry last of the bounded set", body: body,
			header: headers(specMsgID, ts, strings.Repeat("junk ", signature.MaxSignatureEntries-1)+valid)},
		{name: "at tolerance in the past", body: body,
			header: headers(specMsgID, ts, valid), opts: []signature.VerifierOption{fixedClock(specTime.Add(5 * time.Minute))}},
		{name: "at tolerance in the future", body: body,
			header: headers(specMsgID, ts, valid), opts: []signature.VerifierOption{fixedClock(specTime.Add(-5 * time.Minute))}},

		{name: "tampered body", header: headers(specMsgID, ts, valid), body: []byte(`{"test": 2432232315}`), wantErr: signature.ErrNoMatchingSignature},
		{name: "tampered id", header: headers(specMsgID+"x", ts, valid), body: body, wantErr: signature.ErrNoMatchingSignature},
		{name: "tampered timestamp", header: headers(specMsgID, strconv.Itoa(specTimestamp+1), valid), body: body,
			opts: []signature.VerifierOption{fixedClock(specTime)}, wantErr: signature.ErrNoMatchingSignature},
		{name: "wrong key", header: headers(specMsgID, ts, mustSigner(t, otherSecret).Sign(specMsgID, specTime, body)), body: body, wantErr: signature.ErrNoMatchingSignature},
		{name: "ed25519 entry for hmac verifier", header: headers(specMsgID, ts, mustSigner(t, edSecretKey).Sign(specMsgID, specTime, body)), body: body, wantErr: signature.ErrNoMatchingSignature},
		{name: "unknown version only", header: headers(specMsgID, ts, "v2"+strings.TrimPrefix(valid, "v1")), body: body, wantErr: signature.ErrNoMatchingSignature},
		{name: "version is case-sensitive", header: headers(specMsgID, ts, "V1"+strings.TrimPrefix(valid, "v1")), body: body, wantErr: signature.ErrNoMatchingSignature},
		{name: "unpadded base64", header: headers(specMsgID, ts, unpadded), body: body, wantErr: signature.ErrNoMatchingSignature},
		{name: "truncated signature", header: headers(specMsgID, ts, valid[:len(valid)-5]), body: body, wantErr: signature.ErrNoMatchingSignature},
		{name: "valid entry beyond the bound", header: headers(specMsgID, ts, junk32+" "+valid), body: body, wantErr: signature.ErrNoMatchingSignature},
		{name: "too old", body: body, header: headers(specMsgID, ts, valid),
			opts: []signature.VerifierOption{fixedClock(specTime.Add(5*time.Minute + time.Second))}, wantErr: signature.ErrTimestampTooOld},
		{name: "too new", body: body, header: headers(specMsgID, ts, valid),
			opts: []signature.VerifierOption{fixedClock(specTime.Add(-5*time.Minute - time.Second))}, wantErr: signature.ErrTimestampTooNew},
		{name: "too old for a tighter tolerance", body: body, header: headers(specMsgID, ts, valid),
			opts: []signature.VerifierOption{fixedClock(specTime.Add(31 * time.Second)), signature.WithTolerance(30 * time.Second)}, wantErr: signature.ErrTimestampTooOld},
		{name: "old but within a wider tolerance", body: body, header: headers(specMsgID, ts, valid),
			opts: []signature.VerifierOption{fixedClock(specTime.Add(time.Hour)), signature.WithTolerance(2 * time.Hour)}},
		{name: "far-future timestamp", body: body, header: headers(specMsgID, "999999999999999999", sign(specMsgID, time.Unix(999999999999999999, 0), body)),
			wantErr: signature.ErrTimestampTooNew},
		{name: "zero timestamp", body: body, header: headers(specMsgID, "0", sign(specMsgID, time.Unix(0, 0), body)),
			wantErr: signature.ErrTimestampTooOld},

		{name: "missing id", header: headers("", ts, valid), body: body, wantErr: signature.ErrMissingHeaders},
		{name: "missing timestamp", header: headers(specMsgID, "", valid), body: body, wantErr: signature.ErrMissingHeaders},
		{name: "missing signature", header: headers(specMsgID, ts, ""), body: body, wantErr: signature.ErrMissingHeaders},
		{name: "no headers", header: http.Header{}, body: body, wantErr: signature.ErrMissingHeaders},
		{name: "nil header", header: nil, body: body, wantErr: signature.ErrMissingHeaders},

		{name: "timestamp not a number", header: headers(specMsgID, "yesterday", valid), body: body, wantErr: signature.ErrInvalidHeader},
		{name: "timestamp with sign", header: headers(specMsgID, "+"+ts, valid), body: body, wantErr: signature.ErrInvalidHeader},
		{name: "negative timestamp", header: headers(specMsgID, "-1", valid), body: body, wantErr: signature.ErrInvalidHeader},
		{name: "timestamp with fraction", header: headers(specMsgID, ts+".5", valid), body: body, wantErr: signature.ErrInvalidHeader},
		{name: "timestamp in milliseconds", body: body, header: headers(specMsgID, ts+"000", sign(specMsgID, time.Unix(specTimestamp*1000, 0), body)),
			wantErr: signature.ErrTimestampTooNew},
		{name: "timestamp too long", header: headers(specMsgID, "99999999999999999999", valid), body: body, wantErr: signature.ErrInvalidHeader},
		{name: "signature without version", header: headers(specMsgID, ts, strings.TrimPrefix(valid, "v1,")), body: body, wantErr: signature.ErrInvalidHeader},
		{name: "signature entries all malformed", header: headers(specMsgID, ts, "v1, ,abc v1a"), body: body, wantErr: signature.ErrInvalidHeader},
		{name: "signature only whitespace", header: headers(specMsgID, ts, " \t "), body: body, wantErr: signature.ErrInvalidHeader},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			opts := append([]signature.VerifierOption{fixedClock(specTime)}, tc.opts...)
			v := mustVerifier(t, []string{specSecret}, opts...)
			err := v.Verify(tc.header, tc.body)
			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("Verify = %v, want success", err)
				}
				return
			}
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Verify = %v, want %v", err, tc.wantErr)
			}
			assertNoSecret(t, err.Error())
		})
	}
}

func TestVerifyRequest(t *testing.T) {
	signer := mustSigner(t, specSecret)
	newRequest := func(body string) *http.Request {
		r := httptest.NewRequest(http.MethodPost, "/webhooks", strings.NewReader(body))
		signer.SetHeaders(r.Header, specMsgID, specTime, []byte(body))
		return r
	}
	v := mustVerifier(t, []string{specSecret}, fixedClock(specTime), signature.WithMaxBodyBytes(64))

	t.Run("valid", func(t *testing.T) {
		got, err := v.VerifyRequest(newRequest(specBody))
		if err != nil || string(got) != specBody {
			t.Fatalf("VerifyRequest = %q, %v; want the body", got, err)
		}
	})
	t.Run("body at the limit", func(t *testing.T) {
		body := strings.Repeat("a", 64)
		got, err := v.VerifyRequest(newRequest(body))
		if err != nil || string(got) != body {
			t.Fatalf("VerifyRequest = %q, %v; want the body", got, err)
		}
	})
	t.Run("tampered body returns nothing", func(t *testing.T) {
		r := newRequest(specBody)
		r.Body = io.NopCloser(strings.NewReader(`{"test": 1}`))
		got, err := v.VerifyRequest(r)
		if !errors.Is(err, signature.ErrNoMatchingSignature) || got != nil {
			t.Fatalf("VerifyRequest = %q, %v; want nil, ErrNoMatchingSignature", got, err)
		}
	})
	t.Run("declared body too large", func(t *testing.T) {
		got, err := v.VerifyRequest(newRequest(strings.Repeat("a", 65)))
		if !errors.Is(err, signature.ErrBodyTooLarge) || got != nil {
			t.Fatalf("VerifyRequest = %q, %v; want nil, ErrBodyTooLarge", got, err)
		}
	})
	t.Run("streamed body too large", func(t *testing.T) {
		body := strings.Repeat("a", 65)
		r := newRequest(body)
		r.ContentLength = -1
		r.Body = io.NopCloser(io.MultiReader(strings.NewReader(body), strings.NewReader(strings.Repeat("b", 1<<20))))
		got, err := v.VerifyRequest(r)
		if !errors.Is(err, signature.ErrBodyTooLarge) || got != nil {
			t.Fatalf("VerifyRequest = %q, %v; want nil, ErrBodyTooLarge", got, err)
		}
	})
	t.Run("stale request is rejected before the body is read", func(t *testing.T) {
		r := newRequest(specBody)
		body := &countingReader{r: strings.NewReader(specBody)}
		r.Body = io.NopCloser(body)
		stale := mustVerifier(t, []string{specSecret}, fixedClock(specTime.Add(time.Hour)))
		if _, err := stale.VerifyRequest(r); !errors.Is(err, signature.ErrTimestampTooOld) {
			t.Fatalf("VerifyRequest = %v, want ErrTimestampTooOld", err)
		}
		if body.n != 0 {
			t.Fatalf("read %d body bytes of a stale request, want 0", body.n)
		}
	})
	t.Run("read error", func(t *testing.T) {
		r := newRequest(specBody)
		r.Body = io.NopCloser(io.MultiReader(strings.NewReader("{"), errReader{}))
		if _, err := v.VerifyRequest(r); err == nil || !strings.Contains(err.Error(), "read webhook body") {
			t.Fatalf("VerifyRequest = %v, want a read error", err)
		}
	})
}

type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("connection reset") }

func TestKeyErrors(t *testing.T) {
	shortSecret := "whsec_" + base64.StdEncoding.EncodeToString([]byte("only-16-bytes!!!"))
	// A private key whose public half belongs to another seed.
	mismatched := append(append([]byte{}, edPrivate[:32]...), otherEdPrivate[32:]...)
	mismatchedKey := "whsk_" + base64.StdEncoding.EncodeToString(mismatched)

	signerCases := map[string][]string{
		"no keys":            nil,
		"not base64":         {"whsec_not*base64*at*all"},
		"too short":          {shortSecret},
		"public key signing": {edPublicKey},
		"mismatched ed25519": {mismatchedKey},
		"one bad among good": {specSecret, "whsk_AAAA"},
	}
	for name, keys := range signerCases {
		t.Run("signer/"+name, func(t *testing.T) {
			_, err := signature.NewSigner(keys...)
			if !errors.Is(err, signature.ErrInvalidKey) {
				t.Fatalf("NewSigner = %v, want ErrInvalidKey", err)
			}
			assertNoSecret(t, err.Error(), keys...)
		})
	}
	verifierCases := map[string][]string{
		"no keys":            nil,
		"not base64":         {"whpk_not*base64"},
		"too short":          {shortSecret},
		"mismatched ed25519": {mismatchedKey},
	}
	for name, keys := range verifierCases {
		t.Run("verifier/"+name, func(t *testing.T) {
			_, err := signature.NewVerifier(keys)
			if !errors.Is(err, signature.ErrInvalidKey) {
				t.Fatalf("NewVerifier = %v, want ErrInvalidKey", err)
			}
			assertNoSecret(t, err.Error(), keys...)
		})
	}
	for name, opt := range map[string]signature.VerifierOption{
		"zero tolerance":     signature.WithTolerance(0),
		"negative tolerance": signature.WithTolerance(-time.Second),
		"zero body limit":    signature.WithMaxBodyBytes(0),
		"nil clock":          signature.WithClock(nil),
	} {
		t.Run("option/"+name, func(t *testing.T) {
			if _, err := signature.NewVerifier([]string{specSecret}, opt); err == nil {
				t.Fatal("NewVerifier accepted an invalid option")
			}
		})
	}
}

// assertNoSecret fails if msg contains any test key's material, in full or
// as a recognisable fragment.
func assertNoSecret(t *testing.T, msg string, extra ...string) {
	t.Helper()
	keys := append([]string{specSecret, otherSecret, thirdSecret, edSecretKey, edPublicKey}, extra...)
	for _, k := range keys {
		_, material, found := strings.Cut(k, "_")
		if !found {
			material = k
		}
		if len(material) > 12 {
			material = material[:12]
		}
		if len(material) >= 8 && strings.Contains(msg, material) {
			t.Fatalf("error %q contains key material", msg)
		}
	}
}

func TestConcurrentUse(t *testing.T) {
	s := mustSigner(t, specSecret, edSecretKey)
	v := mustVerifier(t, []string{edPublicKey}, fixedClock(specTime))
	want := s.Sign(specMsgID, specTime, []byte(specBody))
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Go(func() {
			for i := range 50 {
				body := fmt.Appendf(nil, `{"g":%d,"i":%d}`, g, i)
				sig := s.Sign(specMsgID, specTime, body)
				if err := v.Verify(headers(specMsgID, strconv.Itoa(specTimestamp), sig), body); err != nil {
					errs <- err
					return
				}
				if got := s.Sign(specMsgID, specTime, []byte(specBody)); got != want {
					errs <- fmt.Errorf("Sign = %q, want %q", got, want)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestKeyIsRedacted(t *testing.T) {
	k, err := signature.ParseKey(edSecretKey)
	if err != nil {
		t.Fatal(err)
	}
	for _, format := range []string{"%v", "%+v", "%#v", "%s"} {
		assertNoSecret(t, fmt.Sprintf(format, k))
	}
}
