package queue

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestConsumerFollowsStreamThatLostItsTail: after an unclean stop the
// stream's store can come back with a lower last sequence than its
// consumers have acknowledged (the tail of a work queue that had emptied is
// only in an index that was not written). New messages then reuse sequence
// numbers the consumer believes it has acknowledged; unless the consumer is
// brought back to the stream, they are never delivered: accepted, then
// lost. The test takes the stream's message files away to get there.
func TestConsumerFollowsStreamThatLostItsTail(t *testing.T) {
	dir := t.TempDir()
	q := openEmbedded(t, dir)
	ctx := testContext(t)
	for i := range 20 {
		if _, _, err := q.PublishEvent(ctx, "ns", fmt.Sprintf("before-%d", i), []byte(`{}`), nil); err != nil {
			t.Fatal(err)
		}
	}
	c, err := q.EventConsumer(ctx, "router", ConsumerOptions{FetchWait: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ackAll(t, ctx, fetchN(t, ctx, c, 20, 10*time.Second))
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	msgs := filepath.Join(dir, "jetstream", "$G", "streams", EventsStream, "msgs")
	if err := os.RemoveAll(msgs); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(msgs, 0o750); err != nil {
		t.Fatal(err)
	}

	q = openEmbedded(t, dir)
	for i := range 5 {
		if _, _, err := q.PublishEvent(ctx, "ns", fmt.Sprintf("after-%d", i), []byte(`{}`), nil); err != nil {
			t.Fatal(err)
		}
	}
	c, err = q.EventConsumer(ctx, "router", ConsumerOptions{FetchWait: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	got := fetchN(t, ctx, c, 5, 10*time.Second)
	if len(got) != 5 {
		t.Fatalf("the consumer got %d of the 5 events stored after the stream lost its tail", len(got))
	}
}
