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
// does the same with its periodic collections (JEP 346). The unit is the
// idle setting's headroom: what the heap may grow by before the collector
// runs at the idle GOGC. The dispatcher becomes idle when the last 30 s
// allocated at most one headroom per 5 s on average: at the idle setting
// it would collect at most every 5 s, a collection of a live heap that is
// not changing. It becomes busy again when the last 5 s allocated more
// than two headrooms. The averages make a periodic burst such as a
// Prometheus scrape (megabytes at once for 1,000 endpoints) part of the
// idle dispatcher's rate instead of the end of its idle spell, and the
// factor of two keeps it from switching back and forth at the boundary;
// traffic ends an idle spell within a second (the allocation is read every
// second, and 1,000 events/s allocate two headrooms in a fraction of one).
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
	DefaultPeriod      = 5 * time.Second
	DefaultIdleWindow  = 30 * time.Second
	DefaultTick        = time.Second
)

// busyFactor is how many headrooms a Period must allocate to end an idle
// spell.
const busyFactor = 2

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
	// Period is the span allowed one headroom of allocation while idle,
	// and the span that ends an idle spell when it allocates more than
	// two.
	Period time.Duration
	// IdleWindow is the span over which the allocation is averaged to
	// become idle; at least Period.
	IdleWindow time.Duration
	// Tick is how often the allocation is read.
	Tick time.Duration
}

func (o Options) withDefaults() Options {
	if o.Period <= 0 {
		o.Period = DefaultPeriod
	}
	if o.IdleWindow <= 0 {
		o.IdleWindow = DefaultIdleWindow
	}
	o.IdleWindow = max(o.IdleWindow, o.Period)
	if o.Tick <= 0 {
		o.Tick = DefaultTick
	}
	o.Tick = min(o.Tick, o.Period)
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

	// readings are the allocation counter at the last ticks, an
	// IdleWindow's worth, oldest first; periodTicks is how many ticks a
	// Period spans.
	readings    []uint64
	periodTicks int
	idle        atomic.Bool
	transitions atomic.Uint64
}

// New returns a Controller of the Go runtime of this process.
func New(opts Options, log logr.Logger) *Controller {
	return newController(opts, goRuntime{}, log)
}

func newController(opts Options, rt Runtime, log logr.Logger) *Controller {
	opts = opts.withDefaults()
	return &Controller{
		opts: opts, rt: rt, log: log,
		readings:    make([]uint64, 0, int(opts.IdleWindow/opts.Tick)+1),
		periodTicks: int(opts.Period / opts.Tick),
	}
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
		case <-t.C:
			c.tick()
		}
	}
}

// Idle reports whether the idle setting is in force.
func (c *Controller) Idle() bool { return c.idle.Load() }

// Transitions counts the switches between the settings, both ways.
func (c *Controller) Transitions() uint64 { return c.transitions.Load() }

// tick reads the allocation and switches the setting.
func (c *Controller) tick() {
	allocated, live := c.rt.Heap()
	if len(c.readings) == cap(c.readings) {
		c.readings = append(c.readings[:0], c.readings[1:]...)
	}
	c.readings = append(c.readings, allocated)
	full := len(c.readings) == cap(c.readings)
	// The runtime never aims below a 4 MiB heap at GOGC=100.
	headroom := max(live, minHeap) * uint64(c.opts.IdlePercent) / 100
	lastPeriod := allocated - c.readings[max(0, len(c.readings)-1-c.periodTicks)]
	if lastPeriod > busyFactor*headroom {
		c.busy()
		return
	}
	// Idle needs a whole window of readings: after start-up, and after a
	// busy spell, whose allocation leaves the window only then.
	if c.idle.Load() || !full {
		return
	}
	periods := uint64(c.opts.IdleWindow / c.opts.Period)
	if allocated-c.readings[0] > periods*headroom {
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

func (goRuntime) Heap() (allocated, live uint64) {
	samples := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}, {Name: "/gc/heap/live:bytes"}}
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
