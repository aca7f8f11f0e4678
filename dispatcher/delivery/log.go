package delivery

import (
	"encoding/json"
	"time"

	deliveryv1 "github.com/herald-dev/herald/api/delivery/v1alpha1"
	"github.com/herald-dev/herald/dispatcher/deliverylog"
	"github.com/herald-dev/herald/dispatcher/internal/jsonscan"
	"github.com/herald-dev/herald/dispatcher/queue"
)

// Recorder keeps a record of every processed delivery: the delivery log
// (deliverylog.Log). Record is called from the delivery goroutines and
// must not block.
type Recorder interface {
	Record(deliverylog.Entry)
}

// logEntry is the delivery log's record of a processed delivery message.
// It carries the response's start, and the queued message on records that
// end the delivery, so that a Redelivery can queue it again; never request
// headers or key material.
//
// parsed is the payload as parseEvent read it, nil when it was not parsed
// (its context is then read from msg.Data).
func logEntry(namespace, endpoint string, msg *queue.Message, parsed *cloudEvent, o *Outcome, body []byte) deliverylog.Entry {
	var ev deliverylog.Event
	if parsed != nil {
		// parseEvent decoded the required attributes already.
		subject, _, _ := stringAttr(parsed.attrs, "subject")
		ev = deliverylog.Event{ID: parsed.id, Source: parsed.source, Type: parsed.typ, Subject: subject, Time: parsed.eventTime()}
	} else {
		ev = eventContext(msg.Data)
	}
	e := deliverylog.Entry{
		Namespace:  namespace,
		Endpoint:   endpoint,
		WebhookID:  o.WebhookID,
		Event:      ev,
		IngestedAt: msg.IngestedAt(),
		Attempt:    o.Attempt,
		Time:       o.Time,
		Duration:   o.Latency,
		StatusCode: o.StatusCode,
		Error:      o.Reason,
		Response:   body,
		// parseEvent read the payload as JSON (jsonscan.Object validates).
		PayloadValid: parsed != nil,
	}
	if e.WebhookID == "" {
		e.WebhookID = queue.WebhookID(namespace, ev.Source, ev.ID)
	}
	switch {
	case o.DeadLettered:
		e.Phase, e.DeadLetterReason = deliveryv1.DeliveryDeadLettered, o.DeadLetterReason
		if o.Reason != ReasonInvalidPayload {
			e.Payload = msg.Data
		}
	case o.Success:
		e.Phase, e.Payload = deliveryv1.DeliverySucceeded, msg.Data
	default:
		e.Phase = deliveryv1.DeliveryRetrying
		if o.RetryDelay > 0 {
			e.NextAttempt = o.Time.Add(o.RetryDelay)
		}
	}
	return e
}

// eventContext reads the context attributes of a stored CloudEvent,
// leniently: what cannot be read stays empty (the log records undeliverable
// payloads too).
func eventContext(payload []byte) deliverylog.Event {
	attrs, err := jsonscan.Object(payload)
	if err != nil || attrs == nil {
		return deliverylog.Event{}
	}
	return eventContextOf(attrs)
}

// eventContextOf is eventContext of a payload's top-level members.
func eventContextOf(attrs map[string]json.RawMessage) deliverylog.Event {
	str := func(name string) string {
		v, _, _ := stringAttr(attrs, name)
		return v
	}
	ev := deliverylog.Event{ID: str("id"), Source: str("source"), Type: str("type"), Subject: str("subject")}
	if t, err := time.Parse(time.RFC3339Nano, str("time")); err == nil {
		ev.Time = t
	}
	return ev
}
