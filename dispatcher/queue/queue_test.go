package queue

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

func TestOpenTwiceOnSameStoreKeepsStreams(t *testing.T) {
	dir := t.TempDir()
	ctx := testContext(t)

	q := openEmbedded(t, dir)
	if _, _, err := q.PublishEvent(ctx, "team-a", EventDedupID("team-a", "src", "1"), []byte("e1"), nil); err != nil {
		t.Fatalf("PublishEvent: %v", err)
	}
	if err := q.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	q = openEmbedded(t, dir)
	want := map[string]struct {
		subjects  []string
		retention jetstream.RetentionPolicy
		msgs      uint64
	}{
		EventsStream:     {[]string{"herald.events.*", "herald.keep.events"}, jetstream.WorkQueuePolicy, 1},
		DeliveriesStream: {[]string{"herald.deliveries.*.*", "herald.keep.deliveries"}, jetstream.WorkQueuePolicy, 0},
		DeadLetterStream: {[]string{"herald.deadletter.*.*"}, jetstream.LimitsPolicy, 0},
	}
	names := q.js.StreamNames(ctx)
	var got []string
	for name := range names.Name() {
		got = append(got, name)
	}
	if err := names.Err(); err != nil {
		t.Fatalf("StreamNames: %v", err)
	}
	slices.Sort(got)
	if wantNames := []string{DeadLetterStream, DeliveriesStream, EventsStream}; !slices.Equal(got, wantNames) {
		t.Fatalf("streams after second Open = %v, want %v", got, wantNames)
	}
	for name, w := range want {
		s, err := q.js.Stream(ctx, name)
		if err != nil {
			t.Fatalf("Stream(%s): %v", name, err)
		}
		info := s.CachedInfo()
		if !slices.Equal(info.Config.Subjects, w.subjects) || info.Config.Retention != w.retention ||
			info.Config.Duplicates != DefaultDuplicateWindow || info.Config.Replicas != 1 || info.Config.Storage != jetstream.FileStorage {
			t.Errorf("stream %s config = subjects %v retention %v duplicates %s replicas %d storage %v",
				name, info.Config.Subjects, info.Config.Retention, info.Config.Duplicates, info.Config.Replicas, info.Config.Storage)
		}
		if got := storedMessages(t, ctx, s, w.subjects[0]); got != w.msgs {
			t.Errorf("stream %s holds %d messages after reopen, want %d", name, got, w.msgs)
		}
		// Work queues never expire what they hold: JetStream would drop an
		// acknowledged event or a delivery with no trace. The delivery stage
		// dead-letters by the endpoint's retry.maxAge instead.
		if w.retention == jetstream.WorkQueuePolicy && info.Config.MaxAge != 0 {
			t.Errorf("stream %s MaxAge = %s, want none (no silent expiry)", name, info.Config.MaxAge)
		}
	}
}

func TestOpenUpdatesChangedStreamSettings(t *testing.T) {
	dir := t.TempDir()
	ctx := testContext(t)
	q := openEmbedded(t, dir)
	if err := q.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	q = openEmbedded(t, dir, func(c *Config) { c.DeadLetterMaxAge = 48 * time.Hour })
	s, err := q.js.Stream(ctx, DeadLetterStream)
	if err != nil {
		t.Fatalf("Stream: %v", err)
	}
	if got := s.CachedInfo().Config.MaxAge; got != 48*time.Hour {
		t.Fatalf("dead-letter MaxAge after reopen with a new setting = %s, want 48h", got)
	}
}

