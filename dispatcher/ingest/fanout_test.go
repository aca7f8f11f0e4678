package ingest

import (
	"context"
	"encoding/json"
	"sync"
	"testing"

	"github.com/herald-dev/herald/dispatcher/queue"
	"github.com/herald-dev/herald/dispatcher/router"
)

// typeFanOut fans out the events of one type, as a router whose only
// Subscription takes that type would, and remembers what it stored.
type typeFanOut struct {
	typ string

	mu     sync.Mutex
	stored map[string]queue.EventPublish // by dedup id
}

func (f *typeFanOut) FanOutAtIngest(_ context.Context, _ string, events []queue.EventPublish) []router.IngestOutcome {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]router.IngestOutcome, len(events))
	for i, e := range events {
		var attrs struct{ Type string }
		if err := json.Unmarshal(e.Payload, &attrs); err != nil || attrs.Type != f.typ {
			continue
		}
		_, seen := f.stored[e.DedupID]
		if !seen {
			f.stored[e.DedupID] = e
		}
		out[i] = router.IngestOutcome{FannedOut: true, Duplicate: seen}
	}
	return out
}

func TestEventsFannedOutAtIngestSkipTheStream(t *testing.T) {
	fan := &typeFanOut{typ: "order.created", stored: map[string]queue.EventPublish{}}
	f := newFixture(t, func(o *Options) { o.FanOut = fan })

	body := batchJSON(t,
		eventJSON(t, map[string]any{"id": "o-1"}),
		eventJSON(t, map[string]any{"id": "l-1", "type": "lead.created"}),
		eventJSON(t, map[string]any{"id": "o-2"}),
		eventJSON(t, map[string]any{"id": "o-1"}),
	)
	got := post(t, f.url("team-a"), batchHeader(), body).accepted(t)
	wantIDs, wantDup := []string{"o-1", "l-1", "o-2", "o-1"}, []bool{false, false, false, true}
	if len(got.Events) != len(wantIDs) {
		t.Fatalf("202 names %d events, want %d: %+v", len(got.Events), len(wantIDs), got.Events)
	}
	for i, ev := range got.Events {
		if ev.ID != wantIDs[i] || ev.Duplicate != wantDup[i] || ev.WebhookID != queue.WebhookID("team-a", "/orders", wantIDs[i]) {
			t.Errorf("event %d: %+v, want id %s duplicate %v", i, ev, wantIDs[i], wantDup[i])
		}
	}

	// Only the event the fan-out left is in the events stream, with the
	// headers the fan-out was given for the others.
	msgs := fetchStored(t, f.q, 1)
	checkStoredHeaders(t, msgs[0], "team-a", "/orders", "l-1")
	if n := storedCount(t, f.q); n != 0 {
		t.Errorf("%d more events in the stream, want none: the fanned-out ones are stored as deliveries", n)
	}
	fan.mu.Lock()
	defer fan.mu.Unlock()
	if len(fan.stored) != 2 {
		t.Fatalf("fan-out stored %d events, want o-1 and o-2", len(fan.stored))
	}
	for _, e := range fan.stored {
		var attrs struct{ ID string }
		if err := json.Unmarshal(e.Payload, &attrs); err != nil {
			t.Fatal(err)
		}
		// As the stream would have stored it.
		checkStoredHeaders(t, &queue.Message{Namespace: "team-a", DedupID: e.DedupID, Header: e.Header}, "team-a", "/orders", attrs.ID)
	}
	counters := gatherCounters(t, f.registry)
	if got := counters[`herald_ingest_events_total{namespace="team-a",result="accepted"}`]; got != 3 {
		t.Errorf("accepted events = %v, want 3 (counters %v)", got, counters)
	}
	if got := counters[`herald_ingest_events_total{namespace="team-a",result="duplicate"}`]; got != 1 {
		t.Errorf("duplicate events = %v, want 1", got)
	}
}
