// Package queue owns the dispatcher's durable queue: NATS JetStream, either
// embedded in the dispatcher process (the default: single replica, file store
// on a PersistentVolume) or an external NATS cluster (replicated streams).
// Both modes share every code path after the connection is made.
//
// The package defines three streams and the subjects in them:
//
//   - HERALD_EVENTS, herald.events.<namespace>: ingested CloudEvents, read by
//     the fan-out stage (router) through one durable consumer.
//   - HERALD_DELIVERIES, herald.deliveries.<namespace>.<endpoint>: one
//     message per event per endpoint after fan-out, read by the delivery stage
//     through one durable consumer per endpoint.
//   - HERALD_DEADLETTER, herald.deadletter.<namespace>.<endpoint>: deliveries
//     that exhausted their retries, counted for status and replayable.
//
// Names are escaped into subject tokens by SubjectToken. Publishes carry a
// de-duplication id (EventDedupID, DeliveryDedupID), so retries of a publish,
// repeated ingest of one event and a fan-out re-run after a crash store each
// message once within the duplicate window.
package queue

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Errors callers act on. Publish errors wrap them together with the
// underlying cause.
var (
	// ErrQueueFull means the store or a stream limit is exhausted; ingest
	// answers 503 with Retry-After.
	ErrQueueFull = errors.New("queue is full")
	// ErrMessageTooLarge means the message exceeds the server's maximum
	// payload; ingest answers 413.
	ErrMessageTooLarge = errors.New("message too large for the queue")
	// ErrClosed means the queue was closed.
	ErrClosed = errors.New("queue is closed")
)

// Queue is a connection to JetStream with Herald's streams set up. It is safe
// for concurrent use.
type Queue struct {
	cfg Config
	log logr.Logger

	srv *server.Server // embedded server; nil in external mode
	nc  *nats.Conn
	js  jetstream.JetStream

	events     jetstream.Stream
	deliveries jetstream.Stream
	deadLetter jetstream.Stream

	keepers *keepers

	connClosed chan struct{}
	closeOnce  sync.Once

	// consumers are the Consumers not closed yet, which Close closes
	// first: their inboxes may hold messages to hand back.
	consumersMu sync.Mutex
	consumers   map[*Consumer]struct{}
	closeErr    error
}

// Open connects to JetStream — starting the embedded server first when
// cfg.NATSURL is empty — and creates or updates Herald's streams. Opening a
// store directory that already holds streams recovers their messages and
// consumers. ctx bounds the whole start-up, including waiting for an external
// cluster to elect stream leaders; without a deadline, start-up is bounded by
// DefaultStartTimeout.
func Open(ctx context.Context, cfg Config, log logr.Logger) (*Queue, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultStartTimeout)
		defer cancel()
	}
	q := &Queue{cfg: cfg, log: log, connClosed: make(chan struct{})}

	opts := []nats.Option{
		nats.Name(cfg.ConnectionName),
		nats.DrainTimeout(cfg.DrainTimeout),
		nats.ClosedHandler(func(*nats.Conn) { close(q.connClosed) }),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Info("Disconnected from NATS", "error", err.Error())
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("Reconnected to NATS", "url", nc.ConnectedUrlRedacted())
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subject := ""
			if sub != nil {
				subject = sub.Subject
			}
			log.Error(err, "NATS asynchronous error", "subject", subject)
		}),
	}
	url := cfg.NATSURL
	if cfg.embedded() {
		srv, err := startEmbeddedServer(ctx, cfg, log)
		if err != nil {
			return nil, err
		}
		q.srv = srv
		url = nats.DefaultURL // not dialled: the in-process connection is used
		opts = append(opts, nats.InProcessServer(srv))
	} else {
		authOpts, err := cfg.Auth.options()
		if err != nil {
			return nil, err
		}
		opts = append(opts,
			// Keep reconnecting to any URL of the cluster for as long as the
			// process runs: publishes retry within their context meanwhile,
			// and the connection never gives up for good.
			nats.MaxReconnects(-1),
			nats.ReconnectWait(250*time.Millisecond),
			nats.ReconnectJitter(100*time.Millisecond, time.Second),
		)
		opts = append(opts, authOpts...)
		opts = append(opts, cfg.NATSOptions...)
	}

	nc, err := nats.Connect(url, opts...)
	if err != nil {
		q.shutdownServer()
		target := "embedded server"
		if !cfg.embedded() {
			target = redactURLs(cfg.NATSURL)
		}
		return nil, fmt.Errorf("connect to NATS %s: %w", target, err)
	}
	q.nc = nc
	// The asynchronous publish timeout fails an acknowledgement that never
	// comes (a message lost in a leader change) instead of keeping it in
	// the context's table of publishes in flight, which is bounded
	// (PublishAsyncMaxPending, 4,000 by default: enough for the router,
	// whose batch publishes wait for a free slot).
	if q.js, err = jetstream.New(nc, jetstream.WithDefaultTimeout(cfg.PublishTimeout),
		jetstream.WithPublishAsyncTimeout(cfg.PublishTimeout)); err != nil {
		_ = q.Close()
		return nil, fmt.Errorf("create JetStream context: %w", err)
	}
	if err := q.ensureStreams(ctx); err != nil {
		_ = q.Close()
		return nil, err
	}
	q.startKeepers()
	log.Info("Queue ready", "mode", q.mode(), "replicas", cfg.Replicas, "sync", syncDescription(cfg))
	return q, nil
}

