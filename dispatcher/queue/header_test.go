package queue

import (
	"strings"
	"testing"
	"time"
)

// FuzzIsJetStreamHeader: the allocation-free check says what lower-casing
// the name and comparing its prefix says, for any name.
func FuzzIsJetStreamHeader(f *testing.F) {
	for _, k := range []string{"Nats-Msg-Id", "NATS-EXPECTED-STREAM", "nats-", "nats", "Nat", "Herald-Webhook-Id", "Naţs-x", "naſ-x", "", "İnats-"} {
		f.Add(k)
	}
	f.Fuzz(func(t *testing.T, k string) {
		if got, want := isJetStreamHeader(k), strings.HasPrefix(strings.ToLower(k), natsHeaderPrefix); got != want {
			t.Fatalf("isJetStreamHeader(%q) = %v, want %v", k, got, want)
		}
	})
}

func TestPublicHeaderDropsJetStreamsOwn(t *testing.T) {
	h := publicHeader(map[string][]string{"Nats-Msg-Id": {"x"}, "NATS-Expected-Stream": {"s"}, "Herald-Webhook-Id": {"msg_1"}})
	if len(h) != 1 || h.Get("Herald-Webhook-Id") != "msg_1" {
		t.Errorf("publicHeader = %v, want only Herald-Webhook-Id", h)
	}
}

// TestReadMessagesKeepTheirDedupID: a delivery read from its consumer,
// and its dead letter read back, carry the de-duplication id it was
// published with and none of JetStream's headers, which publicHeader
// removes from the header the id is read from.
func TestReadMessagesKeepTheirDedupID(t *testing.T) {
	ctx := testContext(t)
	q := openEmbedded(t, t.TempDir())
	header := Header{HeaderWebhookID: {"msg_1"}}
	if _, _, err := q.PublishDelivery(ctx, "shop", "orders", "dedup-1", []byte(eventData(1)), header); err != nil {
		t.Fatalf("PublishDelivery: %v", err)
	}
	c, err := q.DeliveryConsumer(ctx, "shop", "orders", ConsumerOptions{})
	if err != nil {
		t.Fatalf("DeliveryConsumer: %v", err)
	}
	defer c.Close()
	m := fetchN(t, ctx, c, 1, 10*time.Second)[0]
	if m.DedupID != "dedup-1" {
		t.Errorf("DedupID = %q, want dedup-1", m.DedupID)
	}
	for k := range m.Header {
		if isJetStreamHeader(k) {
			t.Errorf("the delivery read back has JetStream's header %s", k)
		}
	}
	if got := m.Header.Get(HeaderWebhookID); got != "msg_1" {
		t.Errorf("%s = %q, want msg_1", HeaderWebhookID, got)
	}

	if err := q.DeadLetter(ctx, m, "test"); err != nil {
		t.Fatalf("DeadLetter: %v", err)
	}
	var dead []*StoredDeadLetter
	if err := q.DeadLetters(ctx, "shop", "orders", 1<<62, func(dl *StoredDeadLetter) error {
		dead = append(dead, dl)
		return nil
	}); err != nil {
		t.Fatalf("DeadLetters: %v", err)
	}
	if len(dead) != 1 || dead[0].DedupID != "dedup-1" {
		t.Fatalf("dead letters %+v, want one with DedupID dedup-1", dead)
	}
	for k := range dead[0].Header {
		if isJetStreamHeader(k) {
			t.Errorf("the dead letter read back has JetStream's header %s", k)
		}
	}
	if got := dead[0].Header.Get(HeaderWebhookID); got != "msg_1" {
		t.Errorf("dead letter %s = %q, want msg_1", HeaderWebhookID, got)
	}
}
