package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
)

// FanOutResult is a fan-out scenario: every event goes to Endpoints
// endpoints through one Subscription each.
type FanOutResult struct {
	Endpoints int `json:"endpoints"`
	KneeResult
	// Ratio is the knee step's deliveries/s over the baseline measured
	// just before it; RatioToStartBaseline uses the run's first baseline.
	Ratio                float64 `json:"ratioToBaseline"`
	RatioToStartBaseline float64 `json:"ratioToStartBaseline"`
	// MaxRatio is the highest ratio of any step, passing or not.
	MaxRatio float64 `json:"maxRatioToBaseline"`
	// At1000 is the step at 1,000 events/s (the latency target's), when the
	// search ran one.
	At1000 *StepResult `json:"at1000,omitempty"`
	// Profiled is a separate run at the knee rate with a CPU profile.
	Profiled *StepResult `json:"profiled,omitempty"`
}

// fanOut runs a knee search with n endpoints per event, starting at start
// events/s.
func (r *Runner) fanOut(ctx context.Context, ns string, n int, start float64, maxSteps int, profileName string) (*FanOutResult, error) {
	pub, err := r.namespace(ctx, ns)
	if err != nil {
		return nil, err
	}
	defs := make([]*endpointDef, n)
	for i := range defs {
		defs[i] = &endpointDef{Name: fmt.Sprintf("sink-%d", i), Behaviour: Healthy, LedgerEndpoint: i, Types: []string{"bench.fanout"}}
	}
	if _, err := r.createEndpoints(ctx, ns, defs); err != nil {
		return nil, err
	}
	defer r.cleanup(ctx, ns)
	typ := constType("bench.fanout")
	if err := r.warmUp(ctx, pub, n, FanOutSlots(n), typ); err != nil {
		return nil, err
	}
	base := stepSpec{Name: ns, Pub: pub, Duration: r.p.stepDuration, Slots: n, Slot: FanOutSlots(n), Type: typ, Drain: r.p.drain}
	primeSpec := base
	primeSpec.Rate = start
	if err := r.prime(ctx, primeSpec); err != nil {
		return nil, err
	}
	k, err := r.kneeSearch(ctx, base, start, 1.6, r.p.latencyDuration, maxSteps)
	if err != nil {
		return nil, err
	}
	res := &FanOutResult{Endpoints: n, KneeResult: *k}
	for i := range k.Steps {
		if k.Steps[i].OfferedRate == 1000 {
			res.At1000 = &k.Steps[i]
		}
	}
	if bl := r.results.Baseline; bl != nil && bl.PerSecond > 0 {
		res.RatioToStartBaseline = k.KneeDeliveredPerSec / bl.PerSecond
	}
	if knee := k.Knee(); knee != nil {
		res.Ratio = knee.Ratio
	}
	for _, s := range k.Steps {
		res.MaxRatio = max(res.MaxRatio, s.Ratio)
	}
	if profileName != "" && ctx.Err() == nil {
		rate := k.KneeRate
		if rate == 0 {
			rate = start
		}
		spec := base
		spec.Rate = rate
		p, err := r.profiledStep(ctx, spec, ns, profileName)
		res.Profiled = p
		return res, err
	}
	return res, nil
}

// profiledStep runs spec again, a second after the last run, with a CPU
// profile of the dispatcher under profileName; its figures are reported,
// not compared, because profiling costs the dispatcher.
func (r *Runner) profiledStep(ctx context.Context, spec stepSpec, ns, profileName string) (*StepResult, error) {
	sleepCtx(ctx, time.Second)
	spec.Name, spec.ProfileName = fmt.Sprintf("%s-profiled@%.0f", ns, spec.Rate), profileName
	p, err := r.runStep(ctx, spec)
	if err != nil {
		return nil, err
	}
	r.sayStep(p)
	return &p, nil
}

// prime runs spec for two seconds without keeping the result: connection
// pools, goroutines and heap grow to their working size before anything is
// measured, so the first measured step is not penalised for being first.
func (r *Runner) prime(ctx context.Context, spec stepSpec) error {
	spec.Name, spec.Duration, spec.ProfileName, spec.During = "prime", 2*time.Second, "", nil
	_, err := r.runStep(ctx, spec)
	sleepCtx(ctx, 500*time.Millisecond)
	return err
}

// cleanup deletes a scenario's objects so its endpoints stop costing the
// dispatcher anything during later scenarios.
func (r *Runner) cleanup(ctx context.Context, ns string) {
	if err := deleteScenarioObjects(ctx, r.kube, ns); err != nil {
		r.say("cleanup of %s: %v", ns, err)
	}
}

