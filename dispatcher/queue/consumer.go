package queue

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Consumer defaults for zero ConsumerOptions fields.
const (
	// DefaultEventMaxAckPending is no limit: JetStream counts an event
	// waiting for its redelivery as pending, and the router returns events
	// with a delay (a failed fan-out, an unmatched event held while its
	// namespace is in transition). With a limit, 1,000 such events of one
	// namespace would stop fan-out for every namespace. What the router has
	// in hand is bounded by its fetch batch instead.
	DefaultEventMaxAckPending = -1
	// DefaultEventAckWait is how long fan-out of one event may take.
	DefaultEventAckWait = 30 * time.Second
	// DefaultDeliveryMaxAckPending bounds an endpoint's deliveries that are
	// in flight or waiting for a retry.
	DefaultDeliveryMaxAckPending = 1000
	// DefaultDeliveryAckWait is how long one delivery attempt may take
	// without calling InProgress.
	DefaultDeliveryAckWait = time.Minute
	// DefaultFetchWait is the longest Fetch waits for a first message.
	DefaultFetchWait = 5 * time.Second
)

// ConsumerOptions tune a durable consumer. Zero fields take the defaults of
// the consumer's kind. Calling EventConsumer or DeliveryConsumer again with
// different options updates the consumer in place; messages and delivery
// counts are kept.
type ConsumerOptions struct {
	// MaxAckPending is how many messages may be delivered and not yet
	// acknowledged at once, across all dispatcher replicas. JetStream counts
	// a message waiting for its NakWithDelay redelivery as pending too, so
	// this bounds in-flight plus backing-off messages; it is not the
	// endpoint's maxInFlight, which the delivery stage enforces itself. Set it
	// to 1 for an Ordered endpoint: the next message is then not delivered
	// before the current one is acknowledged, even across retries. A
	// negative value means no limit.
	MaxAckPending int

	// AckWait is how long a delivered message may stay unacknowledged before
	// JetStream redelivers it. Attempts that may take longer call
	// Message.InProgress to extend it.
	AckWait time.Duration

	// FetchWait is the longest Fetch waits for a message when its context
	// has no earlier deadline. Defaults to 5s.
	FetchWait time.Duration
}

// Consumer is a durable pull consumer. Several dispatcher replicas using the
// same consumer share its messages: each message goes to one of them at a
// time.
type Consumer struct {
	q         *Queue
	consumer  jetstream.Consumer
	name      string
	fetchWait time.Duration
	pull      *puller
}

// EventConsumer creates or updates the durable consumer of all events, for
// the fan-out stage, and returns it. The events stream is a work queue, which
// admits one consumer: every dispatcher replica must use the same name.
func (q *Queue) EventConsumer(ctx context.Context, name string, opts ConsumerOptions) (*Consumer, error) {
	if name == "" || SubjectToken(name) != name {
		return nil, fmt.Errorf("event consumer name %q: must be non-empty and contain only [a-z0-9-]", name)
	}
	opts = opts.withDefaults(DefaultEventMaxAckPending, DefaultEventAckWait)
	return q.consumer(ctx, q.events, jetstream.ConsumerConfig{
		Durable:       name,
		Description:   "Herald fan-out of ingested events",
		FilterSubject: eventsPrefix + ".*",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       opts.AckWait,
		MaxAckPending: opts.MaxAckPending,
		// Retries are decided by the router; JetStream never gives up.
		MaxDeliver:    -1,
		DeliverPolicy: jetstream.DeliverAllPolicy,
	}, opts.FetchWait)
}

// DeliveryConsumer creates or updates the durable consumer of one endpoint's
// deliveries and returns it. Its messages carry NumDelivered, the attempt
// number; the delivery stage retries with Message.NakWithDelay and gives up
// with Queue.DeadLetter.
func (q *Queue) DeliveryConsumer(ctx context.Context, namespace, endpoint string, opts ConsumerOptions) (*Consumer, error) {
	if err := validateEndpoint(namespace, endpoint); err != nil {
		return nil, err
	}
	opts = opts.withDefaults(DefaultDeliveryMaxAckPending, DefaultDeliveryAckWait)
	return q.consumer(ctx, q.deliveries, jetstream.ConsumerConfig{
		Durable:       deliveryConsumerName(namespace, endpoint),
		Description:   fmt.Sprintf("Herald deliveries to WebhookEndpoint %s/%s", namespace, endpoint),
		FilterSubject: DeliverySubject(namespace, endpoint),
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       opts.AckWait,
		MaxAckPending: opts.MaxAckPending,
		// Retries and giving up are the delivery stage's policy (attempts and
		// age from the endpoint spec); JetStream never drops a delivery.
		MaxDeliver:    -1,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		Metadata: map[string]string{
			"herald.dev/namespace": namespace,
			"herald.dev/endpoint":  endpoint,
		},
	}, opts.FetchWait)
}

