package health

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

// TestReplicasSumInBucket: two dispatcher replicas record attempts for the
// same endpoint and flush concurrently; the bucket holds the sum.
func TestReplicasSumInBucket(t *testing.T) {
	js := startJetStream(t)
	a := openReporter(t, js.connect(), nil, Options{Replica: "a"})
	b := openReporter(t, js.connect(), nil, Options{Replica: "b"})
	ctx := testContext(t)

	const rounds, perRound = 10, 50
	for round := range rounds {
		var wg sync.WaitGroup
		for _, r := range []*Reporter{a, b} {
			wg.Go(func() {
				for i := range perRound {
					sec := round*perRound + i
					r.Record(Outcome{Namespace: "shop", Endpoint: "billing", Time: at(sec), Success: i%5 != 0, Reason: "HTTP 503",
						Subscriptions: []string{"orders"}})
					r.Matched("shop", "orders", at(sec))
				}
				r.flush(ctx)
			})
		}
		wg.Wait()
	}
	if len(a.endpointDeltas)+len(b.endpointDeltas)+len(a.subDeltas)+len(b.subDeltas) != 0 {
		t.Fatal("deltas left after flushing")
	}

	st := readEndpointTotals(t, js.connect(), endpointKey("shop", "billing"))
	total := int64(2 * rounds * perRound)
	if st.Attempts != total || st.Delivered != total*4/5 || st.Failed != total/5 {
		t.Errorf("bucket totals attempts=%d delivered=%d failed=%d, want %d %d %d", st.Attempts, st.Delivered, st.Failed, total, total*4/5, total/5)
	}
	if want := at(rounds*perRound - 1); !st.LastAttemptTime.Equal(want) || !st.LastSuccessTime.Equal(want) {
		t.Errorf("last attempt %v, last success %v, want %v", st.LastAttemptTime, st.LastSuccessTime, want)
	}
	if st.ConsecutiveFailures != 0 {
		t.Errorf("consecutive failures %d after a final success", st.ConsecutiveFailures)
	}

	kv, err := js.connect().KeyValue(ctx, DefaultBucket)
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(ctx, subscriptionKey("shop", "orders").bucketKey())
	if err != nil {
		t.Fatal(err)
	}
	sub, _ := decodeSubscriptionState(e.Value())
	if sub.Matched != total || sub.Delivered != total*4/5 {
		t.Errorf("subscription totals matched=%d delivered=%d, want %d %d", sub.Matched, sub.Delivered, total, total*4/5)
	}
}

// TestFlushSurvivesStaleCache: a replica whose cached revision is stale
// (another replica wrote meanwhile) retries with the latest value instead
// of losing either write.
func TestFlushSurvivesStaleCache(t *testing.T) {
	js := startJetStream(t)
	a := openReporter(t, js.connect(), nil, Options{Replica: "a"})
	b := openReporter(t, js.connect(), nil, Options{Replica: "b"})
	ctx := testContext(t)
	k := endpointKey("ns", "ep")

	a.Record(success(1))
	a.flush(ctx)
	// b's cache may not have seen a's write yet; force it stale.
	b.cacheMu.Lock()
	delete(b.cache, k.bucketKey())
	b.cacheMu.Unlock()
	b.Record(failure(2, "Timeout"))
	b.flush(ctx)
	a.Record(failure(3, "Timeout"))
	a.cacheMu.Lock()
	a.cache[k.bucketKey()] = cacheEntry{revision: 1, value: []byte(`{}`)}
	a.cacheMu.Unlock()
	a.flush(ctx)

	st := readEndpointTotals(t, js.connect(), k)
	if st.Attempts != 3 || st.Delivered != 1 || st.ConsecutiveFailures != 2 || st.LastFailureReason != "Timeout" {
		t.Errorf("totals %+v", st)
	}
}

