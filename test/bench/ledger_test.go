package bench

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestPercentileNearestRank(t *testing.T) {
	hundred := make([]time.Duration, 100)
	for i := range hundred {
		hundred[i] = time.Duration(i+1) * time.Millisecond
	}
	thousand := make([]time.Duration, 1000)
	for i := range thousand {
		thousand[i] = time.Duration(i+1) * time.Millisecond
	}
	tests := []struct {
		name    string
		samples []time.Duration
		p       float64
		want    time.Duration
	}{
		{"empty", nil, 99, 0},
		{"single", []time.Duration{7}, 50, 7},
		{"p50 of 1..100", hundred, 50, 50 * time.Millisecond},
		{"p99 of 1..100", hundred, 99, 99 * time.Millisecond},
		{"p99.9 of 1..100 is the maximum", hundred, 99.9, 100 * time.Millisecond},
		{"p100", hundred, 100, 100 * time.Millisecond},
		{"p0 is the minimum", hundred, 0, time.Millisecond},
		{"p99.9 of 1..1000 is rank 999", thousand, 99.9, 999 * time.Millisecond},
		{"p99 of 1..1000 is rank 990", thousand, 99, 990 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Percentile(tt.samples, tt.p); got != tt.want {
				t.Errorf("Percentile(%d samples, %v) = %v, want %v", len(tt.samples), tt.p, got, tt.want)
			}
		})
	}
}

func TestSummarizeSortsAndReportsMilliseconds(t *testing.T) {
	s := Summarize([]time.Duration{3 * time.Millisecond, time.Millisecond, 2 * time.Millisecond, 1500 * time.Microsecond})
	if s.Count != 4 || s.P50 != 1.5 || s.P99 != 3 || s.Max != 3 || s.Mean != 1.875 {
		t.Errorf("Summarize = %+v, want count 4, p50 1.5, p99 3, max 3, mean 1.875", s)
	}
}

func TestLedgerBalancesFanOut(t *testing.T) {
	// 4 events to 2 endpoints: event 0 everywhere (once twice), event 1 at
	// endpoint 0 only, event 2 unacknowledged but delivered anyway, event 3
	// acknowledged and lost.
	l := NewLedger(7, 4, 2, FanOutSlots(2))
	for seq := range 4 {
		l.Schedule(seq, time.Duration(seq)*time.Second)
	}
	l.Acked(0, 2, time.Second)
	l.Unacked(2, 3)
	l.Acked(3, 4, 4*time.Second)
	l.Received(0, 0, 10*time.Millisecond)
	l.Received(0, 1, 20*time.Millisecond)
	l.Received(0, 1, 30*time.Millisecond) // duplicate
	l.Received(1, 0, time.Second+5*time.Millisecond)
	l.Received(2, 1, 2*time.Second+time.Millisecond)

	if got := l.Outstanding(); got != 3*2-4 {
		t.Errorf("Outstanding = %d, want %d (6 owed, 4 first receptions)", got, 2)
	}
	if got := l.MissingEvents(); len(got) != 2 || got[0] != 1 || got[1] != 3 {
		t.Errorf("MissingEvents = %v, want [1 3] (acknowledged, not everywhere)", got)
	}
	s := l.Settle()
	want := Settlement{Scheduled: 4, Acked: 3, Unacked: 1, Published: 6, Delivered: 3, Missing: 3, Duplicates: 1, ExtraDelivered: 1, Balanced: true}
	if s.Scheduled != want.Scheduled || s.Acked != want.Acked || s.Unacked != want.Unacked || s.Published != want.Published ||
		s.Delivered != want.Delivered || s.Missing != want.Missing || s.Duplicates != want.Duplicates ||
		s.ExtraDelivered != want.ExtraDelivered || s.Balanced != want.Balanced || s.Void != "" {
		t.Errorf("Settle = %+v\nwant     %+v", s, want)
	}
	if s.Latency.Count != 3 || s.Latency.P50 != 10 || s.Latency.Max != 20 {
		t.Errorf("latency = %+v, want 3 samples 5/10/20 ms measured from the schedule", s.Latency)
	}
	// Event 0's two deliveries in the window at 0 s (the slower 20 ms),
	// event 1's in the window at 1 s.
	if w := s.WorstWindows; len(w) != 2 || w[0] != (LatencyWindow{AtMs: 0, MaxMs: 20, Deliveries: 2}) || w[1] != (LatencyWindow{AtMs: 1000, MaxMs: 5, Deliveries: 1}) {
		t.Errorf("worst windows = %+v, want 20 ms at 0 s (2 deliveries), then 5 ms at 1 s", w)
	}
	if s.LastArrival != 2*time.Second+time.Millisecond || s.LastAck != 4*time.Second {
		t.Errorf("last arrival %v, last ack %v", s.LastArrival, s.LastAck)
	}
}