// IsolationResult compares healthy endpoints' latency without (A, A2) and
// with (B) a failing and a slow endpoint subscribed to the same events.
type IsolationResult struct {
	HealthyEndpoints int        `json:"healthyEndpoints"`
	SlowDelayMs      float64    `json:"slowEndpointDelayMs"`
	Without          StepResult `json:"without"`
	With             StepResult `json:"with"`
	WithoutAgain     StepResult `json:"withoutAgain"`
	// P99Ratio is With's healthy p99 over the mean of Without's and
	// WithoutAgain's.
	P99Ratio float64 `json:"p99Ratio"`
	// Profiled is a run like With during which the CPU profile was taken;
	// not compared.
	Profiled *StepResult `json:"profiled,omitempty"`
	// Requests the failing and slow endpoints answered during With.
	FailingRequests int64 `json:"failingRequests"`
	SlowRequests    int64 `json:"slowRequests"`
}

func (r *Runner) isolation(ctx context.Context) (*IsolationResult, error) {
	const ns, healthy = "bench-isolation", 4
	pub, err := r.namespace(ctx, ns)
	if err != nil {
		return nil, err
	}
	defer r.cleanup(ctx, ns)
	defs := make([]*endpointDef, healthy)
	for i := range defs {
		defs[i] = &endpointDef{Name: fmt.Sprintf("healthy-%d", i), Behaviour: Healthy, LedgerEndpoint: i, Types: []string{"bench.isolation"}}
	}
	if _, err := r.createEndpoints(ctx, ns, defs); err != nil {
		return nil, err
	}
	typ := constType("bench.isolation")
	if err := r.warmUp(ctx, pub, healthy, FanOutSlots(healthy), typ); err != nil {
		return nil, err
	}
	spec := stepSpec{Pub: pub, Rate: r.p.isolationRate, Duration: r.p.isolationDuration, Slots: healthy, Slot: FanOutSlots(healthy), Type: typ, Drain: r.p.drain}
	res := &IsolationResult{HealthyEndpoints: healthy, SlowDelayMs: float64(r.sink.SlowDelay.Milliseconds())}
	if err := r.prime(ctx, spec); err != nil {
		return nil, err
	}

	spec.Name = "isolation-without"
	if res.Without, err = r.runStep(ctx, spec); err != nil {
		return nil, err
	}
	r.sayStep(res.Without)

	// A receiver that answers 500 to everything (its retries and circuit
	// breaker at work) and one that takes SlowDelay per request.
	bad := []*endpointDef{
		{Name: "failing", Behaviour: Failing, LedgerEndpoint: -1, Types: []string{"bench.isolation"},
			Retry: &heraldv1.RetrySpec{MaxAttempts: ptr.To[int32](5), InitialBackoff: &metav1.Duration{Duration: time.Second}, MaxBackoff: &metav1.Duration{Duration: 5 * time.Second}}},
		{Name: "slow", Behaviour: Slow, LedgerEndpoint: -1, Types: []string{"bench.isolation"}, Timeout: 5 * time.Second},
	}
	if _, err := r.createEndpoints(ctx, ns, bad); err != nil {
		return nil, err
	}
	// The catalog follows Ready objects within milliseconds; give it a
	// moment, as the warm-up cannot observe these two.
	sleepCtx(ctx, 2*time.Second)
	f0, s0 := r.sink.Requests(bad[0].sinkIndex), r.sink.Requests(bad[1].sinkIndex)
	spec.Name = "isolation-with"
	if res.With, err = r.runStep(ctx, spec); err != nil {
		return nil, err
	}
	r.sayStep(res.With)
	res.FailingRequests = r.sink.Requests(bad[0].sinkIndex) - f0
	res.SlowRequests = r.sink.Requests(bad[1].sinkIndex) - s0
	r.say("  failing endpoint answered %d requests, slow endpoint %d, during the run", res.FailingRequests, res.SlowRequests)
	// The CPU profile is taken in a run of its own: profiling costs the
	// dispatcher CPU and latency, which must not count against the run
	// compared with the runs without the bad endpoints.
	profiled := spec
	profiled.Name, profiled.ProfileName = "isolation-with-profiled", "isolation-with"
	profiledRes, err := r.runStep(ctx, profiled)
	if err != nil {
		return nil, err
	}
	res.Profiled = &profiledRes
	r.sayStep(profiledRes)

	for _, d := range bad {
		if err := r.kube.Delete(ctx, subscriptionObject(ns, d.Name, d.Name)); client.IgnoreNotFound(err) != nil {
			return nil, err
		}
		if err := r.kube.Delete(ctx, &heraldv1.WebhookEndpoint{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: d.Name}}); client.IgnoreNotFound(err) != nil {
			return nil, err
		}
	}
	sleepCtx(ctx, 3*time.Second)
	spec.Name = "isolation-without-again"
	if res.WithoutAgain, err = r.runStep(ctx, spec); err != nil {
		return nil, err
	}
	r.sayStep(res.WithoutAgain)
	if mean := (res.Without.Latency.P99 + res.WithoutAgain.Latency.P99) / 2; mean > 0 {
		res.P99Ratio = res.With.Latency.P99 / mean
	}
	return res, nil
}

