package delivery

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
	"time"

	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/dispatcher/signature"
)

// FuzzBuildRequest decodes arbitrary queued payloads — the stored
// CloudEvent in structured JSON, which the delivery stage parses again —
// into a request in every payload format. It must never panic; a payload it
// refuses is refused as an invalid event (dead-lettered, never retried); a
// request it builds carries only header values HTTP can transmit (the
// binary format turns attributes into ce-* headers) and a webhook-signature
// a receiver verifies over exactly the body sent; the structured format
// sends the stored payload byte for byte.
func FuzzBuildRequest(f *testing.F) {
	for _, s := range []string{
		string(testEvent("o-1")),
		`{"specversion":"1.0","id":"1","source":"/s","type":"t"}`,
		`{"specversion":"1.0","id":"a.b.c","source":"/s","type":"t","subject":"x y\"%é\u0000","data":"text","datacontenttype":"text/plain"}`,
		`{"specversion":"1.0","id":"1","source":"/s","type":"t","data_base64":"AP8=","datacontenttype":"application/octet-stream"}`,
		`{"specversion":"1.0","id":"1","source":"/s","type":"t","ext":"line\r\nInjected: 1","num":-1.5e3,"flag":true,"obj":{"a":1}}`,
		`{"specversion":"1.0","id":"1","source":"/s","type":"t","Bad-Name":"x","data":{"a":[1,2]},"datacontenttype":"application/vnd.acme+json"}`,
		`{"specversion":"1.0","id":"1","source":"/s","type":"t","data":1,"data_base64":"AA=="}`,
		`{"specversion":"0.3","id":"1","source":"/s","type":"t"}`,
		`{"specversion":"1.0","id":"","source":"/s","type":"t"}`,
		`{"specversion":"1.0","id":1,"source":"/s","type":"t"}`,
		`[]`, `null`, `{}`, ``, "\xff",
	} {
		f.Add([]byte(s))
	}
	now := time.Unix(1_767_225_600, 0)
	verifier, err := signature.NewVerifier([]string{testSecret}, signature.WithClock(func() time.Time { return now }))
	if err != nil {
		f.Fatal(err)
	}
	targets := map[heraldv1.PayloadFormat]*Target{}
	for _, format := range []heraldv1.PayloadFormat{
		heraldv1.PayloadStandardWebhooks, heraldv1.PayloadCloudEventsBinary, heraldv1.PayloadCloudEventsStructured,
	} {
		ep := testEndpoint("shop", "orders", "https://receiver.example.com/hooks")
		ep.Spec.PayloadFormat = format
		target, err := NewTarget(ep, UserAgent("fuzz"))
		if err != nil {
			f.Fatal(err)
		}
		targets[format] = target
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		for format, target := range targets {
			req, err := target.BuildRequest(context.Background(), Delivery{
				Namespace: "shop", Payload: payload, IngestedAt: now,
			}, now)
			if err != nil {
				if !errors.Is(err, errInvalidEvent) {
					t.Fatalf("%s: payload %q refused with %v, not as an invalid event", format, payload, err)
				}
				continue
			}
			for name, values := range req.Header {
				if !validHeaderName(name) {
					t.Fatalf("%s: invalid header name %q", format, name)
				}
				for _, v := range values {
					for i := 0; i < len(v); i++ {
						if c := v[i]; c < ' ' && c != '\t' || c == 0x7f {
							t.Fatalf("%s: header %s carries control byte %#x: %q", format, name, c, v)
						}
					}
				}
			}
			body, err := io.ReadAll(req.Body)
			if err != nil {
				t.Fatal(err)
			}
			if int64(len(body)) != req.ContentLength {
				t.Fatalf("%s: Content-Length %d, body %d bytes", format, req.ContentLength, len(body))
			}
			if format == heraldv1.PayloadCloudEventsStructured && !bytes.Equal(body, payload) {
				t.Fatalf("structured body differs from the stored payload")
			}
			if err := verifier.Verify(req.Header, body); err != nil {
				t.Fatalf("%s: the receiver cannot verify the request: %v", format, err)
			}
		}
	})
}