func TestLedgerVoid(t *testing.T) {
	tests := []struct {
		name   string
		record func(l *Ledger)
		want   string
	}{
		{"clean", func(l *Ledger) { l.Received(0, 0, 1); l.Received(1, 0, 1) }, ""},
		{"bad signature", func(l *Ledger) { l.BadSignature() }, "signature"},
		{"event out of range", func(l *Ledger) { l.Received(5, 0, 1) }, "could not be attributed"},
		{"endpoint that should not get it", func(l *Ledger) { l.Received(1, 0, 1); l.Received(0, 1, 1) }, "could not be attributed"},
		{"ingest refused", func(l *Ledger) { l.Rejected(1, 2) }, "rejected"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Routed: event 0 to endpoint 0, event 1 to endpoint 0 as well
			// (route returns 0 for all), so endpoint 1 never expects one.
			l := NewLedger(1, 2, 1, RoutedSlots(func(int) int { return 0 }))
			l.Acked(0, 1, 1)
			tt.record(l)
			s := l.Settle()
			if tt.want == "" && s.Void != "" || tt.want != "" && !strings.Contains(s.Void, tt.want) {
				t.Errorf("Void = %q, want it to mention %q", s.Void, tt.want)
			}
			if !s.Balanced {
				t.Errorf("a well-kept ledger balances: %+v", s)
			}
		})
	}
}

func TestLedgerDetectsImbalance(t *testing.T) {
	l := NewLedger(1, 2, 1, FanOutSlots(1))
	l.Acked(0, 2, 1)
	l.Received(0, 0, 1)
	l.firstArrivals.Add(1) // a first reception the per-pair record does not show
	s := l.Settle()
	if s.Balanced || !strings.Contains(s.Void, "does not balance") {
		t.Errorf("Settle = %+v, want void for imbalance", s)
	}
}

func TestParseDelivery(t *testing.T) {
	var buf bytes.Buffer
	writeEvent(&buf, 12, 34567, "bench.fanout", 10)
	for _, body := range []string{
		buf.String(), // CloudEventsStructured body
		`{"type":"bench.fanout","timestamp":"2026-01-01T00:00:00Z","data":{"run":12,"seq":34567,"pad":"abc"}}`, // StandardWebhooks
	} {
		run, seq, ok := parseDelivery([]byte(body))
		if !ok || run != 12 || seq != 34567 {
			t.Errorf("parseDelivery(%s) = %d, %d, %v", body, run, seq, ok)
		}
	}
	if _, _, ok := parseDelivery([]byte(`{"data":{"run":1}}`)); ok {
		t.Error("a body without seq parsed")
	}
}

func TestParseStatCPU(t *testing.T) {
	// The command name may contain spaces and parentheses.
	stat := []byte("4242 (dispatch (x) y) S 1 4242 4242 0 -1 4194560 1 2 3 4 250 75 0 0 20 0 12 0 100 0 0\n")
	got, err := parseStatCPU(stat)
	if err != nil || got != 3250*time.Millisecond {
		t.Errorf("parseStatCPU = %v, %v; want 3.25s (325 ticks)", got, err)
	}
}

func TestSlope(t *testing.T) {
	if got := slope([]float64{0, 1, 2, 3}, []float64{5, 7, 9, 11}); got != 2 {
		t.Errorf("slope = %v, want 2", got)
	}
	if got := slope([]float64{1}, []float64{1}); got != 0 {
		t.Errorf("slope of one point = %v, want 0", got)
	}
}
