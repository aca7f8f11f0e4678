package e2e

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/api/meta"
	"sigs.k8s.io/controller-runtime/pkg/client"

	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/dispatcher/queue"
)

// steadyPublisher publishes one event every interval with the CloudEvents
// SDK (binary mode, as most clients do) and records which ones were
// answered 202. Failed publishes are not retried: the test counts only
// what Herald acknowledged.
type steadyPublisher struct {
	ns, source string
	mu         sync.Mutex
	acked      []string
	attempted  int
	stop       context.CancelFunc
	done       chan struct{}
}

func startSteadyPublisher(t *testing.T, ns, token, source string, interval time.Duration, limit int) *steadyPublisher {
	t.Helper()
	ceClient, err := cloudevents.NewClientHTTP(
		cloudevents.WithTarget(herald.IngestURL+"/v1/namespaces/"+ns+"/events"),
		cehttp.WithClient(*herald.IngestClient()),
		cehttp.WithHeader("Authorization", "Bearer "+token))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &steadyPublisher{ns: ns, source: source, stop: cancel, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		ticker := time.NewTicker(interval)
		defer ticker.Stop()
		for i := 0; i < limit && ctx.Err() == nil; i++ {
			ev := cloudevents.NewEvent()
			ev.SetID(fmt.Sprintf("e-%d", i))
			ev.SetSource(source)
			ev.SetType("tick")
			_ = ev.SetData(cloudevents.ApplicationJSON, map[string]int{"i": i})
			reqCtx, cancelReq := context.WithTimeout(ctx, 5*time.Second)
			res := ceClient.Send(reqCtx, ev)
			cancelReq()
			var httpRes *cehttp.Result
			ok := cloudevents.ResultAs(res, &httpRes) && httpRes.StatusCode == 202
			p.mu.Lock()
			p.attempted++
			if ok {
				p.acked = append(p.acked, ev.ID())
			}
			p.mu.Unlock()
			select {
			case <-ctx.Done():
			case <-ticker.C:
			}
		}
	}()
	return p
}

func (p *steadyPublisher) ackedCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.acked)
}

// finish stops publishing and returns the acknowledged event ids.
func (p *steadyPublisher) finish() []string {
	p.stop()
	<-p.done
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.acked...)
}

// expectAllDelivered waits until the receiver got every acknowledged event
// (by webhook-id), and reports what is missing otherwise.
func expectAllDelivered(t *testing.T, rcv *Receiver, ns, source string, acked []string, within time.Duration) {
	t.Helper()
	NewWithT(t).Eventually(func(g Gomega) {
		got := map[string]bool{}
		for _, d := range rcv.Deliveries() {
			got[d.WebhookID] = true
		}
		var missing []string
		for _, id := range acked {
			if !got[queue.WebhookID(ns, source, id)] {
				missing = append(missing, id)
			}
		}
		g.Expect(missing).To(BeEmpty(), "%d of %d acknowledged events not delivered: %s", len(missing), len(acked), strings.Join(head(missing, 20), ","))
	}, within, 250*time.Millisecond).Should(Succeed())
	unique, total, rejected := rcv.Stats()
	t.Logf("acknowledged %d events; receiver saw %d distinct, %d requests (%d duplicates), %d rejected", len(acked), unique, total, total-unique, rejected)
	if rejected != 0 {
		t.Errorf("receiver rejected %d deliveries (bad signature)", rejected)
	}
}

func head(s []string, n int) []string { return s[:min(n, len(s))] }