func TestPublishEventThenConsume(t *testing.T) {
	q := openEmbedded(t, t.TempDir())
	ctx := testContext(t)

	header := Header{"Ce-Type": []string{"order.created"}}
	published := map[string]string{} // data -> namespace
	for i, ns := range []string{"team-a", "team-b", "team-a"} {
		data := eventData(i)
		seq, dup, err := q.PublishEvent(ctx, ns, EventDedupID(ns, "shop", fmt.Sprint(i)), []byte(data), header)
		if err != nil || dup || seq == 0 {
			t.Fatalf("PublishEvent #%d = seq %d, duplicate %v, err %v; want a new sequence", i, seq, dup, err)
		}
		published[data] = ns
	}
	if len(header) != 1 {
		t.Fatalf("PublishEvent modified the caller's header: %v", header)
	}

	c, err := q.EventConsumer(ctx, "router", ConsumerOptions{})
	if err != nil {
		t.Fatalf("EventConsumer: %v", err)
	}
	msgs := fetchN(t, ctx, c, 3, 10*time.Second)
	for _, m := range msgs {
		if ns := published[string(m.Data)]; m.Namespace != ns {
			t.Errorf("event %s: Namespace = %q, want %q", m.Data, m.Namespace, ns)
		}
		if m.Endpoint != "" || m.NumDelivered != 1 || m.Header.Get("Ce-Type") != "order.created" || len(m.DedupID) != 64 {
			t.Errorf("event %s: endpoint %q, delivered %d, header %v, dedup id %q", m.Data, m.Endpoint, m.NumDelivered, m.Header, m.DedupID)
		}
		if _, ok := m.Header["Nats-Msg-Id"]; ok {
			t.Errorf("event %s: JetStream header leaked into Header: %v", m.Data, m.Header)
		}
	}
	ackAll(t, ctx, msgs)
	expectNoMessage(t, ctx, c, 300*time.Millisecond)

	// A work queue deletes what was acknowledged.
	if got := storedMessages(t, ctx, q.events, eventsPrefix+".*"); got != 0 {
		t.Fatalf("events stream holds %d events after all were acknowledged, want 0", got)
	}
}

func TestPublishDuplicateIsStoredOnce(t *testing.T) {
	q := openEmbedded(t, t.TempDir())
	ctx := testContext(t)

	id := EventDedupID("team-a", "https://shop.example/orders", "A-1")
	seq1, dup1, err := q.PublishEvent(ctx, "team-a", id, []byte("first"), nil)
	if err != nil || dup1 {
		t.Fatalf("first PublishEvent: duplicate %v, err %v", dup1, err)
	}
	seq2, dup2, err := q.PublishEvent(ctx, "team-a", id, []byte("second"), nil)
	if err != nil {
		t.Fatalf("second PublishEvent: %v", err)
	}
	if !dup2 || seq2 != seq1 {
		t.Fatalf("second PublishEvent = seq %d duplicate %v, want seq %d duplicate true", seq2, dup2, seq1)
	}
	// Same source and id in another namespace is another event.
	if _, dup, err := q.PublishEvent(ctx, "team-b", EventDedupID("team-b", "https://shop.example/orders", "A-1"), []byte("other"), nil); err != nil || dup {
		t.Fatalf("PublishEvent in another namespace: duplicate %v, err %v", dup, err)
	}

	c, err := q.EventConsumer(ctx, "router", ConsumerOptions{})
	if err != nil {
		t.Fatalf("EventConsumer: %v", err)
	}
	msgs := fetchN(t, ctx, c, 2, 10*time.Second)
	got := payloads(msgs)
	slices.Sort(got)
	if !slices.Equal(got, []string{"first", "other"}) {
		t.Fatalf("stored events = %q, want the first publish and the other namespace's", got)
	}
	expectNoMessage(t, ctx, c, 300*time.Millisecond)

	// Fan-out re-run after a crash publishes the same delivery ids.
	for range 2 {
		if _, _, err := q.PublishDelivery(ctx, "team-a", "ep", DeliveryDedupID(id, "team-a", "ep"), []byte("d"), nil); err != nil {
			t.Fatalf("PublishDelivery: %v", err)
		}
	}
	mustPending(t, ctx, q, "team-a", "ep", 1)
}

