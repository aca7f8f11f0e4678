package delivery

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/dispatcher/catalog"
	"github.com/herald-dev/herald/dispatcher/queue"
	"github.com/herald-dev/herald/dispatcher/signature"
)

func mustTarget(t testing.TB, ep *catalog.Endpoint) *Target {
	t.Helper()
	target, err := NewTarget(ep, UserAgent("1.2.3"))
	if err != nil {
		t.Fatalf("NewTarget: %v", err)
	}
	return target
}

func mustBuild(t testing.TB, target *Target, d Delivery, now time.Time) (*http.Request, []byte) {
	t.Helper()
	req, err := target.BuildRequest(context.Background(), d, now)
	if err != nil {
		t.Fatalf("BuildRequest: %v", err)
	}
	body, err := io.ReadAll(req.Body)
	if err != nil {
		t.Fatal(err)
	}
	if req.ContentLength != int64(len(body)) {
		t.Errorf("ContentLength = %d, body has %d bytes", req.ContentLength, len(body))
	}
	// Hand the body back for readers such as the CloudEvents SDK.
	req.Body = io.NopCloser(bytes.NewReader(body))
	return req, body
}

func verifyOfficial(t testing.TB, secret string, req *http.Request, body []byte) {
	t.Helper()
	wh, err := standardwebhooks.NewWebhook(secret)
	if err != nil {
		t.Fatal(err)
	}
	if err := wh.Verify(body, req.Header); err != nil {
		t.Errorf("official library does not verify the signature with key %s…: %v", secret[:10], err)
	}
}

func withFormat(ep *catalog.Endpoint, f heraldv1.PayloadFormat) *catalog.Endpoint {
	ep.Spec.PayloadFormat = f
	return ep
}

func TestBuildRequestStandardWebhooks(t *testing.T) {
	ep := testEndpoint("shop", "orders", "https://receiver.example/hook?x=1")
	target := mustTarget(t, ep)
	now := time.Now()
	req, body := mustBuild(t, target, Delivery{Namespace: "shop", Payload: testEvent("o-1"), WebhookID: "msg_abc"}, now)

	if req.Method != http.MethodPost || req.URL.String() != "https://receiver.example/hook?x=1" {
		t.Errorf("request = %s %s", req.Method, req.URL)
	}
	want := `{"type":"order.created","timestamp":"2026-01-02T03:04:05.123Z","data":{"order":"o-1"}}`
	if string(body) != want {
		t.Errorf("body = %s\nwant   %s", body, want)
	}
	for name, want := range map[string]string{
		"Content-Type":      "application/json",
		"User-Agent":        "Herald/1.2.3",
		"webhook-id":        "msg_abc",
		"webhook-timestamp": strconv.FormatInt(now.Unix(), 10),
	} {
		if got := req.Header.Get(name); got != want {
			t.Errorf("header %s = %q, want %q", name, got, want)
		}
	}
	verifyOfficial(t, testSecret, req, body)
}

func TestBuildRequestStandardWebhooksBodyVariants(t *testing.T) {
	ingested := time.Date(2026, 5, 6, 7, 8, 9, 0, time.UTC)
	target := mustTarget(t, testEndpoint("shop", "orders", "https://receiver.example/"))
	for _, tc := range []struct {
		name, event, want string
	}{
		{
			"no time: the ingest time, stable across attempts",
			`{"specversion":"1.0","id":"1","source":"s","type":"t","data":[1,2]}`,
			`{"type":"t","timestamp":"2026-05-06T07:08:09Z","data":[1,2]}`,
		},
		{
			"time with offset is written in UTC",
			`{"specversion":"1.0","id":"1","source":"s","type":"t","time":"2026-01-02T05:04:05+02:00","data":{}}`,
			`{"type":"t","timestamp":"2026-01-02T03:04:05Z","data":{}}`,
		},
		{
			"text data stays a string",
			`{"specversion":"1.0","id":"1","source":"s","type":"t","time":"2026-01-02T03:04:05Z","datacontenttype":"text/plain","data":"hi \"there\""}`,
			`{"type":"t","timestamp":"2026-01-02T03:04:05Z","data":"hi \"there\""}`,
		},
		{
			"binary data is base64",
			`{"specversion":"1.0","id":"1","source":"s","type":"t","time":"2026-01-02T03:04:05Z","data_base64":"AAEC"}`,
			`{"type":"t","timestamp":"2026-01-02T03:04:05Z","data":"AAEC"}`,
		},
		{
			"no data",
			`{"specversion":"1.0","id":"1","source":"s","type":"t","time":"2026-01-02T03:04:05Z"}`,
			`{"type":"t","timestamp":"2026-01-02T03:04:05Z","data":null}`,
		},
		{
			"+json data with an object",
			`{"specversion":"1.0","id":"1","source":"s","type":"a<b>","time":"2026-01-02T03:04:05Z","datacontenttype":"application/vnd.acme+json","data":{"k":"v"}}`,
			`{"type":"a\u003cb\u003e","timestamp":"2026-01-02T03:04:05Z","data":{"k":"v"}}`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, body := mustBuild(t, target, Delivery{Payload: []byte(tc.event), WebhookID: "msg_1", IngestedAt: ingested}, time.Now())
			if string(body) != tc.want {
				t.Errorf("body = %s\nwant   %s", body, tc.want)
			}
			if !json.Valid(body) {
				t.Errorf("body is not valid JSON")
			}
		})
	}
}

