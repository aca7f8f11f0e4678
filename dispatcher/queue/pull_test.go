package queue

import (
	"context"
	"strings"
	"testing"
	"time"
)

// TestFetchReusesOneInbox: a Consumer's fetches are answered on one
// subscription for its lifetime, and Close removes it.
func TestFetchReusesOneInbox(t *testing.T) {
	q := openEmbedded(t, t.TempDir())
	ctx := testContext(t)
	c, err := q.DeliveryConsumer(ctx, "ns", "ep", ConsumerOptions{})
	if err != nil {
		t.Fatalf("DeliveryConsumer: %v", err)
	}
	subs := q.nc.NumSubscriptions()
	for i := range 20 {
		mustPublishDelivery(t, ctx, q, "ns", "ep", "d"+string(rune('a'+i)))
		m := fetchN(t, ctx, c, 1, 10*time.Second)
		ackAll(t, ctx, m)
	}
	if got := q.nc.NumSubscriptions() - subs; got != 1 {
		t.Errorf("subscriptions added by 20 fetches = %d, want 1", got)
	}
	c.Close()
	if got := q.nc.NumSubscriptions(); got != subs {
		t.Errorf("subscriptions after Close = %d, want %d", got, subs)
	}
	if _, err := c.Fetch(ctx, 1); err == nil {
		t.Error("Fetch after Close succeeded, want an error")
	}
}

// TestFetchKeepsTheAnswerToAnAbandonedRequest: a Fetch whose context ends
// leaves its pull request open on the server; the message it brings later
// is the next Fetch's at once, on its first delivery, rather than lost to
// the client and offered again only after its AckWait.
func TestFetchKeepsTheAnswerToAnAbandonedRequest(t *testing.T) {
	q := openEmbedded(t, t.TempDir())
	ctx := testContext(t)
	c, err := q.DeliveryConsumer(ctx, "ns", "ep", ConsumerOptions{FetchWait: 10 * time.Second, AckWait: time.Minute})
	if err != nil {
		t.Fatalf("DeliveryConsumer: %v", err)
	}
	abandonFetch(t, ctx, c)
	mustPublishDelivery(t, ctx, q, "ns", "ep", "late")
	msgs := fetchN(t, ctx, c, 1, 5*time.Second)
	if string(msgs[0].Data) != "late" || msgs[0].NumDelivered != 1 {
		t.Fatalf("got %q delivered %d times, want \"late\" on its first delivery", msgs[0].Data, msgs[0].NumDelivered)
	}
	ackAll(t, ctx, msgs)
}

// TestCloseHandsBackWhatArrived: a message delivered to a Consumer's inbox
// after its last Fetch goes back to the queue when the Consumer closes, and
// the next consumer gets it at once instead of after its AckWait.
func TestCloseHandsBackWhatArrived(t *testing.T) {
	q := openEmbedded(t, t.TempDir())
	ctx := testContext(t)
	opts := ConsumerOptions{FetchWait: 10 * time.Second, AckWait: time.Minute}
	c, err := q.DeliveryConsumer(ctx, "ns", "ep", opts)
	if err != nil {
		t.Fatalf("DeliveryConsumer: %v", err)
	}
	abandonFetch(t, ctx, c) // leaves a request open for 10s
	mustPublishDelivery(t, ctx, q, "ns", "ep", "orphan")
	// Wait until the server has delivered it to the open request.
	deadline := time.Now().Add(5 * time.Second)
	for len(c.pull.inbox) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the open pull request was not answered within 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	c.Close()

	next, err := q.DeliveryConsumer(ctx, "ns", "ep", opts)
	if err != nil {
		t.Fatalf("DeliveryConsumer: %v", err)
	}
	defer next.Close()
	msgs := fetchN(t, ctx, next, 1, 5*time.Second) // AckWait is a minute
	if string(msgs[0].Data) != "orphan" || msgs[0].NumDelivered != 2 {
		t.Fatalf("got %q delivered %d times, want \"orphan\" on its second delivery", msgs[0].Data, msgs[0].NumDelivered)
	}
	ackAll(t, ctx, msgs)
}

// TestFetchReportsADeletedConsumer: a consumer deleted while a Fetch waits
// (another replica released it) is an error, so that the caller creates it
// again rather than waiting on a request nobody answers.
func TestFetchReportsADeletedConsumer(t *testing.T) {
	q := openEmbedded(t, t.TempDir())
	ctx := testContext(t)
	c, err := q.DeliveryConsumer(ctx, "ns", "ep", ConsumerOptions{FetchWait: 10 * time.Second})
	if err != nil {
		t.Fatalf("DeliveryConsumer: %v", err)
	}
	defer c.Close()
	released := make(chan error, 1)
	go func() {
		time.Sleep(300 * time.Millisecond)
		released <- q.ReleaseDeliveryConsumer(ctx, "ns", "ep")
	}()
	start := time.Now()
	msgs, err := c.Fetch(ctx, 1)
	if rerr := <-released; rerr != nil {
		t.Fatalf("ReleaseDeliveryConsumer: %v", rerr)
	}
	if len(msgs) != 0 || err == nil || !strings.Contains(err.Error(), "Consumer Deleted") {
		t.Fatalf("Fetch while the consumer was deleted = %d messages, %v; want an error saying the consumer was deleted", len(msgs), err)
	}
	if waited := time.Since(start); waited >= 9*time.Second {
		t.Errorf("Fetch returned after %s, its whole FetchWait, not when the consumer was deleted", waited)
	}
}

// TestFetchTakesTheBacklogInOneCall: with deliveries waiting, one Fetch
// returns up to its limit, in stream order.
func TestFetchTakesTheBacklogInOneCall(t *testing.T) {
	q := openEmbedded(t, t.TempDir())
	ctx := testContext(t)
	for _, d := range []string{"1", "2", "3", "4", "5"} {
		mustPublishDelivery(t, ctx, q, "ns", "ep", d)
	}
	c, err := q.DeliveryConsumer(ctx, "ns", "ep", ConsumerOptions{})
	if err != nil {
		t.Fatalf("DeliveryConsumer: %v", err)
	}
	defer c.Close()
	msgs, err := c.Fetch(ctx, 4)
	if err != nil {
		t.Fatalf("Fetch: %v", err)
	}
	if got := payloads(msgs); len(got) != 4 || got[0] != "1" || got[3] != "4" {
		t.Fatalf("Fetch(4) with 5 waiting = %v, want [1 2 3 4]", got)
	}
	rest, err := c.Fetch(ctx, 4)
	if err != nil || len(rest) != 1 || string(rest[0].Data) != "5" {
		t.Fatalf("second Fetch = %v, %v; want [5]", payloads(rest), err)
	}
}

// abandonFetch runs a Fetch on an empty queue and cancels it after 200ms,
// leaving its pull request open on the server for the consumer's
// FetchWait.
func abandonFetch(t *testing.T, ctx context.Context, c *Consumer) {
	t.Helper()
	fctx, cancel := context.WithCancel(ctx)
	go func() { time.Sleep(200 * time.Millisecond); cancel() }()
	if msgs, err := c.Fetch(fctx, 1); len(msgs) != 0 || err == nil {
		t.Fatalf("Fetch on an empty queue cancelled after 200ms = %d messages, %v; want none and the context's error", len(msgs), err)
	}
}
