// Package router owns fan-out: it reads ingested events from the queue,
// matches them against the Subscriptions of the event's namespace (type and
// source patterns, then the CEL filter) and queues one delivery per matched
// endpoint.
//
// An event whose fan-out is already certain when it is ingested is fanned
// out by the ingest request instead and never enters the events stream
// (FanOutAtIngest, in atingest.go); everything below applies to the
// others.
//
// Fan-out is idempotent. Every delivery is published with a de-duplication
// id derived from the event and the endpoint (queue.DeliveryDedupID), and the
// event is acknowledged only after every delivery publish was acknowledged,
// so a crash in the middle of a fan-out redelivers the event and the second
// fan-out stores only the deliveries the first one did not.
//
// Fan-out is pipelined per namespace: the events of one namespace in a
// fetched batch are matched first, then all their deliveries are published
// in one asynchronous batch (queue.PublishDeliveries), in event order, and
// the events are settled in order. Deliveries to an endpoint are therefore
// stored in the order of their events, with one exception: a delivery
// publish that fails is retried after the deliveries of later events of the
// batch were sent, and those may be stored by then. The queue retries a
// transiently failed publish itself, at the end of the batch; if that fails
// too, the event and every later event of its namespace in the batch are
// returned for redelivery (a later event is never acknowledged ahead of an
// earlier failed one), and the redelivery stores what is missing and finds
// the rest de-duplicated. Either way nothing is queued twice (within the
// queue's duplicate window), but an endpoint can hold a later event's
// delivery before an earlier one's: after a queue failure an Ordered
// endpoint may see events out of order. Preventing that would mean waiting
// for each event's acknowledgements before sending the next event's
// deliveries, the round trip per event this design removes.
package router

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/herald-dev/herald/dispatcher/catalog"
	"github.com/herald-dev/herald/dispatcher/queue"
)

// DefaultConsumerName is the durable consumer every dispatcher replica's
// router shares.
const DefaultConsumerName = "router"

// Defaults for zero Options fields.
const (
	DefaultBatchSize     = 64
	DefaultWorkers       = 4
	DefaultRetryDelay    = time.Second
	DefaultMaxRetryDelay = 30 * time.Second
	// DefaultUnmatchedHold covers a manager restart after an edit, and a
	// reconcile that waits for a Secret: long enough for the usual
	// transition, short enough that a namespace with a broken object does
	// not keep every unmatched event for long.
	DefaultUnmatchedHold = 10 * time.Minute
	// DefaultUnmatchedRetry is how often a held event is matched again.
	DefaultUnmatchedRetry = 2 * time.Second
)

// Catalog is what the router needs from the dispatcher's catalog.
type Catalog interface {
	// Subscriptions returns the Ready, unsuspended Subscriptions of a
	// namespace and the namespace's revision: a number that changes whenever
	// that list changes (a counter shared by all namespaces will do). The
	// router caches its index of a namespace until the revision changes, so
	// the call must be cheap — return the catalog's immutable snapshot, not
	// a copy — and neither side may modify the slice or its elements.
	Subscriptions(namespace string) (subs []*catalog.Subscription, revision uint64)

	// Endpoint returns a Ready WebhookEndpoint. Deliveries are queued for
	// every endpoint the catalog has, suspended ones included (they queue
	// until resumed); a Subscription whose endpoint is missing gets none.
	Endpoint(namespace, name string) (*catalog.Endpoint, bool)

	// InTransition reports whether an object of the namespace has a
	// generation the manager has not settled yet: an event that matches
	// nothing then may match once it has, and is held instead of
	// discarded.
	InTransition(namespace string) bool
}

// MatchReporter is told, after an event's deliveries are queued and the
// event acknowledged, which Subscriptions matched it (health reporting
// counts them in status.matched). Events are acknowledged concurrently, so
// Matched must be safe for concurrent use.
type MatchReporter interface {
	Matched(namespace, subscription string, at time.Time)
}

