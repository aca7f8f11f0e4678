package queue

import (
	"crypto/sha256"
	"encoding/base32"
	"strings"
)

// Headers every stage agrees on. The payload of an events or deliveries
// message is the CloudEvent in structured JSON form
// (application/cloudevents+json), exactly as stored at ingest.
const (
	// HeaderWebhookID carries the Standard Webhooks webhook-id of the event:
	// set once at ingest and copied to every delivery, so it is stable
	// across retries, redeliveries, dead-letter replays and restarts.
	HeaderWebhookID = "Herald-Webhook-Id"
	// HeaderIngestedAt is the RFC 3339 (nanoseconds) time the event was
	// acknowledged at ingest; a delivery's maxAge counts from it unless
	// the delivery was queued again (HeaderQueuedAt).
	HeaderIngestedAt = "Herald-Ingested-At"
	// HeaderQueuedAt is the RFC 3339 (nanoseconds) time a delivery was
	// queued again by a Redelivery or a dead-letter replay: its maxAge
	// counts from then, so a requeued delivery gets a fresh budget.
	HeaderQueuedAt = "Herald-Queued-At"
	// HeaderSubscriptions lists, comma-separated, the Subscriptions of the
	// endpoint that matched the event (so they can count deliveries).
	HeaderSubscriptions = "Herald-Subscriptions"
	// HeaderEventKey is EventDedupID of the event, carried to deliveries as
	// the input of DeliveryDedupID.
	HeaderEventKey = "Herald-Event-Key"
)

var webhookIDEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// WebhookID derives the webhook-id of an event from its namespace, source
// and id: "msg_" and 26 base32 characters, so it is the same however often
// the event is published, and it only holds characters that keep the
// signed content "id.timestamp.body" unambiguous.
func WebhookID(namespace, source, id string) string {
	h := sha256.New()
	for _, f := range []string{namespace, source, id} {
		h.Write([]byte(f))
		h.Write([]byte{0})
	}
	return "msg_" + strings.ToLower(webhookIDEncoding.EncodeToString(h.Sum(nil)[:16]))
}
