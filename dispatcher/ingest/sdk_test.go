package ingest

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
)

// TestCloudEventsSDKClient publishes with the CloudEvents Go SDK's HTTP
// client exactly as a publisher would (its only option is the bearer
// token), in binary and structured mode.
func TestCloudEventsSDKClient(t *testing.T) {
	af := newAuthFixture(t)

	// Record what arrives on the wire, to be sure each mode is exercised.
	var mu sync.Mutex
	var contentTypes []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		contentTypes = append(contentTypes, r.Header.Get("Content-Type"))
		mu.Unlock()
		af.handler.ServeHTTP(w, r)
	}))
	defer srv.Close()
	target := srv.URL + "/v1/namespaces/" + af.namespace + "/events"

	client, err := cloudevents.NewClientHTTP(cehttp.WithHeader("Authorization", "Bearer "+af.publisherToken))
	if err != nil {
		t.Fatalf("NewClientHTTP: %v", err)
	}
	modes := []struct {
		name            string
		encode          func(context.Context) context.Context
		wantContentType string
	}{
		{"binary", cloudevents.WithEncodingBinary, "application/json"},
		{"structured", cloudevents.WithEncodingStructured, "application/cloudevents+json"},
	}
	for _, mode := range modes {
		t.Run(mode.name, func(t *testing.T) {
			ev := cloudevents.NewEvent()
			ev.SetID("sdk-" + mode.name)
			ev.SetSource("https://sdk.example/orders")
			ev.SetType("order.shipped")
			ev.SetSubject("order/7")
			ev.SetExtension("tenant", "acme")
			if err := ev.SetData(cloudevents.ApplicationJSON, map[string]any{"order": 7}); err != nil {
				t.Fatal(err)
			}
			ctx := cloudevents.ContextWithTarget(mode.encode(testContext(t)), target)

			mu.Lock()
			contentTypes = nil
			mu.Unlock()
			result := client.Send(ctx, ev)
			if !cloudevents.IsACK(result) {
				t.Fatalf("Send: %v", result)
			}
			var httpResult *cehttp.Result
			if !cloudevents.ResultAs(result, &httpResult) || httpResult.StatusCode != http.StatusAccepted {
				t.Fatalf("Send result %v, want HTTP 202", result)
			}
			mu.Lock()
			gotContentTypes := contentTypes
			mu.Unlock()
			if len(gotContentTypes) != 1 || gotContentTypes[0] != mode.wantContentType {
				t.Errorf("wire Content-Type %q, want %q", gotContentTypes, mode.wantContentType)
			}

			msgs := fetchStored(t, af.q, 1)
			checkStoredHeaders(t, msgs[0], af.namespace, "https://sdk.example/orders", "sdk-"+mode.name)
			stored := decodeStoredEvent(t, msgs[0])
			if stored.ID() != ev.ID() || stored.Source() != ev.Source() || stored.Type() != ev.Type() ||
				stored.Subject() != ev.Subject() || stored.Extensions()["tenant"] != "acme" || string(stored.Data()) != `{"order":7}` {
				t.Errorf("stored %s, sent %s", msgs[0].Data, ev)
			}

			// Sending again (a publisher's retry) is acknowledged and stores
			// nothing.
			if result := client.Send(ctx, ev); !cloudevents.IsACK(result) {
				t.Fatalf("second Send: %v", result)
			}
			if n := storedCount(t, af.q); n != 0 {
				t.Errorf("retry stored %d more events", n)
			}
		})
	}

	t.Run("without token", func(t *testing.T) {
		anonymous, err := cloudevents.NewClientHTTP()
		if err != nil {
			t.Fatal(err)
		}
		ev := cloudevents.NewEvent()
		ev.SetID("anonymous")
		ev.SetSource("/anonymous")
		ev.SetType("t")
		result := anonymous.Send(cloudevents.ContextWithTarget(testContext(t), target), ev)
		var httpResult *cehttp.Result
		if cloudevents.IsACK(result) || !cloudevents.ResultAs(result, &httpResult) || httpResult.StatusCode != http.StatusUnauthorized {
			t.Fatalf("anonymous Send: %v, want a NACK with HTTP 401", result)
		}
		if n := storedCount(t, af.q); n != 0 {
			t.Errorf("anonymous Send stored %d events", n)
		}
	})
}