func TestBuildRequestCloudEventsBinary(t *testing.T) {
	target := mustTarget(t, withFormat(testEndpoint("shop", "orders", "https://receiver.example/"), heraldv1.PayloadCloudEventsBinary))
	payload := []byte(`{"specversion":"1.0","id":"o-1","source":"/orders","type":"order.created","subject":"o 1 \"%\" é",` +
		`"time":"2026-01-02T03:04:05.123Z","dataschema":"https://schemas.example/order","datacontenttype":"application/json",` +
		`"tenant":"acme","priority":3,"urgent":true,"data":{"order":"o-1"}}`)
	now := time.Now()
	req, body := mustBuild(t, target, Delivery{Payload: payload, WebhookID: "msg_abc"}, now)

	if string(body) != `{"order":"o-1"}` {
		t.Errorf("body = %s", body)
	}
	for name, want := range map[string]string{
		"Content-Type":   "application/json",
		"ce-specversion": "1.0",
		"ce-id":          "o-1",
		"ce-source":      "/orders",
		"ce-type":        "order.created",
		"ce-time":        "2026-01-02T03:04:05.123Z",
		"ce-dataschema":  "https://schemas.example/order",
		"ce-tenant":      "acme",
		"ce-priority":    "3",
		"ce-urgent":      "true",
		// Percent-encoded as the CloudEvents HTTP binding requires.
		"ce-subject":        "o%201%20%22%25%22%20%C3%A9",
		"webhook-id":        "msg_abc",
		"webhook-timestamp": strconv.FormatInt(now.Unix(), 10),
	} {
		if got := req.Header.Get(name); got != want {
			t.Errorf("header %s = %q, want %q", name, got, want)
		}
	}
	for _, absent := range []string{"ce-data", "ce-datacontenttype", "ce-data_base64"} {
		if _, ok := req.Header[http.CanonicalHeaderKey(absent)]; ok {
			t.Errorf("header %s must not be set", absent)
		}
	}
	verifyOfficial(t, testSecret, req, body)
}

// TestCloudEventsFormatsReadBySDK reads both CloudEvents formats with the
// CloudEvents Go SDK's HTTP binding, as a receiver written with it would.
func TestCloudEventsFormatsReadBySDK(t *testing.T) {
	payload := []byte(`{"specversion":"1.0","id":"o-1","source":"/orders","type":"order.created","subject":"o-1",` +
		`"time":"2026-01-02T03:04:05.123Z","datacontenttype":"application/json","tenant":"acme","data":{"order":"o-1"}}`)
	for _, format := range []heraldv1.PayloadFormat{heraldv1.PayloadCloudEventsBinary, heraldv1.PayloadCloudEventsStructured} {
		t.Run(string(format), func(t *testing.T) {
			target := mustTarget(t, withFormat(testEndpoint("shop", "orders", "https://receiver.example/"), format))
			req, body := mustBuild(t, target, Delivery{Payload: payload, WebhookID: "msg_abc"}, time.Now())
			ev, err := cehttp.NewEventFromHTTPRequest(req)
			if err != nil {
				t.Fatalf("SDK cannot read the request: %v", err)
			}
			if ev.ID() != "o-1" || ev.Source() != "/orders" || ev.Type() != "order.created" || ev.Subject() != "o-1" {
				t.Errorf("SDK read attributes id=%q source=%q type=%q subject=%q", ev.ID(), ev.Source(), ev.Type(), ev.Subject())
			}
			if want := time.Date(2026, 1, 2, 3, 4, 5, 123e6, time.UTC); !ev.Time().Equal(want) {
				t.Errorf("SDK read time %s, want %s", ev.Time(), want)
			}
			if got := ev.Extensions()["tenant"]; got != "acme" {
				t.Errorf("SDK read extension tenant = %v", got)
			}
			if string(ev.Data()) != `{"order":"o-1"}` {
				t.Errorf("SDK read data %s", ev.Data())
			}
			verifyOfficial(t, testSecret, req, body)
		})
	}
}