func (q *Queue) mode() string {
	if q.srv != nil {
		return "embedded"
	}
	return "external"
}

func syncDescription(cfg Config) string {
	if !cfg.embedded() {
		return "server-configured"
	}
	if cfg.Sync == SyncAlways {
		return string(SyncAlways)
	}
	return fmt.Sprintf("%s/%s", cfg.Sync, cfg.SyncInterval)
}

// startEmbeddedServer starts an in-process nats-server with JetStream. It
// opens no network listener (DontListen): the dispatcher talks to it over an
// in-process pipe, so nothing else on the pod's network can reach the queue.
func startEmbeddedServer(ctx context.Context, cfg Config, log logr.Logger) (*server.Server, error) {
	opts := &server.Options{
		ServerName: embeddedServerName,
		// Host is only a safeguard: with DontListen nothing is bound.
		Host:       "127.0.0.1",
		DontListen: true,
		JetStream:  true,
		StoreDir:   cfg.StoreDir,
		NoSigs:     true,
		// -1: nats-server sizes the store itself, to 75% of the volume's
		// free space (plus what the recovered streams already use).
		JetStreamMaxStore: -1,
	}
	if cfg.MaxStoreBytes > 0 {
		opts.JetStreamMaxStore = cfg.MaxStoreBytes
	}
	switch cfg.Sync {
	case SyncAlways:
		opts.SyncAlways = true
		opts.SyncInterval = DefaultSyncInterval // unused with SyncAlways
	default:
		opts.SyncInterval = cfg.SyncInterval
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("create embedded NATS server: %w", err)
	}
	srv.SetLoggerV2(serverLogger{log: log.WithName("nats-server")}, log.V(2).Enabled(), false, false)
	srv.Start()

	timeout := DefaultStartTimeout
	if deadline, ok := ctx.Deadline(); ok {
		timeout = max(time.Until(deadline), 0)
	}
	if !srv.ReadyForConnections(timeout) {
		srv.Shutdown()
		srv.WaitForShutdown()
		return nil, fmt.Errorf("embedded NATS server with store %s not ready after %s", cfg.StoreDir, timeout)
	}
	if !srv.JetStreamEnabled() {
		srv.Shutdown()
		srv.WaitForShutdown()
		return nil, fmt.Errorf("embedded NATS server with store %s: JetStream failed to start (see server log)", cfg.StoreDir)
	}
	return srv, nil
}

// streamConfigs are Herald's streams.
//
// Retention:
//   - HERALD_EVENTS and HERALD_DELIVERIES are work queues (WorkQueuePolicy):
//     a message is removed once its consumer acknowledges it, so the store
//     holds the backlog, not the history, and Pending counts equal what is
//     stored. Each has exactly one consumer per subject (one for fan-out, one
//     per endpoint), which is what a work queue allows. Discard is New: when
//     the store is full a publish fails (ingest answers 503) instead of
//     silently dropping the oldest undelivered message.
//     Each also holds one keeper message while traffic flows (keeper.go).
//   - HERALD_DEADLETTER keeps Limits retention: it is an archive that is
//     counted and replayed, not consumed, and its oldest entries may age out.
//
// The price of work-queue retention: JetStream rebuilds its de-duplication
// table at start-up from the messages still stored, so after a restart an
// id whose message was already consumed is forgotten. A publisher retrying an
// already fanned-out event across a dispatcher restart within the duplicate
// window can therefore cause one duplicate delivery; it carries the same
// webhook-id, which the at-least-once contract allows. Limits retention would
// avoid that only by keeping every event for at least the window plus the
// longest fan-out lag, i.e. by storing the full history.
// maxDeliveryConsumers bounds the endpoints one Herald serves.
const maxDeliveryConsumers = 100_000

