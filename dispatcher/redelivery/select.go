package redelivery

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	deliveryv1 "github.com/herald-dev/herald/api/delivery/v1alpha1"
	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/dispatcher/delivery"
	"github.com/herald-dev/herald/dispatcher/deliverylog"
	"github.com/herald-dev/herald/dispatcher/queue"
	"github.com/herald-dev/herald/dispatcher/router"
)

// selector is a Redelivery's spec as a predicate over deliveries.
type selector struct {
	phases       map[heraldv1.RedeliveryPhase]bool
	since, until time.Time
	types        []string
	// ids holds the webhook-ids of spec.deliveries; nil selects all.
	ids map[string]bool
}

// newSelector checks spec — the API server's CEL rules again, for API
// servers that do not enforce them — and returns its selector. The error
// says what to change.
func newSelector(spec *heraldv1.RedeliverySpec) (*selector, error) {
	s := &selector{phases: map[heraldv1.RedeliveryPhase]bool{}, types: spec.Types}
	for _, p := range spec.GetPhases() {
		if p != heraldv1.RedeliverDeadLettered && p != heraldv1.RedeliverSucceeded {
			return nil, fmt.Errorf("spec.phases: %q is not DeadLettered or Succeeded (Pending and Retrying deliveries are queued already)", p)
		}
		s.phases[p] = true
	}
	if spec.Since != nil {
		s.since = spec.Since.Time
	}
	if spec.Until != nil {
		s.until = spec.Until.Time
	}
	if !s.since.IsZero() && !s.until.IsZero() && !s.since.Before(s.until) {
		return nil, fmt.Errorf("spec.since must be before spec.until")
	}
	if len(spec.Deliveries) > heraldv1.MaxRedeliveryDeliveries {
		return nil, fmt.Errorf("spec.deliveries names %d deliveries, at most %d are allowed: split it into several Redeliveries", len(spec.Deliveries), heraldv1.MaxRedeliveryDeliveries)
	}
	if spec.Deliveries != nil {
		s.ids = map[string]bool{}
	}
	for _, name := range spec.Deliveries {
		id := name
		if strings.Contains(name, ".") {
			var endpoint string
			var err error
			if id, endpoint, err = deliverylog.ParseName(name); err != nil {
				return nil, fmt.Errorf("spec.deliveries: %w", err)
			}
			if endpoint != spec.EndpointRef.Name {
				return nil, fmt.Errorf("spec.deliveries: %q is a delivery to endpoint %q, not to %q", name, endpoint, spec.EndpointRef.Name)
			}
		}
		s.ids[id] = true
	}
	return s, nil
}

// matches reports whether a delivery in phase, of event ev ingested at
// ingested, is selected.
func (s *selector) matches(phase heraldv1.RedeliveryPhase, webhookID string, ev deliverylog.Event, ingested time.Time) bool {
	if !s.phases[phase] {
		return false
	}
	if s.ids != nil && !s.ids[webhookID] {
		return false
	}
	if !s.since.IsZero() && ingested.Before(s.since) {
		return false
	}
	if !s.until.IsZero() && !ingested.Before(s.until) {
		return false
	}
	if len(s.types) > 0 && !slices.ContainsFunc(s.types, func(p string) bool { return router.MatchType(p, ev.Type) }) {
		return false
	}
	return true
}

// candidate is one selected delivery, ready to be queued again.
type candidate struct {
	webhookID string
	event     deliverylog.Event
	ingested  time.Time
	payload   []byte
	header    queue.Header
	// deadLetters are the delivery's copies in the dead-letter stream,
	// removed once it is queued again.
	deadLetters []uint64
}

// collect returns the deliveries of namespace/endpoint that s selects,
// up to the run's cutoffs, oldest ingest first, one per webhook-id.
func (e *Executor) collect(ctx context.Context, namespace, endpoint string, s *selector, r *run) ([]*candidate, error) {
	byID := map[string]*candidate{}
	var out []*candidate
	add := func(c *candidate) {
		if prev := byID[c.webhookID]; prev != nil {
			prev.deadLetters = append(prev.deadLetters, c.deadLetters...)
			return
		}
		byID[c.webhookID] = c
		out = append(out, c)
	}
	if s.phases[heraldv1.RedeliverDeadLettered] {
		err := e.queue.DeadLetters(ctx, namespace, endpoint, r.DeadLetterCutoff, func(dl *queue.StoredDeadLetter) error {
			ev := delivery.EventContext(dl.Data)
			id := dl.Header.Get(queue.HeaderWebhookID)
			if id == "" {
				id = queue.WebhookID(namespace, ev.Source, ev.ID)
			}
			ingested := queue.IngestedAt(dl.Header, dl.Time)
			if s.matches(heraldv1.RedeliverDeadLettered, id, ev, ingested) {
				add(&candidate{webhookID: id, event: ev, ingested: ingested, payload: dl.Data, header: dl.Header, deadLetters: []uint64{dl.Sequence}})
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	if s.phases[heraldv1.RedeliverSucceeded] && e.log != nil {
		ds, last, err := e.log.List(ctx, deliverylog.Query{Namespace: namespace, Endpoint: endpoint})
		if err != nil {
			return nil, err
		}
		if r.LogCutoff == 0 {
			r.LogCutoff = last // the first collection of the run sets it
		}
		for _, d := range ds {
			if d.Status.Phase != deliveryv1.DeliverySucceeded || !withinCutoff(d, r.LogCutoff) {
				continue
			}
			id, _, err := deliverylog.ParseName(d.Name)
			if err != nil {
				continue
			}
			ev := deliverylog.Event{ID: d.Spec.Event.ID, Source: d.Spec.Event.Source, Type: d.Spec.Event.Type, Subject: d.Spec.Event.Subject}
			ingested := d.CreationTimestamp.Time
			if !s.matches(heraldv1.RedeliverSucceeded, id, ev, ingested) {
				continue
			}
			payload, ingestedAt, ok, err := e.log.Payload(ctx, namespace, endpoint, id)
			if err != nil {
				return nil, err
			}
			if !ok {
				continue // its records expired meanwhile
			}
			header := queue.Header{}
			header.Set(queue.HeaderWebhookID, id)
			if !ingestedAt.IsZero() {
				header.Set(queue.HeaderIngestedAt, ingestedAt.UTC().Format(time.RFC3339Nano))
			}
			add(&candidate{webhookID: id, event: ev, ingested: ingested, payload: payload, header: header})
		}
	}
	slices.SortStableFunc(out, func(a, b *candidate) int { return a.ingested.Compare(b.ingested) })
	return out, nil
}

// withinCutoff reports whether the log's last record of d was written at
// or before sequence cutoff (0: no cutoff).
func withinCutoff(d *deliveryv1.Delivery, cutoff uint64) bool {
	if cutoff == 0 {
		return true
	}
	seq, err := strconv.ParseUint(d.ResourceVersion, 10, 64)
	return err == nil && seq <= cutoff
}
