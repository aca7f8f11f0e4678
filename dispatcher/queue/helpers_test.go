package queue

import (
	"context"
	"fmt"
	"maps"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"github.com/nats-io/nats.go/jetstream"
)

// testTimeout bounds every test's context; a test that needs longer has a
// bug, not a slow machine.
const testTimeout = 30 * time.Second

func testContext(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// openEmbedded opens an embedded queue on dir and closes it when the test
// ends. mutate adjusts the configuration.
func openEmbedded(t testing.TB, dir string, mutate ...func(*Config)) *Queue {
	t.Helper()
	cfg := Config{StoreDir: dir}
	for _, m := range mutate {
		m(&cfg)
	}
	q, err := Open(testContext(t), cfg, testr.NewWithInterface(t, testr.Options{Verbosity: 0}))
	if err != nil {
		t.Fatalf("Open(%+v): %v", cfg, err)
	}
	t.Cleanup(func() {
		if err := q.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return q
}

// fetchN fetches until n messages arrived or the deadline passes; the
// messages are returned unacknowledged.
func fetchN(t testing.TB, ctx context.Context, c *Consumer, n int, within time.Duration) []*Message {
	t.Helper()
	deadline := time.Now().Add(within)
	var got []*Message
	for len(got) < n {
		if time.Now().After(deadline) {
			t.Fatalf("consumer %s: got %d of %d messages within %s", c.Name(), len(got), n, within)
		}
		fctx, cancel := context.WithDeadline(ctx, deadline)
		msgs, err := c.Fetch(fctx, n-len(got))
		fetchCtxDone := fctx.Err() != nil
		cancel()
		if err != nil && !fetchCtxDone {
			t.Fatalf("consumer %s: Fetch: %v", c.Name(), err)
		}
		got = append(got, msgs...)
	}
	return got
}

// expectNoMessage asserts that the consumer delivers nothing within wait.
func expectNoMessage(t testing.TB, ctx context.Context, c *Consumer, wait time.Duration) {
	t.Helper()
	fctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	msgs, err := c.Fetch(fctx, 10)
	if err != nil && fctx.Err() == nil {
		t.Fatalf("consumer %s: Fetch: %v", c.Name(), err)
	}
	if len(msgs) > 0 {
		t.Fatalf("consumer %s: expected no message within %s, got %d (first: seq %d, delivered %d times, data %q)",
			c.Name(), wait, len(msgs), msgs[0].Sequence, msgs[0].NumDelivered, msgs[0].Data)
	}
}

func ackAll(t testing.TB, ctx context.Context, msgs []*Message) {
	t.Helper()
	for _, m := range msgs {
		if err := m.Ack(ctx); err != nil {
			t.Fatalf("Ack: %v", err)
		}
	}
}

func payloads(msgs []*Message) []string {
	out := make([]string, len(msgs))
	for i, m := range msgs {
		out[i] = string(m.Data)
	}
	return out
}

func mustPublishDelivery(t testing.TB, ctx context.Context, q *Queue, namespace, endpoint, data string) uint64 {
	t.Helper()
	seq, dup, err := q.PublishDelivery(ctx, namespace, endpoint, DeliveryDedupID(data, namespace, endpoint), []byte(data), nil)
	if err != nil {
		t.Fatalf("PublishDelivery(%s/%s, %q): %v", namespace, endpoint, data, err)
	}
	if dup {
		t.Fatalf("PublishDelivery(%s/%s, %q): unexpected duplicate", namespace, endpoint, data)
	}
	return seq
}

// storedMessages counts the messages stream holds on subjects matching
// filter; the streams' keeper messages (keeper.go) are on subjects of their
// own.
func storedMessages(t testing.TB, ctx context.Context, stream jetstream.Stream, filter string) uint64 {
	t.Helper()
	info, err := stream.Info(ctx, jetstream.WithSubjectFilter(filter))
	if err != nil {
		t.Fatalf("stream info: %v", err)
	}
	var n uint64
	for _, c := range info.State.Subjects {
		n += c
	}
	return n
}

func mustPending(t testing.TB, ctx context.Context, q *Queue, namespace, endpoint string, want uint64) {
	t.Helper()
	got, err := q.Pending(ctx, namespace, endpoint)
	if err != nil {
		t.Fatalf("Pending(%s/%s): %v", namespace, endpoint, err)
	}
	if got != want {
		t.Fatalf("Pending(%s/%s) = %d, want %d", namespace, endpoint, got, want)
	}
}

// mustCounts checks Counts for want's endpoints.
func mustCounts(t testing.TB, ctx context.Context, q *Queue, want map[EndpointKey]EndpointCounts) {
	t.Helper()
	keys := make([]EndpointKey, 0, len(want))
	for k := range want {
		keys = append(keys, k)
	}
	got, err := q.Counts(ctx, keys)
	if err != nil {
		t.Fatalf("Counts: %v", err)
	}
	if !maps.Equal(got, want) {
		t.Fatalf("Counts = %v, want %v", got, want)
	}
}

func mustDeadLetterCount(t testing.TB, ctx context.Context, q *Queue, namespace, endpoint string, want uint64) {
	t.Helper()
	got, err := q.DeadLetterCount(ctx, namespace, endpoint)
	if err != nil {
		t.Fatalf("DeadLetterCount(%s/%s): %v", namespace, endpoint, err)
	}
	if got != want {
		t.Fatalf("DeadLetterCount(%s/%s) = %d, want %d", namespace, endpoint, got, want)
	}
}

func eventData(i int) string { return fmt.Sprintf(`{"specversion":"1.0","id":"%d"}`, i) }
