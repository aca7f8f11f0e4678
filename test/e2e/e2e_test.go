package e2e

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/dispatcher/queue"
)

// herald is one local Herald shared by the tests of this package.
var herald *Herald

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		fmt.Fprintln(os.Stderr, "KUBEBUILDER_ASSETS is not set: run `make test`, which builds etcd, kube-apiserver and kubectl into bin/k8s")
		return 1
	}
	dir, err := os.MkdirTemp("", "herald-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	// Start builds both binaries first: on a fresh machine, with the other
	// packages' tests compiling and running beside it, that alone can take
	// minutes on two cores.
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	herald, err = Start(ctx, Options{Dir: dir, StatusInterval: 500 * time.Millisecond})
	if err != nil {
		fmt.Fprintf(os.Stderr, "start Herald: %v\n", err)
		return 1
	}
	code := m.Run()
	if code != 0 {
		// Keep the logs of a failed run.
		fmt.Fprintf(os.Stderr, "logs kept in %s\n", dir)
		for _, p := range []*Process{herald.Manager, herald.Dispatcher} {
			fmt.Fprintf(os.Stderr, "---- %s (last lines)\n%s\n", p.Name, tail(p.Logs(), 60))
		}
	}
	herald.Stop()
	if code == 0 {
		_ = os.RemoveAll(dir)
	}
	return code
}

func createNamespace(t *testing.T, name string) {
	t.Helper()
	if _, err := herald.Kubectl(context.Background(), "create", "namespace", name); err != nil {
		t.Fatal(err)
	}
}

// setUpEndpoint applies an endpoint pointing at rcv and a catch-all
// Subscription, waits for both to be Ready and gives rcv the secret.
func setUpEndpoint(t *testing.T, ns, name string, rcv *Receiver, extraSpec string) {
	t.Helper()
	ctx := context.Background()
	manifests := fmt.Sprintf(`apiVersion: herald.dev/v1alpha1
kind: WebhookEndpoint
metadata:
  name: %[1]s
spec:
  url: %[2]s
  allowInsecureHTTP: true
  retry: {initialBackoff: 200ms, maxBackoff: 2s}
%[3]s
---
apiVersion: herald.dev/v1alpha1
kind: Subscription
metadata:
  name: %[1]s-all
spec:
  endpointRef: {name: %[1]s}
  types: ["*"]
`, name, rcv.URL, extraSpec)
	if out, err := herald.ApplyYAML(ctx, ns, manifests); err != nil {
		t.Fatalf("apply: %v\n%s", err, out)
	}
	if out, err := herald.Kubectl(ctx, "wait", "-n", ns, "--for=condition=Ready", "webhookendpoint/"+name, "subscription/"+name+"-all", "--timeout=60s"); err != nil {
		t.Fatalf("wait Ready: %v\n%s", err, out)
	}
	secret, err := herald.SigningSecret(ctx, ns, name)
	if err != nil {
		t.Fatal(err)
	}
	if err := rcv.SetSecrets(secret); err != nil {
		t.Fatal(err)
	}
}

