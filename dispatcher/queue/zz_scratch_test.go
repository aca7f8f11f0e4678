package queue

import (
	"testing"
	"time"
)

func TestScratchRepeatedAckIsConfirmed(t *testing.T) {
	q := openEmbedded(t, t.TempDir())
	ctx := testContext(t)
	c, err := q.DeliveryConsumer(ctx, "ns", "ep", ConsumerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	mustPublishDelivery(t, ctx, q, "ns", "ep", "a")
	m := fetchN(t, ctx, c, 1, 5*time.Second)[0]
	if err := m.AckNoWait(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err = m.Ack(ctx)
	t.Logf("repeated confirmed ack: %v after %s", err, time.Since(start))
}
