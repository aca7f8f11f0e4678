package delivery

import (
	"context"
	"errors"
	"time"

	deliveryv1 "github.com/herald-dev/herald/api/delivery/v1alpha1"
	"github.com/herald-dev/herald/dispatcher/catalog"
	"github.com/herald-dev/herald/dispatcher/deliverylog"
)

// ReasonPing prefixes the dead-letter reason of a failed ping in the
// delivery log: a ping is attempted once and never retried.
const ReasonPing = "Ping"

// Ping makes one attempt of d at ep, outside the queue: signed, with the
// endpoint's headers, TLS settings and address guard, but no retry, no
// pacing and no effect on delivery health. The attempt is recorded in the
// delivery log (Succeeded, or DeadLettered with reason "Ping: …"). The
// error is for a configuration that cannot be used (no signing key); the
// receiver's answer is in the Outcome.
func (m *Manager) Ping(ctx context.Context, ep *catalog.Endpoint, d Delivery) (Outcome, error) {
	o := Outcome{Namespace: ep.Namespace, Endpoint: ep.Name, Generation: ep.Generation, Attempt: 1, WebhookID: d.WebhookID}
	s, err := m.newSender(ep)
	if err != nil {
		return o, err
	}
	defer s.client.CloseIdleConnections()
	req, err := s.target.BuildRequest(ctx, d, m.now())
	if err != nil {
		return o, err
	}
	resp, err := s.client.Do(req)
	o.Sent, o.Time, o.Latency = true, time.Now(), resp.Latency
	switch {
	case err != nil:
		if ctx.Err() != nil {
			return o, errors.Join(ctx.Err(), err)
		}
		o.Reason = ClassifyError(err)
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		o.Success, o.StatusCode = true, resp.StatusCode
	default:
		o.StatusCode, o.Reason = resp.StatusCode, HTTPReason(resp.StatusCode)
	}
	if m.recorder != nil {
		e := deliverylog.Entry{
			Namespace:  ep.Namespace,
			Endpoint:   ep.Name,
			WebhookID:  d.WebhookID,
			Event:      eventContext(d.Payload),
			IngestedAt: d.IngestedAt,
			Attempt:    1,
			Time:       o.Time,
			Duration:   o.Latency,
			StatusCode: o.StatusCode,
			Error:      o.Reason,
			Response:   resp.Body,
			Phase:      deliveryv1.DeliverySucceeded,
		}
		if !o.Success {
			e.Phase, e.DeadLetterReason = deliveryv1.DeliveryDeadLettered, ReasonPing+": "+o.Reason
		}
		m.recorder.Record(e)
	}
	return o, nil
}