// settledRSS waits until the idle dispatcher's resident set stops moving
// and returns it: after a burst of work the Go runtime returns freed
// memory to the system gradually (its background scavenger), so a reading
// taken at once counts garbage already collected. Settled means three
// readings 2 s apart within 1% of each other; after 90 s the last reading
// is taken as it is.
func (r *Runner) settledRSS(ctx context.Context) (ProcSample, error) {
	const interval, window, tolerance, limit = 2 * time.Second, 3, 0.01, 90 * time.Second
	var readings []int64
	deadline := time.Now().Add(limit)
	for {
		p, err := ReadProc(r.dispatcherPID())
		if err != nil {
			return p, err
		}
		readings = append(readings, p.RSS)
		if n := len(readings); n >= window {
			last := readings[n-window:]
			lo, hi := slices.Min(last), slices.Max(last)
			if float64(hi-lo) <= tolerance*float64(hi) {
				return p, nil
			}
		}
		if time.Now().After(deadline) {
			r.say("  dispatcher RSS still moving after %s; taking %.1f MiB", limit, mib(p.RSS))
			return p, nil
		}
		sleepCtx(ctx, interval)
	}
}

// waitIdleGC waits up to two minutes for the dispatcher to switch to its
// idle garbage-collector setting (herald_dispatcher_gc_idle), which it
// does once 30 s allocated little: an idle dispatcher's RSS and CPU are
// read in that state. It scrapes the metrics once every 15 s, as
// Prometheus would: a scrape of a dispatcher with 1,000 endpoints
// allocates megabytes, and scraping every second kept it from ever being
// idle. It returns "idle", "busy" (still not idle after two minutes, or
// the metrics could not be read) or "absent" (a build without the
// setting, as a comparison's base may be).
func (r *Runner) waitIdleGC(ctx context.Context) string {
	const name = "herald_dispatcher_gc_idle"
	start := time.Now()
	deadline := start.Add(2 * time.Minute)
	var allocatedAtStart float64
	for first := true; ; first = false {
		body, err := r.metrics(ctx)
		switch {
		case err != nil:
			r.say("  reading %s: %v", name, err)
			return "busy"
		case !strings.Contains(body, name+" "):
			return "absent"
		}
		if first {
			allocatedAtStart, _ = sumSeries(body, allocatedMetric)
		}
		if v, err := sumSeries(body, name); err == nil && v == 1 {
			return "idle"
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			allocated, _ := sumSeries(body, allocatedMetric)
			heap, _ := sumSeries(body, "go_memstats_heap_alloc_bytes")
			r.say("  the dispatcher's idle GC setting is still not in force after two minutes: it allocated %.0f KiB/s, heap %.1f MiB",
				(allocated-allocatedAtStart)/1024/time.Since(start).Seconds(), mib(int64(heap)))
			return "busy"
		}
		sleepCtx(ctx, 15*time.Second)
	}
}

// memoryTimeline writes the dispatcher's RSS to path every second until
// the returned function is called: the idle scenario's RSS readings in
// context (its switches to and from the idle garbage-collector setting
// show as steps). It reads /proc only: a scrape of the metrics allocates
// megabytes and costs the idle dispatcher a few tenths of a percent of a
// core, which the idle CPU reading would count.
func (r *Runner) memoryTimeline(ctx context.Context, path string) (stop func()) {
	f, err := os.Create(path)
	if err != nil {
		r.say("  memory timeline: %v", err)
		return func() {}
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer func() { _ = f.Close() }()
		if _, err := f.WriteString("seconds\trss\tanon\tfile\n"); err != nil {
			r.say("  memory timeline: %v", err)
			return
		}
		start := time.Now()
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			p, err := ReadProc(r.dispatcherPID())
			if err != nil {
				continue
			}
			if _, err := fmt.Fprintf(f, "%.0f\t%d\t%d\t%d\n", time.Since(start).Seconds(), p.RSS, p.RSSAnon, p.RSSFile); err != nil {
				r.say("  memory timeline: %v", err)
				return
			}
		}
	}()
	return func() { cancel(); <-done }
}

// MarginalRSS is the dispatcher's RSS growth per idle endpoint between two
// counts of endpoints.
type MarginalRSS struct {
	From               int     `json:"fromEndpoints"`
	To                 int     `json:"toEndpoints"`
	RSSPerEndpoint     float64 `json:"rssPerIdleEndpointBytes"`
	AnonRSSPerEndpoint float64 `json:"anonRssPerIdleEndpointBytes"`
	FileRSSPerEndpoint float64 `json:"fileRssPerIdleEndpointBytes"`
}

// rssGrowth is the RSS growth from reading a, with from endpoints, to
// reading b, with to endpoints, per endpoint added.
func rssGrowth(a, b ProcSample, from, to int) MarginalRSS {
	added := float64(to - from)
	return MarginalRSS{
		From: from, To: to,
		RSSPerEndpoint:     float64(b.RSS-a.RSS) / added,
		AnonRSSPerEndpoint: float64(b.RSSAnon-a.RSSAnon) / added,
		FileRSSPerEndpoint: float64(b.RSSFile-a.RSSFile) / added,
	}
}

