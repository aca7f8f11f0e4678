package signature_test

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/herald-dev/herald/dispatcher/signature"
)

// verifySentinels are the only errors Verify may return.
var verifySentinels = []error{
	signature.ErrMissingHeaders,
	signature.ErrInvalidHeader,
	signature.ErrTimestampTooOld,
	signature.ErrTimestampTooNew,
	signature.ErrNoMatchingSignature,
}

// FuzzVerify feeds arbitrary webhook-id, webhook-timestamp,
// webhook-signature and body to a verifier holding an HMAC secret and an
// Ed25519 public key. Verification must never panic, must fail only with a
// sentinel error, must succeed only when the header carries a genuine
// signature among the entries it examines, and must succeed whenever it does.
func FuzzVerify(f *testing.F) {
	hmacSigner := mustSigner(f, specSecret)
	edSigner := mustSigner(f, edSecretKey)
	ts := strconv.Itoa(specTimestamp)
	body := []byte(specBody)
	edSig := edSigner.Sign(specMsgID, specTime, body)

	f.Add(specMsgID, ts, specSignature, body)
	f.Add(specMsgID, ts, edSig, body)
	f.Add(specMsgID, ts, mustSigner(f, otherSecret, specSecret).Sign(specMsgID, specTime, body), body)
	f.Add(specMsgID, ts, specSignature+" "+edSig, []byte(`{"test": 2432232315}`))
	f.Add(specMsgID, ts, "garbage v2,zzz v1, ,v1 v1,!!!! "+specSignature, body)
	f.Add(specMsgID, ts, strings.Repeat("v1,AAAA ", 40)+specSignature, body)
	f.Add(specMsgID, ts, strings.TrimSuffix(specSignature, "="), body)
	f.Add(specMsgID, ts, "v1a,"+strings.Repeat("A", 88), body)
	f.Add(specMsgID, "1614265330000", specSignature, body)
	f.Add(specMsgID, "-1614265330", specSignature, body)
	f.Add(specMsgID, "99999999999999999999", specSignature, body)
	f.Add("", ts, specSignature, body)
	f.Add(specMsgID, "", specSignature, body)
	f.Add(specMsgID, ts, "", body)
	f.Add("a.1614265330", "1614265330", "v1,\t\t", []byte{0xff, '.', 0})
	f.Add("msg_ü\x00", ts, "v1,"+strings.Repeat("=", 44), []byte(nil))

	v := mustVerifier(f, []string{specSecret, edPublicKey}, fixedClock(specTime))
	f.Fuzz(func(t *testing.T, id, timestamp, sigHeader string, body []byte) {
		h := http.Header{
			"Webhook-Id":        {id},
			"Webhook-Timestamp": {timestamp},
			"Webhook-Signature": {sigHeader},
		}
		err := v.Verify(h, body)

		if err != nil {
			known := false
			for _, sentinel := range verifySentinels {
				known = known || errors.Is(err, sentinel)
			}
			if !known {
				t.Fatalf("Verify returned %v, which wraps no sentinel error", err)
			}
			assertNoSecret(t, err.Error())
		}

		unix, tsErr := strconv.ParseInt(timestamp, 10, 64)
		validTimestamp := tsErr == nil && unix >= 0 && len(timestamp) <= 18 &&
			timestamp[0] != '+' && unix >= specTimestamp-300 && unix <= specTimestamp+300
		if id == "" || !validTimestamp {
			if err == nil {
				t.Fatalf("Verify accepted id %q, timestamp %q", id, timestamp)
			}
			return
		}

		// The genuine signatures of this message, as raw bytes.
		at := time.Unix(unix, 0)
		genuine := map[string][]byte{}
		for _, s := range []*signature.Signer{hmacSigner, edSigner} {
			version, encoded, _ := strings.Cut(s.Sign(id, at, body), ",")
			raw, decodeErr := base64.StdEncoding.DecodeString(encoded)
			if decodeErr != nil {
				t.Fatal(decodeErr)
			}
			genuine[version] = raw
		}
		// Whether one of the examined entries carries a genuine signature.
		entries := strings.FieldsFunc(sigHeader, func(r rune) bool { return r == ' ' || r == '\t' })
		if len(entries) > signature.MaxSignatureEntries {
			entries = entries[:signature.MaxSignatureEntries]
		}
		carriesGenuine := false
		for _, e := range entries {
			version, encoded, ok := strings.Cut(e, ",")
			want, known := genuine[version]
			if !ok || !known || len(encoded) != base64.StdEncoding.EncodedLen(len(want)) {
				continue
			}
			raw, decodeErr := base64.StdEncoding.DecodeString(encoded)
			if decodeErr == nil && bytes.Equal(raw, want) {
				carriesGenuine = true
			}
		}
		switch {
		case err == nil && !carriesGenuine:
			t.Fatalf("Verify accepted %q with no genuine signature", sigHeader)
		case err != nil && carriesGenuine:
			t.Fatalf("Verify rejected a genuine signature in %q: %v", sigHeader, err)
		}
	})
}

