package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"time"
)

// CompareResult is the steady 1,000 events/s run of two dispatcher builds,
// alternated on the same control plane, sink and publisher: the build of
// Ref (base) and the working tree's (head). Each round runs base, then
// head, each on a fresh store, so load that changes from minute to minute
// falls on both; the medians over the rounds are compared.
type CompareResult struct {
	Ref  string       `json:"ref"`
	Base []StepResult `json:"base"`
	Head []StepResult `json:"head"`
	// Median CPU-s per 1,000 deliveries and p99 (ms) of each side.
	BaseCPUPer1000 float64 `json:"baseCpuPer1000"`
	HeadCPUPer1000 float64 `json:"headCpuPer1000"`
	BaseP99        float64 `json:"baseP99Ms"`
	HeadP99        float64 `json:"headP99Ms"`
	// CPURatio is HeadCPUPer1000 / BaseCPUPer1000.
	CPURatio float64 `json:"cpuRatio"`
	// Median heap allocations and bytes allocated per delivery of each
	// side: nearly independent of the machine's load, so they show what
	// a change did to a delivery's allocations when CPU cannot.
	BaseAllocsPerDelivery     float64 `json:"baseAllocsPerDelivery,omitempty"`
	HeadAllocsPerDelivery     float64 `json:"headAllocsPerDelivery,omitempty"`
	BaseAllocBytesPerDelivery float64 `json:"baseAllocBytesPerDelivery,omitempty"`
	HeadAllocBytesPerDelivery float64 `json:"headAllocBytesPerDelivery,omitempty"`
}

// DefaultCompareRounds is how many base/head pairs the compare scenario
// runs unless Config.CompareRounds says otherwise.
const DefaultCompareRounds = 3

// buildRefDispatcher builds the benchmark dispatcher of git ref: its tree
// is exported with git archive (the repository is not touched) and built
// with the same overlay as the working tree's.
func buildRefDispatcher(ctx context.Context, root, ref, dir string) (string, error) {
	src := filepath.Join(dir, "src-"+ref)
	if err := os.MkdirAll(src, 0o755); err != nil {
		return "", err
	}
	archive := exec.CommandContext(ctx, "sh", "-c", `git -C "$1" archive "$2" | tar -x -C "$3"`, "sh", root, ref, src)
	if out, err := archive.CombinedOutput(); err != nil {
		return "", fmt.Errorf("export %s: %w: %s", ref, err, out)
	}
	if _, err := os.Stat(filepath.Join(src, "test", "bench", "dispatcherhook", "pprof.go")); err != nil {
		return "", fmt.Errorf("%s has no test/bench/dispatcherhook/pprof.go to build the benchmark dispatcher with", ref)
	}
	return buildBenchDispatcher(ctx, src, filepath.Join(dir, "bin-"+ref))
}

// compare runs the steady scenario alternately on the base build and the
// head build.
func (r *Runner) compare(ctx context.Context) (*CompareResult, error) {
	if r.baseBin == "" {
		return nil, fmt.Errorf("the compare scenario needs BENCH_COMPARE=<git ref> to build the base dispatcher")
	}
	const ns = "bench-compare"
	pub, typ, err := r.oneEndpoint(ctx, ns, "bench.compare")
	if err != nil {
		return nil, err
	}
	defer r.cleanup(ctx, ns)
	res := &CompareResult{Ref: r.cfg.CompareRef}
	defer func() {
		// Later scenarios run on the head build again.
		if err := r.useDispatcher(ctx, r.benchBin); err != nil {
			r.say("restarting the head dispatcher: %v", err)
		}
	}()
	rounds := r.cfg.CompareRounds
	if rounds <= 0 {
		rounds = DefaultCompareRounds
	}
	for round := range rounds {
		for _, side := range []struct {
			label string
			bin   string
			out   *[]StepResult
		}{{"base", r.baseBin, &res.Base}, {"head", r.benchBin, &res.Head}} {
			if err := r.useDispatcher(ctx, side.bin); err != nil {
				return res, err
			}
			if err := r.warmUp(ctx, pub, 1, FanOutSlots(1), typ); err != nil {
				return res, err
			}
			spec := stepSpec{Name: fmt.Sprintf("compare-%s-%d@%d", side.label, round+1, steadyRate), Pub: pub, Rate: steadyRate,
				Duration: r.p.latencyDuration, Slots: 1, Slot: FanOutSlots(1), Type: typ, Drain: r.p.drain}
			if err := r.prime(ctx, spec); err != nil {
				return res, err
			}
			if round == rounds-1 {
				// Profiling costs both sides alike; the last round's
				// profiles say where the difference is.
				spec.ProfileName = "compare-" + side.label
			}
			s, err := r.runStep(ctx, spec)
			if err != nil {
				return res, err
			}
			r.sayStep(s)
			*side.out = append(*side.out, s)
		}
	}
	res.BaseCPUPer1000, res.BaseP99 = medians(res.Base)
	res.HeadCPUPer1000, res.HeadP99 = medians(res.Head)
	if res.BaseCPUPer1000 > 0 {
		res.CPURatio = res.HeadCPUPer1000 / res.BaseCPUPer1000
	}
	res.BaseAllocsPerDelivery, res.BaseAllocBytesPerDelivery = allocMedians(res.Base)
	res.HeadAllocsPerDelivery, res.HeadAllocBytesPerDelivery = allocMedians(res.Head)
	r.say("  %s → head: CPU per 1,000 deliveries %.3f → %.3f s (×%.2f), p99 %.1f → %.1f ms, allocations per delivery %.0f → %.0f (%.1f → %.1f KB) (medians of %d rounds)",
		res.Ref, res.BaseCPUPer1000, res.HeadCPUPer1000, res.CPURatio, res.BaseP99, res.HeadP99,
		res.BaseAllocsPerDelivery, res.HeadAllocsPerDelivery, res.BaseAllocBytesPerDelivery/1000, res.HeadAllocBytesPerDelivery/1000, len(res.Head))
	return res, nil
}

// useDispatcher restarts the dispatcher from bin on an empty store.
func (r *Runner) useDispatcher(ctx context.Context, bin string) error {
	if err := r.h.Dispatcher.Stop(30 * time.Second); err != nil {
		return err
	}
	if err := os.RemoveAll(filepath.Join(r.h.Dir, "jetstream")); err != nil {
		return err
	}
	r.h.Bins.Dispatcher = bin
	return r.h.StartDispatcher(ctx)
}

// medians are the median CPU per 1,000 deliveries and p99 of steps.
func medians(steps []StepResult) (cpu, p99 float64) {
	var cpus, p99s []float64
	for _, s := range steps {
		cpus = append(cpus, s.CPUPer1000)
		p99s = append(p99s, s.Latency.P99)
	}
	return median(cpus), median(p99s)
}

// allocMedians are the median allocations and bytes allocated per
// delivery of the steps that report them (the profiled last round does
// not).
func allocMedians(steps []StepResult) (allocs, bytes float64) {
	var as, bs []float64
	for _, s := range steps {
		if s.AllocsPerDelivery > 0 {
			as = append(as, s.AllocsPerDelivery)
			bs = append(bs, s.AllocBytesPerDelivery)
		}
	}
	return median(as), median(bs)
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	v = slices.Clone(v)
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}
