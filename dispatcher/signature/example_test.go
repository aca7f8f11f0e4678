package signature_test

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/herald-dev/herald/dispatcher/signature"
)

// A receiver verifies each webhook before acting on it. Herald signs with the
// endpoint's secret; the receiver holds the same "whsec_" secret (or, with
// Ed25519 signing, the "whpk_" public key).
func ExampleVerifier() {
	const secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

	verifier, err := signature.NewVerifier([]string{secret})
	if err != nil {
		panic(err)
	}
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := verifier.VerifyRequest(r)
		if err != nil {
			fmt.Println("rejected:", errors.Is(err, signature.ErrNoMatchingSignature))
			http.Error(w, "invalid webhook", http.StatusUnauthorized)
			return
		}
		fmt.Printf("accepted %s: %s\n", r.Header.Get(signature.HeaderID), body)
		w.WriteHeader(http.StatusNoContent)
	})

	// What Herald's dispatcher sends.
	signer, err := signature.NewSigner(secret)
	if err != nil {
		panic(err)
	}
	send := func(body, sentBody string) {
		r := httptest.NewRequest(http.MethodPost, "/webhooks", strings.NewReader(sentBody))
		signer.SetHeaders(r.Header, "msg_2b6YbXzGk7hQ1vBfN0sR3Lq9", time.Now(), []byte(body))
		handler.ServeHTTP(httptest.NewRecorder(), r)
	}
	send(`{"type":"order.created"}`, `{"type":"order.created"}`)
	send(`{"type":"order.created"}`, `{"type":"order.deleted"}`) // altered in transit

	// Output:
	// accepted msg_2b6YbXzGk7hQ1vBfN0sR3Lq9: {"type":"order.created"}
	// rejected: true
}
