package bench

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
)

// Results is everything one run measured; it is written as JSON.
type Results struct {
	Date            string   `json:"date"`
	Commit          string   `json:"commit,omitempty"`
	Quick           bool     `json:"quick"`
	Scenarios       []string `json:"scenarios"`
	DurationSeconds float64  `json:"durationSeconds"`
	Machine         Machine  `json:"machine"`

	Baseline      *BaselineResult  `json:"baseline,omitempty"`
	Compare       *CompareResult   `json:"compare,omitempty"`
	Steady        *SteadyResult    `json:"steady,omitempty"`
	SteadyNoLog   *SteadyResult    `json:"steadyNoLog,omitempty"`
	FanOut1       *FanOutResult    `json:"fanout1,omitempty"`
	FanOut1NoLog  *FanOutResult    `json:"fanout1NoLog,omitempty"`
	FanOut10      *FanOutResult    `json:"fanout10,omitempty"`
	Isolation     *IsolationResult `json:"isolation,omitempty"`
	Kill          *KillResult      `json:"sigkill,omitempty"`
	Endpoints1000 *ScaleResult     `json:"endpoints1000,omitempty"`

	Targets  []Target          `json:"targets"`
	Profiles map[string]string `json:"profiles,omitempty"`
	Errors   []string          `json:"errors,omitempty"`
}

// Machine describes where the figures come from.
type Machine struct {
	NumCPU      int    `json:"nproc"`
	CPUModel    string `json:"cpuModel"`
	MemTotal    string `json:"memTotal"`
	GoVersion   string `json:"goVersion"`
	Kernel      string `json:"kernel"`
	LoadAtStart string `json:"loadAverageAtStart"`
}

