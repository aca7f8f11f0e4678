package bench

import (
	"context"
	"math"
	"strings"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// StageLag splits a step's delivery latency at the dispatcher's own
// seams, from its stage histograms over the step: the time from ingest to
// the router storing the deliveries, and from ingest to a delivery's first
// attempt starting. What the ledger's latency adds on top is the attempt
// itself and the publisher's side.
type StageLag struct {
	RoutedP50 float64 `json:"routedP50Ms"`
	RoutedP99 float64 `json:"routedP99Ms"`
	StartP50  float64 `json:"firstAttemptP50Ms"`
	StartP99  float64 `json:"firstAttemptP99Ms"`
}

// The stage histograms, as the dispatcher exports them.
const (
	routerLagMetric = "herald_router_lag_seconds"
	startLagMetric  = "herald_delivery_start_lag_seconds"
)

// dispatcherReadings are the dispatcher's own figures a step reads at
// each end: its stage histograms and the Go runtime's allocation counters.
type dispatcherReadings struct {
	stages             map[string]*dto.Histogram
	mallocs, allocated float64
}

// The Go runtime's cumulative allocation counters, as client_golang's Go
// collector exports them.
const (
	mallocsMetric   = "go_memstats_mallocs_total"
	allocatedMetric = "go_memstats_alloc_bytes_total"
)

// readDispatcher reads the dispatcher's stage histograms and allocation
// counters from one scrape. The scrape's own allocations fall between the
// two counters of a step: a few hundred kilobytes with a few endpoints,
// against the megabytes a step's deliveries allocate.
func (r *Runner) readDispatcher(ctx context.Context) (dispatcherReadings, error) {
	body, err := r.metrics(ctx)
	if err != nil {
		return dispatcherReadings{}, err
	}
	return parseReadings(body)
}

// parseReadings is readDispatcher's reading of an exposition; a counter
// the exposition lacks reads as NaN.
func parseReadings(body string) (dispatcherReadings, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		return dispatcherReadings{}, err
	}
	out := dispatcherReadings{stages: map[string]*dto.Histogram{}}
	for _, name := range []string{routerLagMetric, startLagMetric} {
		if f := families[name]; f != nil && len(f.GetMetric()) > 0 {
			out.stages[name] = f.GetMetric()[0].GetHistogram()
		}
	}
	counter := func(name string) float64 {
		if f := families[name]; f != nil && len(f.GetMetric()) > 0 {
			return f.GetMetric()[0].GetCounter().GetValue()
		}
		return math.NaN()
	}
	out.mallocs, out.allocated = counter(mallocsMetric), counter(allocatedMetric)
	return out, nil
}

// stageLag is the step's StageLag from the histograms before and after it.
func stageLag(before, after map[string]*dto.Histogram) StageLag {
	return StageLag{
		RoutedP50: 1000 * histogramQuantile(0.50, before[routerLagMetric], after[routerLagMetric]),
		RoutedP99: 1000 * histogramQuantile(0.99, before[routerLagMetric], after[routerLagMetric]),
		StartP50:  1000 * histogramQuantile(0.50, before[startLagMetric], after[startLagMetric]),
		StartP99:  1000 * histogramQuantile(0.99, before[startLagMetric], after[startLagMetric]),
	}
}

// histogramQuantile is Prometheus's histogram_quantile over the
// observations between two readings of one histogram, in seconds: linear
// interpolation inside the bucket the rank falls in, the highest finite
// bound when it falls past them; 0 without observations (and when the
// histogram is missing).
func histogramQuantile(q float64, before, after *dto.Histogram) float64 {
	if after == nil {
		return 0
	}
	prev := map[float64]uint64{}
	for _, b := range before.GetBucket() {
		prev[b.GetUpperBound()] = b.GetCumulativeCount()
	}
	total := after.GetSampleCount() - before.GetSampleCount()
	if total == 0 {
		return 0
	}
	rank := q * float64(total)
	var lower float64
	var below uint64
	for _, b := range after.GetBucket() {
		upper := b.GetUpperBound()
		cum := b.GetCumulativeCount() - prev[upper]
		if float64(cum) >= rank {
			if math.IsInf(upper, 1) {
				return lower
			}
			if cum == below {
				return upper
			}
			return lower + (upper-lower)*(rank-float64(below))/float64(cum-below)
		}
		lower, below = upper, cum
	}
	return lower
}