// addIdleEndpoints creates defs and waits until they are Ready, the
// delivery stage knows all total endpoints of the scenario as idle, and
// their first status writes are done; it returns how long creating them
// until Ready took.
func (r *Runner) addIdleEndpoints(ctx context.Context, ns string, defs []*endpointDef, total int) (time.Duration, error) {
	took, err := r.createEndpoints(ctx, ns, defs)
	if err != nil {
		return 0, err
	}
	// Wait until the delivery stage knows every endpoint and all of them
	// are idle (no consumer, no loop: nothing is queued for them yet).
	deadline := time.Now().Add(2 * time.Minute)
	for {
		active, idle, err := r.deliveryEndpoints(ctx)
		if err != nil {
			return 0, err
		}
		if idle >= total && active == 0 {
			break
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("the dispatcher has %d active and %d idle endpoints 2 minutes after %d were Ready", active, idle, total)
		}
		sleepCtx(ctx, time.Second)
	}
	// New endpoints get their first status written, within the status
	// writer's budget: idle means after that too.
	return took, r.statusWritesSettled(ctx)
}

// KillResult is the SIGKILL scenario.
type KillResult struct {
	Step StepResult `json:"step"`
	// KilledAtSec is when the dispatcher was killed, from the first event's
	// schedule; RestartSeconds how long until the new process was ready.
	KilledAtSec    float64 `json:"killedAtSec"`
	RestartSeconds float64 `json:"restartSeconds"`
	// AcknowledgedLoss is the acknowledged deliveries that never arrived.
	AcknowledgedLoss int `json:"acknowledgedLoss"`
	Duplicates       int `json:"duplicates"`
}

// kill publishes at a constant rate to two endpoints and SIGKILLs the
// dispatcher mid-run, then restarts it on the same store. The publisher
// retries what went unanswered, as a real one would; every event it got a
// 202 for must arrive at both endpoints.
func (r *Runner) kill(ctx context.Context) (*KillResult, error) {
	const ns, n = "bench-kill", 2
	pub, err := r.namespace(ctx, ns)
	if err != nil {
		return nil, err
	}
	pub.RetryFor = 60 * time.Second
	defs := make([]*endpointDef, n)
	for i := range defs {
		defs[i] = &endpointDef{Name: fmt.Sprintf("sink-%d", i), Behaviour: Healthy, LedgerEndpoint: i, Types: []string{"bench.kill"},
			Retry: &heraldv1.RetrySpec{InitialBackoff: &metav1.Duration{Duration: 200 * time.Millisecond}, MaxBackoff: &metav1.Duration{Duration: 2 * time.Second}}}
	}
	if _, err := r.createEndpoints(ctx, ns, defs); err != nil {
		return nil, err
	}
	defer r.cleanup(ctx, ns)
	typ := constType("bench.kill")
	if err := r.warmUp(ctx, pub, n, FanOutSlots(n), typ); err != nil {
		return nil, err
	}
	res := &KillResult{}
	var restartErr error
	spec := stepSpec{
		Name: "sigkill", Pub: pub, Rate: r.p.killRate, Duration: r.p.killDuration, Slots: n, Slot: FanOutSlots(n), Type: typ,
		// In-flight deliveries of the killed process come back after the
		// consumer's AckWait (a minute by default): the drain must outlast it.
		Drain: 150 * time.Second,
		During: func(ctx context.Context) {
			sleepCtx(ctx, r.p.killAt)
			if ctx.Err() != nil {
				return
			}
			r.say("  SIGKILL dispatcher (pid %d)", r.dispatcherPID())
			r.h.Dispatcher.Kill()
			began := time.Now()
			restartErr = r.h.StartDispatcher(context.WithoutCancel(ctx))
			res.RestartSeconds = time.Since(began).Seconds()
			r.say("  dispatcher restarted on the same store in %.1f s (pid %d)", res.RestartSeconds, r.dispatcherPID())
		},
	}
	step, err := r.runStep(ctx, spec)
	if err != nil {
		return nil, err
	}
	if restartErr != nil {
		return nil, fmt.Errorf("restart after SIGKILL: %w", restartErr)
	}
	// The knee criterion does not apply here: the run is judged by its
	// ledger alone.
	step.Pass = step.Ledger.Missing == 0 && step.Ledger.Void == ""
	step.Why = ""
	if !step.Pass {
		step.Why = fmt.Sprintf("%d acknowledged deliveries missing %s", step.Ledger.Missing, step.Ledger.Void)
	}
	r.sayStep(step)
	res.Step = step
	res.KilledAtSec = r.p.killAt.Seconds()
	res.AcknowledgedLoss = step.Ledger.Missing
	res.Duplicates = step.Ledger.Duplicates
	return res, nil
}

