// Package router owns fan-out: it reads ingested events from the queue,
// matches them against the Subscriptions of the event's namespace (type and
// source patterns, then the CEL filter) and queues one delivery per matched
// endpoint.
//
// Fan-out is idempotent. Every delivery is published with a de-duplication
// id derived from the event and the endpoint (queue.DeliveryDedupID), and the
// event is acknowledged only after every delivery publish was acknowledged,
// so a crash in the middle of a fan-out redelivers the event and the second
// fan-out stores only the deliveries the first one did not.
package router

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

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
	DefaultPublishers    = 8
	DefaultRetryDelay    = time.Second
	DefaultMaxRetryDelay = 30 * time.Second
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
}

// MatchReporter is told, after an event's deliveries are queued and the
// event acknowledged, which Subscriptions matched it (health reporting
// counts them in status.matched).
type MatchReporter interface {
	Matched(namespace, subscription string, at time.Time)
}

// Queue is the part of *queue.Queue the router uses.
type Queue interface {
	EventConsumer(ctx context.Context, name string, opts queue.ConsumerOptions) (*queue.Consumer, error)
	PublishDelivery(ctx context.Context, namespace, endpoint, dedupID string, payload []byte, header queue.Header) (seq uint64, duplicate bool, err error)
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
	// endpoint are queued in the order this replica received their events.
	Workers int
	// Publishers bounds the concurrent delivery publishes of one event.
	Publishers int
	// RetryDelay is the redelivery delay after a failed fan-out; it doubles
	// with each further failure of the same event up to MaxRetryDelay.
	RetryDelay    time.Duration
	MaxRetryDelay time.Duration
	// Reporter, when set, is told about matched Subscriptions.
	Reporter MatchReporter
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
	if o.Publishers <= 0 {
		o.Publishers = DefaultPublishers
	}
	if o.RetryDelay <= 0 {
		o.RetryDelay = DefaultRetryDelay
	}
	if o.MaxRetryDelay <= 0 {
		o.MaxRetryDelay = DefaultMaxRetryDelay
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
	r.log.Info("Router started", "consumer", consumer.Name())
	backoff := 100 * time.Millisecond
	for {
		msgs, err := consumer.Fetch(ctx, r.opts.BatchSize)
		if len(msgs) > 0 {
			// Even when ctx ended meanwhile: these are ours until acked.
			r.processBatch(ctx, msgs)
		}
		if ctx.Err() != nil {
			r.log.Info("Router stopped")
			return nil
		}
		if err != nil {
			r.log.Error(err, "Fetching events failed", "retryIn", backoff)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 5*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
	}
}

// processBatch fans out a batch: namespaces in parallel, the events of one
// namespace in order. When an event must be retried, the later events of its
// namespace in the batch are returned for redelivery too rather than
// overtaking it. Processing is detached from ctx so that shutdown lets the
// batch finish; it is bounded by AckWait, after which JetStream would
// redeliver the events anyway.
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
			for i, m := range group {
				delay, retry := r.handle(procCtx, m)
				if !retry {
					continue
				}
				for _, later := range group[i+1:] {
					if err := later.NakWithDelay(delay); err != nil {
						r.log.Error(err, "Returning event for redelivery failed; it comes back after AckWait", "namespace", ns)
					}
				}
				return
			}
		})
	}
	wg.Wait()
}

// handle fans out one event and settles its message. It reports whether the
// event was returned for redelivery, and after which delay.
func (r *Router) handle(ctx context.Context, m *queue.Message) (time.Duration, bool) {
	log := r.log.WithValues("namespace", m.Namespace, "sequence", m.Sequence)
	res, err := r.fanOut(ctx, m.Namespace, m.Data, m.Header)
	var permanent *permanentError
	switch {
	case errors.As(err, &permanent):
		// The event passed ingest validation, so this is a bug (or a foreign
		// publisher): retrying cannot help.
		log.Error(err, "Terminating event that cannot be fanned out")
		r.metrics.events.WithLabelValues(ResultInvalid).Inc()
		if err := m.Term(permanent.Error()); err != nil {
			log.Error(err, "Terminating event failed; it will be redelivered")
		}
		return 0, false
	case err != nil:
		delay := r.retryDelay(m.NumDelivered)
		log.Error(err, "Fan-out failed, retrying", "retryIn", delay, "attempt", m.NumDelivered)
		r.metrics.retries.Inc()
		if err := m.NakWithDelay(delay); err != nil {
			log.Error(err, "Returning event for redelivery failed; it comes back after AckWait")
		}
		return delay, true
	}
	if err := m.Ack(ctx); err != nil {
		// Every delivery is queued; the redelivered event will find them
		// all de-duplicated. Not counted now, so it is counted once then.
		log.Error(err, "Acknowledging fanned-out event failed; it will be redelivered and de-duplicated")
		return 0, false
	}
	if len(res.Endpoints) == 0 {
		r.metrics.events.WithLabelValues(ResultUnmatched).Inc()
		return 0, false
	}
	if r.opts.Reporter != nil {
		now := r.opts.Now()
		for _, s := range res.Subscriptions {
			r.opts.Reporter.Matched(m.Namespace, s, now)
		}
	}
	r.metrics.events.WithLabelValues(ResultRouted).Inc()
	log.V(2).Info("Event fanned out", "endpoints", res.Endpoints)
	return 0, false
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

// fanOut matches a stored event and queues one delivery per endpoint. It is
// safe to repeat: the deliveries' de-duplication ids depend only on the
// event and the endpoint.
func (r *Router) fanOut(ctx context.Context, namespace string, payload []byte, header queue.Header) (FanOutResult, error) {
	ev, err := ParseEvent(payload)
	if err != nil {
		return FanOutResult{}, &permanentError{err}
	}
	byEndpoint := r.matchByEndpoint(namespace, ev)
	if len(byEndpoint) == 0 {
		return FanOutResult{}, nil
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

	var g errgroup.Group
	g.SetLimit(r.opts.Publishers)
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
		g.Go(func() error {
			_, _, err := r.queue.PublishDelivery(ctx, namespace, ep, queue.DeliveryDedupID(eventKey, namespace, ep), payload, h)
			if err != nil {
				if errors.Is(err, queue.ErrMessageTooLarge) {
					return &permanentError{fmt.Errorf("queue delivery to endpoint %s: %w", ep, err)}
				}
				return fmt.Errorf("queue delivery to endpoint %s: %w", ep, err)
			}
			r.metrics.deliveries.Inc()
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return res, err
	}
	return res, nil
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