// TestDeliveryStatusAndPrinterColumns follows a user: apply, publish with a
// ServiceAccount token, see signed deliveries and `kubectl get` health.
func TestDeliveryStatusAndPrinterColumns(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := "e2e-status"
	createNamespace(t, ns)
	rcv, err := StartReceiver("127.0.0.1:0")
	g.Expect(err).NotTo(HaveOccurred())
	defer rcv.Close()
	setUpEndpoint(t, ns, "healthy", rcv, "")
	// A receiver that is not there: connection refused on a loopback port.
	dead, err := StartReceiver("127.0.0.1:0")
	g.Expect(err).NotTo(HaveOccurred())
	deadURL := dead.URL
	dead.Close()
	out, err := herald.ApplyYAML(ctx, ns, fmt.Sprintf(`apiVersion: herald.dev/v1alpha1
kind: WebhookEndpoint
metadata: {name: broken}
spec: {url: %q, allowInsecureHTTP: true, retry: {maxAttempts: 2, initialBackoff: 100ms, maxBackoff: 200ms}}
---
apiVersion: herald.dev/v1alpha1
kind: Subscription
metadata: {name: broken-orders}
spec: {endpointRef: {name: broken}, types: ["order.*"]}
`, deadURL))
	g.Expect(err).NotTo(HaveOccurred(), out)
	_, err = herald.Kubectl(ctx, "wait", "-n", ns, "--for=condition=Ready", "webhookendpoint/broken", "subscription/broken-orders", "--timeout=60s")
	g.Expect(err).NotTo(HaveOccurred())

	token, err := herald.PublisherToken(ctx, ns, "publisher")
	g.Expect(err).NotTo(HaveOccurred())
	var events []Event
	for i := range 5 {
		events = append(events, Event{ID: fmt.Sprintf("e-%d", i), Source: "/e2e", Type: "order.created", Data: map[string]any{"n": i}})
	}
	code, body, err := herald.Publish(ctx, ns, token, events)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(code).To(Equal(202), body)

	// Every delivery is signature-verified by the receiver and carries the
	// webhook-id derived from the event.
	g.Eventually(rcv.Unique, 30*time.Second, 100*time.Millisecond).Should(Equal(5))
	_, _, rejected := rcv.Stats()
	g.Expect(rejected).To(BeZero())
	var ids []string
	for _, d := range rcv.Deliveries() {
		ids = append(ids, d.WebhookID)
		g.Expect(string(d.Body)).To(ContainSubstring(`"type":"order.created"`))
	}
	for i := range 5 {
		g.Expect(ids).To(ContainElement(queue.WebhookID(ns, "/e2e", fmt.Sprintf("e-%d", i))))
	}

	// Status, through the API.
	g.Eventually(func(g Gomega) {
		ep := &heraldv1.WebhookEndpoint{}
		g.Expect(herald.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "healthy"}, ep)).To(Succeed())
		g.Expect(ep.Status.Delivery).NotTo(BeNil())
		g.Expect(ep.Status.Delivery.Delivered).To(BeEquivalentTo(5))
		g.Expect(ep.Status.Delivery.LastSuccessTime).NotTo(BeNil())
		c := meta.FindStatusCondition(ep.Status.Conditions, heraldv1.DeliveryHealthyCondition)
		g.Expect(c).NotTo(BeNil())
		g.Expect(c.Status).To(Equal(metav1.ConditionTrue))
		g.Expect(c.Reason).To(Equal(heraldv1.DeliveringReason))
		g.Expect(meta.IsStatusConditionTrue(ep.Status.Conditions, heraldv1.ReadyCondition)).To(BeTrue(), "the manager's Ready survives the dispatcher's writes")

		broken := &heraldv1.WebhookEndpoint{}
		g.Expect(herald.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "broken"}, broken)).To(Succeed())
		g.Expect(broken.Status.Delivery).NotTo(BeNil())
		g.Expect(broken.Status.Delivery.LastFailureReason).To(Equal("ConnectionRefused"))
		// The circuit breaker paces a dead endpoint to one probe per
		// cool-down, so its deliveries are dead-lettered one by one.
		g.Expect(broken.Status.Delivery.DeadLettered).To(BeNumerically(">=", 1))
		g.Expect(broken.Status.Delivery.DeadLettered + broken.Status.Delivery.Pending).To(BeEquivalentTo(5))
		bc := meta.FindStatusCondition(broken.Status.Conditions, heraldv1.DeliveryHealthyCondition)
		g.Expect(bc).NotTo(BeNil())
		g.Expect(bc.Status).To(Equal(metav1.ConditionFalse))
		g.Expect(bc.Reason).To(BeElementOf(heraldv1.ConsecutiveFailuresReason, heraldv1.CircuitOpenReason))
	}, 45*time.Second, 250*time.Millisecond).Should(Succeed())

	// Printer columns, through kubectl.
	out, err = herald.Kubectl(ctx, "get", "whep", "-n", ns)
	g.Expect(err).NotTo(HaveOccurred())
	lines := strings.Split(strings.TrimSpace(out), "\n")
	g.Expect(strings.Fields(lines[0])).To(Equal([]string{"NAME", "URL", "READY", "HEALTHY", "PENDING", "LAST", "SUCCESS", "AGE"}))
	g.Expect(out).To(MatchRegexp(`(?m)^healthy\s+http://127\.0\.0\.1:\d+/webhooks\s+True\s+True\s+0\s+\d+s`))
	g.Expect(out).To(MatchRegexp(`(?m)^broken\s+http://127\.0\.0\.1:\d+/webhooks\s+True\s+False\s+`))
	out, err = herald.Kubectl(ctx, "get", "webhooks", "-n", ns)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(out).To(ContainSubstring("subscription.herald.dev/broken-orders"))
}