func TestPublishRejectsBadInput(t *testing.T) {
	q := openEmbedded(t, t.TempDir())
	ctx := testContext(t)
	for name, publish := range map[string]func() error{
		"empty namespace": func() error { _, _, err := q.PublishEvent(ctx, "", "id", nil, nil); return err },
		"empty endpoint":  func() error { _, _, err := q.PublishDelivery(ctx, "ns", "", "id", nil, nil); return err },
		"empty dedup id":  func() error { _, _, err := q.PublishEvent(ctx, "ns", "", nil, nil); return err },
		"reserved header": func() error {
			_, _, err := q.PublishEvent(ctx, "ns", "id", nil, Header{"nats-expected-stream": {"X"}})
			return err
		},
	} {
		if err := publish(); err == nil {
			t.Errorf("%s: publish succeeded, want an error", name)
		}
	}

	big := bytes.Repeat([]byte("x"), 2<<20) // above the server's 1 MiB max payload
	_, _, err := q.PublishEvent(ctx, "ns", "big", big, nil)
	if !errors.Is(err, ErrMessageTooLarge) {
		t.Fatalf("PublishEvent(2 MiB) error = %v, want ErrMessageTooLarge", err)
	}
}

func TestPublishWhenStoreFullReportsQueueFull(t *testing.T) {
	q := openEmbedded(t, t.TempDir(), func(c *Config) { c.MaxStoreBytes = 256 << 10 })
	ctx := testContext(t)
	payload := bytes.Repeat([]byte("x"), 16<<10)
	for i := range 100 { // 1.6 MiB against a 256 KiB store
		_, _, err := q.PublishEvent(ctx, "ns", fmt.Sprint(i), payload, nil)
		if errors.Is(err, ErrQueueFull) {
			return
		}
		if err != nil {
			t.Fatalf("PublishEvent #%d: %v, want success or ErrQueueFull", i, err)
		}
	}
	t.Fatalf("1.6 MiB of events fit into a 256 KiB store without ErrQueueFull")
}

func TestEndpointNamesWithDotsUseEscapedSubjects(t *testing.T) {
	q := openEmbedded(t, t.TempDir())
	ctx := testContext(t)
	endpoints := []string{"hooks.example.com", "hooks-example-com", "hooks.example-com"}
	for _, ep := range endpoints {
		mustPublishDelivery(t, ctx, q, "team.a", ep, "to "+ep)
	}
	for _, ep := range endpoints {
		c, err := q.DeliveryConsumer(ctx, "team.a", ep, ConsumerOptions{})
		if err != nil {
			t.Fatalf("DeliveryConsumer(%s): %v", ep, err)
		}
		msgs := fetchN(t, ctx, c, 1, 10*time.Second)
		m := msgs[0]
		if m.Namespace != "team.a" || m.Endpoint != ep || string(m.Data) != "to "+ep || m.Subject != DeliverySubject("team.a", ep) {
			t.Errorf("endpoint %s got message ns %q ep %q data %q subject %q", ep, m.Namespace, m.Endpoint, m.Data, m.Subject)
		}
		if strings.Count(m.Subject, ".") != 3 {
			t.Errorf("subject %q has more than four tokens", m.Subject)
		}
		ackAll(t, ctx, msgs)
		expectNoMessage(t, ctx, c, 200*time.Millisecond)
	}
}