func TestBuildRequestCloudEventsStructured(t *testing.T) {
	target := mustTarget(t, withFormat(testEndpoint("shop", "orders", "https://receiver.example/"), heraldv1.PayloadCloudEventsStructured))
	payload := testEvent("o-1")
	req, body := mustBuild(t, target, Delivery{Payload: payload, WebhookID: "msg_abc"}, time.Now())
	if !bytes.Equal(body, payload) {
		t.Errorf("body = %s, want the stored event verbatim", body)
	}
	if got := req.Header.Get("Content-Type"); got != "application/cloudevents+json" {
		t.Errorf("Content-Type = %q", got)
	}
	for k := range req.Header {
		if strings.HasPrefix(strings.ToLower(k), "ce-") {
			t.Errorf("structured mode set %s", k)
		}
	}
	verifyOfficial(t, testSecret, req, body)
}

func TestBuildRequestCloudEventsBinaryData(t *testing.T) {
	target := mustTarget(t, withFormat(testEndpoint("shop", "orders", "https://receiver.example/"), heraldv1.PayloadCloudEventsBinary))
	for _, tc := range []struct {
		name, event, wantBody, wantType string
	}{
		{"text", `{"specversion":"1.0","id":"1","source":"s","type":"t","datacontenttype":"text/plain","data":"héllo"}`, "héllo", "text/plain"},
		{"base64", `{"specversion":"1.0","id":"1","source":"s","type":"t","datacontenttype":"image/png","data_base64":"` + base64.StdEncoding.EncodeToString([]byte{0, 1, 2, 255}) + `"}`, "\x00\x01\x02\xff", "image/png"},
		{"base64 without type", `{"specversion":"1.0","id":"1","source":"s","type":"t","data_base64":"AAE="}`, "\x00\x01", "application/octet-stream"},
		{"json without type", `{"specversion":"1.0","id":"1","source":"s","type":"t","data":"x"}`, `"x"`, "application/json"},
		{"+json object", `{"specversion":"1.0","id":"1","source":"s","type":"t","datacontenttype":"application/vnd.acme+json; charset=utf-8","data":{"a":1}}`, `{"a":1}`, "application/vnd.acme+json; charset=utf-8"},
		{"no data", `{"specversion":"1.0","id":"1","source":"s","type":"t"}`, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, body := mustBuild(t, target, Delivery{Payload: []byte(tc.event), WebhookID: "msg_1"}, time.Now())
			if string(body) != tc.wantBody {
				t.Errorf("body = %q, want %q", body, tc.wantBody)
			}
			if got := req.Header.Get("Content-Type"); got != tc.wantType {
				t.Errorf("Content-Type = %q, want %q", got, tc.wantType)
			}
			verifyOfficial(t, testSecret, req, body)
		})
	}
}

func TestBuildRequestHeaders(t *testing.T) {
	ep := testEndpoint("shop", "orders", "https://receiver.example/")
	literal, sneaky := "literal-value", "overridden"
	ep.Spec.Headers = []heraldv1.HeaderSpec{
		{Name: "X-Team", Value: &literal},
		{Name: "Authorization", ValueFrom: &heraldv1.SecretKeyReference{Name: "token"}},
		// Refused by the API; the data plane must not let them through either.
		{Name: "webhook-id", Value: &sneaky},
		{Name: "Webhook-Signature", Value: &sneaky},
		{Name: "User-Agent", Value: &sneaky},
		{Name: "Content-Type", Value: &sneaky},
		{Name: "ce-id", Value: &sneaky},
	}
	ep.SecretHeaders = map[string]string{"Authorization": "Bearer s3cret", "webhook-timestamp": "1"}
	target := mustTarget(t, withFormat(ep, heraldv1.PayloadCloudEventsBinary))
	now := time.Now()
	req, body := mustBuild(t, target, Delivery{Payload: testEvent("o-1"), WebhookID: "msg_real"}, now)
	for name, want := range map[string]string{
		"X-Team":            "literal-value",
		"Authorization":     "Bearer s3cret",
		"webhook-id":        "msg_real",
		"webhook-timestamp": strconv.FormatInt(now.Unix(), 10),
		"User-Agent":        "Herald/1.2.3",
		"Content-Type":      "application/json",
		"ce-id":             "o-1",
	} {
		if got := req.Header.Values(name); len(got) != 1 || got[0] != want {
			t.Errorf("header %s = %q, want exactly %q", name, got, want)
		}
	}
	if strings.Contains(req.Header.Get("webhook-signature"), sneaky) {
		t.Error("webhook-signature was overridden")
	}
	verifyOfficial(t, testSecret, req, body)

	bad := "line\r\nInjected: yes"
	ep.Spec.Headers = []heraldv1.HeaderSpec{{Name: "X-Bad", Value: &bad}}
	_, err := NewTarget(ep, "Herald/test")
	if err == nil {
		t.Fatal("NewTarget accepted a header value with CR LF")
	}
	if strings.Contains(err.Error(), "Injected") || strings.Contains(err.Error(), "s3cret") {
		t.Errorf("error reveals a header value: %v", err)
	}
}

