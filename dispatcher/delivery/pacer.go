package delivery

import (
	"context"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"k8s.io/utils/clock"

	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
)

// Circuit breaker defaults. They follow what receivers behind a load
// balancer need: one slow minute or a handful of 500s among many successes
// must not stop delivery, a receiver that is down must not be hammered.
const (
	DefaultBreakerWindow             = 30 * time.Second
	DefaultBreakerMinRequests        = 10
	DefaultBreakerFailureRatio       = 0.5
	DefaultBreakerConnectionFailures = 3
	DefaultBreakerCooldown           = 10 * time.Second
	DefaultBreakerMaxCooldown        = 10 * time.Minute
)

// BreakerConfig tunes the per-endpoint circuit breaker. Zero fields take
// the defaults.
type BreakerConfig struct {
	// Window is the span of recent results the failure rate is computed
	// over.
	Window time.Duration
	// MinRequests is the fewest results (successes and failures) the
	// window must hold before the failure rate may open the circuit, so
	// that two failures of the first three requests do not.
	MinRequests int
	// FailureRatio is the share of failures in the window, in (0, 1], at
	// or above which the circuit opens.
	FailureRatio float64
	// ConnectionFailures is how many consecutive attempts that got no
	// connection at all (refused, reset, DNS, TLS, blocked address) open
	// the circuit, whatever the window holds: the receiver is not there.
	ConnectionFailures int
	// Cooldown is how long the circuit stays open before the first probe.
	Cooldown time.Duration
	// MaxCooldown caps the cool-down, which doubles after each failed probe.
	MaxCooldown time.Duration
}

func (c BreakerConfig) withDefaults() BreakerConfig {
	if c.Window <= 0 {
		c.Window = DefaultBreakerWindow
	}
	if c.MinRequests <= 0 {
		c.MinRequests = DefaultBreakerMinRequests
	}
	if c.FailureRatio <= 0 || c.FailureRatio > 1 {
		c.FailureRatio = DefaultBreakerFailureRatio
	}
	if c.ConnectionFailures <= 0 {
		c.ConnectionFailures = DefaultBreakerConnectionFailures
	}
	if c.Cooldown <= 0 {
		c.Cooldown = DefaultBreakerCooldown
	}
	if c.MaxCooldown <= 0 {
		c.MaxCooldown = DefaultBreakerMaxCooldown
	}
	c.MaxCooldown = max(c.MaxCooldown, c.Cooldown)
	return c
}

// Result is what an attempt tells the circuit breaker about the receiver.
type Result int

const (
	// ResultSuccess: a 2xx answer.
	ResultSuccess Result = iota
	// ResultFailure: an error answer or a timeout; counts toward the
	// failure rate.
	ResultFailure
	// ResultConnectionFailure: no connection was made; counts toward the
	// failure rate and the consecutive connection failures.
	ResultConnectionFailure
	// ResultPaced: 429 or 503 with Retry-After. The receiver is alive and
	// asks us to slow down: the endpoint is paused (Pacer.Pause), and the
	// answer is neither a success nor a failure for the breaker.
	ResultPaced
)

func (r Result) failed() bool { return r == ResultFailure || r == ResultConnectionFailure }

type breakerState int

const (
	breakerClosed breakerState = iota
	breakerOpen
	breakerHalfOpen
)

// windowBuckets is the resolution of the failure-rate window: results age
// out a tenth of the window at a time.
const windowBuckets = 10

type bucket struct {
	start               time.Time
	successes, failures int
}

// window counts successes and failures over the last span, in buckets.
type window struct {
	span    time.Duration
	buckets [windowBuckets]bucket
}

func (w *window) add(now time.Time, failed bool) {
	width := w.span / windowBuckets
	start := now.Truncate(width)
	b := &w.buckets[(start.UnixNano()/int64(width))%windowBuckets]
	if !b.start.Equal(start) {
		*b = bucket{start: start}
	}
	if failed {
		b.failures++
	} else {
		b.successes++
	}
}

func (w *window) counts(now time.Time) (total, failures int) {
	for _, b := range w.buckets {
		if !b.start.IsZero() && now.Sub(b.start) < w.span {
			total += b.successes + b.failures
			failures += b.failures
		}
	}
	return total, failures
}

func (w *window) reset() { w.buckets = [windowBuckets]bucket{} }

// breaker is a failure-rate circuit breaker. It is not safe for concurrent
// use: Pacer guards it. All methods take the current time, so its
// transitions are tested without a clock.
type breaker struct {
	cfg                 BreakerConfig
	state               breakerState
	window              window
	consecutiveFailures int
	connectionFailures  int
	cooldown            time.Duration
	openUntil           time.Time
	probeInFlight       bool
}

func newBreaker(cfg BreakerConfig) breaker {
	cfg = cfg.withDefaults()
	return breaker{cfg: cfg, cooldown: cfg.Cooldown, window: window{span: cfg.Window}}
}