func TestDataSurvivesCloseAndReopen(t *testing.T) {
	for _, sync := range []SyncPolicy{SyncPeriodic, SyncAlways} {
		t.Run(string(sync), func(t *testing.T) {
			dir := t.TempDir()
			ctx := testContext(t)
			withSync := func(c *Config) { c.Sync = sync }

			q := openEmbedded(t, dir, withSync)
			for i := range 5 {
				mustPublishDelivery(t, ctx, q, "ns", "ep", fmt.Sprint(i))
			}
			c, err := q.DeliveryConsumer(ctx, "ns", "ep", ConsumerOptions{})
			if err != nil {
				t.Fatalf("DeliveryConsumer: %v", err)
			}
			msgs := fetchN(t, ctx, c, 3, 10*time.Second)
			ackAll(t, ctx, msgs[:2]) // the third stays delivered but unacknowledged
			if err := q.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}

			q = openEmbedded(t, dir, withSync)
			mustPending(t, ctx, q, "ns", "ep", 3)
			c, err = q.DeliveryConsumer(ctx, "ns", "ep", ConsumerOptions{AckWait: time.Second})
			if err != nil {
				t.Fatalf("DeliveryConsumer after reopen: %v", err)
			}
			msgs = fetchN(t, ctx, c, 3, 15*time.Second)
			got := payloads(msgs)
			slices.Sort(got)
			if !slices.Equal(got, []string{"2", "3", "4"}) {
				t.Fatalf("after reopen got deliveries %q, want the three unacknowledged ones", got)
			}
			for _, m := range msgs {
				// The consumer's delivery count survived the restart too.
				if wantDelivered := map[string]uint64{"2": 2, "3": 1, "4": 1}[string(m.Data)]; m.NumDelivered != wantDelivered {
					t.Errorf("delivery %s: NumDelivered = %d after restart, want %d", m.Data, m.NumDelivered, wantDelivered)
				}
			}
			// A duplicate of an unconsumed message is still recognised after
			// the restart.
			if _, dup, err := q.PublishDelivery(ctx, "ns", "ep", DeliveryDedupID("4", "ns", "ep"), []byte("4"), nil); err != nil || !dup {
				t.Fatalf("re-publishing a stored delivery after restart: duplicate %v, err %v; want duplicate", dup, err)
			}
			ackAll(t, ctx, msgs)
			mustPending(t, ctx, q, "ns", "ep", 0)
		})
	}
}

func TestNakWithDelayRedeliversAfterDelay(t *testing.T) {
	q := openEmbedded(t, t.TempDir())
	ctx := testContext(t)
	mustPublishDelivery(t, ctx, q, "ns", "ep", "retry me")
	c, err := q.DeliveryConsumer(ctx, "ns", "ep", ConsumerOptions{})
	if err != nil {
		t.Fatalf("DeliveryConsumer: %v", err)
	}
	first := fetchN(t, ctx, c, 1, 10*time.Second)[0]
	if first.NumDelivered != 1 {
		t.Fatalf("first delivery NumDelivered = %d, want 1", first.NumDelivered)
	}

	const delay = 700 * time.Millisecond
	nakAt := time.Now()
	if err := first.NakWithDelay(delay); err != nil {
		t.Fatalf("NakWithDelay: %v", err)
	}
	second := fetchN(t, ctx, c, 1, 10*time.Second)[0]
	if elapsed := time.Since(nakAt); elapsed < delay {
		t.Fatalf("redelivered %s after NakWithDelay(%s), before the delay", elapsed, delay)
	}
	if second.Sequence != first.Sequence || second.NumDelivered != 2 || string(second.Data) != "retry me" {
		t.Fatalf("redelivery = seq %d delivered %d data %q, want seq %d delivered 2", second.Sequence, second.NumDelivered, second.Data, first.Sequence)
	}
	if err := second.InProgress(); err != nil {
		t.Fatalf("InProgress: %v", err)
	}
	ackAll(t, ctx, []*Message{second})
	mustPending(t, ctx, q, "ns", "ep", 0)
}