func machineFacts() Machine {
	m := Machine{NumCPU: runtime.NumCPU(), GoVersion: runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		if kb, ok := parseStatus(b)["MemTotal"]; ok {
			m.MemTotal = fmt.Sprintf("%.1f GiB", float64(kb)/(1<<20))
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		f := strings.Fields(string(b))
		if len(f) >= 3 {
			m.LoadAtStart = strings.Join(f[:3], " ")
		}
	}
	return m
}

func gitDescribe(root string) string {
	out, err := exec.Command("git", "-C", root, "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return ""
	}
	commit := strings.TrimSpace(string(out))
	if st, err := exec.Command("git", "-C", root, "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(bytes.TrimSpace(st)) > 0 {
		commit += "+dirty"
	}
	return commit
}

// Target is one performance target of the issue and this run's figure.
type Target struct {
	Name   string `json:"name"`
	Target string `json:"target"`
	Value  string `json:"value"`
	// Met is nil when the run did not measure it.
	Met  *bool  `json:"met"`
	Note string `json:"note,omitempty"`
}

func (t Target) verdict() string {
	switch {
	case t.Met == nil:
		return "not measured"
	case *t.Met:
		return "met"
	default:
		return "MISSED"
	}
}

// idleRSSNote adds to note the split of the RSS per idle endpoint and its
// marginal figure, when the run measured them.
func idleRSSNote(s *ScaleResult, note string) string {
	m := s.Marginal
	if m == nil {
		return note
	}
	return strings.TrimPrefix(note+fmt.Sprintf("; %.1f KiB anonymous, %.1f KiB mapped files; from %d to %d endpoints %.1f KiB each (%.1f anonymous)",
		s.AnonRSSPerEndpoint/1024, s.FileRSSPerEndpoint/1024, m.From, m.To, m.RSSPerEndpoint/1024, m.AnonRSSPerEndpoint/1024), "; ")
}

func (res *Results) evaluateTargets() {
	add := func(name, target, value string, met *bool, note string) {
		res.Targets = append(res.Targets, Target{Name: name, Target: target, Value: value, Met: met, Note: note})
	}
	b := func(v bool) *bool { return &v }
	quickNote := ""
	if res.Quick {
		quickNote = "BENCH_QUICK smoke run: not comparable"
	}

	if c := res.Compare; c != nil {
		add("CPU per 1,000 deliveries at 1,000 events/s against "+c.Ref, "(reported)", fmt.Sprintf("×%.2f: %.3f → %.3f CPU-s; p99 %.1f → %.1f ms; %.0f → %.0f allocations per delivery (medians of %d alternating rounds)",
			c.CPURatio, c.BaseCPUPer1000, c.HeadCPUPer1000, c.BaseP99, c.HeadP99, c.BaseAllocsPerDelivery, c.HeadAllocsPerDelivery, len(c.Head)), nil, quickNote)
	}
	if st := res.Steady; st != nil {
		s := st.Step
		value := fmt.Sprintf("%.3f CPU-s (%.2f dispatcher cores)", s.CPUPer1000, s.DispatcherCores)
		if off := res.SteadyNoLog; off != nil {
			value += fmt.Sprintf("; %.3f CPU-s without the delivery log", off.Step.CPUPer1000)
		}
		add("dispatcher CPU per 1,000 deliveries at 1,000 events/s", "≤ 0.35 CPU-s", value, b(s.CPUPer1000 <= 0.35 && s.Ledger.Void == ""), quickNote)
		add("p99 at 1,000 events/s (fan-out 1)", "≤ 10 ms (≤ 5 ms quiet)", fmt.Sprintf("%.1f ms (p50 %.1f, p99.9 %.1f; CPU pressure %.0f%%)", s.Latency.P99, s.Latency.P50, s.Latency.P999, 100*s.CPUPressure),
			b(s.Latency.P99 <= 10 && s.Ledger.Void == "" && s.Ledger.Missing == 0), quickNote)
	}
	if f := res.FanOut1; f != nil {
		note := quickNote
		if f.Note != "" {
			note = strings.TrimPrefix(note+"; "+f.Note, "; ")
		}
		add("fan-out 1 sustained rate", "(reported)", fmt.Sprintf("%.0f events/s (max delivered under overload %.0f/s)", f.KneeRate, f.MaxDeliveredPerSec), nil, note)
		ratioValue := fmt.Sprintf("%.3f (%.0f deliveries/s over the adjacent baseline; %.3f over the run's first, %.0f/s)", f.Ratio, f.KneeDeliveredPerSec, f.RatioToStartBaseline, baselineRate(res))
		add("fan-out 1 ratio to baseline at the knee", "≥ 0.20", ratioValue, b(f.Ratio >= 0.2), quickNote)
		if k := f.Knee(); k != nil {
			add("dispatcher CPU per 1,000 deliveries at the knee", "≤ 0.20 CPU-s", fmt.Sprintf("%.3f CPU-s at %.0f events/s", k.CPUPer1000, k.OfferedRate), b(k.CPUPer1000 <= 0.20), quickNote)
		}
		if s := f.At1000; s != nil && res.Steady == nil {
			add("p99 at 1,000 events/s (fan-out 1)", "≤ 10 ms (≤ 5 ms quiet)", fmt.Sprintf("%.1f ms (p50 %.1f, p99.9 %.1f)", s.Latency.P99, s.Latency.P50, s.Latency.P999), b(s.Latency.P99 <= 10 && s.Ledger.Void == ""), quickNote)
		}
	}
	if on, off := res.FanOut1, res.FanOut1NoLog; on != nil && off != nil && off.KneeRate > 0 {
		cost := 1 - on.KneeRate/off.KneeRate
		value := fmt.Sprintf("%.1f%% (knee %.0f events/s with the log, %.0f without)", 100*cost, on.KneeRate, off.KneeRate)
		if k, k0 := on.Knee(), off.Knee(); k != nil && k0 != nil {
			value += fmt.Sprintf("; CPU per 1,000 deliveries at the knee %.3f s with, %.3f s without", k.CPUPer1000, k0.CPUPer1000)
		}
		add("delivery log cost at the fan-out 1 knee", "≤ 15%", value, b(cost <= 0.15), quickNote)
	}
	if f := res.FanOut10; f != nil {
		add("fan-out 10 ratio to baseline at the knee", "≥ 0.30", fmt.Sprintf("%.3f (%.0f deliveries/s at %.0f events/s)", f.Ratio, f.KneeDeliveredPerSec, f.KneeRate), b(f.Ratio >= 0.30), quickNote)
	}
	if iso := res.Isolation; iso != nil {
		met, note := b(iso.P99Ratio <= 1.10 && iso.With.Ledger.Missing == 0), quickNote
		// The two runs without the bad endpoints bracket the one with them;
		// when they disagree by more than the tolerance themselves, the
		// machine's load moved more than the effect being measured.
		lo, hi := min(iso.Without.Latency.P99, iso.WithoutAgain.Latency.P99), max(iso.Without.Latency.P99, iso.WithoutAgain.Latency.P99)
		if lo > 0 && hi/lo > 1.5 {
			met = nil
			note = strings.TrimPrefix(quickNote+fmt.Sprintf("; inconclusive: the two runs without them differ ×%.1f (CPU pressure %.0f%%/%.0f%%/%.0f%%)",
				hi/lo, 100*iso.Without.CPUPressure, 100*iso.With.CPUPressure, 100*iso.WithoutAgain.CPUPressure), "; ")
		}
		add("healthy p99 with failing + slow endpoints", "within 10%", fmt.Sprintf("×%.2f (%.1f ms with, %.1f / %.1f ms without)", iso.P99Ratio, iso.With.Latency.P99, iso.Without.Latency.P99, iso.WithoutAgain.Latency.P99),
			met, note)
	}
	if k := res.Kill; k != nil {
		note := fmt.Sprintf("%d duplicates; restart %.1f s", k.Duplicates, k.RestartSeconds)
		if k.Step.Ledger.Void != "" {
			note += "; VOID: " + k.Step.Ledger.Void
		}
		add("acknowledged loss on SIGKILL", "0", fmt.Sprintf("%d of %d", k.AcknowledgedLoss, k.Step.Ledger.Published), b(k.AcknowledgedLoss == 0 && k.Step.Ledger.Void == ""), note)
	}
	if s := res.Endpoints1000; s != nil {
		note := quickNote
		add("RSS per idle endpoint", "≤ 12 KiB", fmt.Sprintf("%.1f KiB (%d endpoints)", s.RSSPerEndpoint/1024, s.Endpoints), b(s.RSSPerEndpoint <= 12*1024), idleRSSNote(s, note))
		add("dispatcher CPU with 1,000 idle endpoints, no traffic", "≤ 1% of a core", fmt.Sprintf("%.1f%% of a core (%.1f%% with no endpoints)", 100*s.IdleCores, 100*s.FreshIdleCores), b(s.IdleCores <= 0.01), note)
		met := b(s.SubscriptionsReadySeconds <= 60)
		switch {
		case s.Subscriptions == 0:
			return // the idle scenario creates none
		case s.Subscriptions != 10000:
			met = nil
			note = fmt.Sprintf("%d Subscriptions only (%s)", s.Subscriptions, quickNote)
		}
		add("10,000 Subscriptions Ready", "≤ 60 s", fmt.Sprintf("%.1f s (%d Subscriptions)", s.SubscriptionsReadySeconds, s.Subscriptions), met, note)
	}
}

func baselineRate(res *Results) float64 {
	if res.Baseline == nil {
		return 0
	}
	return res.Baseline.PerSecond
}

// Markdown renders the results as the tables of docs/benchmarks/README.md.
func (res *Results) Markdown() string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	m := res.Machine
	p("Run of %s (commit %s), %s, %d scenarios, %.0f s.\n\n", res.Date, orDash(res.Commit), map[bool]string{true: "BENCH_QUICK smoke run", false: "full run"}[res.Quick], len(res.Scenarios), res.DurationSeconds)
	p("Machine: %d CPUs (`nproc`), %s, %s RAM, Linux %s, %s; load average at start %s. The harness, etcd, kube-apiserver and the manager share these CPUs with the dispatcher.\n\n",
		m.NumCPU, m.CPUModel, m.MemTotal, m.Kernel, m.GoVersion, m.LoadAtStart)

	p("### Targets\n\n| Target | Goal | This run | Verdict | Note |\n| --- | --- | --- | --- | --- |\n")
	for _, t := range res.Targets {
		p("| %s | %s | %s | %s | %s |\n", t.Name, t.Target, t.Value, t.verdict(), t.Note)
	}
	if bl := res.Baseline; bl != nil {
		p("\n### Baseline (loopback ceiling)\n\nA plain Go `net/http` client with %d connections posting the same signed Standard Webhooks bodies to the same verifying sink: **%.0f requests/s** (p50 %.2f ms, p99 %.2f ms).\n",
			bl.Concurrency, bl.PerSecond, bl.Latency.P50, bl.Latency.P99)
	}
	for _, f := range []struct {
		title string
		r     *FanOutResult
	}{{"Fan-out 1", res.FanOut1}, {"Fan-out 1 without the delivery log", res.FanOut1NoLog}, {"Fan-out 10", res.FanOut10}} {
		if f.r == nil {
			continue
		}
		p("\n### %s: knee search\n\nKnee (p99 < 100 ms, stable backlog, nothing missing): **%.0f events/s** = %.0f deliveries/s, ratio to the baseline measured just before that step **%.3f** (%.3f to the run's first baseline). Highest delivery rate of any step: %.0f/s; highest ratio %.3f.\n\n",
			f.title, f.r.KneeRate, f.r.KneeDeliveredPerSec, f.r.Ratio, f.r.RatioToStartBaseline, f.r.MaxDeliveredPerSec, f.r.MaxRatio)
		writeSteps(&b, f.r.Steps)
		if f.r.Profiled != nil {
			p("\nA separate run at the knee rate with a CPU profile of the dispatcher (profiling costs a little):\n\n")
			writeSteps(&b, []StepResult{*f.r.Profiled})
		}
		if f.r.Note != "" {
			p("\n%s\n", f.r.Note)
		}
	}
	if c := res.Compare; c != nil {
		p("\n### Fan-out 1 at 1,000 events/s: %s against this tree\n\nRounds alternate the two builds, each on a fresh store. Median CPU per 1,000 deliveries %.3f → %.3f s (×%.2f), median p99 %.1f → %.1f ms, median allocations per delivery %.0f → %.0f (%.1f → %.1f KB).\n\n",
			c.Ref, c.BaseCPUPer1000, c.HeadCPUPer1000, c.CPURatio, c.BaseP99, c.HeadP99,
			c.BaseAllocsPerDelivery, c.HeadAllocsPerDelivery, c.BaseAllocBytesPerDelivery/1000, c.HeadAllocBytesPerDelivery/1000)
		var steps []StepResult
		for i := range c.Head {
			if i < len(c.Base) {
				steps = append(steps, c.Base[i])
			}
			steps = append(steps, c.Head[i])
		}
		writeSteps(&b, steps)
	}
	for _, st := range []struct {
		title string
		r     *SteadyResult
	}{{"with the delivery log", res.Steady}, {"without the delivery log", res.SteadyNoLog}} {
		if st.r == nil {
			continue
		}
		p("\n### Fan-out 1 at 1,000 events/s, %s\n\n", st.title)
		steps := []StepResult{st.r.Step}
		if st.r.Profiled != nil {
			steps = append(steps, *st.r.Profiled)
		}
		writeSteps(&b, steps)
	}
	if iso := res.Isolation; iso != nil {
		p("\n### Failing and slow endpoints beside %d healthy ones\n\nThe failing receiver answers 500 to everything; the slow one takes %.0f ms per request. Healthy p99 with them: %.1f ms; without (before, after): %.1f ms, %.1f ms; ratio **%.2f**. During the run the failing endpoint answered %d requests and the slow one %d.\n\n",
			iso.HealthyEndpoints, iso.SlowDelayMs, iso.With.Latency.P99, iso.Without.Latency.P99, iso.WithoutAgain.Latency.P99, iso.P99Ratio, iso.FailingRequests, iso.SlowRequests)
		steps := []StepResult{iso.Without, iso.With, iso.WithoutAgain}
		if iso.Profiled != nil {
			steps = append(steps, *iso.Profiled)
		}
		writeSteps(&b, steps)
	}
	if k := res.Kill; k != nil {
		p("\n### SIGKILL of the dispatcher mid-run\n\nKilled %.0f s into a %.0f events/s run (2 endpoints); restarted on the same store in %.1f s. Acknowledged deliveries: %d, delivered %d, **missing %d**, duplicates %d; the last delivery arrived %.1f s after the last publish; %d events were never acknowledged (the publisher gave up on them).\n\n",
			k.KilledAtSec, k.Step.OfferedRate, k.RestartSeconds, k.Step.Ledger.Published, k.Step.Ledger.Delivered, k.AcknowledgedLoss, k.Duplicates, k.Step.DrainSeconds, k.Step.Ledger.Unacked+k.Step.Ledger.NeverAnswered)
		writeSteps(&b, []StepResult{k.Step})
	}
	if s := res.Endpoints1000; s != nil {
		p("\n### %d endpoints, %d Subscriptions\n\n", s.Endpoints, s.Subscriptions)
		p("| Figure | Value |\n| --- | --- |\n")
		p("| Endpoints created → all Ready | %.1f s |\n", s.EndpointsReadySeconds)
		if s.Subscriptions > 0 {
			p("| Subscriptions created (client, 32 in flight) | %.1f s |\n", s.SubscriptionsCreateSeconds)
			p("| Subscriptions created → all Ready | %.1f s |\n", s.SubscriptionsReadySeconds)
			p("| Manager CPU meanwhile | %.2f cores |\n", s.ManagerCoresWhileReconciling)
			p("| All Ready → dispatcher routes to every endpoint | %.1f s |\n", s.CatalogCatchUpSeconds)
			p("| Dispatcher CPU from first create until then | %.2f cores |\n", s.DispatcherCoresWhileSubscribing)
		}
		if len(s.EndpointsNudged) > 0 {
			p("| Ready endpoints the dispatcher never picked up (nudged by the harness) | %s |\n", strings.Join(s.EndpointsNudged, ", "))
		}
		if s.Subscriptions > 0 {
			p("| Dispatcher RSS fresh / with idle endpoints / with Subscriptions | %.1f / %.1f / %.1f MiB |\n", mib(s.RSSBefore), mib(s.RSSEndpoints), mib(s.RSSSubscriptions))
		} else {
			p("| Dispatcher RSS fresh / with idle endpoints | %.1f / %.1f MiB |\n", mib(s.RSSBefore), mib(s.RSSEndpoints))
		}
		p("| RSS per idle endpoint | %.1f KiB (%.1f anonymous, %.1f mapped files) |\n", s.RSSPerEndpoint/1024, s.AnonRSSPerEndpoint/1024, s.FileRSSPerEndpoint/1024)
		if m := s.Marginal; m != nil {
			p("| RSS per idle endpoint from %d to %d endpoints | %.1f KiB (%.1f anonymous, %.1f mapped files) |\n", m.From, m.To, m.RSSPerEndpoint/1024, m.AnonRSSPerEndpoint/1024, m.FileRSSPerEndpoint/1024)
		}
		if s.Subscriptions > 0 {
			p("| RSS per Subscription | %.2f KiB |\n", s.RSSPerSubscription/1024)
		}
		if s.IdleGC[0] != "" {
			p("| Idle GC setting at the readings, fresh / with idle endpoints | %s / %s |\n", s.IdleGC[0], s.IdleGC[1])
		}
		p("| Goroutines fresh / with idle endpoints | %d / %d |\n", s.GoroutinesBefore, s.GoroutinesIdle)
		p("| Dispatcher CPU while idle, no endpoints / 1,000 idle endpoints | %.3f / %.3f cores |\n", s.FreshIdleCores, s.IdleCores)
		for _, k := range []string{"HeapInuse", "StackInuse", "HeapIdle", "Sys"} {
			if v, ok := s.MemStatsDeltaPerEndpoint[k]; ok {
				p("| Go runtime %s growth per endpoint | %.1f KiB |\n", k, v/1024)
			}
		}
		if s.MatchCPUPerEventMs != 0 {
			p("| Extra CPU per event vs fan-out 1 at the same rate | %.3f ms |\n", s.MatchCPUPerEventMs)
		}
		p("\n")
		writeSteps(&b, []StepResult{s.Traffic})
	}
	if len(res.Errors) > 0 {
		p("\n### Errors\n\n")
		for _, e := range res.Errors {
			p("* %s\n", e)
		}
	}
	return b.String()
}

