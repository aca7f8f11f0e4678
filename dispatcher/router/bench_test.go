package router

import (
	"context"
	"fmt"
	"testing"

	"github.com/herald-dev/herald/dispatcher/catalog"
	"github.com/herald-dev/herald/dispatcher/queue"
)

// subscriptions10k is a namespace of 10,000 Subscriptions shaped like a busy
// cluster: mostly exact types across 500 services, some prefixes, a few
// catch-alls with source patterns, one in ten with a filter.
func subscriptions10k(tb testing.TB) []*catalog.Subscription {
	tb.Helper()
	f := mustFilter(tb, `event.subject.startsWith("eu/") && data.total > 100`)
	subs := make([]*catalog.Subscription, 0, 10_000)
	for i := range 10_000 {
		s := &catalog.Subscription{Namespace: "ns", Name: fmt.Sprintf("sub-%d", i), Endpoint: fmt.Sprintf("ep-%d", i%2000)}
		svc := fmt.Sprintf("svc%d", i%500)
		switch {
		case i%100 == 0:
			s.Types = []string{"*"}
			s.Sources = []string{fmt.Sprintf("/%s/*", svc)}
		case i%10 == 0:
			s.Types = []string{svc + ".*"}
		default:
			s.Types = []string{fmt.Sprintf("%s.event%d", svc, i%20), fmt.Sprintf("%s.event%d.v2", svc, i%7)}
		}
		if i%10 == 3 {
			s.Filter = f
		}
		subs = append(subs, s)
	}
	return subs
}

func BenchmarkMatch10kSubscriptions(b *testing.B) {
	ix := NewIndex(subscriptions10k(b))
	payload := []byte(`{"specversion":"1.0","id":"1","source":"/svc3/orders","type":"svc3.event3","subject":"eu/de","data":{"total":250}}`)
	b.ReportAllocs()
	matched := 0
	for b.Loop() {
		ev, err := ParseEvent(payload)
		if err != nil {
			b.Fatal(err)
		}
		matched = len(ix.Match(ev, nil))
	}
	b.ReportMetric(float64(matched), "matches/op")
}

func BenchmarkBuildIndex10kSubscriptions(b *testing.B) {
	subs := subscriptions10k(b)
	b.ReportAllocs()
	for b.Loop() {
		NewIndex(subs)
	}
}

// BenchmarkRouteEvent measures one fan-out on the embedded queue: parse,
// match against 10,000 Subscriptions and queue the deliveries (one pipelined
// batch of asynchronous JetStream publishes).
func BenchmarkRouteEvent(b *testing.B) {
	q := openQueue(b)
	cat := newFakeCatalog()
	for _, s := range subscriptions10k(b) {
		cat.addEndpoint(s.Namespace, s.Endpoint)
		cat.subs[s.Namespace] = append(cat.subs[s.Namespace], s)
	}
	cat.revision++
	r, _ := newTestRouter(b, q, cat, nil)
	ctx := context.Background()
	header := queue.Header{}
	deliveries := 0
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		payload := fmt.Appendf(nil, `{"specversion":"1.0","id":"%d","source":"/svc3/orders","type":"svc3.event3","subject":"eu/de","data":{"total":250}}`, i)
		out := r.fanOut(ctx, "ns", []*queue.Message{{Namespace: "ns", Data: payload, Header: header}})[0]
		if out.err != nil {
			b.Fatal(out.err)
		}
		deliveries = len(out.result.Endpoints)
	}
	b.ReportMetric(float64(deliveries), "deliveries/op")
}