// receivingNamespace creates the namespace ns with a receiver, an endpoint
// "sink" delivering to it (extraSpec added to its spec) with a catch-all
// Subscription "sink-all", both Ready, and returns the receiver and a
// publisher token.
func receivingNamespace(t *testing.T, ns, extraSpec string) (*Receiver, string) {
	t.Helper()
	createNamespace(t, ns)
	rcv, err := StartReceiver("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rcv.Close)
	setUpEndpoint(t, ns, "sink", rcv, extraSpec)
	token, err := herald.PublisherToken(context.Background(), ns, "publisher")
	if err != nil {
		t.Fatal(err)
	}
	return rcv, token
}

// TestKillAndRestartWhilePublishingLosesNothing is the user's scenario: a
// steady publisher (one event every 5 ms), SIGKILL of the dispatcher 700 ms
// in, the same binary started again 300 ms later on the same store, and
// the publisher never waits for readiness: it keeps publishing into the
// restarting dispatcher, so events are accepted before its catalog and
// delivery stages are ready. Every event answered 202 must arrive.
func TestKillAndRestartWhilePublishingLosesNothing(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := "e2e-restart"
	rcv, token := receivingNamespace(t, ns, "")

	pub := startSteadyPublisher(t, ns, token, "/restart", 5*time.Millisecond, 400)
	time.Sleep(700 * time.Millisecond)
	herald.Dispatcher.Kill()
	before := pub.ackedCount()
	time.Sleep(300 * time.Millisecond)
	p, err := herald.StartProcess("dispatcher", herald.Bins.Dispatcher, herald.dispatcherArgs...)
	g.Expect(err).NotTo(HaveOccurred())
	herald.Dispatcher = p
	<-pub.done
	acked := pub.finish()
	g.Expect(before).To(BeNumerically(">", 0), "nothing was acknowledged before the kill")
	g.Expect(len(acked)).To(BeNumerically(">", before), "nothing was acknowledged after the restart")
	g.Expect(waitReady(ctx, herald.healthURL, p)).To(Succeed())
	expectAllDelivered(t, rcv, ns, "/restart", acked, 2*time.Minute)
}

// TestSpecEditsWhilePublishingLoseNothing is the user's scenario: a steady
// publisher (one event every 25 ms for 7.5 s) while kubectl patch changes
// the endpoint's timeout, then the Subscription's types (adding a pattern,
// keeping the old one), then the endpoint again. Each edit passes through
// Ready=Unknown; every event answered 202 must arrive.
func TestSpecEditsWhilePublishingLoseNothing(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := "e2e-edits"
	rcv, token := receivingNamespace(t, ns, "")

	pub := startSteadyPublisher(t, ns, token, "/edits", 25*time.Millisecond, 300)
	edits := [][]string{
		{"patch", "-n", ns, "webhookendpoint/sink", "--type=merge", "-p", `{"spec":{"timeout":"7s"}}`},
		{"patch", "-n", ns, "subscription/sink-all", "--type=merge", "-p", `{"spec":{"types":["*","tick"]}}`},
		{"patch", "-n", ns, "webhookendpoint/sink", "--type=merge", "-p", `{"spec":{"timeout":"9s"}}`},
	}
	for _, edit := range edits {
		time.Sleep(1500 * time.Millisecond)
		out, err := herald.Kubectl(ctx, edit...)
		g.Expect(err).NotTo(HaveOccurred(), out)
	}
	<-pub.done
	acked := pub.finish()
	g.Expect(acked).To(HaveLen(300), "the dispatcher refused events during the edits")
	expectAllDelivered(t, rcv, ns, "/edits", acked, 2*time.Minute)
}

// TestEditWhileManagerIsDownHoldsEvents publishes through the seam instead
// of around it: the manager is stopped, so an edit stays unreconciled for
// as long as the test likes. Events matching the old spec keep flowing
// (last known good configuration); events matching only the new spec are
// held, not discarded, and delivered once the restarted manager declares
// the new generation Ready.
func TestEditWhileManagerIsDownHoldsEvents(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := "e2e-manager-down"
	rcv, token := receivingNamespace(t, ns, "")
	out, err := herald.Kubectl(ctx, "patch", "-n", ns, "subscription/sink-all", "--type=merge", "-p", `{"spec":{"types":["tick"]}}`)
	g.Expect(err).NotTo(HaveOccurred(), out)
	out, err = herald.Kubectl(ctx, "wait", "-n", ns, "subscription/sink-all", "--for=jsonpath={.status.observedGeneration}=2", "--timeout=60s")
	g.Expect(err).NotTo(HaveOccurred(), out)

	g.Expect(herald.Manager.Stop(20 * time.Second)).To(Succeed())
	restarted := false
	defer func() {
		if !restarted {
			g.Expect(herald.StartManager(ctx)).To(Succeed())
		}
	}()
	for _, edit := range [][]string{
		{"patch", "-n", ns, "webhookendpoint/sink", "--type=merge", "-p", `{"spec":{"timeout":"7s"}}`},
		{"patch", "-n", ns, "subscription/sink-all", "--type=merge", "-p", `{"spec":{"types":["tick","tock"]}}`},
	} {
		out, err := herald.Kubectl(ctx, edit...)
		g.Expect(err).NotTo(HaveOccurred(), out)
	}
	// Ticks before and after the tocks: once the later ticks arrived, the
	// router has seen every tock (events of a namespace are fanned out in
	// order), so the check that no tock arrived is anchored.
	var ticks, tocks, lateTicks []Event
	for i := range 20 {
		ticks = append(ticks, Event{ID: fmt.Sprintf("tick-%d", i), Source: "/down", Type: "tick"})
		tocks = append(tocks, Event{ID: fmt.Sprintf("tock-%d", i), Source: "/down", Type: "tock"})
		lateTicks = append(lateTicks, Event{ID: fmt.Sprintf("late-tick-%d", i), Source: "/down", Type: "tick"})
	}
	for _, batch := range [][]Event{ticks, tocks, lateTicks} {
		code, body, err := herald.Publish(ctx, ns, token, batch)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(code).To(Equal(202), body)
	}
	ids := func(evs []Event) []string {
		var out []string
		for _, e := range evs {
			out = append(out, e.ID)
		}
		return out
	}
	// The old spec still routes: the endpoint and Subscription edits are
	// not reconciled, yet "tick" events arrive.
	expectAllDelivered(t, rcv, ns, "/down", append(ids(ticks), ids(lateTicks)...), time.Minute)
	for _, d := range rcv.Deliveries() {
		for _, id := range ids(tocks) {
			g.Expect(d.WebhookID).NotTo(Equal(queue.WebhookID(ns, "/down", id)), "a tock event was delivered before the new spec was Ready")
		}
	}

	g.Expect(herald.StartManager(ctx)).To(Succeed())
	restarted = true
	expectAllDelivered(t, rcv, ns, "/down", ids(tocks), time.Minute)
}

// TestDeadDispatcherIsVisible: with the dispatcher stopped, no replica
// renews the status writer's Lease, and the manager turns DeliveryHealthy
// Unknown with DispatcherNotReporting instead of leaving it True for ever;
// once the dispatcher is back, it reports True again.
func TestDeadDispatcherIsVisible(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := "e2e-dead-dispatcher"
	_, token := receivingNamespace(t, ns, "")
	code, body, err := herald.Publish(ctx, ns, token, []Event{{ID: "alive", Source: "/dead", Type: "tick"}})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(code).To(Equal(202), body)
	healthy := func(status, reason string) func(g Gomega) {
		return func(g Gomega) {
			ep := &heraldv1.WebhookEndpoint{}
			g.Expect(herald.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "sink"}, ep)).To(Succeed())
			c := meta.FindStatusCondition(ep.Status.Conditions, heraldv1.DeliveryHealthyCondition)
			g.Expect(c).NotTo(BeNil())
			g.Expect(string(c.Status)).To(Equal(status))
			g.Expect(c.Reason).To(Equal(reason))
		}
	}
	g.Eventually(healthy("True", heraldv1.DeliveringReason), time.Minute, 250*time.Millisecond).Should(Succeed())

	g.Expect(herald.Dispatcher.Stop(20 * time.Second)).To(Succeed())
	restarted := false
	defer func() {
		if !restarted {
			g.Expect(herald.StartDispatcher(ctx)).To(Succeed())
		}
	}()
	// Two lease durations (2 x 15 s) after the last renewal.
	g.Eventually(healthy("Unknown", heraldv1.DispatcherNotReportingReason), 2*time.Minute, time.Second).Should(Succeed())

	g.Expect(herald.StartDispatcher(ctx)).To(Succeed())
	restarted = true
	g.Eventually(healthy("True", heraldv1.DeliveringReason), time.Minute, 250*time.Millisecond).Should(Succeed())
}

