// Package idlegc gives the Go heap's headroom back to the system while the
// dispatcher is idle.
//
// Under load the collector lets the heap grow to (100 + GOGC)% of its live
// size between collections, and the runtime keeps about that much
// resident: the headroom is what spares the collector work when the
// dispatcher allocates per event. An idle dispatcher allocates almost
// nothing, so the headroom buys nothing, yet after a burst (1,000
// endpoints created, a backlog delivered) it stays resident for as long as
// the dispatcher idles: at GOGC=100, twice the live heap.
//
// Controller runs a smaller GOGC while the dispatcher is idle, and returns
// the heap's free pages to the system when it becomes idle; the JVM's G1
// does the same with its periodic collections (JEP 346). Idle means that
// for 15 s no 5 s window allocated more than the idle setting's headroom:
// at the idle GOGC the dispatcher then collects at most once per window,
// so the setting costs a collection of a live heap that is not changing
// every few seconds at most. The allocation is read four times a second,
// and the first window that allocates more than the headroom restores the
// busy setting: a burst after an idle spell runs at the idle setting for a
// quarter of a second at most.
package idlegc

import (
	"context"
	"runtime/debug"
	"runtime/metrics"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
)

// Defaults of Options.
const (
	DefaultIdlePercent = 25
	DefaultWindow      = 5 * time.Second
	DefaultTick        = 250 * time.Millisecond
	DefaultQuietFor    = 15 * time.Second
)

// minHeap is the Go runtime's smallest heap goal at GOGC=100.
const minHeap = 4 << 20

// Options configure a Controller.
type Options struct {
	// BusyPercent is the GOGC in force while the dispatcher allocates
	// (--gc-percent).
	BusyPercent int
	// IdlePercent is the GOGC while it is idle; 0 or a value not below
	// BusyPercent turns the controller off.
	IdlePercent int
	// Window is the span over which allocation is compared with the idle
	// setting's headroom: quiet means less than the headroom allocated in
	// the last Window.
	Window time.Duration
	// Tick is how often the allocation is read: how soon a burst of
	// allocation restores the busy setting.
	Tick time.Duration
	// QuietFor is how long the dispatcher must stay quiet to become idle.
	QuietFor time.Duration
}

func (o Options) withDefaults() Options {
	if o.Window <= 0 {
		o.Window = DefaultWindow
	}
	if o.Tick <= 0 {
		o.Tick = DefaultTick
	}
	o.Tick = min(o.Tick, o.Window)
	if o.QuietFor <= 0 {
		o.QuietFor = DefaultQuietFor
	}
	return o
}

// Enabled reports whether the options switch anything: an idle setting
// below the busy one, and a collector that is not off.
func (o Options) Enabled() bool {
	return o.BusyPercent > 0 && o.IdlePercent > 0 && o.IdlePercent < o.BusyPercent
}

// Runtime is the part of the Go runtime a Controller reads and sets;
// tests substitute it.
type Runtime interface {
	// Heap returns the bytes allocated on the heap since the process
	// started and the live heap at the last collection.
	Heap() (allocated, live uint64)
	SetGCPercent(percent int)
	// ReturnMemory collects and returns the free pages to the system.
	ReturnMemory()
}

// Controller switches between the busy and the idle GOGC.
type Controller struct {
	opts Options
	rt   Runtime
	log  logr.Logger

	// readings are the allocation counter at the last ticks, a window's
	// worth, oldest first.
	readings    []uint64
	quietSince  time.Time
	idle        atomic.Bool
	transitions atomic.Uint64
}

// New returns a Controller of the Go runtime of this process.
func New(opts Options, log logr.Logger) *Controller {
	return newController(opts, goRuntime{}, log, time.Now())
}

func newController(opts Options, rt Runtime, log logr.Logger, now time.Time) *Controller {
	opts = opts.withDefaults()
	c := &Controller{opts: opts, rt: rt, log: log, quietSince: now}
	c.readings = make([]uint64, 0, int(opts.Window/opts.Tick)+1)
	return c
}

// Start reads the allocation every tick until ctx ends, and leaves the
// busy setting in force when it returns. It implements controller-runtime's
// Runnable.
func (c *Controller) Start(ctx context.Context) error {
	if !c.opts.Enabled() {
		return nil
	}
	t := time.NewTicker(c.opts.Tick)
	defer t.Stop()
	defer c.busy()
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-t.C:
			c.tick(now)
		}
	}
}

// Idle reports whether the idle setting is in force.
func (c *Controller) Idle() bool { return c.idle.Load() }

// Transitions counts the switches between the settings, both ways.
func (c *Controller) Transitions() uint64 { return c.transitions.Load() }

// tick reads the allocation and switches the setting: to busy as soon as
// the last window allocated more than the idle setting's headroom, to idle
// once no window has for QuietFor.
func (c *Controller) tick(now time.Time) {
	allocated, live := c.rt.Heap()
	if len(c.readings) == cap(c.readings) {
		c.readings = append(c.readings[:0], c.readings[1:]...)
	}
	c.readings = append(c.readings, allocated)
	// The idle setting's headroom: what the heap may grow by before the
	// collector runs at the idle GOGC (the runtime never aims below a
	// 4 MiB heap at GOGC=100).
	headroom := max(live, minHeap) * uint64(c.opts.IdlePercent) / 100
	if allocated-c.readings[0] > headroom {
		c.quietSince = now
		c.busy()
		return
	}
	if c.idle.Load() || now.Sub(c.quietSince) < c.opts.QuietFor {
		return
	}
	c.idle.Store(true)
	c.transitions.Add(1)
	c.rt.SetGCPercent(c.opts.IdlePercent)
	c.rt.ReturnMemory()
	c.log.V(1).Info("Idle: returned the heap's headroom to the system", "gcPercent", c.opts.IdlePercent, "liveHeapBytes", live)
}

func (c *Controller) busy() {
	if !c.idle.Load() {
		return
	}
	c.idle.Store(false)
	c.transitions.Add(1)
	c.rt.SetGCPercent(c.opts.BusyPercent)
	c.log.V(1).Info("Busy: heap headroom restored", "gcPercent", c.opts.BusyPercent)
}

// goRuntime is the Go runtime of this process.
type goRuntime struct{}

var heapMetrics = []string{"/gc/heap/allocs:bytes", "/gc/heap/live:bytes"}

func (goRuntime) Heap() (allocated, live uint64) {
	samples := []metrics.Sample{{Name: heapMetrics[0]}, {Name: heapMetrics[1]}}
	metrics.Read(samples)
	return value(samples[0]), value(samples[1])
}

func value(s metrics.Sample) uint64 {
	if s.Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return s.Value.Uint64()
}

func (goRuntime) SetGCPercent(percent int) { debug.SetGCPercent(percent) }

func (goRuntime) ReturnMemory() { debug.FreeOSMemory() }
