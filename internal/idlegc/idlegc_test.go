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
	c := newController(Options{BusyPercent: 100, IdlePercent: 25, Period: 5 * time.Second, IdleWindow: 30 * time.Second, Tick: time.Second}, rt, logr.Discard())
	step := func(alloc uint64) {
		rt.allocated += alloc
		c.tick()
	}

	// The idle headroom is 25% of the 100 MiB live heap, 25 MiB: idle
	// needs at most 6 of them (150 MiB) in the 30 s window. 4 MiB a second
	// is 120 MiB; the first 30 readings do not span the window yet.
	for i := range 30 {
		step(4 << 20)
		if c.Idle() {
			t.Fatalf("idle after %d readings, before a whole window", i+1)
		}
	}
	step(4 << 20)
	if !c.Idle() {
		t.Fatal("not idle after a window that allocated 120 MiB, under 6 headrooms of 25 MiB")
	}
	if len(rt.percents) != 1 || rt.percents[0] != 25 || rt.returned != 1 {
		t.Fatalf("on becoming idle: GC percents set %v and memory returned %d times, want [25] and once", rt.percents, rt.returned)
	}

	// A scrape's 35 MiB at once (1.4 headrooms, as a scrape of 1,000
	// endpoints' metrics is) every 15 s over 0.5 MiB a second is part of
	// an idle dispatcher's rate: the idle spell goes on, and nothing is set
	// again.
	for i := range 70 {
		if i >= 10 && i%15 == 0 {
			step(35 << 20)
		} else {
			step(512 << 10)
		}
	}
	if !c.Idle() || len(rt.percents) != 1 || rt.returned != 1 {
		t.Fatalf("periodic 35 MiB bursts: idle=%v, GC percents set %v, memory returned %d times; want still idle, nothing more set", c.Idle(), rt.percents, rt.returned)
	}

	// Traffic: 30 MiB a second passes two headrooms (50 MiB) within a
	// period and restores the busy setting on the second tick.
	step(30 << 20)
	if !c.Idle() {
		t.Fatal("busy after 30 MiB, under two headrooms")
	}
	step(30 << 20)
	if c.Idle() {
		t.Fatal("still idle after 60 MiB in two seconds, more than two headrooms of 25 MiB")
	}
	if got := rt.percents[len(rt.percents)-1]; got != 100 {
		t.Fatalf("GC percent after becoming busy = %d, want 100", got)
	}
	for range 8 {
		step(30 << 20)
	}
	if c.Idle() || c.Transitions() != 2 {
		t.Fatalf("during 10 s of traffic: idle=%v, %d transitions; want busy after 2", c.Idle(), c.Transitions())
	}

	// After the traffic, idle again once the window holds at most 6
	// headrooms: when no more than 5 of its 30 MiB seconds are left in it.
	for i := range 24 {
		step(0)
		if c.Idle() {
			t.Fatalf("idle %d s after 10 s of traffic, with %d MiB of it in the window", i+1, (10-(i+1)+4)*30)
		}
	}
	step(0)
	if !c.Idle() || rt.returned != 2 {
		t.Fatalf("idle=%v, memory returned %d times 25 s after the traffic; want idle and twice", c.Idle(), rt.returned)
	}
}

// TestSmallHeapHeadroom: below the runtime's 4 MiB minimum heap goal, the
// headroom is that of the minimum.
func TestSmallHeapHeadroom(t *testing.T) {
	rt := &recordingRuntime{live: 1 << 20}
	c := newController(Options{BusyPercent: 100, IdlePercent: 25, Period: time.Second, IdleWindow: time.Second, Tick: time.Second}, rt, logr.Discard())
	c.tick()
	rt.allocated += 900 << 10 // over a quarter of the live MiB, under a quarter of 4 MiB
	c.tick()
	if !c.Idle() {
		t.Fatal("900 KiB a second on a 1 MiB heap is not quiet; the runtime's 4 MiB minimum goal makes it so")
	}
}

func TestStartLeavesTheBusySetting(t *testing.T) {
	rt := &recordingRuntime{live: 10 << 20}
	c := newController(Options{BusyPercent: 100, IdlePercent: 25, Period: time.Millisecond, IdleWindow: time.Millisecond, Tick: time.Millisecond}, rt, logr.Discard())
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
			c := newController(opts, rt, logr.Discard())
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

	c := New(Options{BusyPercent: 100, IdlePercent: 25, Period: 50 * time.Millisecond, IdleWindow: 200 * time.Millisecond, Tick: 10 * time.Millisecond}, logr.Discard())
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- c.Start(ctx) }()

	waitFor(t, "idle", c.Idle)
	if got := debug.SetGCPercent(25); got != 25 {
		t.Fatalf("GOGC while idle = %d, want 25", got)
	}

	// Allocate far more than two headrooms per period.
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
