package delivery

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"
	"k8s.io/utils/clock"

	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/dispatcher/catalog"
	"github.com/herald-dev/herald/dispatcher/delivery/ssrf"
	"github.com/herald-dev/herald/dispatcher/deliverylog"
	"github.com/herald-dev/herald/dispatcher/queue"
)

// finishTimeout bounds acknowledging, retrying or dead-lettering one
// delivery after its attempt, so that a lost queue connection cannot hold a
// delivery goroutine for ever; an unacknowledged delivery is redelivered
// after its AckWait.
const finishTimeout = 10 * time.Second

// ackWaitMargin is added to an endpoint's attempt timeout to get the
// AckWait of its consumer: the time from fetch to acknowledgement.
const ackWaitMargin = 30 * time.Second

// Options configure a Manager.
type Options struct {
	// Queue is the JetStream queue deliveries are consumed from. Required.
	Queue *queue.Queue
	// Reporter receives every outcome; optional.
	Reporter Reporter
	// Log records every processed delivery (the delivery log); optional.
	Log Recorder
	// Registerer registers the delivery metrics; nil leaves them
	// unregistered.
	Registerer prometheus.Registerer
	// Logger logs; it never receives headers, bodies or keys.
	Logger logr.Logger
	// Version is the Herald version in the User-Agent ("Herald/<version>").
	Version string
	// AllowedCIDRs are address ranges the SSRF guard lets deliveries reach
	// although they are not public (an operator's opt-in, e.g. an internal
	// receiver network; 127.0.0.0/8 for local demos and tests).
	AllowedCIDRs []netip.Prefix
	// ClusterCIDRs are the cluster's pod and Service ranges. The SSRF guard
	// refuses them even when they are public, and even inside
	// AllowedCIDRs, for clusters whose ranges are publicly routable.
	ClusterCIDRs []netip.Prefix
	// Breaker tunes every endpoint's circuit breaker.
	Breaker BreakerConfig

	// Lookup and Dial replace the resolver and the connecting dialer under
	// the SSRF guard (tests).
	Lookup ssrf.LookupFunc
	Dial   ssrf.DialFunc
	// Now is the clock of the webhook-timestamp header; defaults to
	// time.Now (tests).
	Now func() time.Time
	// Clock is the clock of the endpoints' pacing: circuit-breaker
	// cool-downs, Retry-After pauses and rate limits. Defaults to the real
	// clock (tests inject a fake one to check cool-downs exactly).
	Clock clock.Clock
	// FetchWait is how long one fetch waits for a delivery; defaults to the
	// queue's default.
	FetchWait time.Duration
	// IdleAfter is how long an endpoint's loop fetches nothing before the
	// endpoint goes idle: its consumer is released and its loop ends, to
	// be started again by Wake or the sweep. Defaults to DefaultIdleAfter.
	IdleAfter time.Duration
	// SweepInterval is how often idle endpoints are checked for deliveries
	// that arrived without a Wake (queued by another replica, replayed from
	// the dead-letter stream). Defaults to DefaultSweepInterval.
	SweepInterval time.Duration
	// Owners, when set, makes this replica deliver only to the endpoints
	// whose lease it holds, so that several replicas sharing one
	// JetStream keep each endpoint's limits (see ownership). Nil: this
	// replica is the only one and delivers to every endpoint.
	Owners *queue.Owners
}

// Idle endpoint defaults.
const (
	DefaultIdleAfter     = 30 * time.Second
	DefaultSweepInterval = 10 * time.Second
)

