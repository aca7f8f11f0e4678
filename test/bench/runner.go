package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/test/e2e"
)

// Scenario names, in the order a full run executes them.
const (
	ScenarioBaseline = "baseline"
	ScenarioFanOut1  = "fanout1"
	// ScenarioSteady is fan-out 1 at a fixed 1,000 events/s, with and
	// without the delivery log, each profiled: the low-rate cost.
	ScenarioSteady = "steady"
	// ScenarioFanOut1NoLog is fan-out 1 with the delivery log off, for the
	// log's cost measured in the same run.
	ScenarioFanOut1NoLog  = "fanout1-nolog"
	ScenarioFanOut10      = "fanout10"
	ScenarioIsolation     = "isolation"
	ScenarioKill          = "sigkill"
	ScenarioEndpoints1000 = "endpoints1000"
)

// ScenarioCompare alternates the steady run on the dispatcher built from
// Config.CompareRef and on the working tree's; it runs only when named.
const ScenarioCompare = "compare"

// ScenarioIdle is the first part of ScenarioEndpoints1000 alone: the idle
// dispatcher's CPU and memory before and after the endpoints are created,
// each profiled. It runs only when named (endpoints1000 includes it).
const ScenarioIdle = "idle"

// AllScenarios is the full run.
var AllScenarios = []string{ScenarioBaseline, ScenarioSteady, ScenarioFanOut1, ScenarioFanOut1NoLog, ScenarioFanOut10, ScenarioIsolation, ScenarioKill, ScenarioEndpoints1000}

// Config configures a benchmark run.
type Config struct {
	// Scenarios to run (AllScenarios when empty); the baseline always runs.
	Scenarios []string
	// Quick shortens every scenario to a smoke run whose figures are not
	// meant to be compared.
	Quick bool
	// OutDir receives profiles and scratch output.
	OutDir string
	// Progress is told what is happening.
	Progress func(format string, args ...any)
	// KeepDir keeps the scratch directory (logs, store) after the run.
	KeepDir bool
	// CompareRef is the git ref whose dispatcher the compare scenario runs
	// against the working tree's.
	CompareRef string
	// CompareRounds is how many base/head pairs the compare scenario runs;
	// 0 means DefaultCompareRounds. More rounds resolve smaller differences:
	// two runs of one build differ by up to 20% on these machines.
	CompareRounds int
}

// params are the sizes of a run.
type params struct {
	stepDuration, latencyDuration, baselineDuration time.Duration
	adjacentBaseline                                time.Duration
	drain                                           time.Duration
	fanOut1Steps, fanOut10Steps                     int
	isolationRate                                   float64
	isolationDuration                               time.Duration
	killRate                                        float64
	killDuration, killAt                            time.Duration
	scaleEndpoints, subsPerEndpoint                 int
	scaleRate                                       float64
	idleSettle, idleCPU                             time.Duration
}

func paramsFor(quick bool) params {
	if quick {
		return params{
			stepDuration: 3 * time.Second, latencyDuration: 4 * time.Second, baselineDuration: 2 * time.Second, adjacentBaseline: 500 * time.Millisecond,
			drain: 30 * time.Second, fanOut1Steps: 3, fanOut10Steps: 2,
			isolationRate: 100, isolationDuration: 4 * time.Second,
			killRate: 300, killDuration: 6 * time.Second, killAt: 2 * time.Second,
			scaleEndpoints: 100, subsPerEndpoint: 10, scaleRate: 500, idleSettle: 3 * time.Second, idleCPU: 5 * time.Second,
		}
	}
	return params{
		stepDuration: 8 * time.Second, latencyDuration: 15 * time.Second, baselineDuration: 5 * time.Second, adjacentBaseline: time.Second,
		drain: 60 * time.Second, fanOut1Steps: 8, fanOut10Steps: 6,
		isolationRate: 250, isolationDuration: 12 * time.Second,
		killRate: 1000, killDuration: 12 * time.Second, killAt: 4 * time.Second,
		scaleEndpoints: 1000, subsPerEndpoint: 10, scaleRate: 1000, idleSettle: 10 * time.Second, idleCPU: 30 * time.Second,
	}
}

