package delivery

import (
	"context"
	"net/http"
	"sync"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"

	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// breakerChecker drives a breaker and checks what allow answers.
type breakerChecker struct {
	t *testing.T
	b *breaker
}

func (c breakerChecker) mustAllow(at time.Time, wantProbe bool) {
	c.t.Helper()
	ok, probe, _ := c.b.allow(at)
	if !ok || probe != wantProbe {
		c.t.Fatalf("allow(+%s) = %v probe=%v, want allowed probe=%v", at.Sub(t0), ok, probe, wantProbe)
	}
}

func (c breakerChecker) mustRefuse(at, wantRetryAt time.Time) {
	c.t.Helper()
	ok, _, retryAt := c.b.allow(at)
	if ok || !retryAt.Equal(wantRetryAt) {
		c.t.Fatalf("allow(+%s) = %v retryAt=%s, want refused until %s", at.Sub(t0), ok, retryAt, wantRetryAt)
	}
}

func (c breakerChecker) record(at time.Time, results ...Result) {
	for _, r := range results {
		c.b.record(r, false, at)
	}
}

// TestBreakerOpensOnFailureRate: the circuit opens only when the window
// holds MinRequests results and the failure share reaches FailureRatio;
// results older than the window no longer count.
func TestBreakerOpensOnFailureRate(t *testing.T) {
	b := newBreaker(BreakerConfig{Window: 10 * time.Second, MinRequests: 4, FailureRatio: 0.5, Cooldown: 5 * time.Second})
	c := breakerChecker{t, &b}

	// Three failures are below MinRequests.
	c.record(t0, ResultFailure, ResultFailure, ResultFailure)
	c.mustAllow(t0, false)
	// Eleven seconds later they have aged out: three successes and one
	// failure make 4 results at 25%.
	at := t0.Add(11 * time.Second)
	c.record(at, ResultSuccess, ResultSuccess, ResultSuccess, ResultFailure)
	c.mustAllow(at, false)
	// A second failure makes 2 of 5 (40%), a third 3 of 6 (50%): open.
	c.record(at, ResultFailure)
	c.mustAllow(at, false)
	c.record(at, ResultFailure)
	c.mustRefuse(at, at.Add(5*time.Second))
}

// TestBreakerFlakyReceiverIsNotStarved: a receiver failing a third of its
// requests, spread over time, keeps the circuit closed.
func TestBreakerFlakyReceiverIsNotStarved(t *testing.T) {
	b := newBreaker(BreakerConfig{})
	c := breakerChecker{t, &b}
	for i := range 3000 {
		at := t0.Add(time.Duration(i) * 100 * time.Millisecond)
		c.mustAllow(at, false)
		r := ResultSuccess
		if i%3 == 0 {
			r = ResultFailure
		}
		c.record(at, r)
	}
}

// TestBreakerPacedAnswersDoNotOpen: 429/503 with Retry-After are not
// failures, however many there are, and do not reset the failure count.
func TestBreakerPacedAnswersDoNotOpen(t *testing.T) {
	b := newBreaker(BreakerConfig{MinRequests: 2, FailureRatio: 1})
	c := breakerChecker{t, &b}
	for range 1000 {
		c.record(t0, ResultPaced)
	}
	c.mustAllow(t0, false)
	c.record(t0, ResultFailure, ResultPaced, ResultPaced)
	if b.consecutiveFailures != 1 {
		t.Fatalf("consecutive failures = %d after failure, paced, paced; want 1", b.consecutiveFailures)
	}
	c.record(t0, ResultFailure)
	c.mustRefuse(t0, t0.Add(DefaultBreakerCooldown))
}

// TestBreakerOpensOnConnectionFailures: consecutive connection failures
// open the circuit below MinRequests; any other result in between resets
// the run.
func TestBreakerOpensOnConnectionFailures(t *testing.T) {
	b := newBreaker(BreakerConfig{ConnectionFailures: 3, MinRequests: 100, Cooldown: time.Second})
	c := breakerChecker{t, &b}
	c.record(t0, ResultConnectionFailure, ResultConnectionFailure, ResultSuccess, ResultConnectionFailure, ResultConnectionFailure)
	c.mustAllow(t0, false)
	c.record(t0, ResultConnectionFailure)
	c.mustRefuse(t0, t0.Add(time.Second))
}

// TestBreakerProbes: after the cool-down exactly one probe goes through;
// a failed probe re-opens with a doubled, capped cool-down; a successful or
// paced probe closes the circuit and clears the window.
func TestBreakerProbes(t *testing.T) {
	b := newBreaker(BreakerConfig{MinRequests: 2, FailureRatio: 1, Cooldown: 10 * time.Second, MaxCooldown: 25 * time.Second})
	c := breakerChecker{t, &b}
	c.record(t0, ResultFailure, ResultFailure)
	c.mustRefuse(t0, t0.Add(10*time.Second))
	c.mustRefuse(t0.Add(9*time.Second), t0.Add(10*time.Second))
	// A late failure of a request started earlier changes nothing.
	c.record(t0.Add(9*time.Second), ResultFailure)
	c.mustRefuse(t0.Add(9*time.Second), t0.Add(10*time.Second))

	c.mustAllow(t0.Add(10*time.Second), true)
	for _, at := range []time.Duration{10 * time.Second, 11 * time.Second, time.Hour} {
		c.mustRefuse(t0.Add(at), time.Time{})
	}
	// The probe fails: open again for twice the cool-down.
	b.record(ResultFailure, true, t0.Add(11*time.Second))
	c.mustRefuse(t0.Add(12*time.Second), t0.Add(31*time.Second))
	c.mustAllow(t0.Add(31*time.Second), true)
	// Fails again: the cool-down is capped.
	b.record(ResultConnectionFailure, true, t0.Add(31*time.Second))
	c.mustRefuse(t0.Add(31*time.Second), t0.Add(56*time.Second))
	// A probe whose request was never sent gives its right back.
	c.mustAllow(t0.Add(56*time.Second), true)
	b.cancelProbe()
	c.mustAllow(t0.Add(56*time.Second), true)
	// A paced answer to the probe: the receiver is there, closed.
	b.record(ResultPaced, true, t0.Add(57*time.Second))
	c.mustAllow(t0.Add(57*time.Second), false)
	// The window was cleared: one failure does not re-open it.
	c.record(t0.Add(58*time.Second), ResultFailure)
	c.mustAllow(t0.Add(58*time.Second), false)
	c.record(t0.Add(58*time.Second), ResultFailure)
	// Re-opened with the base cool-down, not the grown one.
	c.mustRefuse(t0.Add(58*time.Second), t0.Add(68*time.Second))
	c.mustAllow(t0.Add(68*time.Second), true)
	b.record(ResultSuccess, true, t0.Add(69*time.Second))
	c.mustAllow(t0.Add(69*time.Second), false)
}

func TestBreakerResultOfAttempts(t *testing.T) {
	for name, tc := range map[string]struct {
		res       attemptResult
		want      Result
		wantPause time.Duration
	}{
		"2xx":                        {attemptResult{success: true, statusCode: 204}, ResultSuccess, 0},
		"503 with Retry-After":       {attemptResult{statusCode: http.StatusServiceUnavailable, retryAfter: "7"}, ResultPaced, 7 * time.Second},
		"429 with Retry-After":       {attemptResult{statusCode: http.StatusTooManyRequests, retryAfter: "3"}, ResultPaced, 3 * time.Second},
		"Retry-After capped":         {attemptResult{statusCode: http.StatusTooManyRequests, retryAfter: "86400"}, ResultPaced, time.Hour},
		"429 without Retry-After":    {attemptResult{statusCode: http.StatusTooManyRequests}, ResultPaced, 0},
		"503 without Retry-After":    {attemptResult{statusCode: http.StatusServiceUnavailable}, ResultFailure, 0},
		"500 with Retry-After":       {attemptResult{statusCode: 500, retryAfter: "5"}, ResultFailure, 0},
		"timeout":                    {attemptResult{reason: ReasonTimeout}, ResultFailure, 0},
		"connection refused":         {attemptResult{reason: ReasonConnectionRefused}, ResultConnectionFailure, 0},
		"TLS":                        {attemptResult{reason: ReasonTLSError}, ResultConnectionFailure, 0},
		"blocked address":            {attemptResult{reason: ReasonBlockedAddress}, ResultConnectionFailure, 0},
		"3xx is an ordinary failure": {attemptResult{statusCode: 302, reason: HTTPReason(302)}, ResultFailure, 0},
	} {
		t.Run(name, func(t *testing.T) {
			got, pause := breakerResult(tc.res, time.Hour, t0)
			if got != tc.want || pause != tc.wantPause {
				t.Fatalf("breakerResult = %v, pause %s; want %v, pause %s", got, pause, tc.want, tc.wantPause)
			}
		})
	}
}

// acquireAll starts n goroutines acquiring a ticket each from p.
func acquireAll(ctx context.Context, p *Pacer, n int) (<-chan *Ticket, *sync.WaitGroup) {
	tickets := make(chan *Ticket, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			if ticket, err := p.Acquire(ctx); err == nil {
				tickets <- ticket
			}
		})
	}
	return tickets, &wg
}

