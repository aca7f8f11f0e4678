package bench

import (
	"cmp"
	"fmt"
	"slices"
	"sync/atomic"
	"time"
)

// Publish states of one event in a Ledger.
const (
	stateUnsent   uint32 = iota // scheduled, not yet answered
	stateAcked                  // answered 202: Herald owes its deliveries
	stateUnacked                // never answered 202 (error, or 5xx after retries): Herald owes nothing
	stateRejected               // answered 4xx other than 429: a harness bug
)

// Ledger is the bookkeeping of one run: for every event, when it was
// scheduled and whether ingest acknowledged it, and for every (event,
// endpoint) pair the ledger expects, how often and when it arrived at the
// sink. Its Settle compares what was acknowledged with what arrived:
// published = delivered + missing, duplicates counted, anything it cannot
// account for makes the run void.
//
// Recording is lock-free (atomics on preallocated arrays) so that the sink
// and the publisher, which call it concurrently at high rates, do not
// serialise on it.
type Ledger struct {
	// Run is the number written into every event's data, so the sink can
	// tell runs apart when a late delivery of an earlier run arrives.
	Run int

	events        int
	slotsPerEvent int
	// slot maps (event, ledger endpoint) to the pair's position among the
	// event's slotsPerEvent pairs, or false when that endpoint should never
	// receive that event. Pair seq*slotsPerEvent+k is (seq, k).
	slot func(seq, endpoint int) (int, bool)

	scheduled []int64 // per event: scheduled send time, ns since the clock's origin
	state     []atomic.Uint32

	arrivals []atomic.Uint32 // per pair: verified receptions
	first    []atomic.Int64  // per pair: first reception, ns since origin (0: none)

	// firstArrivals counts pairs on their first reception as the sink sees
	// them, independently of the per-pair arrays, as a cross-check.
	firstArrivals atomic.Int64
	// unexpected counts receptions the ledger cannot place: an event number
	// out of range, or an endpoint that should not get the event.
	unexpected atomic.Int64
	// badSignatures counts requests the sink refused because their
	// signature did not verify.
	badSignatures atomic.Int64
	// lastArrival is the latest first reception, ns since origin.
	lastArrival atomic.Int64
	// lastAck is when the latest acknowledgement arrived, ns since origin.
	lastAck atomic.Int64
	acked   atomic.Int64
}

// NewLedger returns a ledger of events events, each expected at
// slotsPerEvent endpoints; slot maps (event, endpoint) to the pair's
// position in [0, slotsPerEvent) among that event's pairs.
func NewLedger(run, events, slotsPerEvent int, slot func(seq, endpoint int) (int, bool)) *Ledger {
	pairs := events * slotsPerEvent
	return &Ledger{
		Run:           run,
		events:        events,
		slotsPerEvent: slotsPerEvent,
		slot:          slot,
		scheduled:     make([]int64, events),
		state:         make([]atomic.Uint32, events),
		arrivals:      make([]atomic.Uint32, pairs),
		first:         make([]atomic.Int64, pairs),
	}
}

// FanOutSlots is the slot function of a run where every event goes to
// every one of n endpoints (ledger endpoints 0..n-1).
func FanOutSlots(n int) func(seq, endpoint int) (int, bool) {
	return func(seq, endpoint int) (int, bool) {
		if endpoint < 0 || endpoint >= n {
			return 0, false
		}
		return endpoint, true
	}
}

// RoutedSlots is the slot function of a run where event seq goes to
// endpoint route(seq) only.
func RoutedSlots(route func(seq int) int) func(seq, endpoint int) (int, bool) {
	return func(seq, endpoint int) (int, bool) { return 0, route(seq) == endpoint }
}

// Events is the number of events of the run.
func (l *Ledger) Events() int { return l.events }

// Schedule records when event seq is due, in ns since the clock's origin.
func (l *Ledger) Schedule(seq int, at time.Duration) { l.scheduled[seq] = int64(at) }

// Scheduled returns when event seq was due.
func (l *Ledger) Scheduled(seq int) time.Duration { return time.Duration(l.scheduled[seq]) }

// Acked records that ingest answered 202 for events [from, to) at at.
func (l *Ledger) Acked(from, to int, at time.Duration) {
	for seq := from; seq < to; seq++ {
		if l.state[seq].Swap(stateAcked) != stateAcked {
			l.acked.Add(1)
		}
	}
	for {
		last := l.lastAck.Load()
		if int64(at) <= last || l.lastAck.CompareAndSwap(last, int64(at)) {
			return
		}
	}
}

// Unacked records that events [from, to) were given up on without a 202.
func (l *Ledger) Unacked(from, to int) { l.setState(from, to, stateUnacked) }

// Rejected records that ingest refused events [from, to) for good.
func (l *Ledger) Rejected(from, to int) { l.setState(from, to, stateRejected) }

