package queue

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/herald-dev/herald/dispatcher/internal/fieldhash"
)

// Pending is the number of deliveries queued for an endpoint and not yet
// acknowledged: waiting for a first attempt, in flight, or waiting for a
// retry. It is the endpoint consumer's NumPending plus NumAckPending, or, before
// the delivery stage created the consumer, the number of stored deliveries.
func (q *Queue) Pending(ctx context.Context, namespace, endpoint string) (uint64, error) {
	if err := validateEndpoint(namespace, endpoint); err != nil {
		return 0, err
	}
	consumer, err := q.deliveries.Consumer(ctx, deliveryConsumerName(namespace, endpoint))
	switch {
	case err == nil:
		info := consumer.CachedInfo() // fetched by Consumer just now
		return info.NumPending + uint64(info.NumAckPending), nil
	case !errors.Is(err, jetstream.ErrConsumerNotFound):
		return 0, fmt.Errorf("pending deliveries for %s/%s: %w", namespace, endpoint, err)
	}
	return q.subjectCount(ctx, q.deliveries, DeliverySubject(namespace, endpoint))
}

// OldestPending is when the oldest delivery still queued for an endpoint
// was stored; ok is false when none is. HERALD_DELIVERIES is a work queue:
// an acknowledged delivery is removed, and a retry is a NAK with a delay,
// which keeps the message and its time. So the first message stored on the
// endpoint's subject is the oldest one waiting, in flight or backing off.
func (q *Queue) OldestPending(ctx context.Context, namespace, endpoint string) (stored time.Time, ok bool, err error) {
	if err := validateEndpoint(namespace, endpoint); err != nil {
		return time.Time{}, false, err
	}
	msg, err := q.deliveries.GetMsg(ctx, 1, jetstream.WithGetMsgSubject(DeliverySubject(namespace, endpoint)))
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return time.Time{}, false, nil
	case err != nil:
		return time.Time{}, false, fmt.Errorf("oldest pending delivery of %s/%s: %w", namespace, endpoint, err)
	}
	return msg.Time, true, nil
}

// DeadLetterCount is the number of dead-lettered deliveries kept for an
// endpoint.
func (q *Queue) DeadLetterCount(ctx context.Context, namespace, endpoint string) (uint64, error) {
	if err := validateEndpoint(namespace, endpoint); err != nil {
		return 0, err
	}
	return q.subjectCount(ctx, q.deadLetter, DeadLetterSubject(namespace, endpoint))
}

func (q *Queue) subjectCount(ctx context.Context, stream jetstream.Stream, subject string) (uint64, error) {
	info, err := stream.Info(ctx, jetstream.WithSubjectFilter(subject))
	if err != nil {
		return 0, fmt.Errorf("count messages on %s: %w", subject, err)
	}
	return info.State.Subjects[subject], nil
}

// ReplayDeadLetters moves the dead-lettered deliveries of an endpoint back
// into its delivery queue, oldest first, and returns how many it moved. Each
// replayed delivery starts again with NumDelivered 1, the headers it had
// before it was dead-lettered, and its maxAge counted from the replay
// (RequeueHeader).
//
// Every delivery is re-queued before it is removed from the dead-letter
// stream, so an interrupted replay loses nothing; replaying again within the
// duplicate window does not queue twice what an interrupted replay already
// queued. Deliveries dead-lettered while the replay runs wait for the next
// one.
func (q *Queue) ReplayDeadLetters(ctx context.Context, namespace, endpoint string) (int, error) {
	last, err := q.DeadLetterPosition(ctx)
	if err != nil {
		return 0, fmt.Errorf("replay dead letters of %s/%s: %w", namespace, endpoint, err)
	}
	replayed := 0
	now := time.Now()
	err = q.DeadLetters(ctx, namespace, endpoint, last, func(dl *StoredDeadLetter) error {
		// A fresh id: the original may still be in the duplicate window of the
		// deliveries stream. It derives from the dead letter's sequence, so a
		// repeated replay of the same dead letter is de-duplicated.
		dedupID := fieldhash.Hex("herald-replay/v1", dl.DedupID, strconv.FormatUint(dl.Sequence, 10))
		if _, _, err := q.PublishDelivery(ctx, namespace, endpoint, dedupID, dl.Data, RequeueHeader(dl.Header, now)); err != nil {
			return fmt.Errorf("replay dead letter %d of %s/%s: %w", dl.Sequence, namespace, endpoint, err)
		}
		if err := q.DeleteDeadLetter(ctx, dl.Sequence); err != nil {
			return err
		}
		replayed++
		return nil
	})
	if replayed > 0 {
		q.log.Info("Replayed dead-lettered deliveries", "namespace", namespace, "endpoint", endpoint, "count", replayed)
	}
	return replayed, err
}