// Queue is the part of *queue.Queue the router uses.
type Queue interface {
	EventConsumer(ctx context.Context, name string, opts queue.ConsumerOptions) (*queue.Consumer, error)
	// PublishDeliveries publishes a batch of deliveries in slice order and
	// returns one result per entry, in the same order.
	PublishDeliveries(ctx context.Context, batch []queue.DeliveryPublish) []queue.PublishResult
}

// Options tune a Router. Zero fields take defaults.
type Options struct {
	// ConsumerName is the durable event consumer; all replicas must use the
	// same one. Defaults to DefaultConsumerName.
	ConsumerName string
	// Consumer tunes the event consumer (AckWait bounds one batch's fan-out).
	Consumer queue.ConsumerOptions
	// BatchSize is how many events one fetch takes.
	BatchSize int
	// Workers is how many namespaces of a batch are fanned out in parallel.
	// Events of one namespace are fanned out in order, so deliveries to an
	// endpoint are queued in the order this replica received their events
	// (see the package documentation for the exception after a failure).
	Workers int
	// RetryDelay is the redelivery delay after a failed fan-out; it doubles
	// with each further failure of the same event up to MaxRetryDelay.
	RetryDelay    time.Duration
	MaxRetryDelay time.Duration
	// Reporter, when set, is told about matched Subscriptions.
	Reporter MatchReporter
	// Queued, when set, is called once per fetched batch and namespace for
	// every endpoint that got a delivery stored (the delivery stage wakes
	// the endpoint if it is idle). It must be cheap and safe for concurrent
	// use.
	Queued func(namespace, endpoint string)
	// UnmatchedHold is how long after ingest an event that matches nothing
	// is held while its namespace is in transition (Catalog.InTransition);
	// after that, or once the namespace has settled, it is discarded and
	// counted. Zero takes DefaultUnmatchedHold.
	UnmatchedHold time.Duration
	// UnmatchedRetry is how long a held event waits before it is matched
	// again. Zero takes DefaultUnmatchedRetry.
	UnmatchedRetry time.Duration
	// ConfirmSettled, when set, is asked before an event that matched
	// nothing in a namespace that is not in transition is discarded:
	// whether the catalog has caught up, as of a moment after the event
	// was ingested, with the namespace's objects on the API server
	// (Catalog.ConfirmSettled). When it has not, the event is held as in a
	// transition and matched again after retry. Nil discards at once.
	ConfirmSettled func(ctx context.Context, namespace string, since time.Time) (settled bool, retry time.Duration)
	// Registerer registers the router's metrics; nil registers none.
	Registerer prometheus.Registerer
	// Now is the clock; defaults to time.Now.
	Now func() time.Time
}

