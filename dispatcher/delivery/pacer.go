package delivery

import (
	"context"
	"sync"
	"time"

	"golang.org/x/time/rate"

	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
)

// Circuit breaker defaults.
const (
	DefaultBreakerThreshold   = 5
	DefaultBreakerCooldown    = 10 * time.Second
	DefaultBreakerMaxCooldown = 10 * time.Minute
)

// BreakerConfig tunes the per-endpoint circuit breaker. Zero fields take
// the defaults.
type BreakerConfig struct {
	// Threshold is how many consecutive failed attempts open the circuit.
	Threshold int
	// Cooldown is how long the circuit stays open before the first probe.
	Cooldown time.Duration
	// MaxCooldown caps the cool-down, which doubles after each failed probe.
	MaxCooldown time.Duration
}

func (c BreakerConfig) withDefaults() BreakerConfig {
	if c.Threshold <= 0 {
		c.Threshold = DefaultBreakerThreshold
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

type breakerState int

const (
	breakerClosed breakerState = iota
	breakerOpen
	breakerHalfOpen
)

// breaker is a consecutive-failures circuit breaker. It is not safe for
// concurrent use: Pacer guards it. All methods take the current time, so
// its transitions are tested without a clock.
type breaker struct {
	cfg                 BreakerConfig
	state               breakerState
	consecutiveFailures int
	cooldown            time.Duration
	openUntil           time.Time
	probeInFlight       bool
}

func newBreaker(cfg BreakerConfig) breaker {
	cfg = cfg.withDefaults()
	return breaker{cfg: cfg, cooldown: cfg.Cooldown}
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
// or re-opens it with a doubled cool-down; results of requests started
// before the circuit opened do not change an open circuit.
func (b *breaker) record(success, probe bool, now time.Time) {
	if probe {
		b.probeInFlight = false
		if success {
			b.close()
			return
		}
		b.consecutiveFailures++
		b.cooldown = min(2*b.cooldown, b.cfg.MaxCooldown)
		b.state, b.openUntil = breakerOpen, now.Add(b.cooldown)
		return
	}
	if b.state != breakerClosed {
		return
	}
	if success {
		b.consecutiveFailures = 0
		return
	}
	b.consecutiveFailures++
	if b.consecutiveFailures >= b.cfg.Threshold {
		b.cooldown = b.cfg.Cooldown
		b.state, b.openUntil = breakerOpen, now.Add(b.cooldown)
	}
}

// cancelProbe returns the probe right unused (no request was sent).
func (b *breaker) cancelProbe() { b.probeInFlight = false }

func (b *breaker) close() {
	b.state, b.consecutiveFailures, b.cooldown = breakerClosed, 0, b.cfg.Cooldown
}

// Pacer paces the requests of one endpoint: a circuit breaker, a cap on
// requests in flight and a token bucket. Every endpoint has its own; nothing
// is shared between endpoints. It is safe for concurrent use.
type Pacer struct {
	mu          sync.Mutex
	breaker     breaker
	maxInFlight int
	inFlight    int
	limiter     *rate.Limiter // nil: unlimited
	// changed is closed and replaced on every change that may let a waiting
	// Acquire proceed.
	changed chan struct{}
}

// NewPacer returns a pacer allowing maxInFlight concurrent requests at the
// rate of rateLimit (nil: unlimited).
func NewPacer(maxInFlight int, rateLimit *heraldv1.RateLimitSpec, breakerConfig BreakerConfig) *Pacer {
	p := &Pacer{breaker: newBreaker(breakerConfig), changed: make(chan struct{})}
	p.Update(maxInFlight, rateLimit)
	return p
}

// Update applies a new in-flight cap and rate limit; requests in flight are
// not affected.
func (p *Pacer) Update(maxInFlight int, rateLimit *heraldv1.RateLimitSpec) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.maxInFlight = max(maxInFlight, 1)
	switch {
	case rateLimit == nil || rateLimit.RequestsPerSecond <= 0:
		p.limiter = nil
	case p.limiter == nil:
		p.limiter = rate.NewLimiter(rate.Limit(rateLimit.RequestsPerSecond), max(rateLimit.GetBurst(), 1))
	default:
		p.limiter.SetLimit(rate.Limit(rateLimit.RequestsPerSecond))
		p.limiter.SetBurst(max(rateLimit.GetBurst(), 1))
	}
	p.notifyLocked()
}

func (p *Pacer) notifyLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
}

// Ticket is the permission to send one request. Exactly one of Done or
// Release ends it.
type Ticket struct {
	pacer *Pacer
	probe bool
	once  sync.Once
}

// Probe reports whether this request is the circuit breaker's probe.
func (t *Ticket) Probe() bool { return t.probe }

// Acquire waits until a request may be sent: the circuit lets it through,
// fewer than maxInFlight requests are in flight, and the token bucket has a
// token. It returns ctx's error when ctx ends first.
//
// The delivery loop acquires before it fetches, so a delivery is never held
// (its AckWait running) while it waits for pacing. A token taken for a fetch
// that found nothing is not given back: that only happens while the queue
// is idle, when the bucket refills anyway.
func (p *Pacer) Acquire(ctx context.Context) (*Ticket, error) {
	for {
		p.mu.Lock()
		var retryAt time.Time
		if p.inFlight < p.maxInFlight {
			now := time.Now()
			ok, probe, at := p.breaker.allow(now)
			if ok {
				p.inFlight++
				limiter := p.limiter
				p.mu.Unlock()
				t := &Ticket{pacer: p, probe: probe}
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

		var timer *time.Timer
		var expired <-chan time.Time
		if !retryAt.IsZero() {
			timer = time.NewTimer(time.Until(retryAt))
			expired = timer.C
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
// waiting: the circuit is closed, a slot is free under maxInFlight and the
// token bucket has a token for each. It returns none while the circuit is
// open or half-open: the probe is only ever handed out by Acquire.
//
// The delivery loop calls it after Acquire, for a backlog it knows of, to
// fetch several deliveries in one round trip. Tokens it takes are spent
// even if fewer deliveries arrive, so callers ask only for as many as are
// known to be waiting.
func (p *Pacer) TryAcquire(n int) []*Ticket {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.breaker.state != breakerClosed {
		return nil
	}
	n = min(n, p.maxInFlight-p.inFlight)
	if n <= 0 {
		return nil
	}
	if p.limiter != nil {
		now := time.Now()
		n = min(n, int(p.limiter.TokensAt(now)))
		if n <= 0 || !p.limiter.AllowN(now, n) {
			return nil
		}
	}
	tickets := make([]*Ticket, n)
	for i := range tickets {
		tickets[i] = &Ticket{pacer: p}
	}
	p.inFlight += n
	return tickets
}

func (t *Ticket) waitForToken(ctx context.Context, limiter *rate.Limiter) error {
	if limiter == nil {
		return nil
	}
	r := limiter.Reserve()
	if !r.OK() {
		return nil // burst below 1 cannot happen after Update; do not block for ever
	}
	delay := r.Delay()
	if delay <= 0 {
		return nil
	}
	timer := time.NewTimer(delay)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		r.Cancel() // gives back the future token
		return ctx.Err()
	case <-timer.C:
		return nil
	}
}

// Done ends a ticket whose request was sent, recording its result. It
// returns whether the circuit is open afterwards.
func (t *Ticket) Done(success bool) (circuitOpen bool) {
	t.once.Do(func() {
		p := t.pacer
		p.mu.Lock()
		defer p.mu.Unlock()
		p.inFlight--
		p.breaker.record(success, t.probe, time.Now())
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

// ConsecutiveFailures is the number of failed attempts since the last
// success.
func (p *Pacer) ConsecutiveFailures() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.breaker.consecutiveFailures
}