// StoredDeadLetter is one dead-lettered delivery as the dead-letter stream
// keeps it.
type StoredDeadLetter struct {
	// Sequence is its sequence in the dead-letter stream.
	Sequence uint64
	// Data is the delivery's payload, the stored CloudEvent.
	Data []byte
	// Header holds the delivery's headers and the dead-letter headers
	// (HeaderDeadLetterReason, …), without JetStream's own.
	Header Header
	// DedupID is the id the dead letter was stored with.
	DedupID string
	// Time is when it was dead-lettered.
	Time time.Time
}

// DeadLetterPosition is the last sequence of the dead-letter stream: the
// upper bound of a DeadLetters scan that should not see dead letters
// stored after it started.
func (q *Queue) DeadLetterPosition(ctx context.Context) (uint64, error) {
	info, err := q.deadLetter.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("read the dead-letter stream: %w", err)
	}
	return info.State.LastSeq, nil
}

// DeadLetters calls fn for each dead letter of an endpoint stored at or
// before sequence upTo, oldest first, until fn returns an error, which
// DeadLetters returns.
func (q *Queue) DeadLetters(ctx context.Context, namespace, endpoint string, upTo uint64, fn func(*StoredDeadLetter) error) error {
	if err := validateEndpoint(namespace, endpoint); err != nil {
		return err
	}
	subject := DeadLetterSubject(namespace, endpoint)
	for seq := uint64(1); seq <= upTo; {
		raw, err := q.deadLetter.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subject))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read dead letters of %s/%s at or after %d: %w", namespace, endpoint, seq, err)
		}
		if raw.Sequence > upTo {
			return nil
		}
		dedupID := raw.Header.Get(jetstream.MsgIDHeader)
		dl := &StoredDeadLetter{
			Sequence: raw.Sequence,
			Data:     raw.Data,
			Header:   publicHeader(raw.Header),
			DedupID:  dedupID,
			Time:     raw.Time,
		}
		if err := fn(dl); err != nil {
			return err
		}
		seq = raw.Sequence + 1
	}
	return nil
}

// DeleteDeadLetter removes a dead letter from the dead-letter stream once
// it is queued again. Removing one already gone is not an error.
func (q *Queue) DeleteDeadLetter(ctx context.Context, seq uint64) error {
	if err := q.deadLetter.DeleteMsg(ctx, seq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		return fmt.Errorf("remove dead letter %d: %w", seq, err)
	}
	return nil
}

// RequeueHeader is the header of a delivery queued again: its own headers
// (webhook-id, ingest time, Subscriptions) without the dead-letter ones,
// and HeaderQueuedAt set to now, so its retry.maxAge counts from the
// requeue.
func RequeueHeader(h Header, now time.Time) Header {
	out := cloneHeader(h)
	out.Del(HeaderDeadLetterReason)
	out.Del(HeaderDeadLetterAttempts)
	out.Del(HeaderDeadLetterTime)
	out.Set(HeaderQueuedAt, now.UTC().Format(time.RFC3339Nano))
	return out
}