func TestMaxAckPendingOneKeepsOrderAcrossRetries(t *testing.T) {
	q := openEmbedded(t, t.TempDir())
	ctx := testContext(t)
	mustPublishDelivery(t, ctx, q, "ns", "ordered", "m1")
	mustPublishDelivery(t, ctx, q, "ns", "ordered", "m2")
	c, err := q.DeliveryConsumer(ctx, "ns", "ordered", ConsumerOptions{MaxAckPending: 1})
	if err != nil {
		t.Fatalf("DeliveryConsumer: %v", err)
	}
	m := fetchN(t, ctx, c, 1, 10*time.Second)[0]
	if string(m.Data) != "m1" {
		t.Fatalf("first delivery = %q, want m1", m.Data)
	}
	if err := m.NakWithDelay(300 * time.Millisecond); err != nil {
		t.Fatalf("NakWithDelay: %v", err)
	}
	m = fetchN(t, ctx, c, 1, 10*time.Second)[0]
	if string(m.Data) != "m1" || m.NumDelivered != 2 {
		t.Fatalf("delivery after retry of m1 = %q (attempt %d), want m1 attempt 2: m2 overtook it", m.Data, m.NumDelivered)
	}
	ackAll(t, ctx, []*Message{m})
	m = fetchN(t, ctx, c, 1, 10*time.Second)[0]
	if string(m.Data) != "m2" {
		t.Fatalf("delivery after m1 = %q, want m2", m.Data)
	}
	ackAll(t, ctx, []*Message{m})
}

func TestPendingCountsPerEndpoint(t *testing.T) {
	q := openEmbedded(t, t.TempDir())
	ctx := testContext(t)
	for i := range 5 {
		mustPublishDelivery(t, ctx, q, "ns", "busy", fmt.Sprint("b", i))
	}
	for i := range 2 {
		mustPublishDelivery(t, ctx, q, "ns", "quiet", fmt.Sprint("q", i))
	}
	// Before the delivery stage created consumers, the stored count.
	mustPending(t, ctx, q, "ns", "busy", 5)
	mustPending(t, ctx, q, "ns", "quiet", 2)
	mustPending(t, ctx, q, "ns", "none", 0)

	c, err := q.DeliveryConsumer(ctx, "ns", "busy", ConsumerOptions{})
	if err != nil {
		t.Fatalf("DeliveryConsumer: %v", err)
	}
	msgs := fetchN(t, ctx, c, 3, 10*time.Second)
	mustPending(t, ctx, q, "ns", "busy", 5) // in flight still counts
	ackAll(t, ctx, msgs[:1])
	mustPending(t, ctx, q, "ns", "busy", 4)
	if err := msgs[1].NakWithDelay(time.Hour); err != nil {
		t.Fatalf("NakWithDelay: %v", err)
	}
	mustPending(t, ctx, q, "ns", "busy", 4) // waiting for a retry still counts
	if got, err := c.Pending(ctx); err != nil || got != 4 {
		t.Fatalf("Consumer.Pending = %d, %v; want 4", got, err)
	}
	mustPending(t, ctx, q, "ns", "quiet", 2)
	// The counts of all endpoints at once agree with the per-endpoint ones,
	// in flight and waiting for a retry included.
	mustCounts(t, ctx, q, map[EndpointKey]EndpointCounts{
		{"ns", "busy"}: {Pending: 4}, {"ns", "quiet"}: {Pending: 2}, {"ns", "none"}: {},
	})
}

