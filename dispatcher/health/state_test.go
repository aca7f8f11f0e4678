package health

import (
	"math/rand/v2"
	"testing"
	"time"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func at(seconds int) time.Time { return t0.Add(time.Duration(seconds) * time.Second) }

func success(sec int) Outcome {
	return Outcome{Namespace: "ns", Endpoint: "ep", Time: at(sec), Success: true}
}
func failure(sec int, reason string) Outcome {
	return Outcome{Namespace: "ns", Endpoint: "ep", Time: at(sec), Reason: reason}
}

func fold(outcomes ...Outcome) endpointState {
	var s endpointState
	for _, o := range outcomes {
		s.merge(outcomeState(o))
	}
	return s
}

func TestMergeSequences(t *testing.T) {
	tests := []struct {
		name            string
		outcomes        []Outcome
		wantConsecutive int64
		wantReason      string
		wantDelivered   int64
	}{
		{"successes only", []Outcome{success(1), success(2)}, 0, "", 2},
		{"failures only", []Outcome{failure(1, "HTTP 500"), failure(2, "Timeout")}, 2, "Timeout", 0},
		{"success resets", []Outcome{failure(1, "HTTP 500"), failure(2, "HTTP 500"), success(3)}, 0, "HTTP 500", 1},
		{"failures after success", []Outcome{success(1), failure(2, "HTTP 502"), failure(3, "HTTP 503")}, 2, "HTTP 503", 1},
		// Recorded out of order by concurrent workers.
		{"late old failure does not count", []Outcome{success(5), failure(3, "HTTP 500")}, 0, "HTTP 500", 1},
		{"late old success does not reset", []Outcome{failure(5, "Timeout"), success(3)}, 1, "Timeout", 1},
		{"reason of newest failure", []Outcome{failure(5, "Timeout"), failure(3, "HTTP 500")}, 2, "Timeout", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := fold(tt.outcomes...)
			if s.ConsecutiveFailures != tt.wantConsecutive {
				t.Errorf("consecutiveFailures = %d, want %d", s.ConsecutiveFailures, tt.wantConsecutive)
			}
			if s.LastFailureReason != tt.wantReason {
				t.Errorf("lastFailureReason = %q, want %q", s.LastFailureReason, tt.wantReason)
			}
			if s.Delivered != tt.wantDelivered {
				t.Errorf("delivered = %d, want %d", s.Delivered, tt.wantDelivered)
			}
			if s.Attempts != int64(len(tt.outcomes)) {
				t.Errorf("attempts = %d, want %d", s.Attempts, len(tt.outcomes))
			}
		})
	}
}

// TestMergeReplicaDeltas: what two replicas recorded, merged into the
// bucket in either order, gives the same totals.
func TestMergeReplicaDeltas(t *testing.T) {
	tests := []struct {
		name            string
		a, b            []Outcome
		wantConsecutive int64
		wantReason      string
	}{
		{
			name:            "success on one replica newer than failures on the other resets",
			a:               []Outcome{failure(1, "HTTP 500"), failure(2, "HTTP 500")},
			b:               []Outcome{success(3)},
			wantConsecutive: 0, wantReason: "HTTP 500",
		},
		{
			name:            "failures on both replicas after the last success add",
			a:               []Outcome{success(1), failure(2, "HTTP 500")},
			b:               []Outcome{failure(3, "Timeout"), failure(4, "Timeout")},
			wantConsecutive: 3, wantReason: "Timeout",
		},
		{
			name:            "failures older than the other replica's success do not count",
			a:               []Outcome{failure(1, "HTTP 500"), failure(2, "HTTP 500")},
			b:               []Outcome{success(3), failure(4, "HTTP 503")},
			wantConsecutive: 1, wantReason: "HTTP 503",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, b := fold(tt.a...), fold(tt.b...)
			ab, ba := a, b
			ab.merge(b)
			ba.merge(a)
			for _, s := range []endpointState{ab, ba} {
				if s.ConsecutiveFailures != tt.wantConsecutive || s.LastFailureReason != tt.wantReason {
					t.Errorf("got consecutive %d reason %q, want %d %q", s.ConsecutiveFailures, s.LastFailureReason, tt.wantConsecutive, tt.wantReason)
				}
			}
			if ab != ba {
				t.Errorf("merge is not commutative:\n%+v\n%+v", ab, ba)
			}
			if ab.Attempts != int64(len(tt.a)+len(tt.b)) {
				t.Errorf("attempts %d", ab.Attempts)
			}
		})
	}
}