// steadyRate is the steady scenario's rate: the low-rate figure.
const steadyRate = 1000

// Runner runs scenarios against one local Herald.
type Runner struct {
	cfg      Config
	p        params
	h        *e2e.Herald
	kube     client.WithWatch
	clock    *Clock
	sink     *Sink
	pprofURL string
	benchBin string
	baseBin  string // CompareRef's build
	padBytes int
	mu       sync.Mutex
	run      int
	results  *Results
}

func (r *Runner) say(format string, args ...any) {
	if r.cfg.Progress != nil {
		r.cfg.Progress(format, args...)
	}
}

func (r *Runner) sayStep(s StepResult) {
	verdict := "pass"
	if !s.Pass {
		verdict = "FAIL: " + s.Why
	}
	var worst []string
	for _, w := range s.Ledger.WorstWindows {
		worst = append(worst, fmt.Sprintf("%.0f ms at %.1f s", w.MaxMs, w.AtMs/1000))
	}
	if len(worst) > 0 {
		verdict += "; slowest 100 ms windows: " + strings.Join(worst, ", ")
	}
	r.say("  %-22s accepted %7.0f/s delivered %7.0f/s (ratio %.3f) p50 %6.1f ms p99 %7.1f ms p99.9 %7.1f ms (routed p50/p99 %.1f/%.1f ms, first attempt %.1f/%.1f ms) cpu %.3f s/1000 allocs %.0f (%.1f KB)/delivery dispatcher %.2f cores harness %.2f cores manager %.2f cores machine %.2f busy, cpu pressure %.0f%% io %.0f%% dup %d missing %d — %s",
		s.Name, s.AcceptedPerSec, s.DeliveredPerSec, s.Ratio, s.Latency.P50, s.Latency.P99, s.Latency.P999,
		s.Stages.RoutedP50, s.Stages.RoutedP99, s.Stages.StartP50, s.Stages.StartP99, s.CPUPer1000, s.AllocsPerDelivery, s.AllocBytesPerDelivery/1000, s.DispatcherCores, s.HarnessCores, s.ManagerCores, s.MachineBusyCores, 100*s.CPUPressure, 100*s.IOPressure, s.Ledger.Duplicates, s.Ledger.Missing, verdict)
}

func (r *Runner) newRun() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.run++
	return r.run
}

func (r *Runner) dispatcherPID() int { return r.h.Dispatcher.PID() }

// managerPID is the manager's process id, 0 when it is not running.
func (r *Runner) managerPID() int {
	if r.h.Manager == nil || r.h.Manager.Exited() {
		return 0
	}
	return r.h.Manager.PID()
}

func selfPID() int { return os.Getpid() }