func TestDeadLetterAndReplay(t *testing.T) {
	q := openEmbedded(t, t.TempDir())
	ctx := testContext(t)
	header := Header{"Webhook-Id": []string{"msg_1"}}
	for i := range 3 {
		if _, _, err := q.PublishDelivery(ctx, "ns", "ep", DeliveryDedupID(fmt.Sprint(i), "ns", "ep"), []byte(fmt.Sprint("d", i)), header); err != nil {
			t.Fatalf("PublishDelivery: %v", err)
		}
	}
	mustPublishDelivery(t, ctx, q, "ns", "other", "other")

	c, err := q.DeliveryConsumer(ctx, "ns", "ep", ConsumerOptions{})
	if err != nil {
		t.Fatalf("DeliveryConsumer: %v", err)
	}
	msgs := fetchN(t, ctx, c, 3, 10*time.Second)
	slices.SortFunc(msgs, func(a, b *Message) int { return int(a.Sequence) - int(b.Sequence) })
	for _, m := range msgs[:2] {
		if err := q.DeadLetter(ctx, m, "HTTP 400"); err != nil {
			t.Fatalf("DeadLetter: %v", err)
		}
	}
	ackAll(t, ctx, msgs[2:])

	// The other endpoint's dead letter must not be replayed with this one's.
	oc, err := q.DeliveryConsumer(ctx, "ns", "other", ConsumerOptions{})
	if err != nil {
		t.Fatalf("DeliveryConsumer(other): %v", err)
	}
	if err := q.DeadLetter(ctx, fetchN(t, ctx, oc, 1, 10*time.Second)[0], "Gone"); err != nil {
		t.Fatalf("DeadLetter(other): %v", err)
	}

	mustDeadLetterCount(t, ctx, q, "ns", "ep", 2)
	mustDeadLetterCount(t, ctx, q, "ns", "other", 1)
	mustPending(t, ctx, q, "ns", "ep", 0)

	dl, err := q.deadLetter.GetMsg(ctx, 1, jetstream.WithGetMsgSubject(DeadLetterSubject("ns", "ep")))
	if err != nil {
		t.Fatalf("read dead letter: %v", err)
	}
	if dl.Header.Get(HeaderDeadLetterReason) != "HTTP 400" || dl.Header.Get(HeaderDeadLetterAttempts) != "1" ||
		dl.Header.Get(HeaderDeadLetterTime) == "" || dl.Header.Get("Webhook-Id") != "msg_1" || string(dl.Data) != "d0" {
		t.Fatalf("dead letter = data %q headers %v, want d0 with reason, attempts and the original headers", dl.Data, dl.Header)
	}

	n, err := q.ReplayDeadLetters(ctx, "ns", "ep")
	if err != nil || n != 2 {
		t.Fatalf("ReplayDeadLetters = %d, %v; want 2", n, err)
	}
	mustDeadLetterCount(t, ctx, q, "ns", "ep", 0)
	mustDeadLetterCount(t, ctx, q, "ns", "other", 1)
	mustPending(t, ctx, q, "ns", "ep", 2)
	mustCounts(t, ctx, q, map[EndpointKey]EndpointCounts{
		{"ns", "ep"}: {Pending: 2}, {"ns", "other"}: {DeadLettered: 1}, {"other-ns", "ep"}: {},
	})

	replayed := fetchN(t, ctx, c, 2, 10*time.Second)
	slices.SortFunc(replayed, func(a, b *Message) int { return int(a.Sequence) - int(b.Sequence) })
	if got := payloads(replayed); !slices.Equal(got, []string{"d0", "d1"}) {
		t.Fatalf("replayed deliveries = %q, want d0, d1 in order", got)
	}
	for _, m := range replayed {
		if m.NumDelivered != 1 || m.Header.Get("Webhook-Id") != "msg_1" || m.Header.Get(HeaderDeadLetterReason) != "" {
			t.Errorf("replayed %s: NumDelivered %d, headers %v; want a fresh attempt count and the original headers", m.Data, m.NumDelivered, m.Header)
		}
	}
	ackAll(t, ctx, replayed)
	if n, err := q.ReplayDeadLetters(ctx, "ns", "ep"); err != nil || n != 0 {
		t.Fatalf("second ReplayDeadLetters = %d, %v; want 0", n, err)
	}
}