func TestNewTargetRejectsBadURLs(t *testing.T) {
	for _, tc := range []struct {
		url      string
		insecure bool
	}{
		{"http://receiver.example/", false},
		{"ftp://receiver.example/", true},
		{"https://user:pass@receiver.example/", false},
		{"https:///nohost", false},
		{"://", false},
	} {
		ep := testEndpoint("shop", "orders", tc.url)
		ep.Spec.AllowInsecureHTTP = tc.insecure
		if _, err := NewTarget(ep, "Herald/test"); err == nil {
			t.Errorf("NewTarget(%q, insecure=%v) succeeded", tc.url, tc.insecure)
		} else if strings.Contains(err.Error(), "pass") {
			t.Errorf("error reveals URL credentials: %v", err)
		}
	}
}

// TestRotationSignsWithEveryValidKey: during a rotation overlap the request
// carries one signature per valid key, and receivers holding either key
// verify it with the official library; an expired key stops signing.
func TestRotationSignsWithEveryValidKey(t *testing.T) {
	now := time.Now()
	expires := now.Add(time.Hour)
	ep := testEndpoint("shop", "orders", "https://receiver.example/")
	ep.Keys = []heraldv1.SigningKey{
		{Secret: otherSecret, Since: now},
		{Secret: testSecret, Since: now.Add(-48 * time.Hour), NotAfter: &expires},
	}
	target := mustTarget(t, ep)

	req, body := mustBuild(t, target, Delivery{Payload: testEvent("o-1"), WebhookID: "msg_rot"}, now)
	if sigs := strings.Fields(req.Header.Get("webhook-signature")); len(sigs) != 2 {
		t.Fatalf("webhook-signature has %d entries, want 2: %q", len(sigs), sigs)
	}
	verifyOfficial(t, testSecret, req, body)
	verifyOfficial(t, otherSecret, req, body)
	wh, _ := standardwebhooks.NewWebhook(thirdSecret)
	if err := wh.Verify(body, req.Header); err == nil {
		t.Error("an unrelated key verified the request")
	}

	// After the overlap the old key no longer signs.
	later := expires.Add(time.Second)
	req, _ = mustBuild(t, target, Delivery{Payload: testEvent("o-1"), WebhookID: "msg_rot"}, later)
	if sigs := strings.Fields(req.Header.Get("webhook-signature")); len(sigs) != 1 {
		t.Fatalf("after expiry webhook-signature has %d entries, want 1", len(sigs))
	}
	v, err := signature.NewVerifier([]string{otherSecret}, signature.WithClock(func() time.Time { return later }))
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Verify(req.Header, mustReadBody(t, req)); err != nil {
		t.Errorf("current key does not verify after expiry: %v", err)
	}

	ep.Keys = ep.Keys[1:]
	target = mustTarget(t, ep)
	if _, err := target.BuildRequest(context.Background(), Delivery{Payload: testEvent("o-1")}, later); !errors.Is(err, ErrNoSigningKey) {
		t.Errorf("BuildRequest with only an expired key: %v, want ErrNoSigningKey", err)
	}
}