// Run starts a local Herald (control plane, manager, dispatcher), runs the
// configured scenarios and returns their results. Everything it starts is
// stopped before it returns.
func Run(ctx context.Context, cfg Config) (*Results, error) {
	scenarios := cfg.Scenarios
	if len(scenarios) == 0 {
		scenarios = AllScenarios
	}
	known := append(slices.Clone(AllScenarios), ScenarioCompare, ScenarioIdle)
	for _, s := range scenarios {
		if !slices.Contains(known, s) {
			return nil, fmt.Errorf("unknown scenario %q (known: %s)", s, strings.Join(known, ","))
		}
	}
	if slices.Contains(scenarios, ScenarioCompare) && cfg.CompareRef == "" {
		return nil, fmt.Errorf("scenario %s needs a git ref to compare with (BENCH_COMPARE)", ScenarioCompare)
	}
	began := time.Now()
	r := &Runner{cfg: cfg, p: paramsFor(cfg.Quick), clock: NewClock(), padBytes: 200}
	r.results = &Results{
		Date: began.UTC().Format(time.RFC3339), Quick: cfg.Quick, Scenarios: scenarios,
		Machine: machineFacts(), Profiles: map[string]string{},
	}
	if root, err := e2e.RepoRoot(); err == nil {
		r.results.Commit = gitDescribe(root)
	}
	if err := os.MkdirAll(cfg.OutDir, 0o755); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "herald-bench-")
	if err != nil {
		return nil, err
	}
	defer func() {
		if cfg.KeepDir {
			r.say("scratch directory kept: %s", dir)
			return
		}
		_ = os.RemoveAll(dir)
	}()

	if err := r.start(ctx, dir); err != nil {
		return nil, err
	}
	defer r.stop()

	bl, err := runBaseline(ctx, r.clock, r.sink, r.newRun(), baselineConcurrency, r.padBytes, r.p.baselineDuration)
	if err != nil {
		return nil, err
	}
	r.results.Baseline = bl
	r.say("baseline: plain Go client, %d connections: %.0f signed requests/s verified by the sink (p50 %.2f ms, p99 %.2f ms)",
		bl.Concurrency, bl.PerSecond, bl.Latency.P50, bl.Latency.P99)

	for _, name := range append([]string{ScenarioCompare, ScenarioIdle}, AllScenarios...) {
		if name == ScenarioBaseline || !slices.Contains(scenarios, name) {
			continue
		}
		if ctx.Err() != nil {
			break
		}
		r.say("scenario %s", name)
		var err error
		switch name {
		case ScenarioCompare:
			r.results.Compare, err = r.compare(ctx)
		case ScenarioSteady:
			r.results.Steady, err = r.steady(ctx, "bench-steady", steadyRate, "steady")
			if err == nil {
				r.results.SteadyNoLog, err = withoutDeliveryLog(ctx, r, func() (*SteadyResult, error) {
					return r.steady(ctx, "bench-steady-nolog", steadyRate, "steady-nolog")
				})
			}
		case ScenarioFanOut1:
			r.results.FanOut1, err = r.fanOut(ctx, "bench-fanout1", 1, 1000, r.p.fanOut1Steps, "fanout1")
		case ScenarioFanOut1NoLog:
			r.results.FanOut1NoLog, err = withoutDeliveryLog(ctx, r, func() (*FanOutResult, error) {
				return r.fanOut(ctx, "bench-fanout1-nolog", 1, 1000, r.p.fanOut1Steps, "")
			})
		case ScenarioFanOut10:
			r.results.FanOut10, err = r.fanOut(ctx, "bench-fanout10", 10, 200, r.p.fanOut10Steps, "fanout10")
		case ScenarioIsolation:
			r.results.Isolation, err = r.isolation(ctx)
		case ScenarioKill:
			r.results.Kill, err = r.kill(ctx)
		case ScenarioIdle:
			r.results.Endpoints1000, err = r.scale(ctx, false)
		case ScenarioEndpoints1000:
			r.results.Endpoints1000, err = r.scale(ctx, true)
		}
		if err != nil {
			r.results.Errors = append(r.results.Errors, fmt.Sprintf("%s: %v", name, err))
			r.say("scenario %s failed: %v", name, err)
			if r.h.Dispatcher.Exited() {
				r.say("dispatcher exited; its log is in %s", r.h.Dispatcher.LogPath)
				cfg.KeepDir = true
				break
			}
		}
	}
	r.results.DurationSeconds = time.Since(began).Seconds()
	r.results.evaluateTargets()
	return r.results, nil
}

// withoutDeliveryLog runs fn with the dispatcher restarted with
// --delivery-log=false, then restarts it with the log on again.
func withoutDeliveryLog[T any](ctx context.Context, r *Runner, fn func() (*T, error)) (*T, error) {
	r.say("  restarting the dispatcher without the delivery log")
	if err := r.h.RestartDispatcher(ctx, "--delivery-log=false"); err != nil {
		return nil, err
	}
	res, err := fn()
	r.say("  restarting the dispatcher with the delivery log")
	if rerr := r.h.RestartDispatcher(ctx); rerr != nil && err == nil {
		err = rerr
	}
	return res, err
}

// baselineConcurrency matches the dispatcher's default maxInFlight per
// endpoint, so both sides may have as many requests in flight.
const baselineConcurrency = heraldv1.DefaultMaxInFlight