// TestMergeCountersAreOrderIndependent: however outcomes are split into
// deltas and merged, counters and times are the same, and a run of
// failures that follows the last success of all is counted exactly.
func TestMergeCountersAreOrderIndependent(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	for round := range 200 {
		var outcomes []Outcome
		for i := range 50 {
			if rng.IntN(3) == 0 {
				outcomes = append(outcomes, success(i))
			} else {
				outcomes = append(outcomes, failure(i, "HTTP 500"))
			}
		}
		// Trailing failures after the overall last success.
		var trailing int64
		for i := len(outcomes) - 1; i >= 0 && !outcomes[i].Success; i-- {
			trailing++
		}
		want := fold(outcomes...)

		// Split across three replicas, each folding its share in shuffled
		// order, merged in random order.
		deltas := make([]endpointState, 3)
		for _, i := range rng.Perm(len(outcomes)) {
			deltas[rng.IntN(3)].merge(outcomeState(outcomes[i]))
		}
		var got endpointState
		for _, i := range rng.Perm(3) {
			got.merge(deltas[i])
		}
		if got.Attempts != want.Attempts || got.Delivered != want.Delivered || got.Failed != want.Failed ||
			!got.LastAttemptTime.Equal(want.LastAttemptTime) || !got.LastSuccessTime.Equal(want.LastSuccessTime) ||
			!got.LastFailureTime.Equal(want.LastFailureTime) {
			t.Fatalf("round %d: merged %+v, sequential %+v", round, got, want)
		}
		if want.ConsecutiveFailures != trailing {
			t.Fatalf("round %d: sequential consecutive %d, want %d", round, want.ConsecutiveFailures, trailing)
		}
		// Deltas may interleave with each other, so the merged count is an
		// upper bound that is exact when nothing failed after the last
		// success.
		if got.ConsecutiveFailures < trailing {
			t.Fatalf("round %d: merged consecutive %d below the true %d", round, got.ConsecutiveFailures, trailing)
		}
		if trailing == 0 && got.ConsecutiveFailures != 0 {
			t.Fatalf("round %d: merged consecutive %d after a final success", round, got.ConsecutiveFailures)
		}
	}
}

func TestMergeGoneCircuitAndSubscriptions(t *testing.T) {
	s := fold(
		Outcome{Time: at(1), Reason: "HTTP 410", Gone: true, GoneGeneration: 2},
		Outcome{Time: at(2), Reason: "HTTP 503", CircuitOpen: true, DeadLettered: true},
	)
	if s.GoneGeneration != 2 || !s.CircuitOpenTime.Equal(at(2)) || s.DeadLettered != 1 {
		t.Errorf("got %+v", s)
	}
	s.merge(outcomeState(Outcome{Time: at(3), Reason: "HTTP 410", Gone: true, GoneGeneration: 1}))
	if s.GoneGeneration != 2 {
		t.Errorf("goneGeneration went back to %d", s.GoneGeneration)
	}

	var sub subscriptionState
	sub.merge(subscriptionState{Matched: 2, LastMatchedTime: at(5)})
	sub.merge(subscriptionState{Matched: 1, Delivered: 1, LastMatchedTime: at(3), UID: "u"})
	if sub.Matched != 3 || sub.Delivered != 1 || !sub.LastMatchedTime.Equal(at(5)) || sub.UID != "u" {
		t.Errorf("subscription totals %+v", sub)
	}
}