func (q *Queue) streamConfigs() []jetstream.StreamConfig {
	cfg := q.cfg
	return []jetstream.StreamConfig{
		{
			Name:        EventsStream,
			Description: "Herald: ingested CloudEvents awaiting fan-out",
			Subjects:    []string{eventsPrefix + ".*", eventsKeeperSubject},
			Retention:   jetstream.WorkQueuePolicy,
			Discard:     jetstream.DiscardNew,
			MaxAge:      cfg.EventsMaxAge,
			Duplicates:  cfg.DuplicateWindow,
			Storage:     jetstream.FileStorage,
			Replicas:    cfg.Replicas,
		},
		{
			Name:        DeliveriesStream,
			Description: "Herald: deliveries per endpoint awaiting a successful attempt",
			Subjects:    []string{deliveriesPrefix + ".*.*", deliveriesKeeperSubject},
			// One durable consumer per endpoint: without an explicit limit
			// nats-server caps a stream at 1,000 consumers
			// (JSDefaultMaxConsumersPerStream) and endpoint 1,001 would
			// never be delivered to.
			MaxConsumers: maxDeliveryConsumers,
			Retention:    jetstream.WorkQueuePolicy,
			Discard:      jetstream.DiscardNew,
			MaxAge:       cfg.DeliveriesMaxAge,
			Duplicates:   cfg.DuplicateWindow,
			Storage:      jetstream.FileStorage,
			Replicas:     cfg.Replicas,
		},
		{
			Name:        DeadLetterStream,
			Description: "Herald: deliveries that exhausted their retries",
			Subjects:    []string{deadLetterPrefix + ".*.*"},
			Retention:   jetstream.LimitsPolicy,
			Discard:     jetstream.DiscardOld,
			MaxAge:      cfg.DeadLetterMaxAge,
			Duplicates:  cfg.DuplicateWindow,
			Storage:     jetstream.FileStorage,
			Replicas:    cfg.Replicas,
		},
	}
}

// ensureStreams creates the streams or updates them to the current
// configuration.
func (q *Queue) ensureStreams(ctx context.Context) error {
	handles := []*jetstream.Stream{&q.events, &q.deliveries, &q.deadLetter}
	for i, sc := range q.streamConfigs() {
		stream, err := q.EnsureStream(ctx, sc)
		if err != nil {
			return err
		}
		*handles[i] = stream
	}
	return nil
}

// EnsureStream creates the stream sc or updates it to sc, on the queue's
// JetStream. It retries while the server or cluster is still starting (no
// JetStream responders, no stream leader yet) until ctx ends. Stages with
// a stream of their own (the delivery log) use it too.
func (q *Queue) EnsureStream(ctx context.Context, sc jetstream.StreamConfig) (jetstream.Stream, error) {
	var stream jetstream.Stream
	err := retryTransient(ctx, q.cfg.PublishTimeout, func(attemptCtx context.Context) error {
		var err error
		stream, err = q.js.CreateOrUpdateStream(attemptCtx, sc)
		if err != nil {
			q.log.V(1).Info("Stream not ready yet", "stream", sc.Name, "error", err.Error())
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("create or update stream %s: %w", sc.Name, err)
	}
	return stream, nil
}

// Connected reports whether the queue currently has a connection to
// JetStream, for the dispatcher's readiness probe. In external mode it is
// false while the client fails over to another server.
func (q *Queue) Connected() bool { return q.nc.IsConnected() }

// Close drains the connection — outstanding publishes and acknowledgements
// are flushed — and then shuts the embedded server down, which writes its
// state to disk. Close is idempotent.
func (q *Queue) Close() error {
	q.closeOnce.Do(func() {
		q.closeConsumers()
		q.stopKeepers()
		if q.nc != nil {
			if err := q.nc.Drain(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
				q.closeErr = fmt.Errorf("drain NATS connection: %w", err)
				q.nc.Close()
			}
			select {
			case <-q.connClosed:
			case <-time.After(q.cfg.DrainTimeout + time.Second):
				q.nc.Close()
				q.closeErr = errors.Join(q.closeErr, fmt.Errorf("drain NATS connection: not closed after %s", q.cfg.DrainTimeout))
			}
		}
		q.shutdownServer()
	})
	return q.closeErr
}

func (q *Queue) track(c *Consumer) {
	q.consumersMu.Lock()
	defer q.consumersMu.Unlock()
	if q.consumers == nil {
		q.consumers = map[*Consumer]struct{}{}
	}
	q.consumers[c] = struct{}{}
}

func (q *Queue) untrack(c *Consumer) {
	q.consumersMu.Lock()
	defer q.consumersMu.Unlock()
	delete(q.consumers, c)
}

func (q *Queue) closeConsumers() {
	q.consumersMu.Lock()
	open := make([]*Consumer, 0, len(q.consumers))
	for c := range q.consumers {
		open = append(open, c)
	}
	q.consumersMu.Unlock()
	for _, c := range open {
		c.Close()
	}
}

func (q *Queue) shutdownServer() {
	if q.srv == nil {
		return
	}
	q.srv.Shutdown()
	q.srv.WaitForShutdown()
}

// retryTransient runs op with a per-attempt timeout until it succeeds, fails
// with a permanent error, or ctx ends. Backoff grows from 50ms to 1s.
func retryTransient(ctx context.Context, attemptTimeout time.Duration, op func(context.Context) error) error {
	backoff := 50 * time.Millisecond
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		attemptCtx, cancel := context.WithTimeout(ctx, attemptTimeout)
		err := op(attemptCtx)
		cancel()
		if err == nil {
			return nil
		}
		if !isTransient(err) {
			return err
		}
		timer := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			timer.Stop()
			return errors.Join(ctx.Err(), err)
		case <-timer.C:
		}
		backoff = min(2*backoff, time.Second)
	}
}

