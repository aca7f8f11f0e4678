package bench

import (
	"context"
	"fmt"
	"math"
	"runtime"
	"strings"
	"sync"
	"time"
)

// stepSpec is one open-loop run at a constant rate.
type stepSpec struct {
	Name     string
	Pub      *Publisher
	Rate     float64 // events/s
	Duration time.Duration
	// Slots is the number of ledger endpoints each event is expected at;
	// Slot maps (event, ledger endpoint) to its position among them.
	Slots int
	Slot  func(seq, endpoint int) (int, bool)
	Type  func(seq int) string
	// Drain bounds the wait for outstanding deliveries after the last
	// event was published.
	Drain time.Duration
	// During, when set, runs beside the publisher (the SIGKILL scenario).
	During func(ctx context.Context)
	// ProfileName, when set, takes a CPU profile (and an allocation
	// profile, <name>.allocs.pprof) of the dispatcher over the
	// publishing window under that name, and a goroutine dump half-way
	// through it: where the dispatcher waits, which a CPU profile does not
	// show.
	ProfileName string
}

// StepResult is the outcome of one open-loop run.
type StepResult struct {
	Name        string  `json:"name"`
	OfferedRate float64 `json:"offeredEventsPerSec"`
	Endpoints   int     `json:"endpointsPerEvent"`
	Seconds     float64 `json:"seconds"`
	// AcceptedPerSec is acknowledged events per second of the publishing
	// window; DeliveredPerSec is first receptions (deliveries, each event
	// counted once per endpoint) per second from the first scheduled event
	// to the last reception.
	AcceptedPerSec  float64        `json:"ingestAcceptsPerSec"`
	DeliveredPerSec float64        `json:"deliveredPerSec"`
	Latency         LatencySummary `json:"latency"`
	Ledger          Settlement     `json:"ledger"`
	Publish         PublishStats   `json:"publish"`
	// Backlog is deliveries owed (scheduled so far × endpoints − received)
	// sampled every 100 ms; BacklogSlope is its least-squares growth over
	// the second half of the publishing window, in deliveries per second.
	BacklogStable bool    `json:"backlogStable"`
	BacklogSlope  float64 `json:"backlogSlopePerSec"`
	BacklogMax    int64   `json:"backlogMax"`
	BacklogEnd    int64   `json:"backlogAtPublishEnd"`
	// DrainSeconds is how long the last deliveries took after the last
	// event was published; Drained is false when Drain ran out.
	DrainSeconds float64 `json:"drainSeconds"`
	Drained      bool    `json:"drained"`
	// Dispatcher resource use over the step (publishing and draining).
	CPUSeconds      float64 `json:"dispatcherCpuSeconds"`
	CPUPer1000      float64 `json:"dispatcherCpuSecondsPer1000Deliveries"`
	DispatcherCores float64 `json:"dispatcherCores"`
	HarnessCores    float64 `json:"harnessCores"`
	// ManagerCores is the manager process's; what the machine's busy
	// cores leave after the dispatcher, the harness and the manager is
	// mostly etcd and kube-apiserver.
	ManagerCores float64 `json:"managerCores"`
	// MachineBusyCores is the CPU use of the whole machine over the step,
	// every process included (other engineers' work on a shared machine).
	MachineBusyCores float64 `json:"machineBusyCores"`
	// CPUPressure and IOPressure are the shares of the step during which
	// some task on the machine waited for a CPU or for I/O (Linux PSI).
	CPUPressure float64 `json:"cpuPressure"`
	IOPressure  float64 `json:"ioPressure"`
	PeakRSS     int64   `json:"dispatcherPeakRssBytes"`
	// Stages splits the latency at the dispatcher's seams (from its own
	// histograms; zero when the dispatcher restarted during the step).
	Stages StageLag `json:"stages"`
	// AllocsPerDelivery and AllocBytesPerDelivery are the dispatcher's heap
	// allocations over the step per delivery made, ingest to log record
	// (from the Go runtime's counters). Unlike CPU, they hardly depend on
	// the machine's load. Zero when the dispatcher restarted, and in
	// profiled steps: writing the profiles allocates megabytes in the
	// dispatcher (40 more per delivery in a 7 s step at 2,550 events/s).
	AllocsPerDelivery     float64 `json:"dispatcherAllocsPerDelivery,omitempty"`
	AllocBytesPerDelivery float64 `json:"dispatcherAllocBytesPerDelivery,omitempty"`
	// Pass: not void, nothing missing or refused, p99 < 100 ms and a
	// stable backlog — the knee criterion.
	// AdjacentBaselinePerSec is the baseline measured just before this
	// step (when the step had one), and Ratio its deliveries/s over that:
	// the machine is shared, and its load changes from minute to minute.
	AdjacentBaselinePerSec float64 `json:"adjacentBaselinePerSec,omitempty"`
	Ratio                  float64 `json:"ratioToAdjacentBaseline,omitempty"`
	Pass                   bool    `json:"pass"`
	Why                    string  `json:"whyNot,omitempty"`
	Profile                string  `json:"profile,omitempty"`
}