func (l *Ledger) setState(from, to int, s uint32) {
	for seq := from; seq < to; seq++ {
		l.state[seq].CompareAndSwap(stateUnsent, s)
	}
}

// AckedCount is the number of events acknowledged so far.
func (l *Ledger) AckedCount() int64 { return l.acked.Load() }

// Received records one verified reception of event seq at ledger endpoint
// endpoint at at (ns since origin).
func (l *Ledger) Received(seq, endpoint int, at time.Duration) {
	if seq < 0 || seq >= l.events {
		l.unexpected.Add(1)
		return
	}
	k, ok := l.slot(seq, endpoint)
	if !ok || k < 0 || k >= l.slotsPerEvent {
		l.unexpected.Add(1)
		return
	}
	i := seq*l.slotsPerEvent + k
	if l.arrivals[i].Add(1) != 1 {
		return
	}
	l.first[i].Store(max(int64(at), 1))
	l.firstArrivals.Add(1)
	for {
		last := l.lastArrival.Load()
		if int64(at) <= last || l.lastArrival.CompareAndSwap(last, int64(at)) {
			return
		}
	}
}

// BadSignature records a request the sink refused for its signature.
func (l *Ledger) BadSignature() { l.badSignatures.Add(1) }

// Unexpected records a reception the caller could not attribute to an
// event of this run.
func (l *Ledger) Unexpected() { l.unexpected.Add(1) }

// FirstArrivals is the number of pairs received at least once so far.
func (l *Ledger) FirstArrivals() int64 { return l.firstArrivals.Load() }

// Outstanding is how many deliveries of acknowledged events have not
// arrived yet, as far as the counters tell while the run goes on (the
// backlog the harness samples).
func (l *Ledger) Outstanding() int64 {
	return l.acked.Load()*int64(l.slotsPerEvent) - l.firstArrivals.Load()
}

// Settlement is the account of a run.
type Settlement struct {
	// Scheduled events, and of those: acknowledged (202), unacknowledged
	// (the publisher gave up) and rejected (4xx).
	Scheduled     int `json:"scheduled"`
	Acked         int `json:"acked"`
	Unacked       int `json:"unacked"`
	Rejected      int `json:"rejected"`
	NeverAnswered int `json:"neverAnswered"`
	// Published is the number of (event, endpoint) deliveries Herald owes:
	// acknowledged events times their endpoints.
	Published int `json:"published"`
	// Delivered of those arrived at least once; Missing never did.
	Delivered int `json:"delivered"`
	Missing   int `json:"missing"`
	// Duplicates counts the receptions beyond the first of each pair.
	Duplicates int `json:"duplicates"`
	// ExtraDelivered counts pairs of unacknowledged events that arrived
	// anyway (stored, but the answer was lost): allowed, not owed.
	ExtraDelivered int `json:"extraDelivered"`
	// Unexpected receptions and bad signatures make a run void.
	Unexpected    int `json:"unexpected"`
	BadSignatures int `json:"badSignatures"`
	// Balanced is published == delivered + missing, with the sink's running
	// count of first receptions equal to delivered + extra.
	Balanced bool `json:"balanced"`
	// Void says why the run's figures cannot be trusted; empty when they can.
	Void string `json:"void,omitempty"`
	// Latencies are the first-reception latencies of the delivered pairs,
	// measured from each event's scheduled send time.
	Latency LatencySummary `json:"latency"`
	// WorstWindows are the 100 ms windows of scheduled time whose deliveries
	// were slowest, slowest first (at most three): whether the tail comes
	// from a few stalls or from everywhere.
	WorstWindows []LatencyWindow `json:"worstWindows,omitempty"`
	// LastArrival and LastAck are ns since the clock's origin.
	LastArrival time.Duration `json:"-"`
	LastAck     time.Duration `json:"-"`
}

