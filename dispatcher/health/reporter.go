// Package health owns delivery-health reporting: it aggregates the outcome
// of every delivery attempt and every Subscription match, and publishes the
// result as WebhookEndpoint status.delivery with the DeliveryHealthy
// condition, and as Subscription status.matched, status.delivered and
// status.lastMatchedTime, all under the field manager "herald-dispatcher".
//
// Recording is in memory and never blocks on I/O: the delivery stage calls
// Record on every attempt. Several dispatcher replicas sharing one NATS
// cluster agree on totals through a JetStream KeyValue bucket
// (HERALD_HEALTH):
//
//   - every replica periodically merges its local deltas into one entry per
//     endpoint and per Subscription with compare-and-swap (counters add,
//     times take the later value, consecutive failures reset on a success
//     newer than every failure), so no replica's attempts are lost or
//     counted twice;
//   - exactly one replica at a time — the holder of a lease kept in the same
//     bucket — writes status, from the merged entries, at most once per
//     object per Interval and only when the content changed, within a
//     global write budget. A single writer, rather than every replica
//     applying the same state, means the API server sees one write per
//     change instead of one per replica, and a replica holding a slightly
//     older view of the bucket can never move counters backwards.
//
// The lease needs no Kubernetes permissions beyond the status writes: it is
// a KV entry renewed every FlushInterval, taken over with compare-and-swap
// by another replica that has seen no renewal for LeaseDuration of its own
// clock (revisions, not wall-clock timestamps, so clock skew between pods
// does not matter).
package health

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/herald-dev/herald/dispatcher/catalog"
	"github.com/herald-dev/herald/dispatcher/queue"
)

// Defaults for zero Options fields.
const (
	DefaultBucket           = "HERALD_HEALTH"
	DefaultFlushInterval    = 2 * time.Second
	DefaultStatusInterval   = 5 * time.Second
	DefaultLeaseDuration    = 15 * time.Second
	DefaultResyncInterval   = 10 * time.Minute
	DefaultGCGrace          = time.Minute
	DefaultWriteQPS         = 20
	DefaultWriteBurst       = 40
	DefaultFailureThreshold = 3
	DefaultOpTimeout        = 5 * time.Second
)

// EndpointLister is what the reporter needs from the catalog: the Ready
// WebhookEndpoints. Each gets a status (NoTraffic before its first attempt)
// and queue gauges; an endpoint that leaves the list loses its gauges.
// Endpoints returns immutable snapshots, as catalog.Catalog does: a changed
// list is a new slice, and the reporter takes the same slice again
// (catalog.SameEndpoints) to mean that nothing changed.
type EndpointLister interface {
	Endpoints() []*catalog.Endpoint
}

// Queue is the part of *queue.Queue the reporter uses: the JetStream
// context of its connection, for the bucket, and the per-endpoint counts
// behind status.delivery.pending and deadLettered (global across replicas,
// since JetStream counts them).
type Queue interface {
	JetStream() jetstream.JetStream
	// Counts are the endpoints' pending and dead-lettered deliveries, read
	// together whatever their number.
	Counts(ctx context.Context, endpoints []queue.EndpointKey) (map[queue.EndpointKey]queue.EndpointCounts, error)
	// OldestPending is when the oldest queued delivery was stored (false:
	// none is queued), for herald_endpoint_oldest_pending_age_seconds.
	OldestPending(ctx context.Context, namespace, endpoint string) (time.Time, bool, error)
}

// StatusClient reads WebhookEndpoints and Subscriptions (a cached client is
// right: reads happen on every status check) and applies their status.
type StatusClient interface {
	client.Reader
	Status() client.SubResourceWriter
}

