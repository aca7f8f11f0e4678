package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	deliveryv1 "github.com/herald-dev/herald/api/delivery/v1alpha1"
	"github.com/herald-dev/herald/dispatcher/queue"
)

// TestDeliveryLogThroughTheAggregator asks the kube-apiserver, as kubectl
// does, for the deliveries of one event to three endpoints: one that
// succeeds, one whose receiver keeps answering 503 (Retrying, with the
// status code and the start of the answer), one that runs out of attempts
// (DeadLettered). The requests go through the aggregator to the
// dispatcher, which authorizes them with the kube-apiserver: RBAC on
// deliveries.delivery.herald.dev decides who sees what.
func TestDeliveryLogThroughTheAggregator(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns, other := "e2e-deliveries", "e2e-deliveries-other"
	createNamespace(t, other)
	rcv, token := receivingNamespace(t, ns, "")
	overloaded := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte(`{"error":"overloaded"}`))
	}))
	t.Cleanup(overloaded.Close)
	out, err := herald.ApplyYAML(ctx, ns, fmt.Sprintf(`apiVersion: herald.dev/v1alpha1
kind: WebhookEndpoint
metadata: {name: retrying}
spec: {url: %[1]q, allowInsecureHTTP: true, retry: {maxAttempts: 20, initialBackoff: 10m, maxBackoff: 10m}}
---
apiVersion: herald.dev/v1alpha1
kind: Subscription
metadata: {name: retrying-all}
spec: {endpointRef: {name: retrying}, types: ["*"]}
---
apiVersion: herald.dev/v1alpha1
kind: WebhookEndpoint
metadata: {name: dead}
spec: {url: %[1]q, allowInsecureHTTP: true, retry: {maxAttempts: 2, initialBackoff: 100ms, maxBackoff: 200ms}}
---
apiVersion: herald.dev/v1alpha1
kind: Subscription
metadata: {name: dead-all}
spec: {endpointRef: {name: dead}, types: ["*"]}
`, overloaded.URL+"/webhooks"))
	g.Expect(err).NotTo(HaveOccurred(), out)
	out, err = herald.Kubectl(ctx, "wait", "-n", ns, "--for=condition=Ready", "webhookendpoint/retrying", "webhookendpoint/dead",
		"subscription/retrying-all", "subscription/dead-all", "--timeout=60s")
	g.Expect(err).NotTo(HaveOccurred(), out)

	code, body, err := herald.Publish(ctx, ns, token, []Event{{ID: "order-1", Source: "/shop", Type: "order.created", Data: map[string]any{"n": 1}}})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(code).To(Equal(http.StatusAccepted), body)
	id := queue.WebhookID(ns, "/shop", "order-1")
	g.Eventually(rcv.Unique, 30*time.Second, 100*time.Millisecond).Should(Equal(1))

	// Each endpoint's delivery reaches its phase; read as kubectl -o json.
	get := func(g Gomega, name string) *deliveryv1.Delivery {
		out, err := herald.Kubectl(ctx, "get", "delivery", name, "-n", ns, "-o", "json")
		g.Expect(err).NotTo(HaveOccurred(), out)
		d := &deliveryv1.Delivery{}
		g.Expect(json.Unmarshal([]byte(out), d)).To(Succeed())
		return d
	}
	g.Eventually(func(g Gomega) {
		d := get(g, id+".sink")
		g.Expect(d.Status.Phase).To(Equal(deliveryv1.DeliverySucceeded))
		g.Expect(d.Status.Attempts).To(HaveLen(1))
		g.Expect(d.Status.Attempts[0].StatusCode).To(BeEquivalentTo(http.StatusNoContent))
		g.Expect(d.Spec.Event.ID).To(Equal("order-1"))
		g.Expect(d.Spec.Event.Type).To(Equal("order.created"))
		g.Expect(d.Spec.EndpointRef.Name).To(Equal("sink"))
		g.Expect(d.Labels).To(HaveKeyWithValue(deliveryv1.LabelEndpoint, "sink"))
	}, 30*time.Second, 250*time.Millisecond).Should(Succeed())
	g.Eventually(func(g Gomega) {
		d := get(g, id+".retrying")
		g.Expect(d.Status.Phase).To(Equal(deliveryv1.DeliveryRetrying))
		g.Expect(d.Status.AttemptCount).To(BeEquivalentTo(1))
		g.Expect(d.Status.NextAttemptTime).NotTo(BeNil())
		g.Expect(d.Status.Attempts).To(HaveLen(1))
		g.Expect(d.Status.Attempts[0].StatusCode).To(BeEquivalentTo(http.StatusServiceUnavailable))
		g.Expect(d.Status.Attempts[0].Error).To(Equal("HTTP 503"))
		g.Expect(d.Status.Attempts[0].Response).To(Equal(`{"error":"overloaded"}`))
	}, 30*time.Second, 250*time.Millisecond).Should(Succeed())
	g.Eventually(func(g Gomega) {
		d := get(g, id+".dead")
		g.Expect(d.Status.Phase).To(Equal(deliveryv1.DeliveryDeadLettered))
		g.Expect(d.Status.AttemptCount).To(BeEquivalentTo(2))
		g.Expect(d.Status.DeadLetterReason).To(ContainSubstring("HTTP 503"))
	}, 30*time.Second, 250*time.Millisecond).Should(Succeed())

	// The table kubectl prints, and the selectors the README shows.
	out, err = herald.Kubectl(ctx, "get", "deliveries", "-n", ns)
	g.Expect(err).NotTo(HaveOccurred(), out)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	g.Expect(strings.Fields(lines[0])).To(Equal([]string{"NAME", "ENDPOINT", "TYPE", "PHASE", "ATTEMPTS", "LAST", "STATUS", "AGE"}))
	g.Expect(lines).To(HaveLen(4), out)
	g.Expect(out).To(MatchRegexp(`(?m)^` + id + `\.retrying\s+retrying\s+order\.created\s+Retrying\s+1\s+503\s+`))
	g.Expect(out).To(MatchRegexp(`(?m)^` + id + `\.sink\s+sink\s+order\.created\s+Succeeded\s+1\s+204\s+`))
	out, err = herald.Kubectl(ctx, "get", "deliveries", "-n", ns, "-l", deliveryv1.LabelEndpoint+"=dead",
		"--field-selector", "status.phase=DeadLettered", "-o", "name")
	g.Expect(err).NotTo(HaveOccurred(), out)
	g.Expect(strings.TrimSpace(out)).To(Equal("delivery.delivery.herald.dev/" + id + ".dead"))
	out, err = herald.Kubectl(ctx, "get", "deliveries", "-n", ns, "--field-selector", "status.phase=Pending", "-o", "name")
	g.Expect(err).NotTo(HaveOccurred(), out)
	g.Expect(strings.TrimSpace(out)).To(BeEmpty())
	out, err = herald.Kubectl(ctx, "describe", "delivery", id+".dead", "-n", ns)
	g.Expect(err).NotTo(HaveOccurred(), out)
	g.Expect(out).To(ContainSubstring("DeadLettered"))
	g.Expect(out).To(ContainSubstring("overloaded"))

	// RBAC: a ServiceAccount allowed to list deliveries in ns sees them;
	// in another namespace, or without the grant, it is refused.
	out, err = herald.ApplyYAML(ctx, ns, `apiVersion: v1
kind: ServiceAccount
metadata: {name: delivery-viewer}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: nobody}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: delivery-viewer}
rules:
- apiGroups: [delivery.herald.dev]
  resources: [deliveries]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: delivery-viewer}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: delivery-viewer}
subjects:
- {kind: ServiceAccount, name: delivery-viewer, namespace: `+ns+`}
`)
	g.Expect(err).NotTo(HaveOccurred(), out)
	viewer, nobody := "system:serviceaccount:"+ns+":delivery-viewer", "system:serviceaccount:"+ns+":nobody"
	g.Eventually(func() (string, error) {
		return herald.Kubectl(ctx, "get", "deliveries", "-n", ns, "--as", viewer, "-o", "name")
	}, 15*time.Second, 250*time.Millisecond).Should(ContainSubstring(id + ".sink"))
	out, err = herald.Kubectl(ctx, "get", "deliveries", "-n", other, "--as", viewer)
	g.Expect(err).To(HaveOccurred())
	g.Expect(out).To(ContainSubstring("forbidden"))
	out, err = herald.Kubectl(ctx, "get", "deliveries", "-n", ns, "--as", nobody)
	g.Expect(err).To(HaveOccurred())
	g.Expect(out).To(ContainSubstring("forbidden"))
	out, err = herald.Kubectl(ctx, "get", "delivery", id+".sink", "-n", ns, "--as", nobody)
	g.Expect(err).To(HaveOccurred())
	g.Expect(out).To(ContainSubstring("forbidden"))
}
