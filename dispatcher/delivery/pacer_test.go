package delivery

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
)

func TestBreakerTransitions(t *testing.T) {
	b := newBreaker(BreakerConfig{Threshold: 3, Cooldown: 10 * time.Second, MaxCooldown: 25 * time.Second})
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	mustAllow := func(at time.Time, wantProbe bool) {
		t.Helper()
		ok, probe, _ := b.allow(at)
		if !ok || probe != wantProbe {
			t.Fatalf("allow(%s) = %v probe=%v, want allowed probe=%v", at.Sub(t0), ok, probe, wantProbe)
		}
	}
	mustRefuse := func(at time.Time, wantRetryAt time.Time) {
		t.Helper()
		ok, _, retryAt := b.allow(at)
		if ok || !retryAt.Equal(wantRetryAt) {
			t.Fatalf("allow(%s) = %v retryAt=%s, want refused until %s", at.Sub(t0), ok, retryAt, wantRetryAt)
		}
	}

	// Closed: failures below the threshold and a success in between do not
	// open it.
	mustAllow(t0, false)
	b.record(false, false, t0)
	b.record(false, false, t0)
	b.record(true, false, t0)
	b.record(false, false, t0)
	b.record(false, false, t0)
	mustAllow(t0, false)
	// The third consecutive failure opens it for the cool-down.
	b.record(false, false, t0)
	mustRefuse(t0, t0.Add(10*time.Second))
	mustRefuse(t0.Add(9*time.Second), t0.Add(10*time.Second))
	// A late failure of a request started earlier changes nothing.
	b.record(false, false, t0.Add(9*time.Second))
	mustRefuse(t0.Add(9*time.Second), t0.Add(10*time.Second))

	// After the cool-down exactly one probe goes through.
	mustAllow(t0.Add(10*time.Second), true)
	for _, at := range []time.Duration{10 * time.Second, 11 * time.Second, time.Hour} {
		mustRefuse(t0.Add(at), time.Time{})
	}
	// The probe fails: open again with a doubled cool-down.
	b.record(false, true, t0.Add(11*time.Second))
	mustRefuse(t0.Add(12*time.Second), t0.Add(31*time.Second))
	mustAllow(t0.Add(31*time.Second), true)
	// Fails again: the cool-down is capped.
	b.record(false, true, t0.Add(31*time.Second))
	mustRefuse(t0.Add(31*time.Second), t0.Add(56*time.Second))
	// A probe whose request was never sent gives its right back.
	mustAllow(t0.Add(56*time.Second), true)
	b.cancelProbe()
	mustAllow(t0.Add(56*time.Second), true)
	// The probe succeeds: closed, everything flows, counters reset.
	b.record(true, true, t0.Add(57*time.Second))
	mustAllow(t0.Add(57*time.Second), false)
	mustAllow(t0.Add(57*time.Second), false)
	b.record(false, false, t0.Add(58*time.Second))
	b.record(false, false, t0.Add(58*time.Second))
	mustAllow(t0.Add(58*time.Second), false)
	b.record(false, false, t0.Add(58*time.Second))
	// Re-opened with the base cool-down, not the grown one.
	mustRefuse(t0.Add(58*time.Second), t0.Add(68*time.Second))
}

