package bench

import (
	"math"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
)

// TestHistogramQuantileOverAStep: the quantile counts only the
// observations between the two readings, and interpolates inside the
// bucket the rank falls in as histogram_quantile does.
func TestHistogramQuantileOverAStep(t *testing.T) {
	h := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "lag", Buckets: []float64{0.001, 0.01, 0.1}})
	read := func() *dto.Histogram {
		var m dto.Metric
		if err := h.Write(&m); err != nil {
			t.Fatal(err)
		}
		return m.GetHistogram()
	}
	// Before the step: slow observations that must not count.
	for range 100 {
		h.Observe(0.05)
	}
	before := read()
	if got := histogramQuantile(0.5, before, read()); got != 0 {
		t.Fatalf("no observations in the step: quantile = %v, want 0", got)
	}
	// The step: 90 in (0.001, 0.01], 10 in (0.01, 0.1].
	for range 90 {
		h.Observe(0.005)
	}
	for range 10 {
		h.Observe(0.02)
	}
	after := read()
	for _, c := range []struct{ q, want float64 }{
		{0.5, 0.001 + 0.009*50/90},
		{0.9, 0.01},
		{0.99, 0.01 + 0.09*9/10},
	} {
		if got := histogramQuantile(c.q, before, after); math.Abs(got-c.want) > 1e-12 {
			t.Errorf("q%.2f = %v, want %v", c.q, got, c.want)
		}
	}
	// Past the highest finite bound: that bound.
	h.Observe(5)
	h.Observe(5)
	h.Observe(5)
	if got := histogramQuantile(0.99, before, read()); got != 0.1 {
		t.Errorf("rank in +Inf: q0.99 = %v, want 0.1", got)
	}
}

// TestParseReadingsReadsTheAllocationCounters: the Go runtime's counters
// as client_golang exports them are read from a real Go collector's
// exposition, and grow with an allocation; an exposition without them reads
// as NaN, which the step reports as no figure.
func TestParseReadingsReadsTheAllocationCounters(t *testing.T) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector())
	exposition := func() string {
		families, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		var b strings.Builder
		for _, f := range families {
			if _, err := expfmt.MetricFamilyToText(&b, f); err != nil {
				t.Fatal(err)
			}
		}
		return b.String()
	}
	before, err := parseReadings(exposition())
	if err != nil {
		t.Fatal(err)
	}
	sink = make([]byte, 1<<20)
	after, err := parseReadings(exposition())
	if err != nil {
		t.Fatal(err)
	}
	if !(after.mallocs > before.mallocs) || !(after.allocated-before.allocated >= 1<<20) {
		t.Errorf("counters %v/%v -> %v/%v: want more allocations and at least the MiB allocated", before.mallocs, before.allocated, after.mallocs, after.allocated)
	}
	none, err := parseReadings("# TYPE other counter\nother 1\n")
	if err != nil {
		t.Fatal(err)
	}
	if !math.IsNaN(none.mallocs) || !math.IsNaN(none.allocated) {
		t.Errorf("counters without the metrics = %v, %v; want NaN", none.mallocs, none.allocated)
	}
}

var sink []byte