// Options configure a Reporter. Queue is required; zero tuning fields take
// defaults.
type Options struct {
	// Client reads objects and applies status. When nil the Reporter only
	// merges its deltas into the bucket: it never writes status and does not
	// compete for the lease.
	Client StatusClient
	// Queue gives access to JetStream and the queue counts.
	Queue Queue
	// Catalog lists the Ready endpoints; nil lists none.
	Catalog EndpointLister
	// Replica names this replica in the status-writer lease (the pod name);
	// it must differ between replicas running at the same time. Defaults to
	// the host name plus a random suffix.
	Replica string
	// Interval is the shortest time between two status writes of one
	// object, and how often queue counts are polled. Default 5s.
	Interval time.Duration
	// Registerer registers the metrics; nil registers none.
	Registerer prometheus.Registerer
	// Log is the logger.
	Log logr.Logger

	// Bucket is the KeyValue bucket; BucketReplicas its replica count when
	// the Reporter creates it (1 for the embedded server, 3 for an external
	// cluster with R3 streams). An existing bucket is used as it is.
	Bucket         string
	BucketReplicas int
	// FlushInterval is how often local deltas are merged into the bucket and
	// the lease is renewed. Default 2s.
	FlushInterval time.Duration
	// LeaseDuration is how long the status-writer lease may go unrenewed
	// before another replica takes it over. Default 15s.
	LeaseDuration time.Duration
	// ResyncInterval is how often every known object is checked again even
	// without a change (and objects deleted meanwhile are cleaned up).
	// Default 10m.
	ResyncInterval time.Duration
	// GCGrace is how long an object must be missing from the API before its
	// totals are deleted from the bucket (a cached client can lag behind a
	// create). Default 1m.
	GCGrace time.Duration
	// WriteQPS and WriteBurst bound status writes across all objects.
	WriteQPS   float64
	WriteBurst int
	// FailureThreshold is the number of consecutive failures that turn
	// DeliveryHealthy False with ConsecutiveFailures. Default 3.
	FailureThreshold int64
	// OpTimeout bounds one KeyValue or API operation. Default 5s.
	OpTimeout time.Duration
	// Now is the clock; defaults to time.Now.
	Now func() time.Time
	// Heartbeat, when set, is called after every successful renewal of the
	// status-writer lease with this replica's name and LeaseDuration: the
	// dispatcher renews a Kubernetes Lease there, so the manager can tell
	// when no replica reports. Errors are logged, never fatal.
	Heartbeat func(ctx context.Context, holder string, leaseDuration time.Duration) error
}