// Manager runs one delivery loop per active endpoint. Create it with
// NewManager, call Sync with the catalog's endpoints whenever they change,
// and Stop on shutdown. Its methods are safe for concurrent use.
type Manager struct {
	queue     *queue.Queue
	reporter  Reporter
	recorder  Recorder
	metrics   *metrics
	log       logr.Logger
	userAgent string
	dialer    *ssrf.Dialer
	breaker   BreakerConfig
	now       func() time.Time
	clock     clock.Clock
	fetchWait time.Duration
	idleAfter time.Duration
	// ownership is nil with a single replica.
	ownership   *ownership
	stopRenewal context.CancelFunc

	// loopsCtx parents every worker's fetch loop; attemptsCtx parents every
	// attempt, and is only cancelled when Stop runs out of time.
	loopsCtx       context.Context
	cancelLoops    context.CancelFunc
	attemptsCtx    context.Context
	cancelAttempts context.CancelFunc
	attempts       sync.WaitGroup

	mu       sync.Mutex
	stopped  bool
	workers  map[string]*worker
	retiring map[*worker]struct{}
	// gone maps endpoint keys to the generation that answered 410 Gone.
	gone map[string]int64
	// rejected remembers endpoints whose configuration could not be used,
	// so the error is logged once per change.
	rejected map[string]*catalog.Endpoint
	// listed and desired are Sync's scratch maps, emptied after each call
	// and kept for the next: Sync runs on every change of any endpoint, and
	// two maps of every endpoint made per call were most of what creating
	// 1,000 endpoints allocated (about 250 KB per endpoint), fragmenting the
	// heap the endpoints then live in.
	listed  map[string]bool
	desired map[string]*catalog.Endpoint
}

// NewManager returns a Manager with no endpoints.
func NewManager(opts Options) (*Manager, error) {
	if opts.Queue == nil {
		return nil, errors.New("delivery manager: a queue is required")
	}
	metrics, err := newMetrics(opts.Registerer)
	if err != nil {
		return nil, err
	}
	m := &Manager{
		queue:     opts.Queue,
		reporter:  opts.Reporter,
		recorder:  opts.Log,
		metrics:   metrics,
		log:       opts.Logger,
		userAgent: UserAgent(opts.Version),
		dialer: ssrf.NewDialer(ssrf.New(opts.AllowedCIDRs, ssrf.WithDenied(opts.ClusterCIDRs...)), ssrf.DialerOptions{
			Lookup: opts.Lookup,
			Dial:   opts.Dial,
		}),
		breaker:   opts.Breaker.withDefaults(),
		now:       opts.Now,
		clock:     opts.Clock,
		fetchWait: opts.FetchWait,
		idleAfter: cmp.Or(opts.IdleAfter, DefaultIdleAfter),
		workers:   map[string]*worker{},
		retiring:  map[*worker]struct{}{},
		gone:      map[string]int64{},
		rejected:  map[string]*catalog.Endpoint{},
	}
	if m.reporter == nil {
		m.reporter = nopReporter{}
	}
	if m.now == nil {
		m.now = time.Now
	}
	if m.clock == nil {
		m.clock = clock.RealClock{}
	}
	if opts.Registerer != nil {
		if err := m.registerEndpointGauges(opts.Registerer); err != nil {
			return nil, err
		}
	}
	m.loopsCtx, m.cancelLoops = context.WithCancel(context.Background())
	m.attemptsCtx, m.cancelAttempts = context.WithCancel(context.Background())
	go m.sweep(cmp.Or(opts.SweepInterval, DefaultSweepInterval))
	if opts.Owners != nil {
		m.ownership = newOwnership(opts.Owners, m.log.WithName("ownership"))
		// Leases are renewed until Stop has drained the attempts in flight.
		var renewCtx context.Context
		renewCtx, m.stopRenewal = context.WithCancel(context.Background())
		go m.ownership.renew(renewCtx)
	}
	return m, nil
}

// Values of the state label of herald_delivery_endpoints.
const (
	EndpointStateActive = "active"
	EndpointStateIdle   = "idle"
)

// registerEndpointGauges registers herald_delivery_endpoints: the endpoints
// delivered to, by state, counted when scraped.
func (m *Manager) registerEndpointGauges(reg prometheus.Registerer) error {
	for _, state := range []string{EndpointStateActive, EndpointStateIdle} {
		idle := state == EndpointStateIdle
		g := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "herald_delivery_endpoints",
			Help:        "Endpoints the delivery stage delivers to, by state: active (a consumer and a delivery loop) or idle (nothing queued; neither).",
			ConstLabels: prometheus.Labels{"state": state},
		}, func() float64 {
			m.mu.Lock()
			defer m.mu.Unlock()
			n := 0
			for _, w := range m.workers {
				if w.idle.Load() == idle {
					n++
				}
			}
			return float64(n)
		})
		if err := reg.Register(g); err != nil {
			return fmt.Errorf("register delivery metrics: %w", err)
		}
	}
	return nil
}