// Mark is a position in the delivery and dead-letter streams: what was
// stored before it was taken.
type Mark struct{ deliveries, deadLetters uint64 }

// Mark returns the current end of the delivery and dead-letter streams.
// Take it when an endpoint's deletion is seen, before anything can be
// queued for an endpoint recreated under the same name.
func (q *Queue) Mark(ctx context.Context) (Mark, error) {
	var last [2]uint64
	for i, stream := range []jetstream.Stream{q.deliveries, q.deadLetter} {
		info, err := stream.Info(ctx)
		if err != nil {
			return Mark{}, fmt.Errorf("read stream positions: %w", err)
		}
		last[i] = info.State.LastSeq
	}
	return Mark{deliveries: last[0], deadLetters: last[1]}, nil
}

// RemoveEndpoint deletes what the queue holds for an endpoint that was
// deleted: its queued deliveries and dead letters stored before mark and,
// unless keepConsumer, its consumer. Deliveries stored after mark belong to
// an endpoint recreated under the same name and are kept; so is the
// consumer when the caller knows such an endpoint exists (keepConsumer),
// because the retry timers of its deliveries live in it. A zero Mark
// removes everything stored. Removing an endpoint that has nothing queued
// is not an error.
func (q *Queue) RemoveEndpoint(ctx context.Context, namespace, endpoint string, mark Mark, keepConsumer bool) error {
	if err := validateEndpoint(namespace, endpoint); err != nil {
		return err
	}
	if !keepConsumer {
		if err := q.ReleaseDeliveryConsumer(ctx, namespace, endpoint); err != nil {
			return fmt.Errorf("remove endpoint %s/%s: %w", namespace, endpoint, err)
		}
	}
	purge := func(stream jetstream.Stream, subject string, last uint64) error {
		opts := []jetstream.StreamPurgeOpt{jetstream.WithPurgeSubject(subject)}
		if last > 0 {
			opts = append(opts, jetstream.WithPurgeSequence(last+1))
		}
		return stream.Purge(ctx, opts...)
	}
	if mark == (Mark{}) {
		var err error
		if mark, err = q.Mark(ctx); err != nil {
			return fmt.Errorf("remove endpoint %s/%s: %w", namespace, endpoint, err)
		}
	}
	if err := purge(q.deliveries, DeliverySubject(namespace, endpoint), mark.deliveries); err != nil {
		return fmt.Errorf("remove endpoint %s/%s: purge deliveries: %w", namespace, endpoint, err)
	}
	if err := purge(q.deadLetter, DeadLetterSubject(namespace, endpoint), mark.deadLetters); err != nil {
		return fmt.Errorf("remove endpoint %s/%s: purge dead letters: %w", namespace, endpoint, err)
	}
	return nil
}

// StoredEndpoints returns every endpoint the queue holds anything for:
// queued deliveries, dead letters or a delivery consumer. The dispatcher
// removes those of endpoints that no longer exist at start, for endpoints
// deleted while no dispatcher ran.
func (q *Queue) StoredEndpoints(ctx context.Context) (map[EndpointKey]struct{}, error) {
	out := map[EndpointKey]struct{}{}
	for _, s := range []struct {
		stream jetstream.Stream
		prefix string
	}{{q.deliveries, deliveriesPrefix}, {q.deadLetter, deadLetterPrefix}} {
		info, err := s.stream.Info(ctx, jetstream.WithSubjectFilter(s.prefix+".*.*"))
		if err != nil {
			return nil, fmt.Errorf("list endpoints with stored messages: %w", err)
		}
		for subject := range info.State.Subjects {
			if namespace, endpoint, err := parseSubject(subject); err == nil && endpoint != "" {
				out[EndpointKey{namespace, endpoint}] = struct{}{}
			}
		}
	}
	consumers := q.deliveries.ListConsumers(ctx)
	for info := range consumers.Info() {
		namespace, endpoint := info.Config.Metadata["herald.dev/namespace"], info.Config.Metadata["herald.dev/endpoint"]
		if namespace != "" && endpoint != "" {
			out[EndpointKey{namespace, endpoint}] = struct{}{}
		}
	}
	if err := consumers.Err(); err != nil {
		return nil, fmt.Errorf("list delivery consumers: %w", err)
	}
	return out, nil
}

