package ingest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	heraldv1alpha1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/dispatcher/queue"
	"github.com/herald-dev/herald/dispatcher/signature"
)

// saSigner signs service account tokens with the envtest API server's own
// service-account signing key, so a test can mint what TokenRequest will
// not: a genuine token that has already expired.
type saSigner struct {
	key    crypto.Signer
	alg    string
	kid    string
	issuer string
}

func newSASigner(t *testing.T) *saSigner {
	t.Helper()
	apiServer := testEnv.ControlPlane.APIServer
	raw, err := os.ReadFile(filepath.Join(apiServer.CertDir, "sa-signer.key"))
	if err != nil {
		t.Fatalf("read the API server's service account signing key: %v", err)
	}
	block, _ := pem.Decode(raw)
	if block == nil {
		t.Fatal("service account signing key is not PEM")
	}
	var key any
	switch block.Type {
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	}
	if err != nil {
		t.Fatalf("parse service account signing key (%s): %v", block.Type, err)
	}
	s := &saSigner{issuer: apiServer.SecureServing.URL("https", "/").String()}
	switch k := key.(type) {
	case *rsa.PrivateKey:
		s.key, s.alg = k, "RS256"
	case *ecdsa.PrivateKey:
		s.key, s.alg = k, "ES256"
	default:
		t.Fatalf("unsupported service account key type %T", key)
	}
	// The key id kube-apiserver derives from the public key.
	der, err := x509.MarshalPKIXPublicKey(s.key.Public())
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(der)
	s.kid = base64.RawURLEncoding.EncodeToString(sum[:])
	return s
}

// token mints a bound service account token like TokenRequest does, valid
// from issuedAt until expiresAt.
func (s *saSigner) token(t *testing.T, namespace, serviceAccount, uid, audience string, issuedAt, expiresAt time.Time) string {
	t.Helper()
	header, _ := json.Marshal(map[string]string{"alg": s.alg, "kid": s.kid, "typ": "JWT"})
	claims, _ := json.Marshal(map[string]any{
		"iss": s.issuer,
		"sub": fmt.Sprintf("system:serviceaccount:%s:%s", namespace, serviceAccount),
		"aud": []string{audience},
		"iat": issuedAt.Unix(),
		"nbf": issuedAt.Unix(),
		"exp": expiresAt.Unix(),
		"kubernetes.io": map[string]any{
			"namespace":      namespace,
			"serviceaccount": map[string]string{"name": serviceAccount, "uid": uid},
		},
	})
	signingInput := base64.RawURLEncoding.EncodeToString(header) + "." + base64.RawURLEncoding.EncodeToString(claims)
	digest := sha256.Sum256([]byte(signingInput))
	var sig []byte
	switch k := s.key.(type) {
	case *rsa.PrivateKey:
		var err error
		if sig, err = rsa.SignPKCS1v15(rand.Reader, k, crypto.SHA256, digest[:]); err != nil {
			t.Fatal(err)
		}
	case *ecdsa.PrivateKey:
		r, ss, err := ecdsa.Sign(rand.Reader, k, digest[:])
		if err != nil {
			t.Fatal(err)
		}
		sig = make([]byte, 64)
		r.FillBytes(sig[:32])
		ss.FillBytes(sig[32:])
	}
	return signingInput + "." + base64.RawURLEncoding.EncodeToString(sig)
}