func (o Options) withDefaults() Options {
	if o.ConsumerName == "" {
		o.ConsumerName = DefaultConsumerName
	}
	if o.BatchSize <= 0 {
		o.BatchSize = DefaultBatchSize
	}
	if o.Workers <= 0 {
		o.Workers = DefaultWorkers
	}
	if o.RetryDelay <= 0 {
		o.RetryDelay = DefaultRetryDelay
	}
	if o.MaxRetryDelay <= 0 {
		o.MaxRetryDelay = DefaultMaxRetryDelay
	}
	if o.UnmatchedHold <= 0 {
		o.UnmatchedHold = DefaultUnmatchedHold
	}
	if o.UnmatchedRetry <= 0 {
		o.UnmatchedRetry = DefaultUnmatchedRetry
	}
	if o.Consumer.AckWait <= 0 {
		o.Consumer.AckWait = queue.DefaultEventAckWait
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

// Router fans events out into deliveries. It is safe for concurrent use;
// Run is meant to be called once.
type Router struct {
	queue   Queue
	catalog Catalog
	log     logr.Logger
	opts    Options
	metrics *metrics

	mu      sync.Mutex
	indexes map[string]*cachedIndex

	// lastAcked is the event acknowledged last, whose confirmation at stop
	// covers every acknowledgement before it (see stopped).
	lastAcked atomic.Pointer[queue.Message]

	// running is set while Run consumes events: FanOutAtIngest acts only
	// then.
	running atomic.Bool
}

type cachedIndex struct {
	revision uint64
	index    *Index
}

// New returns a Router reading from q and matching against cat.
func New(q Queue, cat Catalog, log logr.Logger, opts Options) (*Router, error) {
	opts = opts.withDefaults()
	m, err := newMetrics(opts.Registerer)
	if err != nil {
		return nil, err
	}
	return &Router{queue: q, catalog: cat, log: log, opts: opts, metrics: m, indexes: make(map[string]*cachedIndex)}, nil
}

// Run fans out events until ctx ends. A batch of events already fetched is
// finished — its deliveries queued and its events acknowledged or returned
// for redelivery — before Run returns, bounded by the consumer's AckWait.
// It returns an error only when the consumer cannot be set up.
func (r *Router) Run(ctx context.Context) error {
	consumer, err := r.queue.EventConsumer(ctx, r.opts.ConsumerName, r.opts.Consumer)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("router: %w", err)
	}
	defer consumer.Close()
	r.running.Store(true)
	defer r.running.Store(false)
	r.log.Info("Router started", "consumer", consumer.Name())
	backoff := 100 * time.Millisecond
	for {
		msgs, err := consumer.Fetch(ctx, r.opts.BatchSize)
		if len(msgs) > 0 {
			// Even when ctx ended meanwhile: these are ours until acked.
			r.processBatch(ctx, msgs)
		}
		if ctx.Err() != nil {
			r.stopped()
			return nil
		}
		if err != nil {
			r.log.Error(err, "Fetching events failed", "retryIn", backoff)
			select {
			case <-ctx.Done():
				r.stopped()
				return nil
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 5*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
	}
}

// stopped waits until the server has processed the router's
// acknowledgements, which are not confirmed one by one
// (queue.Message.AckNoWait): stopping the embedded server with some still
// queued would bring their events back, fanned out again.
func (r *Router) stopped() {
	if last := r.lastAcked.Load(); last != nil {
		ctx, cancel := context.WithTimeout(context.Background(), confirmTimeout)
		defer cancel()
		if err := last.ConfirmAcknowledged(ctx); err != nil {
			r.log.Error(err, "Confirming the last acknowledgements failed; their events may be fanned out again after a restart (deliveries de-duplicated within the duplicate window)")
		}
	}
	r.log.Info("Router stopped")
}

// confirmTimeout bounds the confirmation of the acknowledgements at stop.
const confirmTimeout = 5 * time.Second

// processBatch fans out a batch: namespaces in parallel, the events of one
// namespace as one pipelined group (processGroup). Processing is detached
// from ctx so that shutdown lets the batch finish; it is bounded by AckWait,
// after which JetStream would redeliver the events anyway.
func (r *Router) processBatch(ctx context.Context, msgs []*queue.Message) {
	procCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.opts.Consumer.AckWait)
	defer cancel()

	groups := make(map[string][]*queue.Message)
	var order []string
	for _, m := range msgs {
		if _, ok := groups[m.Namespace]; !ok {
			order = append(order, m.Namespace)
		}
		groups[m.Namespace] = append(groups[m.Namespace], m)
	}
	sem := make(chan struct{}, r.opts.Workers)
	var wg sync.WaitGroup
	for _, ns := range order {
		group := groups[ns]
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			r.processGroup(procCtx, ns, group)
		})
	}
	wg.Wait()
}