// allow reports whether a request may start at now. While the circuit is
// open nothing may start before retryAt; once the cool-down passed, exactly
// one request, the probe, may start, and no other until its result is
// recorded (retryAt is then zero: wait for a state change).
func (b *breaker) allow(now time.Time) (ok, probe bool, retryAt time.Time) {
	switch b.state {
	case breakerClosed:
		return true, false, time.Time{}
	case breakerOpen:
		if now.Before(b.openUntil) {
			return false, false, b.openUntil
		}
		b.state = breakerHalfOpen
	}
	if b.probeInFlight {
		return false, false, time.Time{}
	}
	b.probeInFlight = true
	return true, true, time.Time{}
}

// record takes the result of a request. A probe's result closes the circuit
// (success, or a paced answer: the receiver is there) or re-opens it with a
// doubled cool-down; results of requests started before the circuit opened
// do not change an open circuit. While closed, the circuit opens when the
// window holds at least MinRequests results of which at least FailureRatio
// failed, or after ConnectionFailures consecutive connection failures.
func (b *breaker) record(r Result, probe bool, now time.Time) {
	if r.failed() {
		b.consecutiveFailures++
	} else if r == ResultSuccess {
		b.consecutiveFailures = 0
	}
	if r == ResultConnectionFailure {
		b.connectionFailures++
	} else {
		b.connectionFailures = 0
	}
	if probe {
		b.probeInFlight = false
		if !r.failed() {
			b.close()
			return
		}
		b.cooldown = min(2*b.cooldown, b.cfg.MaxCooldown)
		b.state, b.openUntil = breakerOpen, now.Add(b.cooldown)
		return
	}
	if b.state != breakerClosed || r == ResultPaced {
		return
	}
	b.window.add(now, r.failed())
	total, failures := b.window.counts(now)
	rateExceeded := total >= b.cfg.MinRequests && float64(failures) >= b.cfg.FailureRatio*float64(total)
	if rateExceeded || b.connectionFailures >= b.cfg.ConnectionFailures {
		b.cooldown = b.cfg.Cooldown
		b.state, b.openUntil = breakerOpen, now.Add(b.cooldown)
	}
}

// cancelProbe returns the probe right unused (no request was sent).
func (b *breaker) cancelProbe() { b.probeInFlight = false }

func (b *breaker) close() {
	b.state, b.cooldown = breakerClosed, b.cfg.Cooldown
	b.consecutiveFailures, b.connectionFailures = 0, 0
	b.window.reset()
}

// Pacer paces the requests of one endpoint: a circuit breaker, a pause
// requested by the receiver (Retry-After), a cap on requests in flight and
// a token bucket. Every endpoint has its own; nothing is shared between
// endpoints. It is safe for concurrent use.
type Pacer struct {
	clock       clock.Clock
	mu          sync.Mutex
	breaker     breaker
	pausedUntil time.Time
	maxInFlight int
	inFlight    int
	limiter     *rate.Limiter // nil: unlimited
	// changed is closed and replaced on every change that may let a waiting
	// Acquire proceed.
	changed chan struct{}
}

// NewPacer returns a pacer allowing maxInFlight concurrent requests at the
// rate of rateLimit (nil: unlimited). clk is the clock of the cool-downs,
// pauses and the token bucket; nil means the real one.
func NewPacer(maxInFlight int, rateLimit *heraldv1.RateLimitSpec, breakerConfig BreakerConfig, clk clock.Clock) *Pacer {
	if clk == nil {
		clk = clock.RealClock{}
	}
	p := &Pacer{clock: clk, breaker: newBreaker(breakerConfig), changed: make(chan struct{})}
	p.Update(maxInFlight, rateLimit)
	return p
}

// Update applies a new in-flight cap and rate limit; requests in flight are
// not affected.
func (p *Pacer) Update(maxInFlight int, rateLimit *heraldv1.RateLimitSpec) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.maxInFlight = max(maxInFlight, 1)
	now := p.clock.Now()
	switch {
	case rateLimit == nil || rateLimit.RequestsPerSecond <= 0:
		p.limiter = nil
	case p.limiter == nil:
		p.limiter = rate.NewLimiter(rate.Limit(rateLimit.RequestsPerSecond), max(rateLimit.GetBurst(), 1))
	default:
		p.limiter.SetLimitAt(now, rate.Limit(rateLimit.RequestsPerSecond))
		p.limiter.SetBurstAt(now, max(rateLimit.GetBurst(), 1))
	}
	p.notifyLocked()
}

func (p *Pacer) notifyLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
}

// Pause holds every request that has not started until until: the
// receiver answered 429 or 503 with Retry-After. A later pause extends an
// earlier one, an earlier one changes nothing. Requests in flight finish.
func (p *Pacer) Pause(until time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if until.After(p.pausedUntil) {
		p.pausedUntil = until
	}
}