func (o ConsumerOptions) withDefaults(maxAckPending int, ackWait time.Duration) ConsumerOptions {
	if o.MaxAckPending == 0 {
		o.MaxAckPending = maxAckPending
	}
	if o.AckWait <= 0 {
		o.AckWait = ackWait
	}
	if o.FetchWait <= 0 {
		o.FetchWait = DefaultFetchWait
	}
	return o
}

func (q *Queue) consumer(ctx context.Context, stream jetstream.Stream, cc jetstream.ConsumerConfig, fetchWait time.Duration) (*Consumer, error) {
	var consumer jetstream.Consumer
	err := retryTransient(ctx, q.cfg.PublishTimeout, func(attemptCtx context.Context) error {
		var err error
		consumer, err = stream.CreateOrUpdateConsumer(attemptCtx, cc)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("create or update consumer %s on %s: %w", cc.Durable, stream.CachedInfo().Config.Name, classify(err))
	}
	c := &Consumer{q: q, consumer: consumer, name: cc.Durable, fetchWait: fetchWait,
		pull: newPuller(q.nc, stream.CachedInfo().Config.Name, cc.Durable)}
	q.track(c)
	return c, nil
}

// Name is the durable consumer name.
func (c *Consumer) Name() string { return c.name }

// Fetch waits until at least one message is available, then returns it
// together with up to limit-1 further messages that were waiting behind it
// when it was delivered (at most 128 in all). It
// returns no messages and no error when none arrived within the consumer's
// FetchWait, so callers loop; it returns ctx's error once ctx ends.
//
// Fetch asks only for as many messages as the caller can handle now, so
// messages are not buffered in the client while their AckWait runs. Its
// pull requests are answered on one inbox for the Consumer's lifetime
// (see puller); a request still open when Fetch returns is the next
// Fetch's, and Close hands back whatever arrives for it. Fetch is not safe
// for concurrent use.
func (c *Consumer) Fetch(ctx context.Context, limit int) ([]*Message, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	limit = min(max(1, limit), inboxCapacity/2)
	p := c.pull
	if err := p.subscribe(); err != nil {
		return nil, c.fetchError(ctx, err)
	}
	// Answers to requests an earlier Fetch stopped waiting for come first.
	raw, err := p.buffered(limit)
	if err != nil {
		return c.messages(raw), c.fetchError(ctx, err)
	}
	if len(raw) == 0 {
		m, ok, err := p.waitOne(ctx, c.fetchWait)
		if err != nil {
			return nil, c.fetchError(ctx, err)
		}
		if !ok {
			if deadline, has := ctx.Deadline(); has && !deadline.After(time.Now().Add(c.fetchWait)) {
				// The server ends a pull request a little before the deadline
				// it was given; sit out the rest so the caller sees its context
				// end instead of an empty result it would retry.
				<-ctx.Done()
			}
			return nil, ctx.Err()
		}
		raw = append(raw, m)
	}
	msgs := c.messages(raw)
	if len(msgs) == 0 {
		return nil, nil
	}
	// The last message says how many more were waiting when it was
	// delivered; at a modest rate that is none, and asking would cost a
	// round trip per message for an empty answer.
	if waiting := msgs[len(msgs)-1].Pending; len(msgs) < limit && waiting > 0 {
		more, err := p.noWait(int(min(uint64(limit-len(msgs)), waiting)))
		msgs = append(msgs, c.messages(more)...)
		if err != nil {
			// The messages are delivered to us already; hand them over and
			// let the next Fetch report a persistent problem.
			return msgs, nil
		}
	}
	return msgs, nil
}

// Close ends the Consumer's pull requests and returns the messages that
// arrived for them and were not fetched to the queue, for immediate
// redelivery. The durable consumer itself stays. Fetch fails after Close.
func (c *Consumer) Close() {
	c.pull.close()
	c.q.untrack(c)
}

func (c *Consumer) fetchError(ctx context.Context, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil {
		return ctxErr
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) {
		return nil // FetchWait passed without messages
	}
	return fmt.Errorf("fetch from consumer %s: %w", c.name, classify(err))
}

// messages wraps delivered messages, terminating those no stage can
// process.
func (c *Consumer) messages(raw []*nats.Msg) []*Message {
	msgs := make([]*Message, 0, len(raw))
	for _, m := range raw {
		msg, err := newMessage(m, c.q.nc)
		if err != nil {
			// Not a subject this package publishes to (a foreign client
			// wrote to a Herald stream): nobody can process it, so take it
			// out of the queue instead of redelivering it for ever.
			c.q.log.Error(err, "Terminating unprocessable message", "consumer", c.name, "subject", m.Subject)
			_ = terminate(c.q.nc, m.Reply, err.Error())
			continue
		}
		msgs = append(msgs, msg)
	}
	return msgs
}

// Pending is the number of messages of this consumer not yet acknowledged:
// waiting to be delivered plus delivered and unacknowledged (in flight or
// waiting for a delayed redelivery).
func (c *Consumer) Pending(ctx context.Context) (uint64, error) {
	info, err := c.consumer.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("consumer %s info: %w", c.name, err)
	}
	return info.NumPending + uint64(info.NumAckPending), nil
}