// processGroup fans out the events of one namespace of a batch and settles
// them in order: an event whose deliveries were all queued is acknowledged;
// the first event with a failed delivery is returned for redelivery after
// its retry delay, and every later event with it, so that no later event is
// acknowledged ahead of it. Events that can never be fanned out
// (undecodable, too large for the queue) are terminated wherever they are:
// they have no deliveries to keep in order.
//
// The acknowledgements are not confirmed (queue.Message.AckNoWait): their
// order does not matter because every acknowledged event's deliveries are
// already stored, and one that is lost brings its event back after AckWait,
// when its fan-out is de-duplicated.
func (r *Router) processGroup(ctx context.Context, namespace string, msgs []*queue.Message) {
	outcomes := r.fanOut(ctx, namespace, msgs)
	var retrying bool
	var retryDelay time.Duration
	for i, m := range msgs {
		out := outcomes[i]
		log := r.log.WithValues("namespace", m.Namespace, "sequence", m.Sequence)
		var permanent *permanentError
		switch {
		case errors.As(out.err, &permanent):
			// The event passed ingest validation, so this is a bug (or a
			// foreign publisher): retrying cannot help.
			log.Error(out.err, "Terminating event that cannot be fanned out")
			r.metrics.events.WithLabelValues(ResultInvalid).Inc()
			if err := m.Term(permanent.Error()); err != nil {
				log.Error(err, "Terminating event failed; it will be redelivered")
			}
		case retrying:
			// Its deliveries may be stored already; the redelivery finds
			// them de-duplicated.
			if err := m.NakWithDelay(retryDelay); err != nil {
				log.Error(err, "Returning event for redelivery failed; it comes back after AckWait")
			}
		case out.err == nil && len(out.result.Endpoints) == 0 && r.hold(ctx, m, &outcomes[i]):
			// Matched nothing while the namespace is in transition, or
			// before the catalog is known to have caught up with it: it
			// may match the new generation. Later events are not held
			// back with it: they matched, or are held on their own.
			r.metrics.held.WithLabelValues(namespace).Inc()
			if err := m.NakWithDelay(outcomes[i].holdFor); err != nil {
				log.Error(err, "Returning held event failed; it comes back after AckWait")
			}
		case out.err != nil:
			retrying = true
			retryDelay = r.retryDelay(m.NumDelivered)
			log.Error(out.err, "Fan-out failed, retrying", "retryIn", retryDelay, "attempt", m.NumDelivered)
			r.metrics.retries.Inc()
			if err := m.NakWithDelay(retryDelay); err != nil {
				log.Error(err, "Returning event for redelivery failed; it comes back after AckWait")
			}
		default:
			r.acknowledge(log, m, out.result)
		}
	}
}

// acknowledge settles an event whose deliveries are all queued and reports
// its matches.
func (r *Router) acknowledge(log logr.Logger, m *queue.Message, res FanOutResult) {
	if err := m.AckNoWait(); err != nil {
		// Every delivery is queued; the redelivered event will find them
		// all de-duplicated. Not counted now, so it is counted once then.
		log.Error(err, "Acknowledging fanned-out event failed; it will be redelivered and de-duplicated")
		return
	}
	r.lastAcked.Store(m)
	if len(res.Endpoints) == 0 {
		result := ResultUnmatched
		if m.NumDelivered > 1 && r.catalog.InTransition(m.Namespace) {
			result = ResultUnmatchedAfterHold
		}
		r.metrics.events.WithLabelValues(result).Inc()
		return
	}
	now := r.opts.Now()
	r.routed(m.Namespace, res, m.IngestedAt(), now)
	log.V(2).Info("Event fanned out", "endpoints", res.Endpoints)
}

// hold reports whether an event that matched nothing is held, and sets
// out.holdFor: for less than UnmatchedHold after ingest, while its
// namespace is in transition or the catalog is not confirmed to have
// caught up with the namespace since the event was ingested.
func (r *Router) hold(ctx context.Context, m *queue.Message, out *fanOutOutcome) bool {
	ingested := m.IngestedAt()
	if r.opts.Now().Sub(ingested) >= r.opts.UnmatchedHold {
		return false
	}
	if r.catalog.InTransition(m.Namespace) {
		out.holdFor = r.opts.UnmatchedRetry
		return true
	}
	if r.opts.ConfirmSettled == nil {
		return false
	}
	settled, retry := r.opts.ConfirmSettled(ctx, m.Namespace, ingested)
	if settled {
		return false
	}
	out.holdFor = min(max(retry, time.Millisecond), r.opts.UnmatchedRetry)
	return true
}