// Settle accounts for the run. Call it when no more receptions are
// expected; receptions that arrive afterwards are not counted.
func (l *Ledger) Settle() Settlement {
	s := Settlement{Scheduled: l.events}
	latencies := make([]time.Duration, 0, int(l.acked.Load())*l.slotsPerEvent)
	windows := map[int64]*LatencyWindow{}
	firstSeen := 0
	for seq := range l.events {
		state := l.state[seq].Load()
		switch state {
		case stateAcked:
			s.Acked++
		case stateUnacked:
			s.Unacked++
		case stateRejected:
			s.Rejected++
		default:
			s.NeverAnswered++
		}
		for k := range l.slotsPerEvent {
			i := seq*l.slotsPerEvent + k
			n := int(l.arrivals[i].Load())
			if n > 0 {
				firstSeen++
				s.Duplicates += n - 1
			}
			if state != stateAcked {
				if n > 0 {
					s.ExtraDelivered++
				}
				continue
			}
			s.Published++
			if n == 0 {
				s.Missing++
				continue
			}
			s.Delivered++
			lat := time.Duration(l.first[i].Load() - l.scheduled[seq])
			latencies = append(latencies, lat)
			w := windows[l.scheduled[seq]/int64(latencyWindow)]
			if w == nil {
				w = &LatencyWindow{AtMs: float64((l.scheduled[seq]/int64(latencyWindow)-l.scheduled[0]/int64(latencyWindow))*int64(latencyWindow)) / 1e6}
				windows[l.scheduled[seq]/int64(latencyWindow)] = w
			}
			w.Deliveries++
			w.MaxMs = max(w.MaxMs, float64(lat)/1e6)
		}
	}
	s.Unexpected = int(l.unexpected.Load())
	s.BadSignatures = int(l.badSignatures.Load())
	s.Balanced = s.Published == s.Delivered+s.Missing &&
		int64(firstSeen) == l.firstArrivals.Load() &&
		firstSeen == s.Delivered+s.ExtraDelivered
	switch {
	case !s.Balanced:
		s.Void = fmt.Sprintf("ledger does not balance: published %d, delivered %d, missing %d, first receptions counted %d, found %d",
			s.Published, s.Delivered, s.Missing, l.firstArrivals.Load(), firstSeen)
	case s.BadSignatures > 0:
		s.Void = fmt.Sprintf("%d requests failed signature verification", s.BadSignatures)
	case s.Unexpected > 0:
		s.Void = fmt.Sprintf("%d receptions could not be attributed to an event and endpoint of the run", s.Unexpected)
	case s.Rejected > 0:
		s.Void = fmt.Sprintf("ingest rejected %d events (4xx): the harness sent something wrong", s.Rejected)
	}
	s.Latency = Summarize(latencies)
	for _, w := range windows {
		s.WorstWindows = append(s.WorstWindows, *w)
	}
	slices.SortFunc(s.WorstWindows, func(a, b LatencyWindow) int { return cmp.Compare(b.MaxMs, a.MaxMs) })
	s.WorstWindows = s.WorstWindows[:min(3, len(s.WorstWindows))]
	s.LastArrival = time.Duration(l.lastArrival.Load())
	s.LastAck = time.Duration(l.lastAck.Load())
	return s
}

// latencyWindow is the width of Settlement.WorstWindows' windows.
const latencyWindow = 100 * time.Millisecond

// LatencyWindow is the slowest delivery of the events scheduled in one
// window, AtMs after the run's first event.
type LatencyWindow struct {
	AtMs       float64 `json:"atMs"`
	MaxMs      float64 `json:"maxMs"`
	Deliveries int     `json:"deliveries"`
}

// MissingEvents returns the acknowledged events with at least one
// delivery that has not arrived.
func (l *Ledger) MissingEvents() []int {
	var out []int
	for seq := range l.events {
		if l.state[seq].Load() != stateAcked {
			continue
		}
		for k := range l.slotsPerEvent {
			if l.arrivals[seq*l.slotsPerEvent+k].Load() == 0 {
				out = append(out, seq)
				break
			}
		}
	}
	return out
}

// LatencySummary holds percentiles of a latency distribution, in
// milliseconds for the JSON output.
type LatencySummary struct {
	Count int     `json:"count"`
	P50   float64 `json:"p50Ms"`
	P99   float64 `json:"p99Ms"`
	P999  float64 `json:"p999Ms"`
	Max   float64 `json:"maxMs"`
	Mean  float64 `json:"meanMs"`
}

// Summarize computes the nearest-rank percentiles of samples (which it
// sorts in place).
func Summarize(samples []time.Duration) LatencySummary {
	if len(samples) == 0 {
		return LatencySummary{}
	}
	slices.Sort(samples)
	var sum time.Duration
	for _, d := range samples {
		sum += d
	}
	return LatencySummary{
		Count: len(samples),
		P50:   ms(Percentile(samples, 50)),
		P99:   ms(Percentile(samples, 99)),
		P999:  ms(Percentile(samples, 99.9)),
		Max:   ms(samples[len(samples)-1]),
		Mean:  ms(sum / time.Duration(len(samples))),
	}
}

// Percentile returns the nearest-rank p-th percentile of sorted samples:
// the smallest sample such that at least p% of the samples are at or below
// it.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	// Integer arithmetic in thousandths of a percent avoids float rounding
	// at exact ranks (99.9% of 1000 samples is rank 999, not 1000).
	n := int64(len(sorted))
	perMille := int64(p*1000 + 0.5)
	rank := (perMille*n + 100_000 - 1) / 100_000
	rank = min(max(rank, 1), n)
	return sorted[rank-1]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