// FuzzParseKey feeds arbitrary strings to ParseKey. It must never panic, must
// fail only with ErrInvalidKey and without echoing the key, and every key it
// accepts must work: private keys sign what their public half verifies.
func FuzzParseKey(f *testing.F) {
	for _, seed := range []string{
		specSecret,
		strings.TrimPrefix(specSecret, "whsec_"),
		otherSecret,
		edSecretKey,
		edPublicKey,
		" " + edPublicKey + "\n",
		"whsec_" + base64.RawStdEncoding.EncodeToString([]byte("raw-encoded-secret-32-bytes-long")),
		"whsec_",
		"whsk_",
		"whpk_",
		"whsk_" + base64.StdEncoding.EncodeToString(edPrivate[:32]),
		"whpk_" + base64.StdEncoding.EncodeToString(make([]byte, 31)),
		"whsk_" + base64.StdEncoding.EncodeToString(append(append([]byte{}, edPrivate[:32]...), make([]byte, 32)...)),
		"whsec_not*base64",
		"whsec_" + base64.StdEncoding.EncodeToString(make([]byte, 65)),
		"",
		"\x00\xff",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, s string) {
		k, err := signature.ParseKey(s)
		if err != nil {
			if !errors.Is(err, signature.ErrInvalidKey) {
				t.Fatalf("ParseKey error %v does not wrap ErrInvalidKey", err)
			}
			// The error templates contain no upper-case letters, '+' or '/',
			// so material with one of them must not show up in the message.
			material := strings.TrimSpace(s)
			if _, rest, found := strings.Cut(material, "_"); found {
				material = rest
			}
			if len(material) >= 8 && strings.ContainsAny(material, "ABCDEFGHIJKLMNOPQRSTUVWXYZ+/") &&
				strings.Contains(err.Error(), material) {
				t.Fatalf("ParseKey error %q echoes the key", err)
			}
			return
		}
		for _, format := range []string{"%v", "%+v", "%#v"} {
			if out := fmt.Sprintf(format, k); strings.Contains(out, base64.StdEncoding.EncodeToString(append(k.HMAC, k.Private...))) && len(k.HMAC)+len(k.Private) > 0 {
				t.Fatalf("formatting a key with %s reveals it: %q", format, out)
			}
		}

		body := []byte(specBody)
		h := headers(specMsgID, strconv.Itoa(specTimestamp), "")
		switch k.Kind {
		case signature.KindHMAC, signature.KindEd25519Private:
			s, err := signature.NewSignerFromKeys(k)
			if err != nil {
				// Only a private key whose halves disagree may be refused.
				if k.Kind != signature.KindEd25519Private || !errors.Is(err, signature.ErrInvalidKey) {
					t.Fatalf("NewSignerFromKeys refused a parsed key: %v", err)
				}
				return
			}
			s.SetHeaders(h, specMsgID, specTime, body)
			verifyKey := k
			if k.Kind == signature.KindEd25519Private {
				verifyKey = signature.Key{Kind: signature.KindEd25519Public, Public: k.Public}
			}
			v, err := signature.NewVerifierFromKeys([]signature.Key{verifyKey}, fixedClock(specTime))
			if err != nil {
				t.Fatalf("NewVerifierFromKeys: %v", err)
			}
			if err := v.Verify(h, body); err != nil {
				t.Fatalf("a parsed key does not verify its own signature: %v", err)
			}
		case signature.KindEd25519Public:
			if len(k.Public) != ed25519.PublicKeySize {
				t.Fatalf("public key of %d bytes", len(k.Public))
			}
			if _, err := signature.NewVerifierFromKeys([]signature.Key{k}); err != nil {
				t.Fatalf("NewVerifierFromKeys refused a parsed public key: %v", err)
			}
		default:
			t.Fatalf("ParseKey returned kind %d", k.Kind)
		}
	})
}
