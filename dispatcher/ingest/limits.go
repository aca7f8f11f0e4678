package ingest

import (
	"math"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"k8s.io/apimachinery/pkg/util/cache"
)

// Defaults of the per-namespace limits.
const (
	// DefaultNamespaceRate is no per-namespace rate limit. A fixed rate
	// either throttles a fast cluster's legitimate traffic (one namespace
	// publishing thousands of events a second is normal) or is too high to
	// matter on a small one; fairness between namespaces comes from
	// DefaultNamespaceMaxConcurrentRequests, which costs a namespace
	// publishing alone nothing.
	DefaultNamespaceRate = 0
	// DefaultNamespaceMaxConcurrentRequests is half of
	// DefaultMaxConcurrentRequests: one namespace's burst leaves the other
	// half of the request slots to the rest. A publisher needs far fewer
	// in flight to reach the dispatcher's throughput (the benchmark's
	// publisher uses 16 connections).
	DefaultNamespaceMaxConcurrentRequests = DefaultMaxConcurrentRequests / 2
)

// Values of the reason label of herald_ingest_throttled_total.
const (
	// throttledInFlight: MaxConcurrentRequests reached (namespace label
	// empty: the caller is not authenticated yet).
	throttledInFlight = "in_flight"
	// throttledTokenReviewRate: the TokenReview budget is spent (namespace
	// label empty).
	throttledTokenReviewRate = "token_review_rate"
	// throttledNamespaceRate: the namespace's NamespaceRate is spent.
	throttledNamespaceRate = "namespace_rate"
	// throttledNamespaceInFlight: NamespaceMaxConcurrentRequests reached.
	throttledNamespaceInFlight = "namespace_in_flight"
)

// namespaceLimits holds each namespace's request rate limiter and count of
// requests in flight. It is consulted only after the caller proved it may
// publish to a namespace that exists, so an outsider can neither spend a
// namespace's budget nor grow the map with invented names.
type namespaceLimits struct {
	rate        rate.Limit // 0: no rate limit
	burst       int
	maxInFlight int
	clock       cache.Clock

	mu        sync.Mutex
	limits    map[string]*namespaceLimit
	lastSweep time.Time
}

type namespaceLimit struct {
	limiter  *rate.Limiter // nil without a rate limit
	inFlight int
}

// sweepInterval is how often idle namespaces' entries are dropped.
const sweepInterval = time.Minute

func newNamespaceLimits(perSecond float64, burst, maxInFlight int, clock cache.Clock) *namespaceLimits {
	if perSecond > 0 && burst <= 0 {
		burst = max(1, int(math.Ceil(perSecond)))
	}
	return &namespaceLimits{
		rate:        rate.Limit(perSecond),
		burst:       burst,
		maxInFlight: maxInFlight,
		clock:       clock,
		limits:      map[string]*namespaceLimit{},
		lastSweep:   clock.Now(),
	}
}

// acquire admits a request of namespace, returning the function that ends
// it, or the reason it is throttled and how long to wait.
func (l *namespaceLimits) acquire(namespace string) (release func(), reason string, retryAfter time.Duration) {
	now := l.clock.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sweep(now)
	nl := l.limits[namespace]
	if nl == nil {
		nl = &namespaceLimit{}
		if l.rate > 0 {
			nl.limiter = rate.NewLimiter(l.rate, l.burst)
		}
		l.limits[namespace] = nl
	}
	if nl.inFlight >= l.maxInFlight {
		return nil, throttledNamespaceInFlight, time.Second
	}
	if nl.limiter != nil {
		if wait := reserve(nl.limiter, now); wait > 0 {
			return nil, throttledNamespaceRate, wait
		}
	}
	nl.inFlight++
	return func() {
		l.mu.Lock()
		nl.inFlight--
		l.mu.Unlock()
	}, "", 0
}

// sweep drops the entries of namespaces with nothing in flight and a full
// bucket: forgetting them changes no decision. Called with mu held.
func (l *namespaceLimits) sweep(now time.Time) {
	if now.Sub(l.lastSweep) < sweepInterval {
		return
	}
	l.lastSweep = now
	for namespace, nl := range l.limits {
		if nl.inFlight == 0 && (nl.limiter == nil || nl.limiter.TokensAt(now) >= float64(l.burst)) {
			delete(l.limits, namespace)
		}
	}
}

// reserve takes one token from limiter at now and returns 0, or, when none
// is left, returns how long until one is, taking nothing.
func reserve(limiter *rate.Limiter, now time.Time) time.Duration {
	r := limiter.ReserveN(now, 1)
	if !r.OK() {
		return time.Second
	}
	wait := r.DelayFrom(now)
	if wait > 0 {
		r.CancelAt(now)
	}
	return wait
}

// retryAfterSeconds rounds a wait up to the whole seconds of Retry-After,
// at least 1.
func retryAfterSeconds(wait time.Duration) int {
	return max(1, int(math.Ceil(wait.Seconds())))
}