// start brings Herald up and swaps in the profiling build of the
// dispatcher.
func (r *Runner) start(ctx context.Context, dir string) error {
	pprofPort, err := e2e.FreePort()
	if err != nil {
		return err
	}
	pprofAddr := "127.0.0.1:" + strconv.Itoa(pprofPort)
	r.pprofURL = "http://" + pprofAddr
	// Inherited by the processes the harness starts; only the benchmark
	// build of the dispatcher reads it.
	if err := os.Setenv("HERALD_BENCH_PPROF_ADDR", pprofAddr); err != nil {
		return err
	}
	h, err := e2e.Start(ctx, e2e.Options{Dir: dir, Progress: r.say, StatusInterval: 5 * time.Second})
	if err != nil {
		return err
	}
	r.h = h
	ok := false
	defer func() {
		if !ok {
			h.Stop()
		}
	}()
	r.say("building the dispatcher with a loopback pprof listener (go build -overlay, the product's cmd/dispatcher unchanged)")
	if r.benchBin, err = buildBenchDispatcher(ctx, h.Root, filepath.Join(dir, "bin")); err != nil {
		return err
	}
	h.Bins.Dispatcher = r.benchBin
	if ref := r.cfg.CompareRef; ref != "" {
		r.say("building the dispatcher of %s to compare with", ref)
		if r.baseBin, err = buildRefDispatcher(ctx, h.Root, ref, dir); err != nil {
			return err
		}
	}
	if err := h.RestartDispatcher(ctx); err != nil {
		return err
	}
	if r.kube, err = newFastClient(h.Kubeconfig); err != nil {
		return err
	}
	if r.sink, err = StartSink(r.clock); err != nil {
		return err
	}
	ok = true
	return nil
}

func (r *Runner) stop() {
	if r.sink != nil {
		r.sink.Close()
	}
	if r.h != nil {
		r.say("tearing down")
		r.h.Stop()
	}
}

// buildBenchDispatcher builds cmd/dispatcher with dispatcherhook/pprof.go
// added to its main package through a build overlay.
func buildBenchDispatcher(ctx context.Context, root, dir string) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	overlay := map[string]map[string]string{"Replace": {
		filepath.Join(root, "cmd", "dispatcher", "zz_heraldbench_pprof.go"): filepath.Join(root, "test", "bench", "dispatcherhook", "pprof.go"),
	}}
	b, _ := json.Marshal(overlay)
	overlayPath := filepath.Join(dir, "overlay.json")
	if err := os.WriteFile(overlayPath, b, 0o644); err != nil {
		return "", err
	}
	out := filepath.Join(dir, "dispatcher-bench")
	cmd := exec.CommandContext(ctx, "go", "build", "-tags", "heraldbench", "-overlay", overlayPath, "-o", out, "./cmd/dispatcher")
	cmd.Dir = root
	if o, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build benchmark dispatcher: %w: %s", err, o)
	}
	return out, nil
}

// cpuProfile takes a CPU profile of the dispatcher for secs seconds and
// writes it, with a `go tool pprof -top` rendering, to the output
// directory.
func (r *Runner) cpuProfile(ctx context.Context, name string, secs int) (string, error) {
	return r.profile(ctx, name+".cpu.pprof", fmt.Sprintf("/debug/pprof/profile?seconds=%d", secs), time.Duration(secs+30)*time.Second, "")
}

// allocsProfile writes the dispatcher's allocations over the next secs
// seconds (a delta profile), by space allocated.
func (r *Runner) allocsProfile(ctx context.Context, name string, secs int) (string, error) {
	return r.profile(ctx, name+".allocs.pprof", fmt.Sprintf("/debug/pprof/allocs?seconds=%d", secs), time.Duration(secs+30)*time.Second, "-sample_index=alloc_space")
}

// heapProfile writes the dispatcher's in-use heap profile.
func (r *Runner) heapProfile(ctx context.Context, name string) (string, error) {
	return r.profile(ctx, name+".heap.pprof", "/debug/pprof/heap?gc=1", 30*time.Second, "-sample_index=inuse_space")
}