// resourceSample is what runStep reads from /proc at each end of a step.
type resourceSample struct {
	dispatcher, harness, manager ProcSample
	dispatcherErr                error
	machine                      MachineCPU
	cpuPSI, ioPSI                time.Duration
}

func takeResourceSample(pid, managerPID int) resourceSample {
	var s resourceSample
	s.dispatcher, s.dispatcherErr = ReadProc(pid)
	s.harness, _ = ReadProc(selfPID())
	if managerPID > 0 {
		s.manager, _ = ReadProc(managerPID)
	}
	s.machine, _ = ReadMachineCPU()
	s.cpuPSI, _ = ReadPressure("cpu")
	s.ioPSI, _ = ReadPressure("io")
	return s
}

// measure fills the resource figures from two samples secs apart.
func (res *StepResult) measure(before, after resourceSample, secs float64) {
	if after.dispatcherErr == nil {
		res.CPUSeconds = (after.dispatcher.CPU - before.dispatcher.CPU).Seconds()
		res.PeakRSS = after.dispatcher.PeakRSS
		res.DispatcherCores = res.CPUSeconds / secs
	}
	if total := after.machine.Total - before.machine.Total; total > 0 {
		res.MachineBusyCores = float64(after.machine.Busy-before.machine.Busy) / float64(total) * float64(runtime.NumCPU())
	}
	if before.cpuPSI > 0 && after.cpuPSI > 0 {
		res.CPUPressure = (after.cpuPSI - before.cpuPSI).Seconds() / secs
	}
	if before.ioPSI > 0 && after.ioPSI > 0 {
		res.IOPressure = (after.ioPSI - before.ioPSI).Seconds() / secs
	}
	res.HarnessCores = (after.harness.CPU - before.harness.CPU).Seconds() / secs
	res.ManagerCores = (after.manager.CPU - before.manager.CPU).Seconds() / secs
}

// kneeP99 is the latency bound of the knee criterion.
const kneeP99 = 100 * time.Millisecond