func writeSteps(b *strings.Builder, steps []StepResult) {
	header := []string{"Step", "Offered ev/s", "Accepted ev/s", "Delivered /s", "Ratio", "p50 ms", "p99 ms", "p99.9 ms",
		"Routed p50 / p99 ms", "First attempt p50 / p99 ms", "CPU-s/1000", "Dispatcher cores", "Harness cores", "Machine busy cores", "CPU / IO pressure", "Peak RSS MiB", "Dup", "Missing", "Verdict"}
	fmt.Fprintf(b, "| %s |\n|", strings.Join(header, " | "))
	for i := range header {
		if i == 0 || i == len(header)-1 {
			b.WriteString(" --- |")
		} else {
			b.WriteString(" ---: |")
		}
	}
	b.WriteString("\n")
	for _, s := range steps {
		verdict := "pass"
		if !s.Pass {
			verdict = "fail: " + s.Why
		}
		cpu, cores, rss := "–", "–", "–"
		if s.CPUSeconds > 0 {
			cpu, cores = fmt.Sprintf("%.3f", s.CPUPer1000), fmt.Sprintf("%.2f", s.DispatcherCores)
		}
		if s.PeakRSS > 0 {
			rss = fmt.Sprintf("%.1f", mib(s.PeakRSS))
		}
		fmt.Fprintf(b, "| %s | %.0f | %.0f | %.0f | %s | %.1f | %.1f | %.1f | %s | %s | %s | %s | %.2f | %.2f | %.0f%% / %.0f%% | %s | %d | %d | %s |\n",
			s.Name, s.OfferedRate, s.AcceptedPerSec, s.DeliveredPerSec, ratioCell(s.Ratio), s.Latency.P50, s.Latency.P99, s.Latency.P999,
			stageCell(s.Stages.RoutedP50, s.Stages.RoutedP99), stageCell(s.Stages.StartP50, s.Stages.StartP99), cpu, cores, s.HarnessCores, s.MachineBusyCores, 100*s.CPUPressure, 100*s.IOPressure, rss, s.Ledger.Duplicates, s.Ledger.Missing, verdict)
	}
}

func stageCell(p50, p99 float64) string {
	if p50 == 0 && p99 == 0 {
		return "–"
	}
	return fmt.Sprintf("%.1f / %.1f", p50, p99)
}

func ratioCell(r float64) string {
	if r == 0 {
		return "–"
	}
	return fmt.Sprintf("%.3f", r)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// TargetTable renders the targets for a terminal.
func (res *Results) TargetTable() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-44s %-18s %-60s %s\n", "TARGET", "GOAL", "THIS RUN", "VERDICT")
	for _, t := range res.Targets {
		fmt.Fprintf(&b, "%-44s %-18s %-60s %s\n", t.Name, t.Target, t.Value, t.verdict())
	}
	return b.String()
}