func (r *Runner) profile(ctx context.Context, file, path string, timeout time.Duration, topFlag string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.pprofURL+path, nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("pprof %s: %s", path, resp.Status)
	}
	out := filepath.Join(r.cfg.OutDir, file)
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(out, b, 0o644); err != nil {
		return "", err
	}
	args := []string{"tool", "pprof", "-top", "-nodecount=40"}
	if topFlag != "" {
		args = append(args, topFlag)
	}
	top, err := exec.CommandContext(ctx, "go", append(args, r.benchBin, out)...).CombinedOutput()
	if err == nil {
		_ = os.WriteFile(strings.TrimSuffix(out, ".pprof")+".top.txt", top, 0o644)
	}
	cum, err := exec.CommandContext(ctx, "go", append(append(args, "-cum"), r.benchBin, out)...).CombinedOutput()
	if err == nil {
		_ = os.WriteFile(strings.TrimSuffix(out, ".pprof")+".cum.txt", cum, 0o644)
	}
	r.mu.Lock()
	r.results.Profiles[strings.TrimSuffix(file, ".pprof")] = out
	r.mu.Unlock()
	return out, nil
}

// memStats saves the dispatcher's goroutine dump and heap summary (with
// the runtime's MemStats) under name, and returns the MemStats fields.
func (r *Runner) memStats(ctx context.Context, name string) (map[string]int64, error) {
	for _, f := range []struct{ file, path string }{
		{name + ".goroutines.txt", "/debug/pprof/goroutine?debug=1"},
		{name + ".heap.txt", "/debug/pprof/heap?debug=1"},
	} {
		b, err := r.get(ctx, f.path)
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(r.cfg.OutDir, f.file), b, 0o644); err != nil {
			return nil, err
		}
		if strings.HasSuffix(f.file, ".heap.txt") {
			return parseMemStats(b), nil
		}
	}
	return nil, nil
}

// parseMemStats reads the "# Name = value" lines the heap profile's text
// form ends with.
func parseMemStats(b []byte) map[string]int64 {
	out := map[string]int64{}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(strings.TrimPrefix(line, "# "), " = ")
		if !ok || !strings.HasPrefix(line, "# ") {
			continue
		}
		if k == "Stack" { // "# Stack = <StackInuse> / <StackSys>"
			inuse, sys, _ := strings.Cut(v, " / ")
			k, v = "StackInuse", inuse
			if n, err := strconv.ParseInt(strings.TrimSpace(sys), 10, 64); err == nil {
				out["StackSys"] = n
			}
		}
		if n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err == nil {
			out[k] = n
		}
	}
	return out
}

func (r *Runner) get(ctx context.Context, path string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.pprofURL+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return io.ReadAll(resp.Body)
}

// goroutines returns the dispatcher's goroutine count.
func (r *Runner) goroutines(ctx context.Context) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.pprofURL+"/debug/pprof/goroutine?debug=1", nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer func() { _ = resp.Body.Close() }()
	line := make([]byte, 128)
	n, _ := io.ReadFull(resp.Body, line)
	first, _, _ := strings.Cut(string(line[:n]), "\n")
	// "goroutine profile: total 123"
	f := strings.Fields(first)
	if len(f) == 0 {
		return 0, fmt.Errorf("unexpected goroutine profile %q", first)
	}
	return strconv.Atoi(f[len(f)-1])
}

// deliveryEndpoints reads herald_delivery_endpoints from the dispatcher:
// the endpoints with a delivery loop (active) and without (idle).
func (r *Runner) deliveryEndpoints(ctx context.Context) (active, idle int, err error) {
	body, err := r.metrics(ctx)
	if err != nil {
		return 0, 0, err
	}
	found := 0
	for line := range strings.Lines(body) {
		for state, dst := range map[string]*int{"active": &active, "idle": &idle} {
			value, ok := strings.CutPrefix(line, `herald_delivery_endpoints{state="`+state+`"} `)
			if !ok {
				continue
			}
			v, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
			if err != nil {
				return 0, 0, fmt.Errorf("herald_delivery_endpoints: %w", err)
			}
			*dst = int(v)
			found++
		}
	}
	if found != 2 {
		return 0, 0, fmt.Errorf("the dispatcher's metrics have no herald_delivery_endpoints gauges")
	}
	return active, idle, nil
}

// metricSum is the sum of every series of the dispatcher's metric name.
func (r *Runner) metricSum(ctx context.Context, name string) (float64, error) {
	body, err := r.metrics(ctx)
	if err != nil {
		return 0, err
	}
	return sumSeries(body, name)
}