func (o Options) withDefaults() Options {
	if o.Replica == "" {
		host, _ := os.Hostname()
		var b [4]byte
		_, _ = rand.Read(b[:])
		o.Replica = host + "-" + hex.EncodeToString(b[:])
	}
	if o.Interval <= 0 {
		o.Interval = DefaultStatusInterval
	}
	if o.Bucket == "" {
		o.Bucket = DefaultBucket
	}
	if o.BucketReplicas <= 0 {
		o.BucketReplicas = 1
	}
	if o.FlushInterval <= 0 {
		o.FlushInterval = DefaultFlushInterval
	}
	if o.LeaseDuration <= 0 {
		o.LeaseDuration = DefaultLeaseDuration
	}
	if o.ResyncInterval <= 0 {
		o.ResyncInterval = DefaultResyncInterval
	}
	if o.GCGrace <= 0 {
		o.GCGrace = DefaultGCGrace
	}
	if o.WriteQPS <= 0 {
		o.WriteQPS = DefaultWriteQPS
	}
	if o.WriteBurst <= 0 {
		o.WriteBurst = DefaultWriteBurst
	}
	if o.FailureThreshold <= 0 {
		o.FailureThreshold = DefaultFailureThreshold
	}
	if o.OpTimeout <= 0 {
		o.OpTimeout = DefaultOpTimeout
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

// Reporter aggregates delivery outcomes and writes health status. Record and
// Matched are safe for concurrent use; Run is called once.
type Reporter struct {
	js        jetstream.JetStream
	client    StatusClient
	endpoints EndpointLister
	stats     Queue
	log       logr.Logger
	opts      Options
	metrics   *metrics
	limiter   *rate.Limiter

	// Local deltas since the last flush.
	mu             sync.Mutex
	endpointDeltas map[objectKey]*endpointState
	subDeltas      map[objectKey]*subscriptionState

	// kv is set by Run before any goroutine uses it.
	kv jetstream.KeyValue
	// The bucket as last seen (watch and own writes), and the objects whose
	// totals changed since the status writer last looked at them.
	cacheMu sync.Mutex
	cache   map[string]cacheEntry
	dirty   map[objectKey]struct{}

	// holding mirrors lease.holding for other goroutines (IsStatusWriter).
	holding atomic.Bool
	// leaseValue is the lease entry naming this replica.
	leaseValue []byte

	// Used by the Run goroutine only.
	lease         leaseState
	lastHeartbeat time.Time
	writer        writerState
	flushFailures int
}

// NewReporter returns a Reporter. It does no I/O: Run opens the bucket.
func NewReporter(opts Options) (*Reporter, error) {
	if opts.Queue == nil || opts.Queue.JetStream() == nil {
		return nil, errors.New("health reporter: Options.Queue with a JetStream context is required")
	}
	opts = opts.withDefaults()
	m, err := newMetrics(opts.Registerer)
	if err != nil {
		return nil, err
	}
	leaseValue, err := json.Marshal(leaseRecord{Holder: opts.Replica})
	if err != nil {
		return nil, fmt.Errorf("health reporter: encode the lease: %w", err)
	}
	r := &Reporter{
		leaseValue:     leaseValue,
		js:             opts.Queue.JetStream(),
		client:         opts.Client,
		endpoints:      opts.Catalog,
		stats:          opts.Queue,
		log:            opts.Log,
		opts:           opts,
		metrics:        m,
		limiter:        rate.NewLimiter(rate.Limit(opts.WriteQPS), opts.WriteBurst),
		endpointDeltas: make(map[objectKey]*endpointState),
		subDeltas:      make(map[objectKey]*subscriptionState),
		cache:          make(map[string]cacheEntry),
		dirty:          make(map[objectKey]struct{}),
	}
	return r, nil
}

// Record notes the outcome of one delivery attempt. It only updates memory.
func (r *Reporter) Record(o Outcome) {
	if o.Namespace == "" || o.Endpoint == "" {
		return
	}
	if o.Time.IsZero() {
		o.Time = r.opts.Now()
	}
	delta := outcomeState(o)
	if o.NotSent && o.Reason != ReasonSigningKeyMissing {
		delta = endpointState{}
		if o.DeadLettered {
			delta.DeadLettered = 1
		}
	}
	key := endpointKey(o.Namespace, o.Endpoint)
	r.mu.Lock()
	defer r.mu.Unlock()
	if cur := r.endpointDeltas[key]; cur != nil {
		cur.merge(delta)
	} else {
		r.endpointDeltas[key] = &delta
	}
	if !o.Success || o.NotSent {
		return
	}
	for _, name := range o.Subscriptions {
		if name != "" {
			r.subDelta(subscriptionKey(o.Namespace, name)).Delivered++
		}
	}
}

// Matched notes that an event matched a Subscription (router.MatchReporter).
// It only updates memory.
func (r *Reporter) Matched(namespace, subscription string, at time.Time) {
	if namespace == "" || subscription == "" {
		return
	}
	if at.IsZero() {
		at = r.opts.Now()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	d := r.subDelta(subscriptionKey(namespace, subscription))
	d.Matched++
	d.LastMatchedTime = later(d.LastMatchedTime, at)
}

func (r *Reporter) subDelta(key objectKey) *subscriptionState {
	d := r.subDeltas[key]
	if d == nil {
		d = &subscriptionState{}
		r.subDeltas[key] = d
	}
	return d
}

// Run opens the bucket, then merges deltas, keeps the lease and (as lease
// holder) writes status until ctx ends. On the way out it merges what is
// left and releases the lease so another replica takes over at once.
func (r *Reporter) Run(ctx context.Context) error {
	kv, err := r.openBucket(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	r.kv = kv

	watchCtx, stopWatch := context.WithCancel(ctx)
	initial := make(chan struct{})
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		r.watch(watchCtx, initial)
	}()
	defer func() {
		stopWatch()
		<-watchDone
	}()
	// Start from the bucket's content, so a new status writer does not
	// write from an empty view.
	select {
	case <-initial:
	case <-ctx.Done():
	case <-time.After(r.opts.LeaseDuration):
		r.log.Info("Health bucket watch has not delivered the initial values yet; continuing")
	}

	r.log.Info("Health reporter started", "replica", r.opts.Replica, "bucket", r.opts.Bucket)
	ticker := time.NewTicker(r.opts.FlushInterval)
	defer ticker.Stop()
	for {
		r.tick(ctx)
		select {
		case <-ctx.Done():
			r.shutdown(context.WithoutCancel(ctx))
			return nil
		case <-ticker.C:
		}
	}
}

func (r *Reporter) tick(ctx context.Context) {
	r.flush(ctx)
	if r.client == nil {
		return
	}
	r.updateLease(ctx)
	if r.lease.holding {
		r.heartbeat(ctx)
		r.writeStatuses(ctx)
	}
}

// heartbeat tells Options.Heartbeat that this replica writes status, at
// most every third of the lease duration.
func (r *Reporter) heartbeat(ctx context.Context) {
	if r.opts.Heartbeat == nil {
		return
	}
	now := r.opts.Now()
	if !r.lastHeartbeat.IsZero() && now.Sub(r.lastHeartbeat) < r.opts.LeaseDuration/3 {
		return
	}
	opCtx, cancel := r.opContext(ctx)
	defer cancel()
	if err := r.opts.Heartbeat(opCtx, r.opts.Replica, r.opts.LeaseDuration); err != nil {
		r.log.Error(err, "Renewing the status writer's Lease failed; the manager may report DispatcherNotReporting")
		return
	}
	r.lastHeartbeat = now
}

func (r *Reporter) shutdown(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, r.opts.OpTimeout)
	defer cancel()
	r.flush(ctx)
	if r.lease.holding {
		r.releaseLease(ctx)
	}
	r.log.Info("Health reporter stopped")
}

// opContext bounds one bucket or API operation.
func (r *Reporter) opContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, r.opts.OpTimeout)
}

