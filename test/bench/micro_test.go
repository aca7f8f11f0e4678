package bench

// Micro-benchmarks of the delivery side of the fan-out path, in-process
// and without Kubernetes, comparable across commits with benchstat:
//
//	go test -run '^$' -bench . -count 6 ./test/bench/ > new.txt
//	benchstat old.txt new.txt
//
// `make bench-micro` runs these together with the signing benchmarks of
// dispatcher/signature and the matching and routing benchmarks of
// dispatcher/router.

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"

	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/dispatcher/catalog"
	"github.com/herald-dev/herald/dispatcher/delivery"
	"github.com/herald-dev/herald/dispatcher/queue"
	"github.com/herald-dev/herald/dispatcher/router"
	"github.com/herald-dev/herald/dispatcher/signature"
)

func benchEventPayload(seq int) []byte {
	var buf bytes.Buffer
	writeEvent(&buf, 1, seq, "bench.fanout", 200)
	return buf.Bytes()
}

func benchSecret(b *testing.B) string {
	b.Helper()
	s, err := signature.NewHMACSecret()
	if err != nil {
		b.Fatal(err)
	}
	return s
}

// BenchmarkBuildRequest measures one delivery attempt's request: parsing
// the stored event, writing the body in the endpoint's payload format and
// signing it.
func BenchmarkBuildRequest(b *testing.B) {
	secret := benchSecret(b)
	payload := benchEventPayload(42)
	for _, format := range []heraldv1.PayloadFormat{heraldv1.PayloadStandardWebhooks, heraldv1.PayloadCloudEventsBinary, heraldv1.PayloadCloudEventsStructured} {
		b.Run(string(format), func(b *testing.B) {
			ep := &catalog.Endpoint{Namespace: "ns", Name: "ep", Spec: heraldv1.WebhookEndpointSpec{URL: "http://127.0.0.1:1/hook", AllowInsecureHTTP: true, PayloadFormat: format},
				Keys: []heraldv1.SigningKey{{Secret: secret}}}
			target, err := delivery.NewTarget(ep, delivery.UserAgent("bench"))
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			d := delivery.Delivery{Namespace: "ns", Payload: payload, WebhookID: "msg_bench", IngestedAt: time.Now()}
			b.SetBytes(int64(len(payload)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := target.BuildRequest(ctx, d, time.Now()); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// staticCatalog is a router.Catalog of fixed Subscriptions and endpoints.
type staticCatalog struct {
	subs      []*catalog.Subscription
	endpoints map[string]*catalog.Endpoint
}

func (c *staticCatalog) Subscriptions(string) ([]*catalog.Subscription, uint64) { return c.subs, 1 }

// InTransition: nothing is ever being reconciled.
func (c *staticCatalog) InTransition(string) bool { return false }

func (c *staticCatalog) Endpoint(_, name string) (*catalog.Endpoint, bool) {
	ep, ok := c.endpoints[name]
	return ep, ok
}

// BenchmarkPipeline measures the fan-out path in one process: an event
// stored in the embedded JetStream, fanned out by the router to n
// endpoints' delivery subjects, and delivered by the delivery manager —
// signed, posted over loopback to a receiver that verifies the signature.
// One op is one event; the deliveries/s metric counts its n deliveries.
// Ingest (HTTP, authentication) and Kubernetes are not involved.
func BenchmarkPipeline(b *testing.B) {
	for _, n := range []int{1, 10} {
		b.Run(fmt.Sprintf("fanout=%d", n), func(b *testing.B) { benchmarkPipeline(b, n) })
	}
}

// pipeline is the in-process fan-out path of the micro-benchmarks: an
// embedded queue, a router over a static catalog of n endpoints with one
// Subscription each, a delivery manager, and a verifying receiver.
type pipeline struct {
	b                   *testing.B
	ctx                 context.Context
	q                   *queue.Queue
	cat                 *staticCatalog
	eps                 []*catalog.Endpoint
	delivered, rejected atomic.Int64
}

func newPipeline(b *testing.B, n int) *pipeline {
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel)
	q, err := queue.Open(ctx, queue.Config{StoreDir: b.TempDir()}, logr.Discard())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = q.Close() })
	p := &pipeline{b: b, ctx: ctx, q: q, cat: &staticCatalog{endpoints: map[string]*catalog.Endpoint{}}}
	secret := benchSecret(b)
	verifier, err := signature.NewVerifier([]string{secret})
	if err != nil {
		b.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := verifier.VerifyRequest(r); err != nil {
			p.rejected.Add(1)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		p.delivered.Add(1)
		w.WriteHeader(http.StatusNoContent)
	}))
	b.Cleanup(srv.Close)
	for i := range n {
		name := fmt.Sprintf("ep-%d", i)
		ep := &catalog.Endpoint{Namespace: "ns", Name: name, Generation: 1,
			Spec: heraldv1.WebhookEndpointSpec{URL: srv.URL + "/" + name, AllowInsecureHTTP: true},
			Keys: []heraldv1.SigningKey{{Secret: secret}}}
		p.cat.endpoints[name] = ep
		p.eps = append(p.eps, ep)
		p.cat.subs = append(p.cat.subs, &catalog.Subscription{Namespace: "ns", Name: name, Generation: 1, Endpoint: name, Types: []string{"bench.fanout"}})
	}
	return p
}

// startRouter runs a router until the benchmark ends.
func (p *pipeline) startRouter() {
	rt, err := router.New(p.q, p.cat, logr.Discard(), router.Options{})
	if err != nil {
		p.b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(p.ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = rt.Run(ctx) }()
	p.b.Cleanup(func() { cancel(); <-done })
}

// startDelivery runs a delivery manager for the endpoints until the
// benchmark ends.
func (p *pipeline) startDelivery() {
	dm, err := delivery.NewManager(delivery.Options{Queue: p.q, Logger: logr.Discard(), Version: "bench",
		AllowedCIDRs: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})
	if err != nil {
		p.b.Fatal(err)
	}
	dm.Sync(p.eps)
	p.b.Cleanup(func() {
		stopCtx, stop := context.WithTimeout(context.Background(), 10*time.Second)
		defer stop()
		_ = dm.Stop(stopCtx)
	})
}

func (p *pipeline) publishEvent(seq int) {
	id := fmt.Sprintf("r1-%d", seq)
	h := queue.Header{}
	h.Set(queue.HeaderIngestedAt, time.Now().UTC().Format(time.RFC3339Nano))
	if _, _, err := p.q.PublishEvent(p.ctx, "ns", queue.EventDedupID("ns", eventSource, id), benchEventPayload(seq), h); err != nil {
		p.b.Fatal(err)
	}
}

// waitFor polls until cond holds, for at most two minutes.
func (p *pipeline) waitFor(what string, cond func() bool) {
	deadline := time.Now().Add(2 * time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			p.b.Fatalf("%s: not done after 2 minutes (%d delivered, %d rejected)", what, p.delivered.Load(), p.rejected.Load())
		}
		time.Sleep(200 * time.Microsecond)
	}
}

func benchmarkPipeline(b *testing.B, n int) {
	p := newPipeline(b, n)
	p.startRouter()
	p.startDelivery()
	// Warm up: consumers created, connections open.
	p.publishEvent(0)
	p.waitFor("warm-up", func() bool { return p.delivered.Load() >= int64(n) })

	// A classic loop rather than b.Loop: the timer must keep running while
	// the last deliveries drain.
	b.ReportAllocs()
	b.ResetTimer()
	want := p.delivered.Load() + int64(b.N*n)
	for i := range b.N {
		p.publishEvent(i + 1)
	}
	p.waitFor("deliveries", func() bool { return p.delivered.Load() >= want })
	b.StopTimer()
	b.ReportMetric(float64(b.N*n)/b.Elapsed().Seconds(), "deliveries/s")
	if p.rejected.Load() > 0 {
		b.Fatalf("%d deliveries failed signature verification", p.rejected.Load())
	}
}

// BenchmarkRouterDrain measures the router alone: b.N events are stored
// first, then the router fans them out to one endpoint's delivery subject
// (nothing delivers them). One op is one event.
func BenchmarkRouterDrain(b *testing.B) {
	p := newPipeline(b, 1)
	for i := range b.N {
		p.publishEvent(i)
	}
	b.ReportAllocs()
	b.ResetTimer()
	p.startRouter()
	p.waitFor("fan-out", func() bool {
		n, err := p.q.Pending(p.ctx, "ns", "ep-0")
		return err == nil && n >= uint64(b.N)
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}

// BenchmarkDeliveryDrain measures one endpoint's delivery loop alone: b.N
// deliveries are queued first, then the delivery manager sends them (fetch,
// sign, POST, acknowledge) to a verifying receiver over loopback with the
// default maxInFlight. One op is one delivery.
func BenchmarkDeliveryDrain(b *testing.B) {
	p := newPipeline(b, 1)
	h := queue.Header{}
	h.Set(queue.HeaderIngestedAt, time.Now().UTC().Format(time.RFC3339Nano))
	for i := range b.N {
		id := fmt.Sprintf("r1-%d", i)
		h.Set(queue.HeaderWebhookID, queue.WebhookID("ns", eventSource, id))
		if _, _, err := p.q.PublishDelivery(p.ctx, "ns", "ep-0", queue.DeliveryDedupID(id, "ns", "ep-0"), benchEventPayload(i), h); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	p.startDelivery()
	p.waitFor("deliveries", func() bool { return p.delivered.Load() >= int64(b.N) })
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "deliveries/s")
	if p.rejected.Load() > 0 {
		b.Fatalf("%d deliveries failed signature verification", p.rejected.Load())
	}
}