func TestRemoveEndpointDropsItsQueue(t *testing.T) {
	q := openEmbedded(t, t.TempDir())
	ctx := testContext(t)
	mustPublishDelivery(t, ctx, q, "ns", "gone", "a")
	mustPublishDelivery(t, ctx, q, "ns", "gone", "b")
	mustPublishDelivery(t, ctx, q, "ns", "kept", "c")
	c, err := q.DeliveryConsumer(ctx, "ns", "gone", ConsumerOptions{})
	if err != nil {
		t.Fatalf("DeliveryConsumer: %v", err)
	}
	if err := q.DeadLetter(ctx, fetchN(t, ctx, c, 1, 10*time.Second)[0], "MaxAttempts"); err != nil {
		t.Fatalf("DeadLetter: %v", err)
	}
	mark, err := q.Mark(ctx)
	if err != nil {
		t.Fatalf("Mark: %v", err)
	}
	// Recreated under the same name after the deletion was seen: its
	// delivery is stored after the mark and must survive the removal.
	mustPublishDelivery(t, ctx, q, "ns", "gone", "recreated")
	if err := q.RemoveEndpoint(ctx, "ns", "gone", mark, true); err != nil {
		t.Fatalf("RemoveEndpoint: %v", err)
	}
	mustDeadLetterCount(t, ctx, q, "ns", "gone", 0)
	mustPending(t, ctx, q, "ns", "kept", 1)
	got := fetchN(t, ctx, c, 1, 10*time.Second)
	if string(got[0].Data) != "recreated" {
		t.Fatalf("after removal the consumer got %q, want only the recreated endpoint's delivery", got[0].Data)
	}
	ackAll(t, ctx, got)
	mustPending(t, ctx, q, "ns", "gone", 0)

	// Without a mark everything goes, consumer included.
	mustPublishDelivery(t, ctx, q, "ns", "gone", "late")
	if err := q.RemoveEndpoint(ctx, "ns", "gone", Mark{}, false); err != nil {
		t.Fatalf("second RemoveEndpoint: %v", err)
	}
	mustPending(t, ctx, q, "ns", "gone", 0)
	stored, err := q.StoredEndpoints(ctx)
	if err != nil {
		t.Fatalf("StoredEndpoints: %v", err)
	}
	if _, ok := stored[EndpointKey{"ns", "gone"}]; ok {
		t.Errorf("StoredEndpoints still lists the removed endpoint: %v", stored)
	}
	if _, ok := stored[EndpointKey{"ns", "kept"}]; !ok {
		t.Errorf("StoredEndpoints misses an endpoint with a queued delivery: %v", stored)
	}
}

func TestEventConsumerNames(t *testing.T) {
	q := openEmbedded(t, t.TempDir())
	ctx := testContext(t)
	if _, err := q.EventConsumer(ctx, "router.v2", ConsumerOptions{}); err == nil {
		t.Fatal("EventConsumer with a dot in its name succeeded, want an error")
	}
	if _, err := q.EventConsumer(ctx, "router", ConsumerOptions{}); err != nil {
		t.Fatalf("EventConsumer: %v", err)
	}
	// Every replica opening the same consumer is fine; a second consumer on a
	// work queue would split events between two fan-outs, and is refused.
	if _, err := q.EventConsumer(ctx, "router", ConsumerOptions{MaxAckPending: 10}); err != nil {
		t.Fatalf("EventConsumer again with new options: %v", err)
	}
	if _, err := q.EventConsumer(ctx, "router-two", ConsumerOptions{}); err == nil {
		t.Fatal("a second event consumer was created on the work-queue stream, want an error")
	}
}

func TestFetchReturnsWhenContextEnds(t *testing.T) {
	q := openEmbedded(t, t.TempDir())
	ctx := testContext(t)
	c, err := q.DeliveryConsumer(ctx, "ns", "idle", ConsumerOptions{FetchWait: 10 * time.Second})
	if err != nil {
		t.Fatalf("DeliveryConsumer: %v", err)
	}
	fctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	// The server ends the pull request shortly before the context's deadline,
	// so the call in flight may return empty-handed; the next one reports the
	// context's end.
	for attempt := 1; ; attempt++ {
		msgs, err := c.Fetch(fctx, 5)
		if len(msgs) != 0 {
			t.Fatalf("Fetch on an empty queue returned %d messages", len(msgs))
		}
		if err != nil {
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("Fetch with an ended context = %v, want DeadlineExceeded", err)
			}
			return
		}
		if attempt == 3 {
			t.Fatalf("Fetch kept returning no error after its context's deadline (FetchWait is 10s)")
		}
	}
}