// runStep publishes spec at its rate, waits for the deliveries, and
// accounts for them.
func (r *Runner) runStep(ctx context.Context, spec stepSpec) (StepResult, error) {
	res := StepResult{Name: spec.Name, OfferedRate: spec.Rate, Endpoints: spec.Slots}
	events := max(int(math.Round(spec.Rate*spec.Duration.Seconds())), 1)
	l := NewLedger(r.newRun(), events, spec.Slots, spec.Slot)
	r.sink.Track(l)

	pid := r.dispatcherPID()
	_ = ResetPeakRSS(pid)
	before := takeResourceSample(pid, r.managerPID())
	if before.dispatcherErr != nil {
		return res, fmt.Errorf("read dispatcher /proc: %w", before.dispatcherErr)
	}
	readBefore, readErr := r.readDispatcher(ctx)
	start := r.clock.Since() + 20*time.Millisecond
	interval := float64(time.Second) / spec.Rate

	// The backlog sampler counts everything owed since its scheduled time,
	// so events the publisher could not even send yet count too.
	var (
		samples []backlogSample
		sampMu  sync.Mutex
	)
	sampleCtx, stopSampling := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-sampleCtx.Done():
				return
			case <-tick.C:
			}
			now := r.clock.Since()
			due := min(max(int64(float64(now-start)/interval)+1, 0), int64(events))
			b := due*int64(spec.Slots) - l.FirstArrivals()
			sampMu.Lock()
			samples = append(samples, backlogSample{now - start, b})
			sampMu.Unlock()
		}
	})
	if spec.During != nil {
		wg.Go(func() { spec.During(sampleCtx) })
	}
	var profileDone chan string
	var allocsDone chan struct{}
	if spec.ProfileName != "" {
		profileDone = make(chan string, 1)
		go func() {
			secs := max(int(spec.Duration.Seconds())-1, 1)
			path, err := r.cpuProfile(ctx, spec.ProfileName, secs)
			if err != nil {
				r.say("CPU profile %s failed: %v", spec.ProfileName, err)
			}
			profileDone <- path
		}()
		allocsDone = make(chan struct{})
		go func() {
			// Over the same window: where the step's allocations are made.
			defer close(allocsDone)
			secs := max(int(spec.Duration.Seconds())-1, 1)
			if _, err := r.allocsProfile(ctx, spec.ProfileName, secs); err != nil {
				r.say("allocation profile %s failed: %v", spec.ProfileName, err)
			}
		}()
		go func() {
			sleepCtx(ctx, spec.Duration/2)
			if _, err := r.memStats(ctx, spec.ProfileName); err != nil {
				r.say("goroutine dump %s failed: %v", spec.ProfileName, err)
			}
		}()
	}

	res.Publish = spec.Pub.Run(ctx, r.clock, Plan{Ledger: l, Rate: spec.Rate, Start: start, Type: spec.Type, PadBytes: r.padBytes})
	published := r.clock.Since()

	// Drain: wait until every acknowledged event arrived everywhere.
	deadline := published + spec.Drain
	for ctx.Err() == nil && l.Outstanding() > 0 && r.clock.Since() < deadline {
		sleepCtx(ctx, 20*time.Millisecond)
	}
	res.Drained = l.Outstanding() <= 0
	drained := r.clock.Since()
	stopSampling()
	wg.Wait()
	if profileDone != nil {
		res.Profile = <-profileDone
		<-allocsDone
	}

	mallocs, allocated := math.NaN(), math.NaN()
	if r.dispatcherPID() == pid {
		res.measure(before, takeResourceSample(pid, r.managerPID()), (drained - start).Seconds())
		if readAfter, err := r.readDispatcher(ctx); err == nil && readErr == nil {
			res.Stages = stageLag(readBefore.stages, readAfter.stages)
			mallocs, allocated = readAfter.mallocs-readBefore.mallocs, readAfter.allocated-readBefore.allocated
		}
	}

	s := l.Settle()
	res.Ledger = s
	res.Latency = s.Latency
	res.Seconds = spec.Duration.Seconds()
	if s.LastAck > start {
		res.AcceptedPerSec = float64(s.Acked) / (s.LastAck - start).Seconds()
	}
	if s.LastArrival > start {
		res.DeliveredPerSec = float64(s.Delivered) / (s.LastArrival - start).Seconds()
	}
	if n := s.Delivered + s.ExtraDelivered; n > 0 && res.CPUSeconds > 0 {
		res.CPUPer1000 = res.CPUSeconds / float64(n) * 1000
	}
	if n := s.Delivered + s.ExtraDelivered; n > 0 && spec.ProfileName == "" && !math.IsNaN(mallocs) && !math.IsNaN(allocated) {
		res.AllocsPerDelivery = mallocs / float64(n)
		res.AllocBytesPerDelivery = allocated / float64(n)
	}
	res.DrainSeconds = max(0, (min(drained, max(s.LastArrival, published)) - published).Seconds())

	sampMu.Lock()
	res.judgeBacklog(spec, samples)
	sampMu.Unlock()
	res.judge(spec)
	return res, nil
}

// backlogSample is the deliveries owed at t after the first scheduled
// event.
type backlogSample struct {
	t       time.Duration
	backlog int64
}

// judgeBacklog fits the backlog's growth over the second half of the
// publishing window.
func (res *StepResult) judgeBacklog(spec stepSpec, samples []backlogSample) {
	var xs, ys []float64
	for _, sm := range samples {
		res.BacklogMax = max(res.BacklogMax, sm.backlog)
		if sm.t >= spec.Duration/2 && sm.t <= spec.Duration {
			xs = append(xs, sm.t.Seconds())
			ys = append(ys, float64(sm.backlog))
		}
		if sm.t <= spec.Duration {
			res.BacklogEnd = sm.backlog
		}
	}
	res.BacklogSlope = slope(xs, ys)
	// Growing by less than 2% of the offered delivery rate (or 20/s, for
	// low rates) is noise; more means the dispatcher falls behind.
	res.BacklogStable = res.BacklogSlope <= max(0.02*spec.Rate*float64(spec.Slots), 20)
}

