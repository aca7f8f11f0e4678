package queue

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/herald-dev/herald/dispatcher/internal/fieldhash"
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
		dedupID = fieldhash.Hex("herald-deadletter/v1", DeliveriesStream, strconv.FormatUint(m.Sequence, 10))
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

// DeliveryPublish is one delivery of a PublishDeliveries batch; the fields
// are PublishDelivery's arguments.
type DeliveryPublish struct {
	Namespace string
	Endpoint  string
	// DedupID must be stable for the event and endpoint (DeliveryDedupID).
	DedupID string
	Payload []byte
	Header  Header
}

// PublishResult is the outcome of one entry of a PublishDeliveries or
// PublishEvents batch.
type PublishResult struct {
	// Sequence is the message's stream sequence; for a duplicate, the
	// sequence of the message stored first.
	Sequence uint64
	// Duplicate reports that the de-duplication id was already stored.
	Duplicate bool
	// Err is set when the entry may not be stored. It wraps the errors
	// PublishDelivery's and PublishEvent's do (ErrClosed, ErrQueueFull,
	// ErrMessageTooLarge).
	Err error
}

// EventPublish is one event of a PublishEvents batch; the fields are
// PublishEvent's arguments after the namespace.
type EventPublish struct {
	// DedupID identifies the event (EventDedupID).
	DedupID string
	Payload []byte
	Header  Header
}

// PublishEvents stores a batch of ingested events of one namespace, each
// like PublishEvent, pipelined like PublishDeliveries, which describes the
// order and failure behaviour. The results are in the order of batch.
func (q *Queue) PublishEvents(ctx context.Context, namespace string, batch []EventPublish) []PublishResult {
	entries := make([]batchEntry, len(batch))
	err := validateName("namespace", namespace)
	for i, e := range batch {
		entries[i] = batchEntry{subject: EventSubject(namespace), dedupID: e.DedupID, payload: e.Payload, header: e.Header, err: err}
	}
	return q.publishBatch(ctx, EventsStream, entries)
}

// PublishDeliveries queues a batch of deliveries, each like PublishDelivery,
// but pipelined: every message is sent before any acknowledgement is awaited,
// so the batch costs about one round trip instead of one per delivery. The
// results are in the order of batch.
//
// Order: the messages are sent in slice order on the queue's one connection,
// so JetStream stores those it accepts on the first attempt in that order.
// An entry whose first attempt fails transiently (an acknowledgement
// timeout, a reconnect, a stream leader election) is retried synchronously,
// in order, with its de-duplication id until ctx ends — by then later
// entries may already be stored, so a retried entry can land after them.
// Once sending fails transiently, the remaining entries are not sent
// asynchronously but published one by one, in order, after the retries of
// the earlier ones.
//
// An invalid entry (bad names, empty dedup id, reserved header) or one that
// fails permanently (too large) fails alone; the others are published.
func (q *Queue) PublishDeliveries(ctx context.Context, batch []DeliveryPublish) []PublishResult {
	entries := make([]batchEntry, len(batch))
	for i, d := range batch {
		entries[i] = batchEntry{dedupID: d.DedupID, payload: d.Payload, header: d.Header}
		if entries[i].err = validateEndpoint(d.Namespace, d.Endpoint); entries[i].err == nil {
			entries[i].subject = DeliverySubject(d.Namespace, d.Endpoint)
		}
	}
	return q.publishBatch(ctx, DeliveriesStream, entries)
}

// batchEntry is one message of publishBatch; err, when set, fails it
// without sending.
type batchEntry struct {
	subject, dedupID string
	payload          []byte
	header           Header
	err              error
}

// publishBatch publishes entries to stream as PublishDeliveries describes.
func (q *Queue) publishBatch(ctx context.Context, stream string, batch []batchEntry) []PublishResult {
	q.wrote(stream)
	results := make([]PublishResult, len(batch))
	futures := make([]jetstream.PubAckFuture, len(batch))
	retry := make([]bool, len(batch))
	sending := true
	for i, e := range batch {
		if e.err != nil {
			results[i].Err = e.err
			continue
		}
		msg, err := newPublishMsg(e.subject, e.dedupID, e.payload, e.header)
		if err != nil {
			results[i].Err = err
			continue
		}
		if !sending {
			retry[i] = true
			continue
		}
		futures[i], err = q.publishAsync(ctx, stream, msg, e.dedupID)
		switch {
		case err == nil:
		case isTransientAsync(err):
			// Keep the order: this entry and all later ones go through the
			// synchronous path, after the entries already sent.
			q.log.V(1).Info("Asynchronous publish failed, publishing the rest of the batch synchronously", "subject", e.subject, "error", err.Error())
			sending = false
			retry[i] = true
		default:
			results[i].Err = fmt.Errorf("publish to %s: %w", e.subject, classify(q.connectionError(err)))
		}
	}
	for i, f := range futures {
		if f == nil {
			continue
		}
		ack, err := awaitPubAck(ctx, f)
		switch {
		case err == nil:
			results[i] = PublishResult{Sequence: ack.Sequence, Duplicate: ack.Duplicate}
		case isTransientAsync(err):
			q.log.V(1).Info("Asynchronous publish failed, retrying", "subject", batch[i].subject, "error", err.Error())
			retry[i] = true
		default:
			results[i].Err = fmt.Errorf("publish to %s: %w", batch[i].subject, classify(err))
		}
	}
	for i, e := range batch {
		if !retry[i] {
			continue
		}
		seq, duplicate, err := q.publish(ctx, stream, e.subject, e.dedupID, e.payload, e.header)
		results[i] = PublishResult{Sequence: seq, Duplicate: duplicate, Err: err}
	}
	return results
}