// ScaleResult is the many-endpoints scenario.
type ScaleResult struct {
	Endpoints     int `json:"endpoints"`
	Subscriptions int `json:"subscriptions"`
	// EndpointsReadySeconds: creating the endpoints until all were Ready.
	EndpointsReadySeconds float64 `json:"endpointsReadySeconds"`
	// SubscriptionsCreateSeconds: creating the Subscriptions (client side);
	// SubscriptionsReadySeconds: from the first create until all Ready.
	SubscriptionsCreateSeconds float64 `json:"subscriptionsCreateSeconds"`
	SubscriptionsReadySeconds  float64 `json:"subscriptionsReadySeconds"`
	// ManagerCoresWhileReconciling is the manager's CPU use from the first
	// create until all Subscriptions were Ready.
	ManagerCoresWhileReconciling float64 `json:"managerCoresWhileReconciling"`
	// CatalogCatchUpSeconds is from all Subscriptions Ready until an event
	// for every endpoint's last Subscription was delivered: how long the
	// dispatcher took to route to them.
	CatalogCatchUpSeconds float64 `json:"catalogCatchUpSeconds"`
	// EndpointsNudged are Ready endpoints the dispatcher never routed to
	// until the harness touched them (a lost catalog update).
	EndpointsNudged []string `json:"endpointsNudged,omitempty"`
	// DispatcherCoresWhileSubscribing is the dispatcher's CPU use from the
	// first Subscription create until it routed to all of them.
	DispatcherCoresWhileSubscribing float64 `json:"dispatcherCoresWhileSubscribing"`
	// Dispatcher RSS: fresh with no endpoints of this scenario, with the
	// idle endpoints, and with the Subscriptions too.
	RSSBefore          int64   `json:"rssBeforeBytes"`
	RSSEndpoints       int64   `json:"rssWithEndpointsBytes"`
	RSSSubscriptions   int64   `json:"rssWithSubscriptionsBytes"`
	RSSPerEndpoint     float64 `json:"rssPerIdleEndpointBytes"`
	RSSPerSubscription float64 `json:"rssPerSubscriptionBytes"`
	// AnonRSSPerEndpoint and FileRSSPerEndpoint split RSSPerEndpoint into
	// the process's own memory and the mapped files' pages (the binary's
	// code that creating the endpoints ran for the first time).
	AnonRSSPerEndpoint float64 `json:"anonRssPerIdleEndpointBytes"`
	FileRSSPerEndpoint float64 `json:"fileRssPerIdleEndpointBytes"`
	// Marginal is what an endpoint costs once some exist: the growth from
	// the first batch of endpoints to all of them, per endpoint added.
	Marginal *MarginalRSS `json:"marginal,omitempty"`
	// MemStatsDeltaPerEndpoint is the growth of the Go runtime's memory
	// statistics (HeapInuse, StackInuse, …) per endpoint, in bytes: where
	// the RSS per endpoint goes.
	MemStatsDeltaPerEndpoint map[string]float64 `json:"memStatsDeltaPerEndpoint,omitempty"`
	// IdleGC says whether the dispatcher's idle garbage-collector setting
	// (--idle-gc-percent) was in force at the RSS readings, before and
	// with the endpoints: "idle", "busy", or "absent" in builds without it.
	IdleGC           [2]string `json:"idleGC"`
	GoroutinesBefore int       `json:"goroutinesBefore"`
	GoroutinesIdle   int       `json:"goroutinesWithEndpoints"`
	// IdleCores is the dispatcher's CPU use while the endpoints sit idle
	// and nothing is published; FreshIdleCores the same before the
	// endpoints were created.
	IdleCores      float64    `json:"idleDispatcherCores"`
	FreshIdleCores float64    `json:"freshIdleDispatcherCores"`
	Traffic        StepResult `json:"traffic"`
	// MatchCPUPerEventMs is the dispatcher CPU per event beyond fan-out
	// 1's at the same rate: matching among the Subscriptions plus the cost
	// of spreading deliveries over many endpoints.
	MatchCPUPerEventMs float64 `json:"extraCpuPerEventMs"`
}