// sumSeries is the sum of every series of the metric name in a Prometheus
// text exposition.
func sumSeries(body, name string) (float64, error) {
	var sum float64
	for line := range strings.Lines(body) {
		rest, ok := strings.CutPrefix(line, name)
		if !ok || (rest[0] != '{' && rest[0] != ' ') {
			continue
		}
		fields := strings.Fields(rest[strings.LastIndexByte(rest, '}')+1:])
		if len(fields) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", name, err)
		}
		sum += v
	}
	return sum, nil
}

// metrics is the dispatcher's Prometheus exposition, from the benchmark
// build's loopback listener.
func (r *Runner) metrics(ctx context.Context) (string, error) {
	body, err := r.get(ctx, "/metrics")
	return string(body), err
}

// namespace creates a namespace and a publisher for it whose ServiceAccount
// token is allowed to publish there.
func (r *Runner) namespace(ctx context.Context, ns string) (*Publisher, error) {
	err := r.kube.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, err
	}
	token, err := r.h.PublisherToken(ctx, ns, "bench-publisher")
	if err != nil {
		return nil, err
	}
	return NewPublisher(r.h.IngestURL+"/v1/namespaces/"+ns+"/events", token, publisherConns, r.h.IngestTLSConfig()), nil
}

// publisherConns is the publisher's connection pool: well under ingest's
// 64 concurrent requests, enough to hide one request's round trip.
const publisherConns = 16

// endpointDef describes an endpoint a scenario creates, with one
// Subscription named <name> for Types.
type endpointDef struct {
	Name           string
	Behaviour      Behaviour
	LedgerEndpoint int
	Types          []string
	Timeout        time.Duration
	Retry          *heraldv1.RetrySpec
	sinkIndex      int
}

func (r *Runner) endpointObject(ns string, d *endpointDef) *heraldv1.WebhookEndpoint {
	idx, url := r.sink.AddEndpoint(d.Behaviour, d.LedgerEndpoint)
	d.sinkIndex = idx
	ep := &heraldv1.WebhookEndpoint{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: d.Name},
		Spec:       heraldv1.WebhookEndpointSpec{URL: url, AllowInsecureHTTP: true, Retry: d.Retry},
	}
	if d.Timeout > 0 {
		ep.Spec.Timeout = &metav1.Duration{Duration: d.Timeout}
	}
	return ep
}

func subscriptionObject(ns, name, endpoint string, eventTypes ...string) *heraldv1.Subscription {
	return &heraldv1.Subscription{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       heraldv1.SubscriptionSpec{EndpointRef: heraldv1.LocalObjectReference{Name: endpoint}, Types: eventTypes},
	}
}

// createEndpoints creates endpoints (and their Subscription when Types is
// set), waits until all are Ready, and gives the sink their secrets.
func (r *Runner) createEndpoints(ctx context.Context, ns string, defs []*endpointDef) (time.Duration, error) {
	var objs, subs []client.Object
	for _, d := range defs {
		objs = append(objs, r.endpointObject(ns, d))
		if len(d.Types) > 0 {
			subs = append(subs, subscriptionObject(ns, d.Name, d.Name, d.Types...))
		}
	}
	began := time.Now()
	if err := createAll(ctx, r.kube, objs, 16); err != nil {
		return 0, err
	}
	if err := createAll(ctx, r.kube, subs, 16); err != nil {
		return 0, err
	}
	waitCtx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	var existing heraldv1.WebhookEndpointList
	if err := r.kube.List(ctx, &existing, client.InNamespace(ns)); err != nil {
		return 0, err
	}
	if err := waitReady(waitCtx, r.kube, ns, func() *heraldv1.WebhookEndpointList { return &heraldv1.WebhookEndpointList{} }, len(existing.Items), nil); err != nil {
		return 0, fmt.Errorf("endpoints: %w", err)
	}
	var existingSubs heraldv1.SubscriptionList
	if err := r.kube.List(ctx, &existingSubs, client.InNamespace(ns)); err != nil {
		return 0, err
	}
	if err := waitReady(waitCtx, r.kube, ns, func() *heraldv1.SubscriptionList { return &heraldv1.SubscriptionList{} }, len(existingSubs.Items), nil); err != nil {
		return 0, fmt.Errorf("subscriptions: %w", err)
	}
	took := time.Since(began)
	secrets, err := endpointSecrets(ctx, r.kube, ns)
	if err != nil {
		return 0, err
	}
	for _, d := range defs {
		s, ok := secrets[d.Name+"-herald"]
		if !ok {
			return 0, fmt.Errorf("no managed Secret for endpoint %s/%s", ns, d.Name)
		}
		if err := r.sink.SetSecret(d.sinkIndex, s); err != nil {
			return 0, err
		}
	}
	return took, nil
}