// Wake tells an idle endpoint's loop that deliveries were queued for it:
// the fan-out stage calls it after queueing. It does nothing for an
// endpoint that is not idle or not delivered to.
func (m *Manager) Wake(namespace, name string) {
	m.mu.Lock()
	w := m.workers[catalog.Key(namespace, name)]
	m.mu.Unlock()
	if w != nil {
		w.wake()
	}
}

// sweep wakes idle endpoints that have deliveries stored, every interval
// until Stop: deliveries queued by another dispatcher replica or replayed
// from the dead-letter stream arrive without a Wake.
func (m *Manager) sweep(interval time.Duration) {
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		select {
		case <-m.loopsCtx.Done():
			return
		case <-ticker.C:
		}
		m.mu.Lock()
		var idle []*worker
		for _, w := range m.workers {
			if w.idle.Load() {
				idle = append(idle, w)
			}
		}
		m.mu.Unlock()
		if len(idle) == 0 {
			continue
		}
		ctx, cancel := context.WithTimeout(m.loopsCtx, finishTimeout)
		queued, err := m.queue.QueuedEndpoints(ctx)
		cancel()
		if err != nil {
			if m.loopsCtx.Err() == nil {
				m.log.Error(err, "Checking idle endpoints for deliveries failed")
			}
			continue
		}
		for _, w := range idle {
			if queued[queue.EndpointKey{Namespace: w.namespace, Name: w.name}] > 0 {
				w.wake()
			}
		}
	}
}

// Sync makes the running delivery loops match endpoints, the complete set
// of Ready endpoints: it starts loops for new endpoints, applies changed
// configurations in place, and stops the loops of endpoints that are gone
// from the set, suspended, or answered 410 Gone for their current
// generation. A stopped loop fetches nothing more; its attempts in flight
// finish. Sync does not block on the network.
func (m *Manager) Sync(endpoints []*catalog.Endpoint) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stopped {
		return
	}
	if m.listed == nil {
		m.listed = make(map[string]bool, len(endpoints))
		m.desired = make(map[string]*catalog.Endpoint, len(endpoints))
	}
	listed, desired := m.listed, m.desired
	defer func() {
		clear(listed)
		clear(desired)
	}()
	for _, ep := range endpoints {
		if ep == nil {
			continue
		}
		key := ep.Key()
		listed[key] = true
		if gen, ok := m.gone[key]; ok {
			if gen == ep.Generation {
				continue
			}
			delete(m.gone, key) // the spec changed: try again
		}
		if ep.Gone || ep.Spec.Suspend {
			continue
		}
		desired[key] = ep
	}

	for key, w := range m.workers {
		if _, ok := desired[key]; !ok {
			m.retireLocked(key, w)
			if !listed[key] {
				m.metrics.forget(w.namespace, w.name)
			}
		}
	}
	for key := range m.gone {
		if !listed[key] {
			delete(m.gone, key)
		}
	}
	for key, ep := range m.rejected {
		if !listed[key] {
			delete(m.rejected, key)
			m.metrics.forget(ep.Namespace, ep.Name)
		}
	}

	for key, ep := range desired {
		w := m.workers[key]
		if w != nil && sameEndpoint(w.endpoint(), ep) {
			continue
		}
		if prev := m.rejected[key]; prev != nil && sameEndpoint(prev, ep) {
			continue
		}
		cfg, err := m.buildConfig(ep)
		if err != nil {
			m.rejected[key] = ep
			m.log.Error(err, "Not delivering to endpoint: its configuration cannot be used",
				"namespace", ep.Namespace, "name", ep.Name, "generation", ep.Generation)
			if w != nil {
				m.retireLocked(key, w)
			}
			continue
		}
		delete(m.rejected, key)
		if w != nil {
			w.update(cfg)
			continue
		}
		w = newWorker(m, ep, cfg)
		m.workers[key] = w
		m.log.V(1).Info("Starting delivery", "namespace", ep.Namespace, "name", ep.Name, "generation", ep.Generation)
		w.start()
	}
}