// scale measures the idle endpoints, then, with subscriptions, the
// Subscriptions and the traffic among them.
func (r *Runner) scale(ctx context.Context, subscriptions bool) (*ScaleResult, error) {
	const ns = "bench-scale"
	n, per := r.p.scaleEndpoints, r.p.subsPerEndpoint
	res := &ScaleResult{Endpoints: n}
	pub, err := r.namespace(ctx, ns)
	if err != nil {
		return res, err
	}

	if err := r.scaleEndpoints(ctx, ns, res); err != nil || !subscriptions {
		return res, err
	}
	res.Subscriptions = n * per
	if err := r.scaleSubscriptions(ctx, ns, pub, res); err != nil {
		return res, err
	}
	// Each event matches exactly one Subscription among n*per, so each goes
	// to one endpoint; events cycle through all endpoints.
	route := func(seq int) int { return seq % n }
	typ := func(seq int) string { return scaleType(seq%n, (seq/n)%per) }
	sleepCtx(ctx, r.p.idleSettle)
	withSubs, err := ReadProc(r.dispatcherPID())
	if err != nil {
		return res, err
	}
	res.RSSSubscriptions = withSubs.RSS
	res.RSSPerSubscription = float64(res.RSSSubscriptions-res.RSSEndpoints) / float64(n*per)

	spec := stepSpec{Name: fmt.Sprintf("endpoints%d@%.0f", n, r.p.scaleRate), Pub: pub, Rate: r.p.scaleRate, Duration: r.p.stepDuration,
		Slots: 1, Slot: RoutedSlots(route), Type: typ, Drain: r.p.drain, ProfileName: "endpoints-traffic"}
	if res.Traffic, err = r.runStep(ctx, spec); err != nil {
		return res, err
	}
	r.sayStep(res.Traffic)
	if f := r.results.FanOut1; f != nil && f.At1000 != nil && f.At1000.CPUPer1000 > 0 && r.p.scaleRate == 1000 {
		res.MatchCPUPerEventMs = res.Traffic.CPUPer1000 - f.At1000.CPUPer1000
	}
	return res, nil
}

// scaleEndpoints restarts the dispatcher on an empty store, creates the
// endpoints and measures what they cost while idle.
func (r *Runner) scaleEndpoints(ctx context.Context, ns string, res *ScaleResult) error {
	n := res.Endpoints
	// A fresh dispatcher process on an empty store, so the RSS difference
	// is the endpoints', and the delivery consumers earlier scenarios left
	// behind do not count against JetStream's default limit of 1,000
	// consumers per stream (the dispatcher never deletes the consumer of a
	// deleted endpoint; see docs/benchmarks/README.md).
	r.say("  restarting the dispatcher on an empty store for a clean heap")
	if err := r.h.Dispatcher.Stop(30 * time.Second); err != nil {
		return err
	}
	if err := os.RemoveAll(filepath.Join(r.h.Dir, "jetstream")); err != nil {
		return err
	}
	// Heap samples every 4 KiB instead of 512 KiB, so the profile of the
	// idle endpoints attributes their few KiB each; this dispatcher's CPU
	// figures (the traffic step) carry the sampling's cost.
	if err := os.Setenv("HERALD_BENCH_MEMPROFILERATE", "4096"); err != nil {
		return err
	}
	err := r.h.StartDispatcher(ctx)
	_ = os.Unsetenv("HERALD_BENCH_MEMPROFILERATE")
	if err != nil {
		return err
	}
	stopTimeline := r.memoryTimeline(ctx, filepath.Join(r.cfg.OutDir, "idle-memory.tsv"))
	defer stopTimeline()
	sleepCtx(ctx, r.p.idleSettle)
	// The switch to the idle GC setting returns memory with a collection:
	// the idle CPU is read after it, as the RSS is.
	res.IdleGC[0] = r.waitIdleGC(ctx)
	if res.FreshIdleCores, err = r.idleCores(ctx); err != nil {
		return err
	}
	if _, err := r.cpuProfile(ctx, "fresh-idle", int(r.p.idleCPU.Seconds())); err != nil {
		r.say("idle CPU profile failed: %v", err)
	}
	before, err := r.settledRSS(ctx)
	if err != nil {
		return err
	}
	res.RSSBefore = before.RSS
	if res.GoroutinesBefore, err = r.goroutines(ctx); err != nil {
		return err
	}
	memBefore, err := r.memStats(ctx, "endpoints-before")
	if err != nil {
		return err
	}

	// The endpoints come in two batches: a fifth, then the rest. The
	// first batch also runs, once, the code paths an endpoint takes (the
	// binary's pages they touch count in RSS) and grows the runtime's and
	// the informers' fixed structures; the second measures what one more
	// idle endpoint costs.
	defs := make([]*endpointDef, n)
	for i := range defs {
		defs[i] = &endpointDef{Name: fmt.Sprintf("ep-%d", i), Behaviour: Healthy, LedgerEndpoint: i}
	}
	first := n / 5
	r.say("  creating %d endpoints, then %d more", first, n-first)
	took, err := r.addIdleEndpoints(ctx, ns, defs[:first], first)
	if err != nil {
		return err
	}
	r.waitIdleGC(ctx)
	mid, err := r.settledRSS(ctx)
	if err != nil {
		return err
	}
	more, err := r.addIdleEndpoints(ctx, ns, defs[first:], n)
	if err != nil {
		return err
	}
	took += more
	res.EndpointsReadySeconds = took.Seconds()
	r.say("  %d endpoints Ready in %.1f s", n, took.Seconds())
	res.IdleGC[1] = r.waitIdleGC(ctx)
	after, err := r.settledRSS(ctx)
	if err != nil {
		return err
	}
	res.RSSEndpoints = after.RSS
	whole, marginal := rssGrowth(before, after, 0, n), rssGrowth(mid, after, first, n)
	res.RSSPerEndpoint, res.AnonRSSPerEndpoint, res.FileRSSPerEndpoint = whole.RSSPerEndpoint, whole.AnonRSSPerEndpoint, whole.FileRSSPerEndpoint
	res.Marginal = &marginal
	if res.IdleCores, err = r.idleCores(ctx); err != nil {
		return err
	}
	if _, err := r.cpuProfile(ctx, "endpoints-idle", int(r.p.idleCPU.Seconds())); err != nil {
		r.say("idle CPU profile failed: %v", err)
	}
	// What the idle dispatcher still allocates decides whether it is idle;
	// the profile allocates megabytes itself, so it comes after the RSS
	// and CPU readings.
	if _, err := r.allocsProfile(ctx, "endpoints-idle", 20); err != nil {
		r.say("allocation profile failed: %v", err)
	}
	res.GoroutinesIdle, _ = r.goroutines(ctx)
	if _, err := r.heapProfile(ctx, "endpoints-idle"); err != nil {
		r.say("heap profile failed: %v", err)
	}
	if after, err := r.memStats(ctx, "endpoints-idle"); err == nil {
		res.MemStatsDeltaPerEndpoint = map[string]float64{}
		for k, v := range after {
			res.MemStatsDeltaPerEndpoint[k] = float64(v-memBefore[k]) / float64(n)
		}
	}
	r.say("  dispatcher RSS %.1f MiB → %.1f MiB with %d idle endpoints: %.1f KiB each (anonymous %.1f, mapped files %.1f); from %d to %d endpoints %.1f KiB each (anonymous %.1f, mapped files %.1f); %d goroutines; idle CPU %.3f cores; idle GC setting %s / %s",
		mib(res.RSSBefore), mib(res.RSSEndpoints), n, res.RSSPerEndpoint/1024, res.AnonRSSPerEndpoint/1024, res.FileRSSPerEndpoint/1024,
		first, n, res.Marginal.RSSPerEndpoint/1024, res.Marginal.AnonRSSPerEndpoint/1024, res.Marginal.FileRSSPerEndpoint/1024,
		res.GoroutinesIdle, res.IdleCores, res.IdleGC[0], res.IdleGC[1])

	return nil
}

