package queue

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// TestKeeperStopsBlockChurnOnAnEmptyingWorkQueue publishes and consumes
// deliveries one at a time, the way a modest rate empties a work queue
// after every message, and counts the message block files the file store
// created meanwhile: without the keeper each emptied block is replaced by a
// new file (the block index grows by one per message); with it the block
// being written never empties.
func TestKeeperStopsBlockChurnOnAnEmptyingWorkQueue(t *testing.T) {
	dir := t.TempDir()
	q := openEmbedded(t, dir)
	ctx := testContext(t)
	c, err := q.DeliveryConsumer(ctx, "ns", "ep", ConsumerOptions{})
	if err != nil {
		t.Fatalf("DeliveryConsumer: %v", err)
	}
	cycle := func(id string) {
		mustPublishDelivery(t, ctx, q, "ns", "ep", id)
		msgs := fetchN(t, ctx, c, 1, 10*time.Second)
		if msgs[0].Endpoint != "ep" || string(msgs[0].Data) != id {
			t.Fatalf("consumer delivered %s (data %q), want the delivery %q", msgs[0].Subject, msgs[0].Data, id)
		}
		if err := msgs[0].Ack(ctx); err != nil {
			t.Fatalf("Ack: %v", err)
		}
	}
	cycle("first")
	// The first keeper is stored on the keeper's next tick.
	waitKeepers(t, ctx, q.deliveries, deliveriesKeeperSubject, 1)

	before := lastBlockIndex(t, dir, DeliveriesStream)
	const n = 200
	for i := range n {
		cycle(fmt.Sprint("d", i))
	}
	after := lastBlockIndex(t, dir, DeliveriesStream)
	if grew := after - before; grew > 2 {
		t.Fatalf("the deliveries stream created %d message blocks for %d messages published and consumed one at a time; the keeper should hold the block being written", grew, n)
	}
	// Keepers are replaced, not accumulated, and never count as queued.
	waitKeepers(t, ctx, q.deliveries, deliveriesKeeperSubject, 1)
	mustPending(t, ctx, q, "ns", "ep", 0)
	queued, err := q.QueuedEndpoints(ctx)
	if err != nil || len(queued) != 0 {
		t.Fatalf("QueuedEndpoints = %v, %v; want none: the keeper is not a delivery", queued, err)
	}
}

// TestKeeperLeftoversArePurgedAfterRestart reopens a store whose streams
// hold keepers of the previous process: the new process's first keeper
// replaces them.
func TestKeeperLeftoversArePurgedAfterRestart(t *testing.T) {
	dir := t.TempDir()
	q := openEmbedded(t, dir)
	ctx := testContext(t)
	publishEvent(t, ctx, q, "e1")
	waitKeepers(t, ctx, q.events, eventsKeeperSubject, 1)
	if err := q.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	q2 := openEmbedded(t, dir)
	publishEvent(t, ctx, q2, "e2")
	// The old keeper and the new one, then only the new one.
	waitKeepers(t, ctx, q2.events, eventsKeeperSubject, 1)
	c, err := q2.EventConsumer(ctx, "router", ConsumerOptions{})
	if err != nil {
		t.Fatalf("EventConsumer: %v", err)
	}
	msgs := fetchN(t, ctx, c, 2, 10*time.Second)
	for _, m := range msgs {
		if m.Namespace != "ns" || m.Endpoint != "" {
			t.Fatalf("the event consumer delivered %s: keepers must not reach consumers", m.Subject)
		}
	}
	expectNoMessage(t, ctx, c, 300*time.Millisecond)
}

func publishEvent(t *testing.T, ctx context.Context, q *Queue, data string) {
	t.Helper()
	if _, _, err := q.PublishEvent(ctx, "ns", EventDedupID("ns", "test", data), []byte(data), nil); err != nil {
		t.Fatalf("PublishEvent(%q): %v", data, err)
	}
}

// waitKeepers waits until subject holds want messages in stream.
func waitKeepers(t *testing.T, ctx context.Context, stream jetstream.Stream, subject string, want uint64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		info, err := stream.Info(ctx, jetstream.WithSubjectFilter(subject))
		if err != nil {
			t.Fatalf("stream info: %v", err)
		}
		got := info.State.Subjects[subject]
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s holds %d keeper messages after 5s, want %d", subject, got, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// lastBlockIndex is the highest message block file index of an embedded
// stream: the file store numbers blocks in creation order.
func lastBlockIndex(t *testing.T, dir, stream string) int {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "jetstream", "*", "streams", stream, "msgs", "*.blk"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no message block files of %s under %s (%v): the file store's layout changed", stream, dir, err)
	}
	last := 0
	for _, f := range files {
		n, err := strconv.Atoi(strings.TrimSuffix(filepath.Base(f), ".blk"))
		if err != nil {
			t.Fatalf("message block file %s: %v", f, err)
		}
		last = max(last, n)
	}
	return last
}

// TestKeeperSleepsWhileIdleAndWakesOnAWrite: an idle dispatcher's keeper
// loop stops ticking, and the next message published wakes it and gets a
// keeper stored behind it.
func TestKeeperSleepsWhileIdleAndWakesOnAWrite(t *testing.T) {
	q := openEmbedded(t, t.TempDir())
	ctx := testContext(t)
	publishEvent(t, ctx, q, "e1")
	waitKeepers(t, ctx, q.events, eventsKeeperSubject, 1)
	first := keeperSequence(t, ctx, q.events, eventsKeeperSubject)
	deadline := time.Now().Add(5 * time.Second)
	for !q.keepers.asleep.Load() {
		if time.Now().After(deadline) {
			t.Fatal("the keeper loop still ticks 5s after the last write")
		}
		time.Sleep(20 * time.Millisecond)
	}
	publishEvent(t, ctx, q, "e2")
	deadline = time.Now().Add(5 * time.Second)
	for keeperSequence(t, ctx, q.events, eventsKeeperSubject) == first {
		if time.Now().After(deadline) {
			t.Fatal("no new keeper within 5s of a write to a sleeping keeper loop")
		}
		time.Sleep(20 * time.Millisecond)
	}
	waitKeepers(t, ctx, q.events, eventsKeeperSubject, 1)
}

// keeperSequence is the stream sequence of the keeper stored on subject.
func keeperSequence(t *testing.T, ctx context.Context, stream jetstream.Stream, subject string) uint64 {
	t.Helper()
	msg, err := stream.GetLastMsgForSubject(ctx, subject)
	if err != nil {
		t.Fatalf("last keeper on %s: %v", subject, err)
	}
	return msg.Sequence
}