// sameEndpoint reports whether two catalog snapshots describe the same
// configuration; the catalog replaces values on every informer event, most
// of which change nothing delivery cares about.
func sameEndpoint(a, b *catalog.Endpoint) bool {
	return a == b || reflect.DeepEqual(a, b)
}

// retireLocked stops a worker's fetch loop and keeps it until the loop
// exited, so Stop can wait for it.
func (m *Manager) retireLocked(key string, w *worker) {
	delete(m.workers, key)
	m.retiring[w] = struct{}{}
	w.stop()
	go func() {
		<-w.done
		m.mu.Lock()
		delete(m.retiring, w)
		m.mu.Unlock()
	}()
	m.log.V(1).Info("Stopping delivery", "namespace", w.namespace, "name", w.name)
}

// keepBody is how much of a response body attempts keep: the delivery
// log's share when there is a log, none otherwise.
func (m *Manager) keepBody() int {
	if m.recorder == nil {
		return 0
	}
	return deliverylog.MaxResponseBytes
}

// markGone stops the endpoint after a 410 Gone for generation.
func (m *Manager) markGone(w *worker, generation int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	key := w.key
	if cur := m.workers[key]; cur != w || cur.endpoint().Generation != generation {
		return // already replaced by a newer spec
	}
	m.gone[key] = generation
	m.retireLocked(key, w)
	m.log.Info("Receiver answered 410 Gone: delivery stopped until the endpoint's spec changes",
		"namespace", w.namespace, "name", w.name, "generation", generation)
}