// Message is one message delivered by a Consumer. Exactly one of Ack,
// NakWithDelay, Nak, Term or Queue.DeadLetter should end its processing;
// InProgress may be called any number of times before that.
type Message struct {
	// Namespace is the namespace the message was published for.
	Namespace string
	// Endpoint is the WebhookEndpoint name of a delivery or dead letter;
	// empty for an event.
	Endpoint string
	// Subject is the JetStream subject the message is stored under.
	Subject string
	// Data is the payload as published.
	Data []byte
	// Header holds the headers as published (without JetStream's own).
	Header Header
	// DedupID is the de-duplication id the message was published with.
	DedupID string
	// Sequence is the message's sequence number in its stream.
	Sequence uint64
	// NumDelivered is how often the message has been delivered to the
	// consumer, this time included: 1 on the first attempt. It counts
	// redeliveries after Nak, NakWithDelay and an expired AckWait.
	NumDelivered uint64
	// Timestamp is when the message was stored.
	Timestamp time.Time
	// Pending is how many further messages were waiting for the consumer
	// when this one was delivered (not counting messages delivered and not
	// yet acknowledged): the backlog behind it, for sizing the next Fetch.
	Pending uint64

	msg  *nats.Msg
	conn *nats.Conn
}

func newMessage(m *nats.Msg, conn *nats.Conn) (*Message, error) {
	meta, err := m.Metadata()
	if err != nil {
		return nil, fmt.Errorf("message metadata: %w", err)
	}
	namespace, endpoint, err := parseSubject(m.Subject)
	if err != nil {
		return nil, err
	}
	dedupID := m.Header.Get(jetstream.MsgIDHeader)
	return &Message{
		Namespace:    namespace,
		Endpoint:     endpoint,
		Subject:      m.Subject,
		Data:         m.Data,
		Header:       publicHeader(m.Header),
		DedupID:      dedupID,
		Sequence:     meta.Sequence.Stream,
		NumDelivered: meta.NumDelivered,
		Timestamp:    meta.Timestamp,
		Pending:      meta.NumPending,
		msg:          m,
		conn:         conn,
	}, nil
}

// IngestedAt is when the message's event was accepted at ingest
// (HeaderIngestedAt, which fan-out copies onto deliveries), or when the
// message was stored if that header is missing or unreadable.
func (m *Message) IngestedAt() time.Time { return IngestedAt(m.Header, m.Timestamp) }

// LagBuckets are the buckets of the histograms of the time since an
// event's HeaderIngestedAt (herald_router_lag_seconds,
// herald_delivery_start_lag_seconds): fine below 100 ms, where a healthy
// dispatcher's lag is, and up to minutes for a backlog.
var LagBuckets = []float64{0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300}

// IngestedAt reads HeaderIngestedAt from a delivery's header; fallback
// when it is missing or unreadable.
func IngestedAt(h Header, fallback time.Time) time.Time {
	if v := h.Get(HeaderIngestedAt); v != "" {
		if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
			return t
		}
	}
	return fallback
}

