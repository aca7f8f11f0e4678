package idlegc

import (
	"context"
	"runtime"
	"runtime/debug"
	"testing"
	"time"

	"github.com/go-logr/logr"
)

// recordingRuntime is a Runtime whose allocation the test sets, recording
// what the Controller sets.
type recordingRuntime struct {
	allocated, live uint64
	percents        []int
	returned        int
}

func (r *recordingRuntime) Heap() (uint64, uint64) { return r.allocated, r.live }
func (r *recordingRuntime) SetGCPercent(p int)     { r.percents = append(r.percents, p) }
func (r *recordingRuntime) ReturnMemory()          { r.returned++ }

func TestIdleWhenQuietAndBusyOnAllocation(t *testing.T) {
	rt := &recordingRuntime{allocated: 1 << 30, live: 100 << 20}
	start := time.Unix(1_000_000, 0)
	c := newController(Options{BusyPercent: 100, IdlePercent: 25, Window: 5 * time.Second, Tick: time.Second, QuietFor: 15 * time.Second}, rt, logr.Discard(), start)
	now := start
	step := func(alloc uint64) {
		now = now.Add(time.Second)
		rt.allocated += alloc
		c.tick(now)
	}

	// The idle headroom is 25% of the 100 MiB live heap: 25 MiB per 5 s
	// window. 4 MiB a second stays under it (20 MiB a window).
	for i := range 14 {
		step(4 << 20)
		if c.Idle() {
			t.Fatalf("idle after %d quiet seconds, want 15", i+1)
		}
	}
	step(4 << 20)
	if !c.Idle() {
		t.Fatal("not idle after 15 quiet seconds")
	}
	if len(rt.percents) != 1 || rt.percents[0] != 25 || rt.returned != 1 {
		t.Fatalf("on becoming idle: GC percents set %v and memory returned %d times, want [25] and once", rt.percents, rt.returned)
	}

	// Staying idle sets nothing again.
	for range 30 {
		step(1 << 20)
	}
	if len(rt.percents) != 1 || rt.returned != 1 {
		t.Fatalf("while idle: GC percents set %v and memory returned %d times, want nothing more", rt.percents, rt.returned)
	}

	// 6 MiB a second fills the window's 25 MiB on the fifth second: the
	// busy setting is back on that tick, not a window later.
	for i := range 4 {
		step(6 << 20)
		if !c.Idle() {
			t.Fatalf("busy after %d seconds of 6 MiB, before the window allocated its headroom", i+1)
		}
	}
	step(6 << 20)
	if c.Idle() {
		t.Fatal("still idle after a window that allocated more than the idle headroom")
	}
	if got := rt.percents[len(rt.percents)-1]; got != 100 {
		t.Fatalf("GC percent after becoming busy = %d, want 100", got)
	}
	if c.Transitions() != 2 {
		t.Fatalf("transitions = %d, want 2", c.Transitions())
	}

	// Idle again only once the busy seconds have left the window and 15
	// quiet seconds have passed since the last busy one.
	for range 14 {
		step(0)
	}
	if c.Idle() {
		t.Fatal("idle again before 15 quiet seconds")
	}
	step(0)
	if !c.Idle() || rt.returned != 2 {
		t.Fatalf("idle=%v, memory returned %d times; want idle and twice", c.Idle(), rt.returned)
	}
}

// TestSmallHeapHeadroom: below the runtime's 4 MiB minimum heap goal, the
// headroom is that of the minimum.
func TestSmallHeapHeadroom(t *testing.T) {
	rt := &recordingRuntime{live: 1 << 20}
	start := time.Unix(1_000_000, 0)
	c := newController(Options{BusyPercent: 100, IdlePercent: 25, Window: time.Second, Tick: time.Second, QuietFor: time.Second}, rt, logr.Discard(), start)
	rt.allocated += 900 << 10 // over a quarter of the live MiB, under a quarter of 4 MiB
	c.tick(start.Add(time.Second))
	if !c.Idle() {
		t.Fatal("900 KiB a second on a 1 MiB heap is not quiet; the runtime's 4 MiB minimum goal makes it so")
	}
}

func TestStartLeavesTheBusySetting(t *testing.T) {
	rt := &recordingRuntime{live: 10 << 20}
	c := newController(Options{BusyPercent: 100, IdlePercent: 25, Window: time.Millisecond, Tick: time.Millisecond, QuietFor: time.Millisecond}, rt, logr.Discard(), time.Now())
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- c.Start(ctx) }()
	waitFor(t, "idle", c.Idle)
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Start: %v", err)
	}
	if c.Idle() || rt.percents[len(rt.percents)-1] != 100 {
		t.Fatalf("after Start returned: idle=%v, GC percents set %v; want the busy 100 last", c.Idle(), rt.percents)
	}
}

func TestDisabled(t *testing.T) {
	for name, opts := range map[string]Options{
		"idle percent 0":           {BusyPercent: 100, IdlePercent: 0},
		"idle not below busy":      {BusyPercent: 100, IdlePercent: 100},
		"collector off (GOGC=off)": {BusyPercent: -1, IdlePercent: 25},
	} {
		t.Run(name, func(t *testing.T) {
			rt := &recordingRuntime{live: 10 << 20}
			c := newController(opts, rt, logr.Discard(), time.Now())
			if err := c.Start(t.Context()); err != nil { // returns at once when disabled
				t.Fatalf("Start: %v", err)
			}
			if len(rt.percents) != 0 || rt.returned != 0 {
				t.Fatalf("disabled controller set GC percents %v, returned memory %d times", rt.percents, rt.returned)
			}
		})
	}
}

// TestGoRuntime runs a Controller on this process's runtime: it reads a
// live heap and an allocation that grows, sets the idle GOGC when nothing
// allocates and the busy one back when the test allocates.
func TestGoRuntime(t *testing.T) {
	prev := debug.SetGCPercent(100)
	t.Cleanup(func() { debug.SetGCPercent(prev) })

	runtime.GC() // the live heap is measured by a collection
	allocated, live := goRuntime{}.Heap()
	if allocated == 0 || live == 0 {
		t.Fatalf("runtime/metrics: allocated %d, live %d bytes; want both read", allocated, live)
	}

	c := New(Options{BusyPercent: 100, IdlePercent: 25, Window: 100 * time.Millisecond, Tick: 10 * time.Millisecond, QuietFor: 200 * time.Millisecond}, logr.Discard())
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- c.Start(ctx) }()

	waitFor(t, "idle", c.Idle)
	if got := debug.SetGCPercent(25); got != 25 {
		t.Fatalf("GOGC while idle = %d, want 25", got)
	}

	// Allocate far more than a quarter of the live heap per window.
	var sink [][]byte
	waitFor(t, "busy", func() bool {
		for range 64 {
			sink = append(sink, make([]byte, 64<<10))
		}
		if len(sink) > 4096 {
			sink = sink[:0]
		}
		return !c.Idle()
	})
	if got := debug.SetGCPercent(100); got != 100 {
		t.Fatalf("GOGC after allocating = %d, want 100", got)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Start: %v", err)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not %s after 30 s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
