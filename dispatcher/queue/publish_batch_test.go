package queue

import (
	"bytes"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// deliveryBatch is events × endpoints deliveries in event order: the
// deliveries of event 0 to every endpoint, then those of event 1, …
func deliveryBatch(namespace string, endpoints []string, events int) []DeliveryPublish {
	var batch []DeliveryPublish
	for i := range events {
		for _, ep := range endpoints {
			data := eventData(i)
			batch = append(batch, DeliveryPublish{
				Namespace: namespace,
				Endpoint:  ep,
				DedupID:   DeliveryDedupID(data, namespace, ep),
				Payload:   []byte(data),
				Header:    Header{"Herald-Test": {ep}},
			})
		}
	}
	return batch
}

// mustStoreInOrder asserts that every entry was stored as a new message and
// that the stream sequences follow the order of the batch.
func mustStoreInOrder(t *testing.T, results []PublishResult) {
	t.Helper()
	var last uint64
	for i, r := range results {
		if r.Err != nil || r.Duplicate {
			t.Fatalf("entry %d: duplicate %v, err %v; want a new message", i, r.Duplicate, r.Err)
		}
		if r.Sequence <= last {
			t.Fatalf("entry %d stored at sequence %d after sequence %d: not in batch order", i, r.Sequence, last)
		}
		last = r.Sequence
	}
}

// mustConsumeInOrder reads an endpoint's deliveries and checks they are the
// events 0..events-1 in order.
func mustConsumeInOrder(t *testing.T, q *Queue, namespace, endpoint string, events int) {
	t.Helper()
	ctx := testContext(t)
	c, err := q.DeliveryConsumer(ctx, namespace, endpoint, ConsumerOptions{FetchWait: 200 * time.Millisecond})
	if err != nil {
		t.Fatalf("DeliveryConsumer: %v", err)
	}
	msgs := fetchN(t, ctx, c, events, 10*time.Second)
	want := make([]string, events)
	for i := range events {
		want[i] = eventData(i)
	}
	if got := payloads(msgs); !slices.Equal(got, want) {
		t.Fatalf("%s/%s deliveries = %q, want events 0..%d in order", namespace, endpoint, got, events-1)
	}
	if got := msgs[0].Header.Get("Herald-Test"); got != endpoint {
		t.Errorf("%s/%s: header Herald-Test = %q, want %q", namespace, endpoint, got, endpoint)
	}
	if msgs[0].DedupID != DeliveryDedupID(eventData(0), namespace, endpoint) {
		t.Errorf("%s/%s: dedup id %q, want DeliveryDedupID", namespace, endpoint, msgs[0].DedupID)
	}
	ackAll(t, ctx, msgs)
}

func TestPublishDeliveriesStoresInBatchOrder(t *testing.T) {
	q := openEmbedded(t, t.TempDir())
	ctx := testContext(t)
	endpoints := []string{"billing", "audit", "crm"}
	batch := deliveryBatch("shop", endpoints, 200)

	mustStoreInOrder(t, q.PublishDeliveries(ctx, batch))
	for _, ep := range endpoints {
		mustConsumeInOrder(t, q, "shop", ep, 200)
	}
	if got := batch[0].Header; len(got) != 1 {
		t.Errorf("PublishDeliveries modified the caller's header: %v", got)
	}
}

// TestPublishDeliveriesWaitsForFreeSlots: a batch larger than the publishes
// the JetStream context allows in flight waits for acknowledgements instead
// of failing, and keeps its order.
func TestPublishDeliveriesWaitsForFreeSlots(t *testing.T) {
	q := openEmbedded(t, t.TempDir())
	ctx := testContext(t)
	js, err := jetstream.New(q.nc, jetstream.WithPublishAsyncMaxPending(8), jetstream.WithPublishAsyncTimeout(q.cfg.PublishTimeout))
	if err != nil {
		t.Fatal(err)
	}
	q.js = js

	mustStoreInOrder(t, q.PublishDeliveries(ctx, deliveryBatch("shop", []string{"billing", "audit"}, 100)))
	mustConsumeInOrder(t, q, "shop", "billing", 100)
	mustConsumeInOrder(t, q, "shop", "audit", 100)
}

func TestPublishDeliveriesReportsDuplicates(t *testing.T) {
	q := openEmbedded(t, t.TempDir())
	ctx := testContext(t)
	batch := deliveryBatch("shop", []string{"billing", "audit"}, 5)
	first := q.PublishDeliveries(ctx, batch)
	mustStoreInOrder(t, first)

	// A fan-out re-run: the same ids, plus one repeated within the batch.
	again := append(slices.Clone(batch), batch[0])
	second := q.PublishDeliveries(ctx, again)
	for i, r := range second {
		want := first[i%len(batch)].Sequence
		if r.Err != nil || !r.Duplicate || r.Sequence != want {
			t.Errorf("entry %d of the re-run = seq %d duplicate %v err %v, want seq %d duplicate true", i, r.Sequence, r.Duplicate, r.Err, want)
		}
	}
	mustPending(t, ctx, q, "shop", "billing", 5)
	mustPending(t, ctx, q, "shop", "audit", 5)

	// Repeated within a fresh batch: stored once.
	fresh := deliveryBatch("shop", []string{"crm"}, 1)
	results := q.PublishDeliveries(ctx, []DeliveryPublish{fresh[0], fresh[0]})
	if results[0].Err != nil || results[0].Duplicate || results[1].Err != nil || !results[1].Duplicate || results[1].Sequence != results[0].Sequence {
		t.Errorf("one id twice in a batch = %+v, want a new message and its duplicate", results)
	}
	mustPending(t, ctx, q, "shop", "crm", 1)
}

func TestPublishDeliveriesInvalidEntryFailsAlone(t *testing.T) {
	q := openEmbedded(t, t.TempDir())
	ctx := testContext(t)
	valid := deliveryBatch("shop", []string{"billing"}, 5)
	withEndpoint := func(d DeliveryPublish, ep string) DeliveryPublish { d.Endpoint = ep; return d }
	withDedupID := func(d DeliveryPublish, id string) DeliveryPublish { d.DedupID = id; return d }
	withHeader := func(d DeliveryPublish, h Header) DeliveryPublish { d.Header = h; return d }
	withPayload := func(d DeliveryPublish, p []byte) DeliveryPublish { d.Payload = p; return d }
	big := bytes.Repeat([]byte("x"), 2<<20) // above the server's 1 MiB max payload
	batch := []DeliveryPublish{
		valid[0],
		withEndpoint(valid[1], ""),
		valid[1],
		withDedupID(valid[2], ""),
		valid[2],
		withHeader(valid[3], Header{"Nats-Msg-Id": {"forged"}}),
		valid[3],
		withPayload(withDedupID(valid[4], "big"), big),
		valid[4],
	}
	results := q.PublishDeliveries(ctx, batch)
	for i, r := range results {
		invalid := i%2 == 1
		switch {
		case invalid && r.Err == nil:
			t.Errorf("entry %d (invalid) succeeded, want an error", i)
		case !invalid && (r.Err != nil || r.Duplicate):
			t.Errorf("entry %d (valid) = duplicate %v err %v, want stored", i, r.Duplicate, r.Err)
		}
	}
	if err := results[7].Err; !errors.Is(err, ErrMessageTooLarge) {
		t.Errorf("2 MiB entry error = %v, want ErrMessageTooLarge", err)
	}
	mustConsumeInOrder(t, q, "shop", "billing", 5)
}

func TestPublishDeliveriesOnClosedQueue(t *testing.T) {
	for name, usedBefore := range map[string]bool{"fresh": false, "after asynchronous publishes": true} {
		t.Run(name, func(t *testing.T) {
			q := openEmbedded(t, t.TempDir())
			ctx := testContext(t)
			if usedBefore {
				mustStoreInOrder(t, q.PublishDeliveries(ctx, deliveryBatch("shop", []string{"billing"}, 2)))
			}
			if err := q.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			batch := deliveryBatch("shop", []string{"audit"}, 3)
			for i, r := range q.PublishDeliveries(ctx, batch) {
				if !errors.Is(r.Err, ErrClosed) {
					t.Errorf("entry %d on a closed queue: err %v, want ErrClosed", i, r.Err)
				}
			}
		})
	}
}

func TestPublishDeliveriesEmptyBatch(t *testing.T) {
	q := openEmbedded(t, t.TempDir())
	if got := q.PublishDeliveries(testContext(t), nil); len(got) != 0 {
		t.Fatalf("PublishDeliveries(nil) = %v, want no results", got)
	}
}

// TestPublishEventsStoresInOrderOnce: a batch of events is stored in batch
// order, read back in that order by the event consumer, and a re-sent
// batch is answered as duplicates of the first sequences.
func TestPublishEventsStoresInOrderOnce(t *testing.T) {
	q := openEmbedded(t, t.TempDir())
	ctx := testContext(t)
	batch := make([]EventPublish, 20)
	for i := range batch {
		data := eventData(i)
		batch[i] = EventPublish{DedupID: EventDedupID("shop", "/orders", data), Payload: []byte(data), Header: Header{"Herald-Test": {"x"}}}
	}
	first := q.PublishEvents(ctx, "shop", batch)
	mustStoreInOrder(t, first)
	for i, r := range q.PublishEvents(ctx, "shop", batch) {
		if r.Err != nil || !r.Duplicate || r.Sequence != first[i].Sequence {
			t.Errorf("re-sent event %d = %+v, want a duplicate of sequence %d", i, r, first[i].Sequence)
		}
	}
	c, err := q.EventConsumer(ctx, "router", ConsumerOptions{FetchWait: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	msgs := fetchN(t, ctx, c, len(batch), 10*time.Second)
	for i, m := range msgs {
		if string(m.Data) != eventData(i) || m.Namespace != "shop" {
			t.Fatalf("event %d read back as %s in namespace %q", i, m.Data, m.Namespace)
		}
	}

	// A namespace that cannot be a subject token fails every entry.
	for i, r := range q.PublishEvents(ctx, "", batch[:2]) {
		if r.Err == nil {
			t.Errorf("entry %d for an empty namespace was stored", i)
		}
	}
}