// QueuedAt is when the delivery's current round of attempts began: when
// it was queued again (HeaderQueuedAt), or else IngestedAt. Its
// retry.maxAge counts from it.
func (m *Message) QueuedAt() time.Time {
	if v := m.Header.Get(HeaderQueuedAt); v != "" {
		if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
			return t
		}
	}
	return m.IngestedAt()
}

// Ack acknowledges the message and waits for the server to confirm, so that
// after a nil return the message will not be redelivered (on a work-queue
// stream it is then deleted).
func (m *Message) Ack(ctx context.Context) error {
	if err := m.msg.AckSync(nats.Context(ctx)); err != nil {
		return fmt.Errorf("ack message %d on %s: %w", m.Sequence, m.Subject, err)
	}
	return nil
}

// AckNoWait acknowledges the message without waiting for the server to
// confirm: one message sent, no round trip. The hot paths use it (the
// router after an event's deliveries are stored, the delivery stage after
// a receiver's 2xx) because losing the acknowledgement costs no event:
// the message comes back after AckWait, where a fan-out is de-duplicated
// (the duplicate window outlasts the events' AckWait) and a delivery is
// attempted again with the same webhook-id, which at-least-once allows.
// An acknowledgement is lost only with the connection to the server, and a
// confirmed one would not survive that either. A stage that stops calls
// ConfirmAcknowledged on its last one, so that stopping the embedded server
// next cannot drop acknowledgements still queued for their consumer. Use
// Ack where the caller's next step relies on the message being gone.
func (m *Message) AckNoWait() error {
	if err := m.msg.Ack(); err != nil {
		return fmt.Errorf("ack message %d on %s: %w", m.Sequence, m.Subject, err)
	}
	return nil
}

// ConfirmAcknowledged sends m's acknowledgement again and waits for the
// server to answer it. A consumer's acknowledgements are processed in the
// order they arrive, so once it returns every acknowledgement sent before
// it on this connection for m's consumer has been processed too: a stage
// that acknowledged with AckNoWait calls it on its last acknowledged
// message when it stops, so that the server stopping next cannot drop them
// and bring their messages back as duplicates. m must have been
// acknowledged already.
func (m *Message) ConfirmAcknowledged(ctx context.Context) error {
	_, err := m.conn.RequestWithContext(ctx, m.msg.Reply, []byte("+ACK"))
	if errors.Is(err, nats.ErrNoResponders) {
		return nil // the consumer is gone, and what was queued for it with it
	}
	if err != nil {
		return fmt.Errorf("confirm acknowledgements up to message %d on %s: %w", m.Sequence, m.Subject, err)
	}
	return nil
}

// Nak asks for immediate redelivery.
func (m *Message) Nak() error {
	if err := m.msg.Nak(); err != nil {
		return fmt.Errorf("nak message %d on %s: %w", m.Sequence, m.Subject, err)
	}
	return nil
}

// NakWithDelay asks for redelivery after delay, the retry backoff. The
// server keeps the timer, so the retry survives a dispatcher restart (after
// which AckWait decides). Until redelivery the message counts against
// MaxAckPending. Like Nak, InProgress and Term it is not confirmed by the
// server: if it is lost, the message comes back after AckWait instead.
func (m *Message) NakWithDelay(delay time.Duration) error {
	if err := m.msg.NakWithDelay(delay); err != nil {
		return fmt.Errorf("nak message %d on %s with delay %s: %w", m.Sequence, m.Subject, delay, err)
	}
	return nil
}

// InProgress resets the message's AckWait: the attempt is still running.
func (m *Message) InProgress() error {
	if err := m.msg.InProgress(); err != nil {
		return fmt.Errorf("mark message %d on %s in progress: %w", m.Sequence, m.Subject, err)
	}
	return nil
}

// Term stops redelivery of a message that can never be processed (for
// example an event payload that does not decode) and removes it from the
// queue. Use Queue.DeadLetter for deliveries, which keeps them for replay.
func (m *Message) Term(reason string) error {
	if err := terminate(m.conn, m.msg.Reply, reason); err != nil {
		return fmt.Errorf("terminate message %d on %s: %w", m.Sequence, m.Subject, err)
	}
	return nil
}

// terminate sends a message's +TERM acknowledgement with a reason, which
// the server reports in its advisory.
func terminate(nc *nats.Conn, reply, reason string) error {
	return nc.Publish(reply, []byte("+TERM "+reason))
}