// Running returns the keys ("namespace/name") of the endpoints whose
// delivery loops run, sorted.
func (m *Manager) Running() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	keys := make([]string, 0, len(m.workers))
	for k := range m.workers {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// Stop stops fetching for every endpoint and waits for the attempts in
// flight to finish and be acknowledged, retried or dead-lettered. When ctx
// ends first, the remaining attempts are cancelled and Stop returns ctx's
// error; their deliveries are redelivered by the queue later. Sync does
// nothing after Stop.
func (m *Manager) Stop(ctx context.Context) error {
	m.mu.Lock()
	m.stopped = true
	var loops []*worker
	for key, w := range m.workers {
		delete(m.workers, key)
		m.retiring[w] = struct{}{}
		w.stop()
	}
	for w := range m.retiring {
		loops = append(loops, w)
	}
	m.mu.Unlock()
	m.cancelLoops()

	// Once every fetch loop has exited no attempt can start, so waiting
	// on the attempts cannot race with a new one.
	idle := make(chan struct{})
	go func() {
		for _, w := range loops {
			<-w.done
		}
		m.attempts.Wait()
		close(idle)
	}()
	var err error
	select {
	case <-idle:
	case <-ctx.Done():
		err = fmt.Errorf("stop delivery: attempts still in flight: %w", ctx.Err())
	}
	m.cancelAttempts()
	m.confirmAcknowledged(loops)
	if m.ownership != nil {
		// Other replicas take the endpoints over now rather than after
		// the leases expire.
		m.stopRenewal()
		releaseCtx, cancel := context.WithTimeout(context.Background(), finishTimeout)
		m.ownership.releaseAll(releaseCtx)
		cancel()
	}
	return err
}

// confirmAcknowledged waits until the server has processed the workers'
// acknowledgements, which are not confirmed one by one
// (queue.Message.AckNoWait): the embedded server stops next, and one still
// queued for its consumer would bring its delivery back as a duplicate
// after the restart. One confirmed request per endpoint with deliveries
// acknowledged covers them all, since a consumer processes its
// acknowledgements in order.
func (m *Manager) confirmAcknowledged(workers []*worker) {
	ctx, cancel := context.WithTimeout(context.Background(), finishTimeout)
	defer cancel()
	var g errgroup.Group
	g.SetLimit(confirmConcurrency)
	for _, w := range workers {
		last := w.lastAcked.Load()
		if last == nil {
			continue
		}
		g.Go(func() error {
			if err := last.ConfirmAcknowledged(ctx); err != nil {
				w.logger().Error(err, "Confirming the last acknowledgements failed; their deliveries may be sent again after a restart, with the same webhook-id")
			}
			return nil
		})
	}
	_ = g.Wait()
}

// confirmConcurrency bounds the confirmations in flight at Stop.
const confirmConcurrency = 16

// workerConfig is an endpoint's immutable delivery configuration.
//
// Its sender — the request template with the decoded signing keys, and
// the HTTP client with its parsed TLS material and transport — is built
// when an attempt first needs it, not with the configuration: most
// endpoints are idle most of the time, and a sender was about a third of
// an idle endpoint's memory in the dispatcher (docs/benchmarks). The
// configuration is only made after a sender was built from the same
// endpoint once, so building it again cannot fail for another reason.
type workerConfig struct {
	endpoint     *catalog.Endpoint
	retry        heraldv1.RetryPolicy
	consumerOpts queue.ConsumerOptions

	// sender returns the sender, building it on its first call
	// (sync.OnceValues); built is set once it was built.
	sender func() (*sender, error)
	built  atomic.Pointer[sender]
}

// sender is what an attempt is built and sent with.
type sender struct {
	target *Target
	client *Client
}

// closeIdleConnections closes the idle connections of the sender, if one
// was built.
func (c *workerConfig) closeIdleConnections() {
	if s := c.built.Load(); s != nil {
		s.client.CloseIdleConnections()
	}
}

// newSender builds an endpoint's request template and HTTP client.
func (m *Manager) newSender(ep *catalog.Endpoint) (*sender, error) {
	if len(ep.Keys) == 0 {
		return nil, fmt.Errorf("endpoint %s: %w", ep.Key(), ErrNoSigningKey)
	}
	target, err := NewTarget(ep, m.userAgent)
	if err != nil {
		return nil, err
	}
	client, err := NewClient(m.dialer, ClientConfig{
		Timeout:      ep.Spec.GetTimeout(),
		CABundle:     ep.CABundle,
		ClientCert:   ep.ClientCert,
		ClientKey:    ep.ClientKey,
		MaxIdleConns: ep.Spec.GetMaxInFlight(),
		KeepBody:     m.keepBody(),
	})
	if err != nil {
		return nil, fmt.Errorf("endpoint %s: %w", ep.Key(), err)
	}
	return &sender{target: target, client: client}, nil
}

// buildConfig checks that an endpoint's configuration can be used and
// returns it, its sender left to be built on first use.
func (m *Manager) buildConfig(ep *catalog.Endpoint) (*workerConfig, error) {
	if _, err := m.newSender(ep); err != nil {
		return nil, err
	}
	timeout := ep.Spec.GetTimeout()
	opts := queue.ConsumerOptions{
		AckWait:   max(queue.DefaultDeliveryAckWait, timeout+ackWaitMargin),
		FetchWait: m.fetchWait,
	}
	if ep.Spec.GetOrdering() == heraldv1.Ordered {
		// JetStream then hands out the next delivery only after the current
		// one is acknowledged or dead-lettered, across retries and replicas.
		opts.MaxAckPending = 1
	} else {
		// JetStream counts a delivery waiting for its retry as pending:
		// any limit would let retries in backoff stop fresh deliveries
		// once it is reached. The pacer bounds what is in flight.
		opts.MaxAckPending = -1
	}
	cfg := &workerConfig{
		endpoint:     ep,
		retry:        ep.Spec.GetRetry(),
		consumerOpts: opts,
	}
	cfg.sender = sync.OnceValues(func() (*sender, error) {
		s, err := m.newSender(ep)
		if err == nil {
			cfg.built.Store(s)
		}
		return s, err
	})
	return cfg, nil
}