// statusWritesSettled waits until the dispatcher's status writes
// (herald_health_status_writes_total) stop for two readings 5 s apart, or
// 3 minutes pass.
func (r *Runner) statusWritesSettled(ctx context.Context) error {
	deadline := time.Now().Add(3 * time.Minute)
	last, still := -1.0, 0
	for still < 2 && time.Now().Before(deadline) && ctx.Err() == nil {
		n, err := r.metricSum(ctx, "herald_health_status_writes_total")
		if err != nil {
			return err
		}
		if n == last {
			still++
		} else {
			still = 0
		}
		last = n
		sleepCtx(ctx, 5*time.Second)
	}
	if still < 2 {
		r.say("  status writes still running after 3 minutes; measuring anyway")
	}
	return ctx.Err()
}

// idleCores is the dispatcher's CPU use, in cores, over the idle-CPU
// window: timers, sweeps and the embedded server's housekeeping.
func (r *Runner) idleCores(ctx context.Context) (float64, error) {
	before, err := ReadProc(r.dispatcherPID())
	if err != nil {
		return 0, err
	}
	sleepCtx(ctx, r.p.idleCPU)
	after, err := ReadProc(r.dispatcherPID())
	if err != nil {
		return 0, err
	}
	return (after.CPU - before.CPU).Seconds() / r.p.idleCPU.Seconds(), nil
}