// ReleaseDeliveryConsumer deletes an endpoint's delivery consumer while the
// endpoint is idle, to free what the server keeps for it; the endpoint's
// queued deliveries, if any arrive meanwhile, stay in the stream and are
// delivered once DeliveryConsumer creates the consumer again (it starts at
// the oldest stored delivery). Only call it when Pending is zero: retry
// timers and delivery counts of unacknowledged deliveries live in the
// consumer and would be reset. Releasing a consumer that does not exist is
// not an error.
func (q *Queue) ReleaseDeliveryConsumer(ctx context.Context, namespace, endpoint string) error {
	if err := validateEndpoint(namespace, endpoint); err != nil {
		return err
	}
	name := deliveryConsumerName(namespace, endpoint)
	if err := q.deliveries.DeleteConsumer(ctx, name); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return fmt.Errorf("release delivery consumer of %s/%s: %w", namespace, endpoint, err)
	}
	return nil
}

// EndpointKey names an endpoint by namespace and name.
type EndpointKey struct{ Namespace, Name string }

// EndpointCounts are an endpoint's deliveries in the queue: Pending as
// Pending counts them, DeadLettered as DeadLetterCount does.
type EndpointCounts struct{ Pending, DeadLettered uint64 }

// Counts returns the counts of endpoints with two requests whatever their
// number: each stream's per-subject counts, which the server keeps. Asking
// per endpoint cost two requests per endpoint, which with a thousand idle
// endpoints polled every few seconds was most of an idle dispatcher's CPU.
// HERALD_DELIVERIES is a work queue, so what it stores for an endpoint is
// exactly what its consumer has not had acknowledged.
func (q *Queue) Counts(ctx context.Context, endpoints []EndpointKey) (map[EndpointKey]EndpointCounts, error) {
	queued, err := q.QueuedEndpoints(ctx)
	if err != nil {
		return nil, err
	}
	dead, err := q.subjectCounts(ctx, q.deadLetter, deadLetterPrefix+".*.*")
	if err != nil {
		return nil, fmt.Errorf("count dead-lettered deliveries: %w", err)
	}
	out := make(map[EndpointKey]EndpointCounts, len(endpoints))
	for _, k := range endpoints {
		out[k] = EndpointCounts{Pending: queued[k], DeadLettered: dead[k]}
	}
	return out, nil
}

// QueuedEndpoints returns every endpoint that has deliveries stored (queued,
// in flight or waiting for a retry) with their number. One request answers
// for all endpoints.
func (q *Queue) QueuedEndpoints(ctx context.Context) (map[EndpointKey]uint64, error) {
	out, err := q.subjectCounts(ctx, q.deliveries, deliveriesPrefix+".*.*")
	if err != nil {
		return nil, fmt.Errorf("list endpoints with queued deliveries: %w", err)
	}
	return out, nil
}

// subjectCounts counts the messages stream holds per endpoint on the
// subjects matching filter.
func (q *Queue) subjectCounts(ctx context.Context, stream jetstream.Stream, filter string) (map[EndpointKey]uint64, error) {
	info, err := stream.Info(ctx, jetstream.WithSubjectFilter(filter))
	if err != nil {
		return nil, err
	}
	out := make(map[EndpointKey]uint64, len(info.State.Subjects))
	for subject, n := range info.State.Subjects {
		namespace, endpoint, err := parseSubject(subject)
		if err != nil || endpoint == "" {
			continue // not published by this package; Fetch terminates it
		}
		out[EndpointKey{namespace, endpoint}] += n
	}
	return out, nil
}