// TestExpiredTokenIsRejected: a token the API server signed for Herald's
// audience, for a service account that may publish, but whose lifetime
// ended — 401, the reason says so, nothing stored, the token not echoed. A
// token minted the same way but still valid is accepted, so the expiry is
// what is refused.
func TestExpiredTokenIsRejected(t *testing.T) {
	af := newAuthFixture(t)
	sa, err := testKube.CoreV1().ServiceAccounts(af.namespace).Get(testContext(t), "publisher", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	signer := newSASigner(t)
	now := time.Now()
	valid := signer.token(t, af.namespace, "publisher", string(sa.UID), heraldv1alpha1.DefaultAudience, now.Add(-time.Minute), now.Add(time.Hour))
	// Expired an hour ago: well beyond the validator's clock-skew leeway.
	expired := signer.token(t, af.namespace, "publisher", string(sa.UID), heraldv1alpha1.DefaultAudience, now.Add(-2*time.Hour), now.Add(-time.Hour))

	waitTokenReview(t, valid, true)
	post(t, af.url(af.namespace), bearer(valid), eventJSON(t, map[string]any{"id": "minted-valid"})).accepted(t)
	fetchStored(t, af.q, 1)

	r := post(t, af.url(af.namespace), bearer(expired), eventJSON(t, map[string]any{"id": "minted-expired"}))
	if r.status != 401 {
		t.Fatalf("expired token: status %d, want 401; body %s", r.status, r.body)
	}
	e := r.errorBody(t)
	t.Logf("401 for the expired token: %s", e.Error)
	if !strings.Contains(e.Error, "has expired") {
		t.Errorf("401 error %q does not say the token expired", e.Error)
	}
	if strings.Contains(string(r.body), expired) || strings.Contains(string(r.body), strings.Split(expired, ".")[2]) {
		t.Errorf("401 body echoes the token: %s", r.body)
	}
	if got := r.header.Get("WWW-Authenticate"); got != `Bearer realm="herald", error="invalid_token"` {
		t.Errorf("WWW-Authenticate %q", got)
	}
	if n := storedCount(t, af.q); n != 0 {
		t.Fatalf("the request with an expired token stored %d events", n)
	}
}

// webhookIDPattern is the only shape a webhook-id Herald derives can take:
// nothing in it can be confused with the "." separators of the signed
// content "id.timestamp.body" or break a header.
var webhookIDPattern = regexp.MustCompile(`^msg_[a-z2-7]{26}$`)

// TestIDsCannotBreakTheSigningInput: event ids are publisher input, and
// Standard Webhooks signs "webhook-id.timestamp.body". Ids with dots,
// commas, spaces, quotes, percent signs, a "v1," prefix, a "msg_" prefix
// or non-ASCII letters are valid CloudEvents ids and are accepted — stored
// byte for byte in the event — while the webhook-id a receiver sees is
// derived (namespace, source, id hashed) into a fixed alphabet, distinct
// for distinct ids; signing that id verifies, and cannot collide with the
// signing input of another id. Control characters cannot be sent at all
// (TestRejections).
func TestIDsCannotBreakTheSigningInput(t *testing.T) {
	f := newFixture(t)
	ids := []string{
		"a.b.c",
		"1767225600.{\"forged\":true}",
		"v1,c2lnbmF0dXJl",
		"msg_2z4fxsyi5vyzxqwc4hqdxwi5iy",
		"id with spaces",
		`id "quoted" \ slashed`,
		"percent%2E%0D%0Aencoded",
		"é中🙂",
		strings.Repeat("x", 1024),
	}
	seen := map[string]string{}
	for _, id := range ids {
		got := post(t, f.url("team-a"), structuredHeader(), eventJSON(t, map[string]any{"id": id})).accepted(t)
		if len(got.Events) != 1 || got.Events[0].Duplicate {
			t.Fatalf("id %q: 202 body %+v", id, got)
		}
		msg := fetchStored(t, f.q, 1)[0]
		checkStoredHeaders(t, msg, "team-a", "/orders", id)
		if ev := decodeStoredEvent(t, msg); ev.ID() != id {
			t.Errorf("stored id %q, want %q", ev.ID(), id)
		}
		webhookID := msg.Header.Get(queue.HeaderWebhookID)
		if !webhookIDPattern.MatchString(webhookID) {
			t.Errorf("id %q: webhook-id %q outside msg_[a-z2-7]{26}", id, webhookID)
		}
		if other, dup := seen[webhookID]; dup {
			t.Errorf("ids %q and %q share webhook-id %s", other, id, webhookID)
		}
		seen[webhookID] = id

		// A receiver verifies a delivery signed with that webhook-id.
		const secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
		signer, err := signature.NewSigner(secret)
		if err != nil {
			t.Fatal(err)
		}
		now := time.Now()
		body := []byte(`{"type":"order.created","timestamp":"2026-01-01T00:00:00Z","data":null}`)
		header := http.Header{}
		signer.SetHeaders(header, webhookID, now, body)
		verifier, err := signature.NewVerifier([]string{secret}, signature.WithClock(func() time.Time { return now }))
		if err != nil {
			t.Fatal(err)
		}
		if err := verifier.Verify(header, body); err != nil {
			t.Errorf("id %q: signature over its webhook-id does not verify: %v", id, err)
		}
	}
	// The signing inputs of two different ids never coincide, whatever
	// their characters: the ids differ and contain no ".".
	if len(seen) != len(ids) {
		t.Errorf("%d ids gave %d distinct webhook-ids", len(ids), len(seen))
	}
}
