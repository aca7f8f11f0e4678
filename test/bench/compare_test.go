package bench

import "testing"

// TestAllocMediansSkipStepsWithoutTheFigure: the profiled last round
// reports no allocations (its profiles' own would count), and the median
// is of the rounds that do.
func TestAllocMediansSkipStepsWithoutTheFigure(t *testing.T) {
	steps := []StepResult{
		{AllocsPerDelivery: 400, AllocBytesPerDelivery: 37000},
		{AllocsPerDelivery: 404, AllocBytesPerDelivery: 37400},
		{}, // profiled
	}
	allocs, bytes := allocMedians(steps)
	if allocs != 402 || bytes != 37200 {
		t.Errorf("allocMedians = %v, %v; want 402, 37200", allocs, bytes)
	}
	if allocs, bytes := allocMedians([]StepResult{{}}); allocs != 0 || bytes != 0 {
		t.Errorf("allocMedians of steps without the figure = %v, %v; want 0, 0", allocs, bytes)
	}
}