// TestFlushKeepsDeltasWhenBucketUnavailable: a failed merge is retried on
// the next flush, nothing is lost.
func TestFlushKeepsDeltasWhenBucketUnavailable(t *testing.T) {
	js := startJetStream(t)
	conn := js.connect()
	r := openReporter(t, conn, nil, Options{Replica: "a", OpTimeout: 200 * time.Millisecond})
	ctx := testContext(t)

	if err := conn.DeleteKeyValue(ctx, DefaultBucket); err != nil {
		t.Fatal(err)
	}
	r.Record(success(1))
	r.Record(success(2))
	r.flush(ctx)
	if d := r.endpointDeltas[endpointKey("ns", "ep")]; d == nil || d.Delivered != 2 {
		t.Fatalf("delta after a failed flush: %+v", d)
	}
	kv, err := r.openBucket(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r.kv = kv
	r.cacheMu.Lock()
	clear(r.cache)
	r.cacheMu.Unlock()
	r.Record(success(3))
	r.flush(ctx)
	if st := readEndpointTotals(t, conn, endpointKey("ns", "ep")); st.Delivered != 3 {
		t.Errorf("delivered %d after recovery, want 3", st.Delivered)
	}
}

func TestLease(t *testing.T) {
	js := startJetStream(t)
	clockA, clockB := &manualClock{now: t0}, &manualClock{now: t0}
	opts := func(id string, c *manualClock) Options {
		return Options{Replica: id, LeaseDuration: 15 * time.Second, Now: c.Now}
	}
	a := openReporter(t, js.connect(), stubClient{}, opts("a", clockA))
	b := openReporter(t, js.connect(), stubClient{}, opts("b", clockB))
	ctx := testContext(t)

	a.updateLease(ctx)
	b.updateLease(ctx)
	if !a.lease.holding || b.lease.holding {
		t.Fatalf("holding: a=%v b=%v, want only a", a.lease.holding, b.lease.holding)
	}
	// a renews: b sees the revision move and never takes over.
	for range 5 {
		clockA.Advance(10 * time.Second)
		clockB.Advance(10 * time.Second)
		a.updateLease(ctx)
		b.updateLease(ctx)
		if !a.lease.holding || b.lease.holding {
			t.Fatalf("while a renews: a=%v b=%v", a.lease.holding, b.lease.holding)
		}
	}
	// a stops renewing (hung or partitioned): b waits one full lease
	// duration, then takes over; a notices and stops writing.
	clockB.Advance(10 * time.Second)
	b.updateLease(ctx)
	if b.lease.holding {
		t.Fatal("b took over before the lease expired")
	}
	clockB.Advance(6 * time.Second)
	b.updateLease(ctx)
	if !b.lease.holding {
		t.Fatal("b did not take over an expired lease")
	}
	a.updateLease(ctx)
	if a.lease.holding {
		t.Fatal("a still writes after b took over")
	}
	// b shuts down and releases: a takes over at once.
	b.releaseLease(ctx)
	a.updateLease(ctx)
	if !a.lease.holding || b.lease.holding {
		t.Fatalf("after release: a=%v b=%v", a.lease.holding, b.lease.holding)
	}
}

// TestRunHandsOverLease: with two Reporters running, exactly one writes
// status; when it stops, the other takes over.
func TestRunHandsOverLease(t *testing.T) {
	js := startJetStream(t)
	opts := func(id string) Options {
		return Options{Replica: id, Queue: &testQueue{js: js.connect()}, FlushInterval: 50 * time.Millisecond, LeaseDuration: time.Second}
	}
	a := newRunning(t, opts("a"))
	b := newRunning(t, opts("b"))
	holder := func() string {
		kv, err := js.connect().KeyValue(testContext(t), DefaultBucket)
		if err != nil {
			return ""
		}
		e, err := kv.Get(testContext(t), leaseKey)
		if err != nil {
			return ""
		}
		return string(e.Value())
	}
	eventually(t, 10*time.Second, "a lease holder", func() bool { return holder() != "" })
	first, second := a, b
	if holder() == `{"holder":"b"}` {
		first, second = b, a
	}
	first.stop()
	want := fmt.Sprintf(`{"holder":%q}`, second.r.opts.Replica)
	eventually(t, 10*time.Second, "the other replica to take the lease", func() bool { return holder() == want })
}
