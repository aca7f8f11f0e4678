package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/dispatcher/queue"
)

// TestRedeliveryAfterRecovery is the user's scenario: a receiver that
// answers 503 until it is fixed, deliveries that run out of attempts and
// are dead-lettered, then a Redelivery once the receiver works. Every dead
// letter arrives exactly once more, with the webhook-id it had, and the
// dead-letter queue is empty afterwards.
func TestRedeliveryAfterRecovery(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := "e2e-redelivery"
	createNamespace(t, ns)
	// No secret yet: the receiver answers 503 to everything.
	rcv, err := StartReceiver("127.0.0.1:0")
	g.Expect(err).NotTo(HaveOccurred())
	t.Cleanup(rcv.Close)
	manifests := fmt.Sprintf(`apiVersion: herald.dev/v1alpha1
kind: WebhookEndpoint
metadata: {name: flaky}
spec:
  url: %s
  allowInsecureHTTP: true
  retry: {maxAttempts: 2, initialBackoff: 100ms, maxBackoff: 200ms}
---
apiVersion: herald.dev/v1alpha1
kind: Subscription
metadata: {name: flaky-all}
spec:
  endpointRef: {name: flaky}
  types: ["*"]
`, rcv.URL)
	out, err := herald.ApplyYAML(ctx, ns, manifests)
	g.Expect(err).NotTo(HaveOccurred(), out)
	out, err = herald.Kubectl(ctx, "wait", "-n", ns, "--for=condition=Ready", "webhookendpoint/flaky", "subscription/flaky-all", "--timeout=60s")
	g.Expect(err).NotTo(HaveOccurred(), out)
	token, err := herald.PublisherToken(ctx, ns, "publisher")
	g.Expect(err).NotTo(HaveOccurred())

	const n = 5
	var events []Event
	for i := range n {
		events = append(events, Event{ID: "r-" + strconv.Itoa(i), Source: "/redelivery", Type: "order.created", Data: map[string]int{"i": i}})
	}
	code, body, err := herald.Publish(ctx, ns, token, events)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(code).To(Equal(202), body)

	endpointStatus := func(g Gomega) *heraldv1.DeliveryStatus {
		ep := &heraldv1.WebhookEndpoint{}
		g.Expect(herald.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "flaky"}, ep)).To(Succeed())
		g.Expect(ep.Status.Delivery).NotTo(BeNil())
		return ep.Status.Delivery
	}
	g.Eventually(func(g Gomega) {
		g.Expect(endpointStatus(g).DeadLettered).To(BeEquivalentTo(n))
	}, 2*time.Minute, 250*time.Millisecond).Should(Succeed(), "every delivery dead-lettered")
	g.Expect(rcv.Deliveries()).To(BeEmpty(), "the failing receiver accepted something")

	// The receiver is fixed; redeliver the dead letters.
	secret, err := herald.SigningSecret(ctx, ns, "flaky")
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(rcv.SetSecrets(secret)).To(Succeed())
	rd := &heraldv1.Redelivery{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "after-fix"},
		Spec:       heraldv1.RedeliverySpec{EndpointRef: heraldv1.LocalObjectReference{Name: "flaky"}},
	}
	g.Expect(herald.Client.Create(ctx, rd)).To(Succeed())
	g.Eventually(func(g Gomega) {
		g.Expect(herald.Client.Get(ctx, client.ObjectKeyFromObject(rd), rd)).To(Succeed())
		g.Expect(apimeta.IsStatusConditionTrue(rd.Status.Conditions, heraldv1.ReadyCondition)).To(BeTrue(), "Ready: %+v", rd.Status.Conditions)
	}, 2*time.Minute, 250*time.Millisecond).Should(Succeed())
	g.Expect(rd.Status.Matched).To(BeEquivalentTo(n))
	g.Expect(rd.Status.Requeued).To(BeEquivalentTo(n))
	g.Expect(rd.Status.CompletionTime).NotTo(BeNil())
	g.Expect(apimeta.FindStatusCondition(rd.Status.Conditions, heraldv1.ReconcilingCondition)).To(BeNil())

	want := map[string]bool{}
	for _, e := range events {
		want[queue.WebhookID(ns, e.Source, e.ID)] = true
	}
	g.Eventually(func(g Gomega) {
		got := map[string]int{}
		for _, d := range rcv.Deliveries() {
			got[d.WebhookID]++
		}
		g.Expect(got).To(HaveLen(n))
		for id := range want {
			g.Expect(got).To(HaveKeyWithValue(id, 1))
		}
	}, 2*time.Minute, 250*time.Millisecond).Should(Succeed(), "every dead letter delivered once, with its webhook-id")
	// The dead-letter queue is empty and the endpoint delivered them: no
	// delivery is left to arrive a second time.
	g.Eventually(func(g Gomega) {
		s := endpointStatus(g)
		g.Expect(s.DeadLettered).To(BeZero())
		g.Expect(s.Pending).To(BeZero())
	}, time.Minute, 250*time.Millisecond).Should(Succeed())
	g.Expect(rcv.Deliveries()).To(HaveLen(n), "a dead letter was delivered twice")
}

// TestPingProducesEvent: annotating an endpoint with a new herald.dev/ping
// value sends one signed herald.ping event naming the endpoint, and the
// outcome is a PingSucceeded Event naming the value.
func TestPingProducesEvent(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := "e2e-ping"
	rcv, _ := receivingNamespace(t, ns, "")
	out, err := herald.Kubectl(ctx, "annotate", "-n", ns, "webhookendpoint/sink", heraldv1.PingAnnotation+"=first")
	g.Expect(err).NotTo(HaveOccurred(), out)

	var ping *corev1.Event
	g.Eventually(func(g Gomega) {
		var list corev1.EventList
		g.Expect(herald.Client.List(ctx, &list, client.InNamespace(ns))).To(Succeed())
		for i := range list.Items {
			if e := &list.Items[i]; e.InvolvedObject.Name == "sink" && strings.HasPrefix(e.Reason, "Ping") {
				ping = e
			}
		}
		g.Expect(ping).NotTo(BeNil())
	}, time.Minute, 250*time.Millisecond).Should(Succeed(), "no ping Event")
	g.Expect(ping.Reason).To(Equal(heraldv1.PingSucceededReason), ping.Message)
	g.Expect(ping.Message).To(ContainSubstring(`"first"`))
	g.Expect(ping.Type).To(Equal(corev1.EventTypeNormal))

	deliveries := rcv.Deliveries()
	g.Expect(deliveries).To(HaveLen(1))
	var body struct {
		Type string `json:"type"`
		Data struct {
			Endpoint struct{ Namespace, Name string } `json:"endpoint"`
		} `json:"data"`
	}
	g.Expect(json.Unmarshal(deliveries[0].Body, &body)).To(Succeed())
	g.Expect(body.Type).To(Equal(heraldv1.PingEventType))
	g.Expect(body.Data.Endpoint.Name).To(Equal("sink"))
	g.Expect(body.Data.Endpoint.Namespace).To(Equal(ns))
}