func TestRecordAggregatesLocally(t *testing.T) {
	r, err := NewReporter(Options{Queue: &testQueue{js: stubJetStream{}}, Now: func() time.Time { return at(100) }})
	if err != nil {
		t.Fatal(err)
	}
	r.Record(Outcome{Namespace: "ns", Endpoint: "ep", Success: true, Subscriptions: []string{"a", "b", ""}})
	r.Record(Outcome{Namespace: "ns", Endpoint: "ep", Time: at(101), Reason: "HTTP 500", Subscriptions: []string{"a"}})
	r.Record(Outcome{Namespace: "", Endpoint: "ep", Success: true}) // ignored
	r.Matched("ns", "a", at(99))
	r.Matched("ns", "a", time.Time{})

	ep := r.endpointDeltas[endpointKey("ns", "ep")]
	if ep == nil || ep.Attempts != 2 || ep.Delivered != 1 || ep.ConsecutiveFailures != 1 || !ep.LastSuccessTime.Equal(at(100)) {
		t.Fatalf("endpoint delta %+v", ep)
	}
	a, b := r.subDeltas[subscriptionKey("ns", "a")], r.subDeltas[subscriptionKey("ns", "b")]
	if a == nil || a.Delivered != 1 || a.Matched != 2 || !a.LastMatchedTime.Equal(at(100)) {
		t.Errorf("subscription a delta %+v (failed attempts must not count as delivered)", a)
	}
	if b == nil || b.Delivered != 1 || b.Matched != 0 {
		t.Errorf("subscription b delta %+v", b)
	}
	if len(r.subDeltas) != 2 || len(r.endpointDeltas) != 1 {
		t.Errorf("deltas for %d subscriptions, %d endpoints", len(r.subDeltas), len(r.endpointDeltas))
	}
}

func TestBucketKeys(t *testing.T) {
	for _, k := range []objectKey{endpointKey("ns", "ep"), subscriptionKey("team.a", "orders.v1"), endpointKey("x", "UPPER_case")} {
		bk := k.bucketKey()
		got, ok := parseBucketKey(bk)
		if !ok || got != k {
			t.Errorf("bucket key %q of %v parses as %v %v", bk, k, got, ok)
		}
		if n := len(splitDots(bk)); n != 3 {
			t.Errorf("bucket key %q has %d tokens", bk, n)
		}
	}
	for _, bad := range []string{leaseKey, "ep.a", "xx.a.b", "ep.a.b.c", "ep..b", "ep.a_zz.b"} {
		if k, ok := parseBucketKey(bad); ok {
			t.Errorf("parseBucketKey(%q) = %v, want rejection", bad, k)
		}
	}
}

func TestNotSentOutcomes(t *testing.T) {
	r, err := NewReporter(Options{Queue: &testQueue{js: stubJetStream{}}})
	if err != nil {
		t.Fatal(err)
	}
	// Dead-lettered for age without a request: not an attempt.
	r.Record(Outcome{Namespace: "ns", Endpoint: "ep", Time: at(1), NotSent: true, Reason: "MaxAge", DeadLettered: true, Subscriptions: []string{"s"}})
	d := r.endpointDeltas[endpointKey("ns", "ep")]
	if d.Attempts != 0 || d.Failed != 0 || !d.LastAttemptTime.IsZero() || d.DeadLettered != 1 {
		t.Errorf("not-sent delivery counted as an attempt: %+v", d)
	}
	// Held back without a signing key: a failure the user must see.
	r.Record(Outcome{Namespace: "ns", Endpoint: "ep", Time: at(2), NotSent: true, Reason: ReasonSigningKeyMissing})
	if d := r.endpointDeltas[endpointKey("ns", "ep")]; d.Failed != 1 || d.LastFailureReason != ReasonSigningKeyMissing {
		t.Errorf("missing signing key not recorded as a failure: %+v", d)
	}
	if len(r.subDeltas) != 0 {
		t.Errorf("not-sent deliveries counted for Subscriptions: %v", r.subDeltas)
	}
}
