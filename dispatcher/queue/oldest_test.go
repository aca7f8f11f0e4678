package queue

import (
	"testing"
	"time"
)

// TestOldestPending: the queue age of an endpoint is the storage time of
// its oldest delivery not yet acknowledged; a retry (NAK with delay) keeps
// it, an acknowledgement moves it to the next one, and other endpoints do
// not count.
func TestOldestPending(t *testing.T) {
	q := openEmbedded(t, t.TempDir())
	ctx := testContext(t)

	if _, ok, err := q.OldestPending(ctx, "ns", "ep"); err != nil || ok {
		t.Fatalf("empty queue: ok=%v err=%v, want none", ok, err)
	}
	before := time.Now()
	mustPublishDelivery(t, ctx, q, "ns", "other", "o1")
	mustPublishDelivery(t, ctx, q, "ns", "ep", "e1")
	time.Sleep(20 * time.Millisecond)
	mustPublishDelivery(t, ctx, q, "ns", "ep", "e2")

	first, ok, err := q.OldestPending(ctx, "ns", "ep")
	if err != nil || !ok {
		t.Fatalf("OldestPending: ok=%v err=%v", ok, err)
	}
	if first.Before(before.Add(-time.Second)) || first.After(time.Now()) {
		t.Fatalf("oldest = %v, want the time e1 was stored (after %v)", first, before)
	}

	c, err := q.DeliveryConsumer(ctx, "ns", "ep", ConsumerOptions{MaxAckPending: 1})
	if err != nil {
		t.Fatalf("DeliveryConsumer: %v", err)
	}
	msgs := fetchN(t, ctx, c, 1, 10*time.Second)
	if got, _, _ := q.OldestPending(ctx, "ns", "ep"); !got.Equal(first) {
		t.Errorf("while e1 is in flight: oldest = %v, want %v (unchanged)", got, first)
	}
	ackAll(t, ctx, msgs)
	second, ok, err := q.OldestPending(ctx, "ns", "ep")
	if err != nil || !ok || !second.After(first) {
		t.Fatalf("after e1 was acknowledged: oldest = %v (ok=%v, err=%v), want e2's time, after %v", second, ok, err, first)
	}
	msgs = fetchN(t, ctx, c, 1, 10*time.Second)
	if err := msgs[0].NakWithDelay(time.Hour); err != nil {
		t.Fatalf("NakWithDelay: %v", err)
	}
	if got, _, _ := q.OldestPending(ctx, "ns", "ep"); !got.Equal(second) {
		t.Errorf("after a retry was scheduled: oldest = %v, want %v (unchanged)", got, second)
	}
	if _, _, err := q.OldestPending(ctx, "ns", ""); err == nil {
		t.Error("an invalid endpoint name must be refused")
	}
}
