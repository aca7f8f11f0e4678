package signature_test

import (
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	"github.com/herald-dev/herald/dispatcher/signature"
)

// The official Go library of Standard Webhooks is the reference this package
// must interoperate with in both directions.

func officialWebhook(t *testing.T, secret string) *standardwebhooks.Webhook {
	t.Helper()
	wh, err := standardwebhooks.NewWebhook(secret)
	if err != nil {
		t.Fatalf("standardwebhooks.NewWebhook: %v", err)
	}
	return wh
}

func TestOfficialLibrarySpecVector(t *testing.T) {
	got, err := officialWebhook(t, specSecret).Sign(specMsgID, specTime, []byte(specBody))
	if err != nil {
		t.Fatal(err)
	}
	if got != specSignature {
		t.Fatalf("official Sign = %q, want %q", got, specSignature)
	}
}

func TestOfficialLibraryVerifiesOurSignatures(t *testing.T) {
	// The official Verify checks the timestamp against the real clock.
	now := time.Now()
	body := []byte(`{"type":"order.created","timestamp":"2026-01-02T03:04:05Z","data":{"id":"o-1"}}`)
	for _, tc := range []struct {
		name    string
		signers []string
	}{
		{"one key", []string{specSecret}},
		{"rotation, old then new", []string{specSecret, otherSecret}},
		{"rotation, new then old", []string{otherSecret, specSecret}},
		// The official library ignores the v1a entry and checks the v1 one.
		{"hmac and ed25519", []string{edSecretKey, specSecret}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{}
			mustSigner(t, tc.signers...).SetHeaders(h, "msg_2b6YbXzGk7hQ1vBfN0sR3Lq9", now, body)
			if err := officialWebhook(t, specSecret).Verify(body, h); err != nil {
				t.Fatalf("official Verify: %v", err)
			}
			if err := officialWebhook(t, thirdSecret).Verify(body, h); err == nil {
				t.Fatal("official Verify accepted an unrelated key")
			}
		})
	}
}

func TestWeVerifyOfficialSignatures(t *testing.T) {
	now := time.Now()
	for _, tc := range []struct {
		name string
		id   string
		body string
	}{
		{"json", "msg_p5jXN8AQM9LWM0D4loKWxJek", `{"test": 2432232314}`},
		{"empty body", "msg_1", ""},
		{"id with dots and spaces", "a.b c", "x.y"},
		{"unicode", "msg_ü", `{"name":"Zoë ☃"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sig, err := officialWebhook(t, otherSecret).Sign(tc.id, now, []byte(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			// The official library signs what we sign, byte for byte.
			if want := mustSigner(t, otherSecret).Sign(tc.id, now, []byte(tc.body)); sig != want {
				t.Fatalf("official Sign = %q, ours = %q", sig, want)
			}
			h := headers(tc.id, strconv.FormatInt(now.Unix(), 10), sig)
			if err := mustVerifier(t, []string{otherSecret}).Verify(h, []byte(tc.body)); err != nil {
				t.Fatalf("Verify: %v", err)
			}
			// A header combining the official signature with other entries.
			h.Set(signature.HeaderSignature, strings.Join([]string{"v1a,unknown", "v1,bogus=", sig}, " "))
			if err := mustVerifier(t, []string{otherSecret}).Verify(h, []byte(tc.body)); err != nil {
				t.Fatalf("Verify(combined header): %v", err)
			}
		})
	}
}