// scaleSubscriptions creates the Subscriptions, times them to Ready and
// until the dispatcher routes to all of them.
func (r *Runner) scaleSubscriptions(ctx context.Context, ns string, pub *Publisher, res *ScaleResult) error {
	n, per := res.Endpoints, res.Subscriptions/res.Endpoints
	route := func(seq int) int { return seq % n }
	r.say("  creating %d Subscriptions", n*per)
	subs := make([]client.Object, 0, n*per)
	for i := range n {
		for j := range per {
			subs = append(subs, subscriptionObject(ns, fmt.Sprintf("ep-%d-s%d", i, j), fmt.Sprintf("ep-%d", i), scaleType(i, j)))
		}
	}
	// Where the dispatcher's time goes while 10,000 Subscriptions arrive
	// through its informers.
	profileSecs := 20
	if r.cfg.Quick {
		profileSecs = 5
	}
	subsProfile := make(chan struct{})
	go func() {
		defer close(subsProfile)
		if _, err := r.cpuProfile(ctx, "subscriptions-arriving", profileSecs); err != nil {
			r.say("CPU profile while Subscriptions arrive failed: %v", err)
		}
	}()
	defer func() { <-subsProfile }()
	manager0, _ := ReadProc(r.h.Manager.PID())
	dispatcher0, _ := ReadProc(r.dispatcherPID())
	began := time.Now()
	if err := createAll(ctx, r.kube, subs, 32); err != nil {
		return err
	}
	res.SubscriptionsCreateSeconds = time.Since(began).Seconds()
	waitCtx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	err := waitReady(waitCtx, r.kube, ns, func() *heraldv1.SubscriptionList { return &heraldv1.SubscriptionList{} }, n*per, nil)
	cancel()
	if err != nil {
		return err
	}
	res.SubscriptionsReadySeconds = time.Since(began).Seconds()
	if manager1, err := ReadProc(r.h.Manager.PID()); err == nil {
		res.ManagerCoresWhileReconciling = (manager1.CPU - manager0.CPU).Seconds() / res.SubscriptionsReadySeconds
	}
	r.say("  %d Subscriptions created in %.1f s, all Ready after %.1f s; manager used %.2f cores meanwhile",
		n*per, res.SubscriptionsCreateSeconds, res.SubscriptionsReadySeconds, res.ManagerCoresWhileReconciling)

	// The dispatcher learns about the Subscriptions from its informers;
	// events published before its catalog has a Subscription match nothing.
	// Probe until an event for each endpoint's last Subscription arrives.
	probeType := func(seq int) string { return scaleType(seq%n, per-1) }
	catchUp := time.Now()
	var nudged []string
	nudged, err = r.catchUp(ctx, pub, ns, n, RoutedSlots(route), probeType, func(seq int) string { return fmt.Sprintf("ep-%d", route(seq)) }, 5*time.Minute)
	res.EndpointsNudged = nudged
	if err != nil {
		return err
	}
	res.CatalogCatchUpSeconds = time.Since(catchUp).Seconds()
	if dispatcherAfter, err := ReadProc(r.dispatcherPID()); err == nil {
		res.DispatcherCoresWhileSubscribing = (dispatcherAfter.CPU - dispatcher0.CPU).Seconds() / time.Since(began).Seconds()
	}
	r.say("  dispatcher routes to every endpoint %.1f s after all Subscriptions were Ready; it used %.2f cores from the first create until then",
		res.CatalogCatchUpSeconds, res.DispatcherCoresWhileSubscribing)
	return nil
}

func scaleType(endpoint, sub int) string { return fmt.Sprintf("bench.scale.e%d.t%d", endpoint, sub) }

func mib(b int64) float64 { return float64(b) / (1 << 20) }

// SteadyResult is fan-out 1 at a fixed, modest rate: what a delivery costs
// where most clusters run, far below the knee, where fixed per-message costs
// (round trips, timers, acknowledgements) are not shared by a batch.
type SteadyResult struct {
	Step StepResult `json:"step"`
	// Profiled is a run like Step during which the CPU profile was taken;
	// not compared.
	Profiled *StepResult `json:"profiled,omitempty"`
}

// oneEndpoint creates namespace ns with one healthy endpoint subscribed to
// events of type typ, for fan-out 1 at a fixed rate; the caller cleans ns
// up.
func (r *Runner) oneEndpoint(ctx context.Context, ns, typ string) (*Publisher, func(int) string, error) {
	pub, err := r.namespace(ctx, ns)
	if err != nil {
		return nil, nil, err
	}
	defs := []*endpointDef{{Name: "sink-0", Behaviour: Healthy, LedgerEndpoint: 0, Types: []string{typ}}}
	if _, err := r.createEndpoints(ctx, ns, defs); err != nil {
		return nil, nil, err
	}
	return pub, constType(typ), nil
}

// steady runs fan-out 1 at rate for the latency duration, then again with a
// CPU profile.
func (r *Runner) steady(ctx context.Context, ns string, rate float64, profileName string) (*SteadyResult, error) {
	pub, typ, err := r.oneEndpoint(ctx, ns, "bench.steady")
	if err != nil {
		return nil, err
	}
	defer r.cleanup(ctx, ns)
	if err := r.warmUp(ctx, pub, 1, FanOutSlots(1), typ); err != nil {
		return nil, err
	}
	spec := stepSpec{Name: fmt.Sprintf("%s@%.0f", ns, rate), Pub: pub, Rate: rate, Duration: r.p.latencyDuration, Slots: 1, Slot: FanOutSlots(1), Type: typ, Drain: r.p.drain}
	if err := r.prime(ctx, spec); err != nil {
		return nil, err
	}
	s, err := r.runStep(ctx, spec)
	if err != nil {
		return nil, err
	}
	r.sayStep(s)
	res := &SteadyResult{Step: s}
	if profileName != "" && ctx.Err() == nil {
		spec.Duration = r.p.stepDuration
		p, err := r.profiledStep(ctx, spec, ns, profileName)
		res.Profiled = p
		return res, err
	}
	return res, nil
}