func (r *Router) retryDelay(numDelivered uint64) time.Duration {
	delay := r.opts.RetryDelay
	for i := uint64(1); i < numDelivered && delay < r.opts.MaxRetryDelay; i++ {
		delay *= 2
	}
	return min(delay, r.opts.MaxRetryDelay)
}

// FanOutResult describes one fan-out.
type FanOutResult struct {
	// Endpoints received a delivery, sorted.
	Endpoints []string
	// Subscriptions matched and have an existing endpoint, sorted.
	Subscriptions []string
}

// permanentError marks a fan-out that can never succeed.
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// fanOutOutcome is what fanOut did for one event.
type fanOutOutcome struct {
	result FanOutResult
	// err is a *permanentError when the event can never be fanned out.
	err error
	// holdFor is how long an event that matched nothing is held (hold).
	holdFor time.Duration
}

// fanOut matches stored events of one namespace and queues one delivery per
// event and matched endpoint, in one batch publish: the deliveries of the
// first event (sorted by endpoint), then those of the second, and so on. It
// reads only Data and Header of msgs and returns one outcome per message,
// in order. It is safe to repeat: the deliveries' de-duplication ids depend
// only on the event and the endpoint.
func (r *Router) fanOut(ctx context.Context, namespace string, msgs []*queue.Message) []fanOutOutcome {
	outcomes := make([]fanOutOutcome, len(msgs))
	// ranges[i] is where event i's deliveries are in batch.
	ranges := make([][2]int, len(msgs))
	var batch []queue.DeliveryPublish
	for i, m := range msgs {
		res, deliveries, err := r.plan(namespace, m.Data, m.Header)
		outcomes[i] = fanOutOutcome{result: res, err: err}
		ranges[i] = [2]int{len(batch), len(batch) + len(deliveries)}
		batch = append(batch, deliveries...)
	}
	if len(batch) == 0 {
		return outcomes
	}
	results := r.queue.PublishDeliveries(ctx, batch)
	r.notifyQueued(batch, results)
	for i := range outcomes {
		start, end := ranges[i][0], ranges[i][1]
		if start == end {
			continue // unmatched or undecodable: its outcome is final
		}
		outcomes[i].err = r.deliveryErrors(batch[start:end], results[start:end])
	}
	return outcomes
}

// plan parses and matches a stored event and builds its deliveries, sorted
// by endpoint.
func (r *Router) plan(namespace string, payload []byte, header queue.Header) (FanOutResult, []queue.DeliveryPublish, error) {
	ev, err := ParseEvent(payload)
	if err != nil {
		return FanOutResult{}, nil, &permanentError{err}
	}
	byEndpoint := r.matchByEndpoint(namespace, ev)
	if len(byEndpoint) == 0 {
		return FanOutResult{}, nil, nil
	}

	eventKey := header.Get(queue.HeaderEventKey)
	if eventKey == "" {
		eventKey = queue.EventDedupID(namespace, ev.Source(), ev.ID())
	}
	webhookID := header.Get(queue.HeaderWebhookID)
	if webhookID == "" {
		webhookID = queue.WebhookID(namespace, ev.Source(), ev.ID())
	}

	res := FanOutResult{Endpoints: make([]string, 0, len(byEndpoint))}
	for ep, subs := range byEndpoint {
		res.Endpoints = append(res.Endpoints, ep)
		res.Subscriptions = append(res.Subscriptions, subs...)
	}
	slices.Sort(res.Endpoints)
	slices.Sort(res.Subscriptions)

	deliveries := make([]queue.DeliveryPublish, 0, len(res.Endpoints))
	for _, ep := range res.Endpoints {
		subs := byEndpoint[ep]
		slices.Sort(subs)
		h := queue.Header{}
		h.Set(queue.HeaderWebhookID, webhookID)
		h.Set(queue.HeaderEventKey, eventKey)
		if v := header.Get(queue.HeaderIngestedAt); v != "" {
			h.Set(queue.HeaderIngestedAt, v)
		}
		h.Set(queue.HeaderSubscriptions, strings.Join(subs, ","))
		deliveries = append(deliveries, queue.DeliveryPublish{
			Namespace: namespace,
			Endpoint:  ep,
			DedupID:   queue.DeliveryDedupID(eventKey, namespace, ep),
			Payload:   payload,
			Header:    h,
		})
	}
	return res, deliveries, nil
}