// Ticket is the permission to send one request. Exactly one of Done or
// Release ends it.
type Ticket struct {
	pacer *Pacer
	probe bool
	// issuedAt is the pacer's clock when the ticket was handed out.
	issuedAt time.Time
	once     sync.Once
}

// Probe reports whether this request is the circuit breaker's probe.
func (t *Ticket) Probe() bool { return t.probe }

// Acquire waits until a request may be sent: no pause is in force, the
// circuit lets it through, fewer than maxInFlight requests are in flight,
// and the token bucket has a token. It returns ctx's error when ctx ends
// first.
//
// The delivery loop acquires before it fetches, so a delivery is never held
// (its AckWait running) while it waits for pacing. A token taken for a fetch
// that found nothing is not given back: that only happens while the queue
// is idle, when the bucket refills anyway.
func (p *Pacer) Acquire(ctx context.Context) (*Ticket, error) {
	for {
		p.mu.Lock()
		var retryAt time.Time
		now := p.clock.Now()
		switch {
		case now.Before(p.pausedUntil):
			retryAt = p.pausedUntil
		case p.inFlight < p.maxInFlight:
			ok, probe, at := p.breaker.allow(now)
			if ok {
				p.inFlight++
				limiter := p.limiter
				p.mu.Unlock()
				t := &Ticket{pacer: p, probe: probe, issuedAt: now}
				if err := t.waitForToken(ctx, limiter); err != nil {
					t.Release()
					return nil, err
				}
				return t, nil
			}
			retryAt = at
		}
		changed := p.changed
		p.mu.Unlock()

		var timer clock.Timer
		var expired <-chan time.Time
		if !retryAt.IsZero() {
			timer = p.clock.NewTimer(retryAt.Sub(now))
			expired = timer.C()
		}
		select {
		case <-ctx.Done():
		case <-changed:
		case <-expired:
		}
		if timer != nil {
			timer.Stop()
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
	}
}

// TryAcquire returns up to n tickets that may be used right now without
// waiting: no pause is in force, the circuit is closed, a slot is free
// under maxInFlight and the token bucket has a token for each. It returns
// none while the circuit is open or half-open: the probe is only ever
// handed out by Acquire.
//
// The delivery loop calls it after Acquire, for a backlog it knows of, to
// fetch several deliveries in one round trip. Tokens it takes are spent
// even if fewer deliveries arrive, so callers ask only for as many as are
// known to be waiting.
func (p *Pacer) TryAcquire(n int) []*Ticket {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.clock.Now()
	if p.breaker.state != breakerClosed || now.Before(p.pausedUntil) {
		return nil
	}
	n = min(n, p.maxInFlight-p.inFlight)
	if n <= 0 {
		return nil
	}
	if p.limiter != nil {
		n = min(n, int(p.limiter.TokensAt(now)))
		if n <= 0 || !p.limiter.AllowN(now, n) {
			return nil
		}
	}
	tickets := make([]*Ticket, n)
	for i := range tickets {
		tickets[i] = &Ticket{pacer: p, issuedAt: now}
	}
	p.inFlight += n
	return tickets
}

func (t *Ticket) waitForToken(ctx context.Context, limiter *rate.Limiter) error {
	if limiter == nil {
		return nil
	}
	clk := t.pacer.clock
	now := clk.Now()
	r := limiter.ReserveN(now, 1)
	if !r.OK() {
		return nil // burst below 1 cannot happen after Update; do not block for ever
	}
	delay := r.DelayFrom(now)
	if delay <= 0 {
		return nil
	}
	timer := clk.NewTimer(delay)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		r.CancelAt(clk.Now()) // gives back the future token
		return ctx.Err()
	case <-timer.C():
		return nil
	}
}

// Done ends a ticket whose request was sent, recording its result. It
// returns whether the circuit is open afterwards.
func (t *Ticket) Done(r Result) (circuitOpen bool) {
	t.once.Do(func() {
		p := t.pacer
		p.mu.Lock()
		defer p.mu.Unlock()
		p.inFlight--
		p.breaker.record(r, t.probe, p.clock.Now())
		p.notifyLocked()
		circuitOpen = p.breaker.state != breakerClosed
	})
	return circuitOpen
}

// Release ends a ticket whose request was never sent: its slot and probe
// right are given back.
func (t *Ticket) Release() {
	t.once.Do(func() {
		p := t.pacer
		p.mu.Lock()
		defer p.mu.Unlock()
		p.inFlight--
		if t.probe {
			p.breaker.cancelProbe()
		}
		p.notifyLocked()
	})
}

// InFlight is the number of tickets not yet ended.
func (p *Pacer) InFlight() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.inFlight
}

// CircuitOpen reports whether the circuit is open or half-open.
func (p *Pacer) CircuitOpen() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.breaker.state != breakerClosed
}