// warmUp publishes one event at a time until one is delivered completely, so that
// the dispatcher's catalog has caught up with the objects just made Ready
// before anything is measured.
func (r *Runner) warmUp(ctx context.Context, pub *Publisher, slots int, slot func(int, int) (int, bool), typ func(int) string) error {
	const events = 1
	for attempt := 0; attempt < 20 && ctx.Err() == nil; attempt++ {
		l := NewLedger(r.newRun(), events, slots, slot)
		r.sink.Track(l)
		pub.Run(ctx, r.clock, Plan{Ledger: l, Rate: 2000, Start: r.clock.Since(), Type: typ, PadBytes: r.padBytes})
		deadline := time.Now().Add(3 * time.Second)
		for l.Outstanding() > 0 && time.Now().Before(deadline) {
			sleepCtx(ctx, 20*time.Millisecond)
		}
		if s := l.Settle(); s.Missing == 0 && s.Acked == events && s.Void == "" {
			return nil
		}
	}
	return fmt.Errorf("warm-up: events published to %s were not all delivered within 20 attempts", pub.URL)
}

// catchUp publishes a probe run (one event per endpoint) every few
// seconds until one is delivered completely, or timeout passes. When the
// same few events stay undelivered in two consecutive probes while the rest
// arrive, their endpoints are nudged (an annotation changes, which makes the
// dispatcher's informers deliver the object again) and counted: the
// dispatcher lost them (see docs/benchmarks/README.md), and the benchmark
// goes on rather than measuring nothing.
func (r *Runner) catchUp(ctx context.Context, pub *Publisher, ns string, events int, slot func(int, int) (int, bool), typ func(int) string, endpointOf func(seq int) string, timeout time.Duration) (nudged []string, err error) {
	deadline := time.Now().Add(timeout)
	var lastMissing []int
	for ctx.Err() == nil && time.Now().Before(deadline) {
		l := NewLedger(r.newRun(), events, 1, slot)
		r.sink.Track(l)
		pub.Run(ctx, r.clock, Plan{Ledger: l, Rate: 2000, Start: r.clock.Since(), Type: typ, PadBytes: r.padBytes})
		wait := time.Now().Add(10 * time.Second)
		for l.Outstanding() > 0 && time.Now().Before(wait) {
			sleepCtx(ctx, 50*time.Millisecond)
		}
		s := l.Settle()
		if s.Missing == 0 && s.Acked == events && s.Void == "" {
			return nudged, nil
		}
		missing := l.MissingEvents()
		r.say("  probe: %d of %d delivered; the dispatcher is still catching up", s.Delivered, s.Published)
		if len(missing) > 0 && len(missing)*100 <= events && slices.Equal(missing, lastMissing) {
			for _, seq := range missing {
				name := endpointOf(seq)
				patch := client.RawPatch(types.MergePatchType, []byte(`{"metadata":{"annotations":{"bench.herald.dev/nudge":"`+strconv.Itoa(len(nudged))+`"}}}`))
				if err := r.kube.Patch(ctx, &heraldv1.WebhookEndpoint{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}, patch); err != nil {
					return nudged, err
				}
				nudged = append(nudged, name)
			}
			r.say("  the dispatcher never picked up endpoint(s) %s although they are Ready: nudged them", strings.Join(nudged, ", "))
			missing = nil
		}
		lastMissing = missing
	}
	return nudged, fmt.Errorf("the dispatcher did not route to every endpoint within %s of the Subscriptions being Ready", timeout)
}

func constType(t string) func(int) string { return func(int) string { return t } }