// judge applies the knee criterion.
func (res *StepResult) judge(spec stepSpec) {
	s := res.Ledger
	var why []string
	if s.Void != "" {
		why = append(why, "void: "+s.Void)
	}
	if s.Missing > 0 {
		why = append(why, fmt.Sprintf("%d deliveries missing after %s of drain", s.Missing, spec.Drain))
	}
	if s.Unacked > 0 || s.NeverAnswered > 0 {
		why = append(why, fmt.Sprintf("%d events not accepted by ingest", s.Unacked+s.NeverAnswered))
	}
	if time.Duration(s.Latency.P99*float64(time.Millisecond)) >= kneeP99 {
		why = append(why, fmt.Sprintf("p99 %.1f ms ≥ %s", s.Latency.P99, kneeP99))
	}
	if !res.BacklogStable {
		why = append(why, fmt.Sprintf("backlog grows %.0f deliveries/s", res.BacklogSlope))
	}
	res.Pass = len(why) == 0
	res.Why = strings.Join(why, "; ")
}

// slope is the least-squares slope of ys over xs (0 with fewer than two
// points).
func slope(xs, ys []float64) float64 {
	n := float64(len(xs))
	if n < 2 {
		return 0
	}
	var sx, sy, sxx, sxy float64
	for i := range xs {
		sx += xs[i]
		sy += ys[i]
		sxx += xs[i] * xs[i]
		sxy += xs[i] * ys[i]
	}
	den := n*sxx - sx*sx
	if den == 0 {
		return 0
	}
	return (n*sxy - sx*sy) / den
}

// KneeResult is a knee search: the highest rate that passed, and every
// step tried.
type KneeResult struct {
	// KneeRate is the highest offered rate (events/s) that passed; 0 when
	// none did.
	KneeRate float64 `json:"kneeEventsPerSec"`
	// KneeDeliveredPerSec is the deliveries/s of the knee step.
	KneeDeliveredPerSec float64 `json:"kneeDeliveredPerSec"`
	// MaxDeliveredPerSec is the highest delivery rate any step reached,
	// passing or not: the throughput under overload.
	MaxDeliveredPerSec float64      `json:"maxDeliveredPerSec"`
	Steps              []StepResult `json:"steps"`
	Note               string       `json:"note,omitempty"`
}

// Knee returns the knee step, if any.
func (k *KneeResult) Knee() *StepResult {
	var best *StepResult
	for i := range k.Steps {
		s := &k.Steps[i]
		if s.Pass && (best == nil || s.OfferedRate > best.OfferedRate) {
			best = s
		}
	}
	return best
}

// kneeSearch raises the offered rate geometrically from start until a
// step fails the knee criterion, then bisects (geometrically) between the
// last pass and the first failure, within maxSteps steps. The first step
// lasts firstDuration (it doubles as the fixed-rate latency measurement).
func (r *Runner) kneeSearch(ctx context.Context, base stepSpec, start, growth float64, firstDuration time.Duration, maxSteps int) (*KneeResult, error) {
	k := &KneeResult{}
	lo, hi := 0.0, 0.0
	rate := start
	for i := 0; i < maxSteps && ctx.Err() == nil; i++ {
		spec := base
		spec.Rate = rate
		spec.Name = fmt.Sprintf("%s@%.0f", base.Name, rate)
		if i == 0 {
			spec.Duration = firstDuration
		}
		bl, err := runBaseline(ctx, r.clock, r.sink, r.newRun(), baselineConcurrency, r.padBytes, r.p.adjacentBaseline)
		if err != nil {
			return k, err
		}
		sleepCtx(ctx, 200*time.Millisecond)
		res, err := r.runStep(ctx, spec)
		if err != nil {
			return k, err
		}
		res.AdjacentBaselinePerSec = bl.PerSecond
		if bl.PerSecond > 0 {
			res.Ratio = res.DeliveredPerSec / bl.PerSecond
		}
		r.sayStep(res)
		k.Steps = append(k.Steps, res)
		k.MaxDeliveredPerSec = max(k.MaxDeliveredPerSec, res.DeliveredPerSec)
		if res.Pass {
			lo = rate
		} else {
			hi = rate
		}
		if !res.Drained {
			k.Note = fmt.Sprintf("step at %.0f events/s did not drain within %s; the search stopped there", rate, spec.Drain)
			break
		}
		switch {
		case hi == 0:
			rate *= growth
		case lo == 0:
			rate = hi / growth
		case hi/lo < 1.12:
			i = maxSteps
		default:
			rate = math.Sqrt(lo * hi)
		}
		rate = math.Round(rate/50) * 50
		if rate <= lo || (hi > 0 && rate >= hi) || rate <= 0 {
			break
		}
		// Let the pipeline go idle between steps.
		sleepCtx(ctx, time.Second)
	}
	if knee := k.Knee(); knee != nil {
		k.KneeRate = knee.OfferedRate
		k.KneeDeliveredPerSec = knee.DeliveredPerSec
	}
	return k, nil
}