// flush merges the local deltas into the bucket. Deltas that could not be
// merged are kept for the next flush.
func (r *Reporter) flush(ctx context.Context) {
	r.mu.Lock()
	endpoints, subs := r.endpointDeltas, r.subDeltas
	r.endpointDeltas = make(map[objectKey]*endpointState, len(endpoints))
	r.subDeltas = make(map[objectKey]*subscriptionState, len(subs))
	r.mu.Unlock()

	var failed int
	var lastErr error
	for key, delta := range endpoints {
		err := r.mergeInto(ctx, key, func(old []byte) ([]byte, error) {
			st, err := decodeEndpointState(old)
			if err != nil {
				// Never block merging on a damaged entry: start it afresh.
				r.log.Error(err, "Replacing undecodable health entry", "object", key.String())
				st = endpointState{}
			}
			st.merge(*delta)
			return encode(st)
		})
		if err != nil {
			failed, lastErr = failed+1, err
			r.mu.Lock()
			if cur := r.endpointDeltas[key]; cur != nil {
				cur.merge(*delta)
			} else {
				r.endpointDeltas[key] = delta
			}
			r.mu.Unlock()
		}
	}
	for key, delta := range subs {
		err := r.mergeInto(ctx, key, func(old []byte) ([]byte, error) {
			st, err := decodeSubscriptionState(old)
			if err != nil {
				r.log.Error(err, "Replacing undecodable health entry", "object", key.String())
				st = subscriptionState{}
			}
			st.merge(*delta)
			return encode(st)
		})
		if err != nil {
			failed, lastErr = failed+1, err
			r.mu.Lock()
			if cur := r.subDeltas[key]; cur != nil {
				cur.merge(*delta)
			} else {
				r.subDeltas[key] = delta
			}
			r.mu.Unlock()
		}
	}
	if failed > 0 {
		r.metrics.flushErrors.Add(float64(failed))
		// One line per flush, not per object: a NATS outage must not flood
		// the log.
		if r.flushFailures == 0 || ctx.Err() != nil {
			r.log.Error(lastErr, "Merging delivery health into the bucket failed; keeping it for the next flush", "objects", failed)
		}
		r.flushFailures++
	} else if r.flushFailures > 0 {
		r.log.Info("Merging delivery health into the bucket works again", "failedFlushes", r.flushFailures)
		r.flushFailures = 0
	}
}