// TestPacerLetsExactlyOneProbeThrough: with the circuit open, many
// goroutines wait; after the cool-down one gets through and the others keep
// waiting until its result closes the circuit.
func TestPacerLetsExactlyOneProbeThrough(t *testing.T) {
	const waiters = 20
	p := NewPacer(waiters, nil, BreakerConfig{Threshold: 1, Cooldown: 100 * time.Millisecond})
	first, err := p.Acquire(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	if open := first.Done(false); !open {
		t.Fatal("circuit not open after reaching the threshold")
	}

	ctx, cancel := context.WithCancel(testContext(t))
	defer cancel()
	var passed atomic.Int32
	tickets := make(chan *Ticket, waiters)
	var wg sync.WaitGroup
	for range waiters {
		wg.Go(func() {
			ticket, err := p.Acquire(ctx)
			if err != nil {
				return
			}
			passed.Add(1)
			tickets <- ticket
		})
	}

	probe := <-tickets // arrives once the cool-down passed
	if !probe.Probe() {
		t.Fatal("the first request after the cool-down is not a probe")
	}
	// While the probe is in flight nobody else gets through. There is no
	// event to wait for when nothing happens, so give the waiters some
	// scheduling rounds.
	for range 50 {
		time.Sleep(2 * time.Millisecond)
		if n := passed.Load(); n != 1 {
			t.Fatalf("%d requests passed the open circuit, want exactly the probe", n)
		}
	}
	if !p.CircuitOpen() {
		t.Fatal("circuit closed while probing")
	}

	// The probe succeeds: everyone else proceeds.
	if open := probe.Done(true); open {
		t.Fatal("circuit still open after a successful probe")
	}
	for range waiters - 1 {
		select {
		case tk := <-tickets:
			if tk.Probe() {
				t.Error("a request after the circuit closed is marked as probe")
			}
			tk.Done(true)
		case <-time.After(testTimeout):
			t.Fatalf("only %d waiters proceeded after the circuit closed", passed.Load())
		}
	}
	cancel()
	wg.Wait()
}

func TestPacerMaxInFlight(t *testing.T) {
	p := NewPacer(2, nil, BreakerConfig{})
	ctx := testContext(t)
	a, _ := p.Acquire(ctx)
	b, _ := p.Acquire(ctx)
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := p.Acquire(short); err == nil {
		t.Fatal("a third request got through with maxInFlight 2")
	}
	a.Done(true)
	c, err := p.Acquire(ctx)
	if err != nil {
		t.Fatalf("slot not given back: %v", err)
	}
	// Raising the cap lets a waiter through at once.
	got := make(chan *Ticket, 1)
	go func() {
		tk, err := p.Acquire(ctx)
		if err == nil {
			got <- tk
		}
	}()
	p.Update(3, nil)
	select {
	case tk := <-got:
		tk.Release()
	case <-time.After(testTimeout):
		t.Fatal("raising maxInFlight did not release a waiter")
	}
	b.Release()
	c.Done(true)
}

func TestPacerRateLimit(t *testing.T) {
	burst := int32(2)
	p := NewPacer(10, &heraldv1.RateLimitSpec{RequestsPerSecond: 1, Burst: &burst}, BreakerConfig{})
	ctx := testContext(t)
	for i := range 2 {
		short, cancel := context.WithTimeout(ctx, time.Second)
		tk, err := p.Acquire(short)
		cancel()
		if err != nil {
			t.Fatalf("request %d within the burst: %v", i+1, err)
		}
		tk.Done(true)
	}
	// The bucket is empty: the next token comes in about a second.
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if _, err := p.Acquire(short); err == nil {
		t.Fatal("request beyond the burst got through at once")
	}
	// A request that gave up waiting does not consume the next token.
	tk, err := p.Acquire(ctx)
	if err != nil {
		t.Fatalf("next token: %v", err)
	}
	tk.Done(true)
}

// TestPacerTryAcquire: extra tickets for a batch come only from free slots
// and available tokens, never while the circuit is not closed, and are
// given back like any other.
func TestPacerTryAcquire(t *testing.T) {
	ctx := testContext(t)

	p := NewPacer(4, nil, BreakerConfig{Threshold: 1, Cooldown: time.Hour})
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
	extra[1].Done(true)
	if more := p.TryAcquire(5); len(more) != 2 {
		t.Fatalf("TryAcquire after 2 slots were freed gave %d tickets, want 2", len(more))
	} else {
		more[0].Release()
		more[1].Release()
	}
	// One failure opens the circuit (threshold 1): no batch tickets, and
	// the probe is not handed out by TryAcquire.
	first.Done(false)
	if !p.CircuitOpen() {
		t.Fatal("circuit not open after a failure at threshold 1")
	}
	if more := p.TryAcquire(1); len(more) != 0 {
		t.Fatalf("TryAcquire with the circuit open gave %d tickets", len(more))
	}
	extra[2].Release()

	// With a rate limit, only the tokens in the bucket are handed out, and
	// they are spent.
	burst := int32(3)
	p = NewPacer(10, &heraldv1.RateLimitSpec{RequestsPerSecond: 1, Burst: &burst}, BreakerConfig{})
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
}
