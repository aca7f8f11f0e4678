package router

import (
	"context"
	"time"

	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/dispatcher/queue"
)

// Fan-out at ingest.
//
// An event is normally stored in the events stream, acknowledged to its
// publisher, and fanned out by Run: two stored messages and two round trips
// per delivered event. When the outcome of that fan-out is already certain
// at ingest, the ingest request fans the event out itself (FanOutAtIngest):
// it stores the event's deliveries, and answers 202 only once all of them
// are stored, so the event is durable in the deliveries it produced and the
// events stream never holds it. That is the case when:
//
//   - this replica's router is running: the catalog has seen every object
//     and the delivery stage is up;
//   - the namespace is not in transition (Catalog.InTransition), so the
//     event would match the same Subscriptions a moment later;
//   - the event matches at least one Subscription: an unmatched event goes
//     through the events stream, where it is held or confirmed unmatched
//     (Options.ConfirmSettled) before it is discarded;
//   - none of its endpoints is Ordered. An Ordered endpoint's deliveries
//     must be stored in the order of their events, and an earlier event may
//     still wait in the events stream (accepted before this replica's
//     router ran, or in another replica's batch); every event for an
//     Ordered endpoint therefore takes the stream, which keeps them in
//     order as before (with the exceptions the package documentation
//     lists: held events, and fan-outs retried after a queue failure).
//
// Anything else, and an event whose deliveries were not all stored, is
// published to the events stream by the caller, and Run fans it out as
// before: fan-out is idempotent (the deliveries' de-duplication ids depend
// only on the event and the endpoint), so the deliveries stored at ingest
// are found de-duplicated there. Duplicate detection is per delivery: a
// publish repeated within the duplicate window stores nothing again, and is
// answered as a duplicate when every delivery already was stored.
//
// One difference is visible: a publisher whose request fails half-way (the
// dispatcher killed, the queue unreachable) may leave some of an event's
// deliveries stored though the event was never acknowledged; they are
// delivered. Publishers retry unacknowledged events, which completes the
// rest without duplicates, so at-least-once delivery of acknowledged events
// is unchanged.

// IngestOutcome is what FanOutAtIngest did for one event.
type IngestOutcome struct {
	// FannedOut is set when every delivery of the event is stored: the event
	// needs no other storing. When false, nothing is promised and the event
	// must be published to the events stream.
	FannedOut bool
	// Duplicate is set when every delivery was already stored (a publish
	// repeated within the duplicate window).
	Duplicate bool
}

// FanOutAtIngest fans out events of a namespace that an ingest request is
// about to store, when it can (see above), and returns one outcome per
// event, in order. The events' Header must carry what ingest stores with
// them (queue.HeaderWebhookID, HeaderEventKey, HeaderIngestedAt). It is
// safe for concurrent use.
func (r *Router) FanOutAtIngest(ctx context.Context, namespace string, events []queue.EventPublish) []IngestOutcome {
	out := make([]IngestOutcome, len(events))
	if !r.running.Load() || r.catalog.InTransition(namespace) {
		return out
	}
	type planned struct {
		event      int
		result     FanOutResult
		start, end int // its deliveries in batch
	}
	var plans []planned
	var batch []queue.DeliveryPublish
	for i, ev := range events {
		res, deliveries, err := r.plan(namespace, ev.Payload, ev.Header)
		if err != nil || len(deliveries) == 0 || r.anyOrdered(namespace, res.Endpoints) {
			continue
		}
		plans = append(plans, planned{event: i, result: res, start: len(batch), end: len(batch) + len(deliveries)})
		batch = append(batch, deliveries...)
	}
	if len(batch) == 0 {
		return out
	}
	results := r.queue.PublishDeliveries(ctx, batch)
	r.notifyQueued(batch, results)
	now := r.opts.Now()
	for _, p := range plans {
		stored, duplicate := 0, true
		for _, res := range results[p.start:p.end] {
			if res.Err == nil {
				stored++
				duplicate = duplicate && res.Duplicate
			}
		}
		if stored < p.end-p.start {
			continue // the events stream's fan-out stores the rest
		}
		out[p.event] = IngestOutcome{FannedOut: true, Duplicate: duplicate}
		if duplicate {
			continue // counted and reported when it was first fanned out
		}
		r.routed(namespace, p.result, queue.IngestedAt(events[p.event].Header, now), now)
		r.metrics.atIngest.Inc()
		r.metrics.deliveries.Add(float64(stored))
	}
	return out
}

// anyOrdered reports whether one of a namespace's endpoints is Ordered.
func (r *Router) anyOrdered(namespace string, endpoints []string) bool {
	for _, name := range endpoints {
		if ep, ok := r.catalog.Endpoint(namespace, name); ok && ep.Spec.GetOrdering() == heraldv1.Ordered {
			return true
		}
	}
	return false
}

// routed counts a fanned-out event and reports its matches.
func (r *Router) routed(namespace string, res FanOutResult, ingestedAt, now time.Time) {
	if r.opts.Reporter != nil {
		for _, s := range res.Subscriptions {
			r.opts.Reporter.Matched(namespace, s, now)
		}
	}
	r.metrics.lag.Observe(max(now.Sub(ingestedAt), 0).Seconds())
	r.metrics.events.WithLabelValues(ResultRouted).Inc()
}