// TestOrderedEndpointKeepsPublishOrder: an Ordered endpoint shares its
// events with an Unordered one while a publisher sends one event after
// another, the dispatcher is killed and started again (events accepted
// while it starts wait in the events stream until fan-out runs), and edits
// put the namespace in and out of transition. Events are fanned out at
// ingest or through the events stream depending on that state; the
// Ordered endpoint must still receive the acknowledged events in publish
// order, and both endpoints every one.
func TestOrderedEndpointKeepsPublishOrder(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := "e2e-ordered"
	ordered, token := receivingNamespace(t, ns, "  ordering: Ordered")
	unordered, err := StartReceiver("127.0.0.1:0")
	g.Expect(err).NotTo(HaveOccurred())
	t.Cleanup(unordered.Close)
	setUpEndpoint(t, ns, "audit", unordered, "")

	pub := startSteadyPublisher(t, ns, token, "/ordered", 5*time.Millisecond, 600)
	time.Sleep(500 * time.Millisecond)
	herald.Dispatcher.Kill()
	time.Sleep(300 * time.Millisecond)
	p, err := herald.StartProcess("dispatcher", herald.Bins.Dispatcher, herald.dispatcherArgs...)
	g.Expect(err).NotTo(HaveOccurred())
	herald.Dispatcher = p
	g.Expect(waitReady(ctx, herald.healthURL, p)).To(Succeed())
	for _, edit := range [][]string{
		{"patch", "-n", ns, "webhookendpoint/audit", "--type=merge", "-p", `{"spec":{"timeout":"7s"}}`},
		{"patch", "-n", ns, "subscription/audit-all", "--type=merge", "-p", `{"spec":{"types":["*","tick"]}}`},
	} {
		out, err := herald.Kubectl(ctx, edit...)
		g.Expect(err).NotTo(HaveOccurred(), out)
		time.Sleep(300 * time.Millisecond)
	}
	<-pub.done
	acked := pub.finish()
	g.Expect(len(acked)).To(BeNumerically(">", 300), "too few events acknowledged around the restart")
	expectAllDelivered(t, unordered, ns, "/ordered", acked, 2*time.Minute)
	expectAllDelivered(t, ordered, ns, "/ordered", acked, 2*time.Minute)

	// Events the killed dispatcher never answered may be delivered too
	// (at-least-once); the order is checked among the acknowledged ones.
	position := map[string]int{}
	for i, id := range acked {
		position[queue.WebhookID(ns, "/ordered", id)] = i
	}
	last := -1
	for _, d := range ordered.Deliveries() {
		i, ok := position[d.WebhookID]
		if !ok {
			continue
		}
		g.Expect(i).To(BeNumerically(">", last), "the Ordered endpoint received %s after %s", acked[i], acked[max(last, 0)])
		last = i
	}
}