// TestSIGKILLLosesNothingAcknowledged kills the dispatcher with SIGKILL in
// the middle of a stream of publishes, restarts it on the same store, and
// checks that every event answered 202 reached the receiver with the
// webhook-id derived from it (duplicates allowed).
func TestSIGKILLLosesNothingAcknowledged(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := "e2e-kill"
	createNamespace(t, ns)
	rcv, err := StartReceiver("127.0.0.1:0")
	g.Expect(err).NotTo(HaveOccurred())
	defer rcv.Close()
	setUpEndpoint(t, ns, "sink", rcv, "")
	token, err := herald.PublisherToken(ctx, ns, "publisher")
	g.Expect(err).NotTo(HaveOccurred())

	var (
		mu    sync.Mutex
		acked []string
	)
	publishCtx, stopPublishing := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; publishCtx.Err() == nil && i < 100_000; i++ {
			id := fmt.Sprintf("k-%d", i)
			code, _, err := herald.Publish(publishCtx, ns, token, []Event{{ID: id, Source: "/kill", Type: "tick", Data: map[string]any{"i": i}}})
			if err == nil && code == 202 {
				mu.Lock()
				acked = append(acked, id)
				mu.Unlock()
				continue
			}
			time.Sleep(20 * time.Millisecond) // dispatcher down: the publisher retries later with new events
		}
	}()
	ackedCount := func() int { mu.Lock(); defer mu.Unlock(); return len(acked) }

	g.Eventually(ackedCount, 30*time.Second, 50*time.Millisecond).Should(BeNumerically(">=", 200))
	herald.Dispatcher.Kill()
	before := ackedCount()
	g.Expect(herald.StartDispatcher(ctx)).To(Succeed())
	g.Eventually(ackedCount, 30*time.Second, 50*time.Millisecond).Should(BeNumerically(">=", before+200))
	stopPublishing()
	wg.Wait()

	mu.Lock()
	want := append([]string(nil), acked...)
	mu.Unlock()
	g.Eventually(func(g Gomega) {
		got := map[string]bool{}
		for _, d := range rcv.Deliveries() {
			got[d.WebhookID] = true
		}
		var missing []string
		for _, id := range want {
			if !got[queue.WebhookID(ns, "/kill", id)] {
				missing = append(missing, id)
			}
		}
		g.Expect(missing).To(BeEmpty(), "%d of %d acknowledged events not delivered", len(missing), len(want))
	}, 60*time.Second, 250*time.Millisecond).Should(Succeed())
	unique, total, rejected := rcv.Stats()
	t.Logf("acknowledged %d events (%d before SIGKILL); receiver saw %d distinct, %d requests (%d duplicates), %d rejected",
		len(want), before, unique, total, total-unique, rejected)
	g.Expect(rejected).To(BeZero())
}