// notifyQueued tells Options.Queued about every endpoint that got at least
// one delivery stored in a batch, once per endpoint.
func (r *Router) notifyQueued(batch []queue.DeliveryPublish, results []queue.PublishResult) {
	if r.opts.Queued == nil {
		return
	}
	notified := make(map[string]bool)
	for i, res := range results {
		ep := batch[i].Endpoint
		if res.Err != nil || notified[ep] {
			continue
		}
		notified[ep] = true
		r.opts.Queued(batch[i].Namespace, ep)
	}
}

// deliveryErrors counts one event's queued deliveries and returns the
// failures, if any. The error is permanent only when every failure is: a
// delivery that may still be queued is not given up because another one of
// the event is too large.
func (r *Router) deliveryErrors(deliveries []queue.DeliveryPublish, results []queue.PublishResult) error {
	var errs []error
	permanent := true
	for i, res := range results {
		if res.Err == nil {
			r.metrics.deliveries.Inc()
			continue
		}
		errs = append(errs, fmt.Errorf("queue delivery to endpoint %s: %w", deliveries[i].Endpoint, res.Err))
		permanent = permanent && errors.Is(res.Err, queue.ErrMessageTooLarge)
	}
	switch {
	case len(errs) == 0:
		return nil
	case permanent:
		return &permanentError{errors.Join(errs...)}
	default:
		return errors.Join(errs...)
	}
}

// matchByEndpoint matches ev in namespace and groups the matched
// Subscriptions' names by endpoint, leaving out endpoints the catalog does
// not have.
func (r *Router) matchByEndpoint(namespace string, ev *Event) map[string][]string {
	matched := r.Match(namespace, ev)
	if len(matched) == 0 {
		return nil
	}
	byEndpoint := make(map[string][]string, len(matched))
	for _, s := range matched {
		if _, ok := byEndpoint[s.Endpoint]; !ok {
			if _, exists := r.catalog.Endpoint(namespace, s.Endpoint); !exists {
				r.log.V(1).Info("Subscription matched but its endpoint is not in the catalog; no delivery",
					"namespace", namespace, "subscription", s.Name, "endpoint", s.Endpoint)
				continue
			}
		}
		byEndpoint[s.Endpoint] = append(byEndpoint[s.Endpoint], s.Name)
	}
	return byEndpoint
}

// Match returns the Subscriptions of namespace that ev matches, counting
// filter evaluation errors.
func (r *Router) Match(namespace string, ev *Event) []*catalog.Subscription {
	ix := r.index(namespace)
	if ix == nil {
		return nil
	}
	return ix.Match(ev, func(s *catalog.Subscription, err error) {
		r.metrics.filterErrors.WithLabelValues(namespace).Inc()
		r.log.V(1).Info("Subscription filter failed to evaluate; treated as no match",
			"namespace", namespace, "subscription", s.Name, "error", err.Error())
	})
}

// index returns the namespace's index, rebuilding it when the catalog's
// revision changed. Concurrent rebuilds of one namespace are harmless: the
// results are equal.
func (r *Router) index(namespace string) *Index {
	subs, revision := r.catalog.Subscriptions(namespace)
	r.mu.Lock()
	cached := r.indexes[namespace]
	r.mu.Unlock()
	if cached != nil && cached.revision == revision {
		return cached.index
	}
	if len(subs) == 0 {
		r.mu.Lock()
		delete(r.indexes, namespace)
		r.mu.Unlock()
		return nil
	}
	ix := NewIndex(subs)
	r.mu.Lock()
	r.indexes[namespace] = &cachedIndex{revision: revision, index: ix}
	r.mu.Unlock()
	return ix
}