// waitForTimer waits until something waits on the fake clock: a waiter
// blocked on a cool-down or pause.
func waitForTimer(t *testing.T, fc *clocktesting.FakeClock) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !fc.HasWaiters() {
		if time.Now().After(deadline) {
			t.Fatal("nothing waits on the clock")
		}
		time.Sleep(time.Millisecond)
	}
}

// TestPacerLetsExactlyOneProbeThrough: with the circuit open, many
// goroutines wait; none passes before the cool-down has passed on the
// pacer's clock; then exactly one, the probe, passes, and everyone else
// only after its success closed the circuit.
func TestPacerLetsExactlyOneProbeThrough(t *testing.T) {
	const waiters = 20
	const cooldown = time.Minute
	fc := clocktesting.NewFakeClock(t0)
	p := NewPacer(waiters, nil, BreakerConfig{ConnectionFailures: 1, Cooldown: cooldown}, fc)
	first, err := p.Acquire(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	if open := first.Done(ResultConnectionFailure); !open {
		t.Fatal("circuit not open after a connection failure with ConnectionFailures 1")
	}

	ctx, cancel := context.WithCancel(testContext(t))
	defer cancel()
	tickets, wg := acquireAll(ctx, p, waiters)
	waitForTimer(t, fc)
	fc.Step(cooldown - time.Nanosecond)
	fc.Step(time.Nanosecond)
	probe := <-tickets
	if !probe.Probe() {
		t.Fatal("the first request after the cool-down is not a probe")
	}
	// Tickets carry the pacer's clock when issued; the fake clock moved
	// only in the two steps above, so an early pass would show here.
	if got := probe.issuedAt.Sub(t0); got != cooldown {
		t.Fatalf("probe issued %s after the circuit opened, want exactly the cool-down %s", got, cooldown)
	}
	if !p.CircuitOpen() {
		t.Fatal("circuit closed while probing")
	}

	// The probe succeeds: everyone else proceeds. Only a closed circuit
	// issues tickets that are not probes, so 19 non-probe tickets prove
	// that nobody passed while the probe was in flight.
	if open := probe.Done(ResultSuccess); open {
		t.Fatal("circuit still open after a successful probe")
	}
	for range waiters - 1 {
		select {
		case tk := <-tickets:
			if tk.Probe() {
				t.Error("a second probe was issued")
			}
			tk.Done(ResultSuccess)
		case <-time.After(testTimeout):
			t.Fatalf("waiters stuck after the circuit closed")
		}
	}
	cancel()
	wg.Wait()
}

// TestPacerPauseHoldsRequests: a Retry-After pause holds Acquire and
// TryAcquire until it ends on the pacer's clock; an earlier pause does not
// shorten a later one.
func TestPacerPauseHoldsRequests(t *testing.T) {
	fc := clocktesting.NewFakeClock(t0)
	p := NewPacer(4, nil, BreakerConfig{}, fc)
	p.Pause(t0.Add(10 * time.Second))
	p.Pause(t0.Add(5 * time.Second))
	if got := p.TryAcquire(1); len(got) != 0 {
		t.Fatal("TryAcquire handed out a ticket during a pause")
	}
	tickets, wg := acquireAll(testContext(t), p, 1)
	waitForTimer(t, fc)
	fc.Step(10*time.Second - time.Nanosecond)
	waitForTimer(t, fc) // still waiting: the step did not reach the end
	fc.Step(time.Nanosecond)
	tk := <-tickets
	if got := tk.issuedAt.Sub(t0); got != 10*time.Second {
		t.Fatalf("ticket issued %s into the pause, want at its end (10s)", got)
	}
	if open := tk.Done(ResultPaced); open {
		t.Fatal("a paced answer opened the circuit")
	}
	wg.Wait()
	if got := p.TryAcquire(4); len(got) != 4 {
		t.Fatalf("TryAcquire after the pause gave %d tickets, want 4", len(got))
	}
}

func TestPacerMaxInFlight(t *testing.T) {
	p := NewPacer(2, nil, BreakerConfig{}, nil)
	ctx := testContext(t)
	a, _ := p.Acquire(ctx)
	b, _ := p.Acquire(ctx)
	if got := p.TryAcquire(1); len(got) != 0 {
		t.Fatal("a third ticket with maxInFlight 2")
	}
	// A waiter proceeds once a slot is given back.
	got, wg := acquireAll(ctx, p, 1)
	a.Done(ResultSuccess)
	c := <-got
	wg.Wait()
	// Raising the cap lets a waiter through at once.
	got, wg = acquireAll(ctx, p, 1)
	p.Update(3, nil)
	select {
	case tk := <-got:
		tk.Release()
	case <-time.After(testTimeout):
		t.Fatal("raising maxInFlight did not release a waiter")
	}
	wg.Wait()
	b.Release()
	c.Done(ResultSuccess)
	if n := p.InFlight(); n != 0 {
		t.Fatalf("%d in flight after every ticket ended", n)
	}
}

// TestPacerRateLimit: the token bucket allows the burst, then one request
// per 1/rate on the pacer's clock; a waiter that gives up returns its
// reserved token.
func TestPacerRateLimit(t *testing.T) {
	fc := clocktesting.NewFakeClock(t0)
	burst := int32(2)
	p := NewPacer(10, &heraldv1.RateLimitSpec{RequestsPerSecond: 1, Burst: &burst}, BreakerConfig{}, fc)
	ctx := testContext(t)
	for i := range 2 {
		tk, err := p.Acquire(ctx)
		if err != nil {
			t.Fatalf("request %d within the burst: %v", i+1, err)
		}
		tk.Done(ResultSuccess)
	}
	// The bucket is empty: a waiter that gives up...
	short, cancel := context.WithCancel(ctx)
	gaveUp, wg := acquireAll(short, p, 1)
	waitForTimer(t, fc)
	cancel()
	wg.Wait()
	if len(gaveUp) != 0 {
		t.Fatal("request beyond the burst got through without the clock moving")
	}
	// ...does not consume the next token: it comes one second on.
	next, wg := acquireAll(ctx, p, 1)
	waitForTimer(t, fc)
	fc.Step(time.Second)
	select {
	case tk := <-next:
		tk.Done(ResultSuccess)
	case <-time.After(testTimeout):
		t.Fatal("no token one second after the bucket emptied: the abandoned wait kept its token")
	}
	wg.Wait()
	if got := p.TryAcquire(1); len(got) != 0 {
		t.Fatal("a token appeared without the clock moving")
	}
}

// TestPacerTryAcquire: extra tickets for a batch come only from free slots
// and available tokens, never while the circuit is not closed, and are
// given back like any other.
func TestPacerTryAcquire(t *testing.T) {
	ctx := testContext(t)

	p := NewPacer(4, nil, BreakerConfig{ConnectionFailures: 1, Cooldown: time.Hour}, nil)
	first, err := p.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	extra := p.TryAcquire(10)
	if len(extra) != 3 {
		t.Fatalf("TryAcquire(10) with 3 free slots gave %d tickets, want 3", len(extra))
	}
	if more := p.TryAcquire(1); len(more) != 0 {
		t.Fatalf("TryAcquire with no free slot gave %d tickets", len(more))
	}
	extra[0].Release()
	extra[1].Done(ResultSuccess)
	if more := p.TryAcquire(5); len(more) != 2 {
		t.Fatalf("TryAcquire after 2 slots were freed gave %d tickets, want 2", len(more))
	} else {
		more[0].Release()
		more[1].Release()
	}
	first.Done(ResultConnectionFailure)
	if !p.CircuitOpen() {
		t.Fatal("circuit not open after a connection failure at ConnectionFailures 1")
	}
	if more := p.TryAcquire(1); len(more) != 0 {
		t.Fatalf("TryAcquire with the circuit open gave %d tickets", len(more))
	}
	extra[2].Release()

	// With a rate limit, only the tokens in the bucket are handed out, and
	// they are spent.
	fc := clocktesting.NewFakeClock(t0)
	burst := int32(3)
	p = NewPacer(10, &heraldv1.RateLimitSpec{RequestsPerSecond: 1, Burst: &burst}, BreakerConfig{}, fc)
	got := p.TryAcquire(5)
	if len(got) != 3 {
		t.Fatalf("TryAcquire(5) with 3 tokens gave %d tickets, want 3", len(got))
	}
	for _, tk := range got {
		tk.Release()
	}
	if more := p.TryAcquire(1); len(more) != 0 {
		t.Fatalf("TryAcquire with an empty bucket gave %d tickets", len(more))
	}
	fc.Step(time.Second)
	if more := p.TryAcquire(5); len(more) != 1 {
		t.Fatalf("TryAcquire a second later gave %d tickets, want 1", len(more))
	}
}