// JetStream error codes handled specially (see nats-server errors.json).
const (
	codeClusterNoPeers         = 10005 // no suitable peers for placement (cluster still forming)
	codeClusterNotActive       = 10006
	codeClusterNotAvailable    = 10008
	codeClusterNotLeader       = 10009
	codeInsufficientResources  = 10023
	codeStreamMessageTooLarge  = 10054
	codeStreamStoreFailed      = 10077
	codeDuplicateInProcess     = 10158
	codeJetStreamNotEnabled    = 10076
	codeJetStreamNotEnabledAcc = 10039
)

// isTransient reports whether an operation may succeed when retried: the
// server did not answer (leader election, reconnect in progress) or said it
// is not ready yet. A publish retried after an ambiguous failure is safe
// because it carries the same de-duplication id.
func isTransient(err error) bool {
	switch {
	case errors.Is(err, nats.ErrConnectionClosed), errors.Is(err, nats.ErrConnectionDraining),
		errors.Is(err, nats.ErrMaxPayload), errors.Is(err, context.Canceled):
		return false
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout),
		errors.Is(err, nats.ErrNoResponders), errors.Is(err, jetstream.ErrNoStreamResponse),
		errors.Is(err, nats.ErrConnectionReconnecting), errors.Is(err, nats.ErrDisconnected),
		errors.Is(err, jetstream.ErrJetStreamNotEnabled), errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount):
		return true
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		switch apiErr.ErrorCode {
		case codeClusterNoPeers, codeClusterNotActive, codeClusterNotAvailable, codeClusterNotLeader,
			codeDuplicateInProcess, codeJetStreamNotEnabled, codeJetStreamNotEnabledAcc:
			return true
		}
	}
	return false
}

// classify wraps err with the sentinel error callers act on, if any.
func classify(err error) error {
	if errors.Is(err, nats.ErrMaxPayload) {
		return fmt.Errorf("%w: %w", ErrMessageTooLarge, err)
	}
	if errors.Is(err, nats.ErrConnectionClosed) || errors.Is(err, nats.ErrConnectionDraining) {
		return fmt.Errorf("%w: %w", ErrClosed, err)
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		switch apiErr.ErrorCode {
		case codeInsufficientResources, codeStreamStoreFailed:
			return fmt.Errorf("%w: %w", ErrQueueFull, err)
		case codeStreamMessageTooLarge:
			return fmt.Errorf("%w: %w", ErrMessageTooLarge, err)
		}
	}
	return err
}

// serverLogger forwards the embedded server's log to logr. Notices are
// verbose at start-up (a banner per subsystem), so they go to V(1).
type serverLogger struct{ log logr.Logger }

func (l serverLogger) Noticef(format string, v ...any) { l.log.V(1).Info(fmt.Sprintf(format, v...)) }
func (l serverLogger) Warnf(format string, v ...any) {
	l.log.Info(fmt.Sprintf(format, v...), "level", "warning")
}
func (l serverLogger) Fatalf(format string, v ...any) {
	l.log.Error(nil, fmt.Sprintf(format, v...), "level", "fatal")
}
func (l serverLogger) Errorf(format string, v ...any) { l.log.Error(nil, fmt.Sprintf(format, v...)) }
func (l serverLogger) Debugf(format string, v ...any) { l.log.V(2).Info(fmt.Sprintf(format, v...)) }
func (l serverLogger) Tracef(format string, v ...any) { l.log.V(4).Info(fmt.Sprintf(format, v...)) }

// JetStream returns the JetStream context of the queue's connection, for
// stages that keep their own JetStream state (the health stage's key-value
// bucket). Close still owns the connection.
func (q *Queue) JetStream() jetstream.JetStream { return q.js }

// Conn returns the queue's NATS connection, for stages that publish
// fire-and-forget records to a stream of their own (the delivery log).
// Close still owns the connection.
func (q *Queue) Conn() *nats.Conn { return q.nc }

// Replicas is the replica count of the queue's streams, for stages that
// create streams of their own.
func (q *Queue) Replicas() int { return q.cfg.Replicas }
