package queue

import (
	"context"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Header is metadata stored with a message, next to its payload. Keys are
// case-sensitive. Keys starting with "Nats-" are reserved for JetStream and
// rejected on publish.
type Header = nats.Header

// Headers this package sets on dead-lettered messages.
const (
	// HeaderDeadLetterReason says why a delivery was dead-lettered (for
	// example "MaxAttempts" or "HTTP 400"), as given to DeadLetter.
	HeaderDeadLetterReason = "Herald-Dead-Letter-Reason"
	// HeaderDeadLetterAttempts is the number of delivery attempts made before
	// the delivery was dead-lettered.
	HeaderDeadLetterAttempts = "Herald-Dead-Letter-Attempts"
	// HeaderDeadLetterTime is when the delivery was dead-lettered (RFC 3339).
	HeaderDeadLetterTime = "Herald-Dead-Letter-Time"
)

const natsHeaderPrefix = "nats-"

// PublishEvent stores an ingested event for namespace and returns once
// JetStream has acknowledged it — written to the store file (and fsynced
// under SyncAlways), or stored by a quorum of replicas in a cluster — with
// the stream sequence. dedupID identifies the event
// (use EventDedupID); a second publish with the same id within the duplicate
// window stores nothing and reports duplicate=true with the first sequence.
//
// Transient failures (no stream leader during an election, a reconnect, an
// acknowledgement timeout) are retried with the same dedupID until ctx ends,
// so a publish that timed out after the server stored it can return
// duplicate=true on its retry; callers must treat duplicate as "already
// stored", which is what ingest answers either way.
func (q *Queue) PublishEvent(ctx context.Context, namespace, dedupID string, payload []byte, header Header) (seq uint64, duplicate bool, err error) {
	if err := validateName("namespace", namespace); err != nil {
		return 0, false, err
	}
	return q.publish(ctx, EventsStream, EventSubject(namespace), dedupID, payload, header)
}

// PublishDelivery queues the delivery of one event to one endpoint, with the
// same acknowledgement and retry behaviour as PublishEvent. dedupID must be
// stable for the event and endpoint (use DeliveryDedupID) so that re-running
// fan-out does not queue the delivery twice.
func (q *Queue) PublishDelivery(ctx context.Context, namespace, endpoint, dedupID string, payload []byte, header Header) (seq uint64, duplicate bool, err error) {
	if err := validateEndpoint(namespace, endpoint); err != nil {
		return 0, false, err
	}
	return q.publish(ctx, DeliveriesStream, DeliverySubject(namespace, endpoint), dedupID, payload, header)
}

// PublishDeadLetter stores a delivery in the dead-letter stream of its
// endpoint. Most callers want DeadLetter, which also acknowledges the
// delivery message.
func (q *Queue) PublishDeadLetter(ctx context.Context, namespace, endpoint, dedupID string, payload []byte, header Header) (seq uint64, duplicate bool, err error) {
	if err := validateEndpoint(namespace, endpoint); err != nil {
		return 0, false, err
	}
	return q.publish(ctx, DeadLetterStream, DeadLetterSubject(namespace, endpoint), dedupID, payload, header)
}

// DeadLetter moves a delivery that exhausted its retries to the dead-letter
// stream: it stores a copy with the reason, the attempt count and the time in
// headers, and only then acknowledges the delivery, so a crash in between
// leaves the delivery queued rather than lost (a second dead-lettering is
// de-duplicated by the delivery's id).
func (q *Queue) DeadLetter(ctx context.Context, m *Message, reason string) error {
	if m.Endpoint == "" {
		return fmt.Errorf("dead-letter message %d: not a delivery (subject %s)", m.Sequence, m.Subject)
	}
	header := cloneHeader(m.Header)
	header.Set(HeaderDeadLetterReason, reason)
	header.Set(HeaderDeadLetterAttempts, strconv.FormatUint(m.NumDelivered, 10))
	header.Set(HeaderDeadLetterTime, time.Now().UTC().Format(time.RFC3339))
	dedupID := m.DedupID
	if dedupID == "" {
		dedupID = hashFields("herald-deadletter/v1", DeliveriesStream, strconv.FormatUint(m.Sequence, 10))
	}
	if _, _, err := q.PublishDeadLetter(ctx, m.Namespace, m.Endpoint, dedupID, m.Data, header); err != nil {
		return err
	}
	if err := m.Ack(ctx); err != nil {
		return fmt.Errorf("acknowledge dead-lettered delivery %d: %w", m.Sequence, err)
	}
	return nil
}

func validateEndpoint(namespace, endpoint string) error {
	if err := validateName("namespace", namespace); err != nil {
		return err
	}
	return validateName("endpoint", endpoint)
}

// publish sends one message with a de-duplication id and waits for the
// JetStream acknowledgement, retrying transient failures until ctx ends.
func (q *Queue) publish(ctx context.Context, stream, subject, dedupID string, payload []byte, header Header) (uint64, bool, error) {
	if dedupID == "" {
		return 0, false, fmt.Errorf("publish to %s: de-duplication id must not be empty", subject)
	}
	for key := range header {
		if strings.HasPrefix(strings.ToLower(key), natsHeaderPrefix) {
			return 0, false, fmt.Errorf("publish to %s: header %q is reserved for JetStream", subject, key)
		}
	}
	msg := &nats.Msg{Subject: subject, Data: payload, Header: cloneHeader(header)}
	var ack *jetstream.PubAck
	err := retryTransient(ctx, q.cfg.PublishTimeout, func(attemptCtx context.Context) error {
		var err error
		// ExpectStream guards against another stream on the server claiming
		// the subject: the message must land where consumers look for it.
		ack, err = q.js.PublishMsg(attemptCtx, msg, jetstream.WithMsgID(dedupID), jetstream.WithExpectStream(stream))
		if err != nil && isTransient(err) {
			q.log.V(1).Info("Publish attempt failed, retrying", "subject", subject, "error", err.Error())
		}
		return err
	})
	if err != nil {
		return 0, false, fmt.Errorf("publish to %s: %w", subject, classify(err))
	}
	return ack.Sequence, ack.Duplicate, nil
}

func cloneHeader(h Header) Header {
	out := make(Header, len(h)+1)
	for k, v := range h {
		out[k] = append([]string(nil), v...)
	}
	return out
}

// publicHeader returns the message's headers without JetStream's own.
func publicHeader(h nats.Header) Header {
	out := make(Header, len(h))
	for k, v := range h {
		if strings.HasPrefix(strings.ToLower(k), natsHeaderPrefix) {
			continue
		}
		out[k] = v
	}
	return out
}

// redactURLs hides credentials in a comma-separated list of NATS URLs.
func redactURLs(urls string) string {
	parts := strings.Split(urls, ",")
	for i, p := range parts {
		p = strings.TrimSpace(p)
		u, err := url.Parse(p)
		switch {
		case err != nil:
			p = "<invalid URL>"
		case u.User != nil:
			// A token may sit in the user part, so hide all of it.
			u.User = url.User("redacted")
			p = u.String()
		}
		parts[i] = p
	}
	return strings.Join(parts, ",")
}