func mustReadBody(t testing.TB, req *http.Request) []byte {
	t.Helper()
	b, err := io.ReadAll(req.Body)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestBuildRequestDerivesMissingWebhookID(t *testing.T) {
	target := mustTarget(t, testEndpoint("shop", "orders", "https://receiver.example/"))
	req, _ := mustBuild(t, target, Delivery{Namespace: "shop", Payload: testEvent("o-9")}, time.Now())
	if got, want := req.Header.Get("webhook-id"), queue.WebhookID("shop", "/orders", "o-9"); got != want {
		t.Errorf("webhook-id = %q, want %q", got, want)
	}
}

func TestBuildRequestRejectsInvalidPayloads(t *testing.T) {
	target := mustTarget(t, testEndpoint("shop", "orders", "https://receiver.example/"))
	for _, payload := range []string{
		``, `null`, `[]`, `{"id":"1"}`,
		`{"specversion":"1.0","id":"1","source":"s"}`,
		`{"specversion":"0.3","id":"1","source":"s","type":"t"}`,
		`{"specversion":"1.0","id":1,"source":"s","type":"t"}`,
		`{"specversion":"1.0","id":"1","source":"s","type":"t","data_base64":"!!"}`,
		`{"specversion":"1.0","id":"1","source":"s","type":"t","data":1,"data_base64":"AA=="}`,
	} {
		if _, err := target.BuildRequest(context.Background(), Delivery{Payload: []byte(payload)}, time.Now()); !errors.Is(err, errInvalidEvent) {
			t.Errorf("BuildRequest(%s) = %v, want errInvalidEvent", payload, err)
		}
	}
}

func BenchmarkBuildRequest(b *testing.B) {
	for _, format := range []heraldv1.PayloadFormat{heraldv1.PayloadStandardWebhooks, heraldv1.PayloadCloudEventsBinary, heraldv1.PayloadCloudEventsStructured} {
		b.Run(string(format), func(b *testing.B) {
			ep := withFormat(testEndpoint("shop", "orders", "https://receiver.example/hook"), format)
			token := "x"
			ep.Spec.Headers = []heraldv1.HeaderSpec{{Name: "X-Team", Value: &token}}
			target := mustTarget(b, ep)
			d := Delivery{Namespace: "shop", Payload: testEvent("o-1"), WebhookID: "msg_bench"}
			ctx := context.Background()
			now := time.Now()
			b.ReportAllocs()
			b.SetBytes(int64(len(d.Payload)))
			for b.Loop() {
				if _, err := target.BuildRequest(ctx, d, now); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestPlusJSONDataInEveryFormat delivers an event with a "+json"
// datacontenttype and an object as data, in the stored form ingest writes
// for it, in each payload format: the receiver gets the data as JSON (the
// object itself, never a string holding it or base64), and the CloudEvents
// formats keep the content type.
func TestPlusJSONDataInEveryFormat(t *testing.T) {
	for _, contentType := range []string{"application/vnd.foo+json", "Application/Vnd.Foo+JSON; charset=utf-8"} {
		ctJSON, _ := json.Marshal(contentType)
		payload := []byte(`{"specversion":"1.0","id":"1","source":"/s","type":"t","time":"2026-01-02T03:04:05Z",` +
			`"datacontenttype":` + string(ctJSON) + `,"data":{"x":1,"tags":["a"]},"tenant":"acme"}`)
		const wantData = `{"x":1,"tags":["a"]}`
		for _, format := range []heraldv1.PayloadFormat{heraldv1.PayloadStandardWebhooks, heraldv1.PayloadCloudEventsBinary, heraldv1.PayloadCloudEventsStructured} {
			t.Run(contentType+"/"+string(format), func(t *testing.T) {
				target := mustTarget(t, withFormat(testEndpoint("shop", "orders", "https://receiver.example/"), format))
				req, body := mustBuild(t, target, Delivery{Payload: payload, WebhookID: "msg_1"}, time.Now())
				var gotData json.RawMessage
				var gotType string
				switch format {
				case heraldv1.PayloadStandardWebhooks:
					var b struct {
						Data json.RawMessage `json:"data"`
					}
					if err := json.Unmarshal(body, &b); err != nil {
						t.Fatalf("body %s: %v", body, err)
					}
					gotData, gotType = b.Data, req.Header.Get("Content-Type")
					if gotType != "application/json" {
						t.Errorf("Content-Type = %q, want application/json", gotType)
					}
				case heraldv1.PayloadCloudEventsBinary:
					gotData, gotType = body, req.Header.Get("Content-Type")
					if gotType != contentType {
						t.Errorf("Content-Type = %q, want %q", gotType, contentType)
					}
				case heraldv1.PayloadCloudEventsStructured:
					var b struct {
						DataContentType string          `json:"datacontenttype"`
						Data            json.RawMessage `json:"data"`
					}
					if err := json.Unmarshal(body, &b); err != nil {
						t.Fatalf("body %s: %v", body, err)
					}
					gotData = b.Data
					if b.DataContentType != contentType {
						t.Errorf("datacontenttype = %q, want %q", b.DataContentType, contentType)
					}
				}
				if string(gotData) != wantData {
					t.Errorf("delivered data %s, want the JSON object %s (body %s)", gotData, wantData, body)
				}
				verifyOfficial(t, testSecret, req, body)
			})
		}
	}
}