// publishAsync sends msg without waiting for its acknowledgement. When the
// connection's asynchronous publishes in flight reach the JetStream
// context's limit (PublishAsyncMaxPending), it waits for a free slot for up
// to PublishTimeout, bounded by ctx.
func (q *Queue) publishAsync(ctx context.Context, stream string, msg *nats.Msg, dedupID string) (jetstream.PubAckFuture, error) {
	stallWait := q.cfg.PublishTimeout
	if deadline, ok := ctx.Deadline(); ok {
		stallWait = min(stallWait, time.Until(deadline))
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if stallWait <= 0 {
		return nil, context.DeadlineExceeded
	}
	return q.js.PublishMsgAsync(msg, jetstream.WithMsgID(dedupID), jetstream.WithExpectStream(stream),
		jetstream.WithStallWait(stallWait))
}

// awaitPubAck waits for an asynchronous publish's acknowledgement. The
// JetStream context fails an acknowledgement that takes longer than
// PublishTimeout (see Open), so the wait is bounded without a timer here.
func awaitPubAck(ctx context.Context, f jetstream.PubAckFuture) (*jetstream.PubAck, error) {
	select {
	case ack := <-f.Ok():
		return ack, nil
	case err := <-f.Err():
		return nil, err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// isTransientAsync is isTransient for asynchronous publishes, which fail
// with their own errors when the acknowledgement times out or too many
// publishes are in flight.
func isTransientAsync(err error) bool {
	return isTransient(err) || errors.Is(err, jetstream.ErrAsyncPublishTimeout) || errors.Is(err, jetstream.ErrTooManyStalledMsgs)
}

// connectionError makes a failed send on a closed connection report
// nats.ErrConnectionClosed: the client returns some such failures as plain
// text (setting up the asynchronous reply subscription, for one).
func (q *Queue) connectionError(err error) error {
	if q.nc.IsClosed() && !errors.Is(err, nats.ErrConnectionClosed) {
		return fmt.Errorf("%w: %w", nats.ErrConnectionClosed, err)
	}
	return err
}

// newPublishMsg checks a publish's de-duplication id and headers and builds
// its message, with a copy of header.
func newPublishMsg(subject, dedupID string, payload []byte, header Header) (*nats.Msg, error) {
	if dedupID == "" {
		return nil, fmt.Errorf("publish to %s: de-duplication id must not be empty", subject)
	}
	for key := range header {
		if isJetStreamHeader(key) {
			return nil, fmt.Errorf("publish to %s: header %q is reserved for JetStream", subject, key)
		}
	}
	return &nats.Msg{Subject: subject, Data: payload, Header: cloneHeader(header)}, nil
}

// publish sends one message with a de-duplication id and waits for the
// JetStream acknowledgement, retrying transient failures until ctx ends.
func (q *Queue) publish(ctx context.Context, stream, subject, dedupID string, payload []byte, header Header) (uint64, bool, error) {
	q.wrote(stream)
	msg, err := newPublishMsg(subject, dedupID, payload, header)
	if err != nil {
		return 0, false, err
	}
	var ack *jetstream.PubAck
	err = retryTransient(ctx, q.cfg.PublishTimeout, func(attemptCtx context.Context) error {
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

// isJetStreamHeader reports whether a header name is JetStream's
// (Nats-Msg-Id, Nats-Expected-Stream, ...), in any case, without
// lower-casing a copy of it: every message read and published asks.
func isJetStreamHeader(key string) bool {
	return len(key) >= len(natsHeaderPrefix) && strings.EqualFold(key[:len(natsHeaderPrefix)], natsHeaderPrefix)
}

// publicHeader removes JetStream's own headers from a message read from
// the server and returns what is left. It changes h rather than copying
// it (a copy per message read was 2% of the bytes a delivery allocates):
// h must be a header nothing else reads, and what JetStream's headers
// carry (the de-duplication id) must be read first.
func publicHeader(h nats.Header) Header {
	for k := range h {
		if isJetStreamHeader(k) {
			delete(h, k)
		}
	}
	return h
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