func TestTermRemovesUnprocessableEvent(t *testing.T) {
	q := openEmbedded(t, t.TempDir())
	ctx := testContext(t)
	if !q.Connected() {
		t.Fatal("Connected() = false on an open embedded queue")
	}
	if _, _, err := q.PublishEvent(ctx, "ns", "poison", []byte("not json"), nil); err != nil {
		t.Fatalf("PublishEvent: %v", err)
	}
	c, err := q.EventConsumer(ctx, "router", ConsumerOptions{AckWait: time.Second})
	if err != nil {
		t.Fatalf("EventConsumer: %v", err)
	}
	m := fetchN(t, ctx, c, 1, 10*time.Second)[0]
	if err := m.Term("payload is not a CloudEvent"); err != nil {
		t.Fatalf("Term: %v", err)
	}
	expectNoMessage(t, ctx, c, 1500*time.Millisecond) // longer than AckWait
	if got, err := c.Pending(ctx); err != nil || got != 0 {
		t.Fatalf("Pending after Term = %d, %v; want 0", got, err)
	}
	if got := storedMessages(t, ctx, q.events, eventsPrefix+".*"); got != 0 {
		t.Fatalf("events stream holds %d events after Term, want 0", got)
	}
	if err := q.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if q.Connected() {
		t.Fatal("Connected() = true after Close")
	}
	if _, _, err := q.PublishEvent(ctx, "ns", "late", nil, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("PublishEvent after Close = %v, want ErrClosed", err)
	}
}

// TestDeliveriesStreamAllowsManyEndpoints: without an explicit limit
// nats-server caps a stream at 1,000 consumers, one per endpoint here.
func TestDeliveriesStreamAllowsManyEndpoints(t *testing.T) {
	ctx := context.Background()
	q := openEmbedded(t, t.TempDir())
	s, err := q.JetStream().Stream(ctx, DeliveriesStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Config.MaxConsumers != maxDeliveryConsumers {
		t.Fatalf("deliveries stream MaxConsumers = %d, want %d", info.Config.MaxConsumers, maxDeliveryConsumers)
	}
}

// TestConfirmAcknowledgedCoversEarlierAcks: acknowledgements sent without
// a confirmation are all processed once ConfirmAcknowledged returns on the
// last of them, and confirming on a consumer that is gone succeeds.
func TestConfirmAcknowledgedCoversEarlierAcks(t *testing.T) {
	q := openEmbedded(t, t.TempDir())
	ctx := testContext(t)
	const n = 200
	for i := range n {
		mustPublishDelivery(t, ctx, q, "ns", "ep", fmt.Sprint("d", i))
	}
	c, err := q.DeliveryConsumer(ctx, "ns", "ep", ConsumerOptions{})
	if err != nil {
		t.Fatalf("DeliveryConsumer: %v", err)
	}
	msgs := fetchN(t, ctx, c, n, 10*time.Second)
	for _, m := range msgs {
		if err := m.AckNoWait(); err != nil {
			t.Fatalf("AckNoWait: %v", err)
		}
	}
	if err := msgs[n-1].ConfirmAcknowledged(ctx); err != nil {
		t.Fatalf("ConfirmAcknowledged: %v", err)
	}
	mustPending(t, ctx, q, "ns", "ep", 0)

	if err := q.ReleaseDeliveryConsumer(ctx, "ns", "ep"); err != nil {
		t.Fatalf("ReleaseDeliveryConsumer: %v", err)
	}
	if err := msgs[0].ConfirmAcknowledged(ctx); err != nil {
		t.Fatalf("ConfirmAcknowledged on a released consumer: %v", err)
	}
}
