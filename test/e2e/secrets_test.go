package e2e

import (
	"context"
	"encoding/base64"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
)

// knownSecrets are secret values a test planted, by description. None may
// appear in a log line, an Event or any object's status.
type knownSecrets struct {
	mu     sync.Mutex
	values map[string]string
}

func (k *knownSecrets) add(what, value string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.values == nil {
		k.values = map[string]string{}
	}
	k.values[what] = value
}

// addSigningSecret registers a whsec_ secret, its base64 body and the raw
// key bytes when they are printable.
func (k *knownSecrets) addSigningSecret(what, secret string) {
	k.add(what, secret)
	body := strings.TrimPrefix(secret, "whsec_")
	k.add(what+" (base64 body)", body)
	if raw, err := base64.StdEncoding.DecodeString(body); err == nil && isPrintable(raw) {
		k.add(what+" (raw key)", string(raw))
	}
}

// addToken registers a bearer token and its signature segment, which is
// what makes it a credential.
func (k *knownSecrets) addToken(what, token string) {
	k.add(what, token)
	if parts := strings.Split(token, "."); len(parts) == 3 {
		k.add(what+" (signature)", parts[2])
	}
}

func isPrintable(b []byte) bool {
	for _, c := range b {
		if c < 0x20 || c > 0x7e {
			return false
		}
	}
	return true
}

// leakScenario sets up, in namespace ns of h, endpoints whose secrets are
// known values — a signing secret from a user Secret, a header token taken
// from a Secret (valueFrom), a generated signing secret, Secrets with
// invalid values that end in error conditions, a receiver that fails —
// publishes with a publisher token, and provokes 401 and 403 answers. It
// returns the planted values and the receiver of the healthy endpoint.
func leakScenario(t *testing.T, h *Herald, ns string) (*knownSecrets, *Receiver) {
	t.Helper()
	g := NewWithT(t)
	ctx := context.Background()
	known := &knownSecrets{}

	signing := "whsec_" + base64.StdEncoding.EncodeToString([]byte("e2e-known-signing-secret-32bytes"))
	const headerToken = "e2e-known-header-token-7c1f9a3b"
	const badHeaderValue = "e2e-known-bad-header-value"
	const badSigningValue = "e2e-known-invalid-signing-key"
	known.addSigningSecret("user signing secret", signing)
	known.add("header token from a Secret", headerToken)
	known.add("header value with a line break", badHeaderValue)
	known.add("invalid signing secret", badSigningValue)

	for name, data := range map[string]map[string]string{
		"orders-signing": {"secret": signing},
		"erp-token":      {"token": "Bearer " + headerToken},
		"bad-token":      {"token": badHeaderValue + "\r\nX-Injected: yes"},
		"bad-signing":    {"secret": badSigningValue},
	} {
		s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, StringData: data}
		g.Expect(h.Client.Create(ctx, s)).To(Succeed())
	}

	rcv, err := StartReceiver("127.0.0.1:0")
	g.Expect(err).NotTo(HaveOccurred())
	t.Cleanup(rcv.Close)
	g.Expect(rcv.SetSecrets(signing)).To(Succeed())
	failing, err := StartReceiver("127.0.0.1:0") // no secret: answers 503 to everything
	g.Expect(err).NotTo(HaveOccurred())
	t.Cleanup(failing.Close)

	out, err := h.ApplyYAML(ctx, ns, fmt.Sprintf(`apiVersion: herald.dev/v1alpha1
kind: WebhookEndpoint
metadata: {name: orders}
spec:
  url: %[1]s
  allowInsecureHTTP: true
  signing: {secretRef: {name: orders-signing}}
  headers:
  - {name: Authorization, valueFrom: {name: erp-token, key: token}}
  - {name: X-Static, value: not-a-secret}
  retry: {initialBackoff: 200ms, maxBackoff: 1s}
---
apiVersion: herald.dev/v1alpha1
kind: WebhookEndpoint
metadata: {name: failing}
spec:
  url: %[2]s
  allowInsecureHTTP: true
  headers:
  - {name: Authorization, valueFrom: {name: erp-token, key: token}}
  retry: {maxAttempts: 2, initialBackoff: 100ms, maxBackoff: 200ms}
---
apiVersion: herald.dev/v1alpha1
kind: WebhookEndpoint
metadata: {name: bad-header}
spec:
  url: %[1]s
  allowInsecureHTTP: true
  headers:
  - {name: Authorization, valueFrom: {name: bad-token, key: token}}
---
apiVersion: herald.dev/v1alpha1
kind: WebhookEndpoint
metadata: {name: bad-signing}
spec:
  url: %[1]s
  allowInsecureHTTP: true
  signing: {secretRef: {name: bad-signing}}
---
apiVersion: herald.dev/v1alpha1
kind: Subscription
metadata: {name: orders-all}
spec: {endpointRef: {name: orders}, types: ["order.*"]}
---
apiVersion: herald.dev/v1alpha1
kind: Subscription
metadata: {name: failing-all}
spec: {endpointRef: {name: failing}, types: ["failure.*"]}
`, rcv.URL, failing.URL))
	g.Expect(err).NotTo(HaveOccurred(), out)
	_, err = h.Kubectl(ctx, "wait", "-n", ns, "--for=condition=Ready", "webhookendpoint/orders", "webhookendpoint/failing",
		"subscription/orders-all", "subscription/failing-all", "--timeout=60s")
	g.Expect(err).NotTo(HaveOccurred())
	// The invalid Secrets end in conditions that name the problem.
	for name, reason := range map[string]string{"bad-header": "InvalidSpec", "bad-signing": "InvalidSigningSecret"} {
		_, err = h.Kubectl(ctx, "wait", "-n", ns, "--for=jsonpath={.status.conditions[?(@.type==\"Ready\")].reason}="+reason,
			"webhookendpoint/"+name, "--timeout=60s")
		g.Expect(err).NotTo(HaveOccurred(), "endpoint %s reports %s", name, reason)
	}
	generated, err := h.SigningSecret(ctx, ns, "failing")
	g.Expect(err).NotTo(HaveOccurred())
	known.addSigningSecret("generated signing secret", generated)

	token, err := h.PublisherToken(ctx, ns, "leak-publisher")
	g.Expect(err).NotTo(HaveOccurred())
	known.addToken("publisher token", token)
	wrongAudience, err := h.Kubectl(ctx, "create", "token", "leak-publisher", "-n", ns, "--audience", "other.example", "--duration=1h")
	g.Expect(err).NotTo(HaveOccurred())
	wrongAudience = strings.TrimSpace(wrongAudience)
	known.addToken("wrong-audience token", wrongAudience)

	var events []Event
	for i := range 4 {
		events = append(events, Event{ID: fmt.Sprintf("leak-%d", i), Source: "/leak", Type: "order.created", Data: map[string]any{"n": i}})
	}
	events = append(events, Event{ID: "leak-failure", Source: "/leak", Type: "failure.test", Data: map[string]any{"n": 0}})
	code, body, err := h.Publish(ctx, ns, token, events)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(code).To(Equal(202), body)
	code, body, err = h.Publish(ctx, ns, wrongAudience, events[:1])
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(code).To(Equal(401), body)
	g.Expect(body).NotTo(ContainSubstring(wrongAudience))
	code, body, err = h.Publish(ctx, "default", token, events[:1])
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(code).To(Equal(403), body)
	g.Expect(body).NotTo(ContainSubstring(token))

	// The secrets are in use: the receiver verified the signatures made
	// with the user's key and got the header token.
	g.Eventually(rcv.Unique, 30*time.Second, 100*time.Millisecond).Should(Equal(4))
	for _, d := range rcv.Deliveries() {
		g.Expect(d.Header.Get("Authorization")).To(Equal("Bearer " + headerToken))
	}
	// The failing endpoint dead-letters its delivery after two attempts,
	// which is logged.
	g.Eventually(func(g Gomega) {
		ep := getWebhookEndpoint(g, h, ns, "failing")
		g.Expect(ep.Status.Delivery).NotTo(BeNil())
		g.Expect(ep.Status.Delivery.DeadLettered).To(BeEquivalentTo(1))
	}, 45*time.Second, 250*time.Millisecond).Should(Succeed())
	return known, rcv
}

// assertNoSecretLeaked scans both processes' logs, every Event and every
// Herald object (status included) for the planted values.
func assertNoSecretLeaked(t *testing.T, h *Herald, known *knownSecrets, mustMention ...string) {
	t.Helper()
	ctx := context.Background()
	events, err := h.listEventsJSON(ctx)
	if err != nil {
		t.Fatal(err)
	}
	objects, err := h.Kubectl(ctx, "get", "webhookendpoints.herald.dev,subscriptions.herald.dev", "--all-namespaces", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	sources := map[string]string{
		"manager log":    h.Manager.Logs(),
		"dispatcher log": h.Dispatcher.Logs(),
		"Events":         events,
		"Herald objects": objects,
	}
	// The scan is not vacuous: each source has content and mentions what
	// the scenario did.
	for name, text := range sources {
		if len(text) < 200 {
			t.Errorf("%s is nearly empty (%d bytes): the scan would prove nothing", name, len(text))
		}
	}
	for _, m := range mustMention {
		if !strings.Contains(events, m) {
			t.Errorf("Events do not mention %q: the scenario did not run as intended", m)
		}
	}

	known.mu.Lock()
	defer known.mu.Unlock()
	whats := make([]string, 0, len(known.values))
	for what := range known.values {
		whats = append(whats, what)
	}
	slices.Sort(whats)
	for _, what := range whats {
		value := known.values[what]
		if len(value) < 8 {
			t.Fatalf("known value %q is too short to scan for", what)
		}
		for name, text := range sources {
			if i := strings.Index(text, value); i >= 0 {
				t.Errorf("%s appears in the %s: …%s…", what, name, excerpt(text, i, len(value)))
			}
		}
	}
	t.Logf("scanned %d known secret values against %d bytes of logs, Events and objects", len(whats),
		len(sources["manager log"])+len(sources["dispatcher log"])+len(events)+len(objects))
}

// excerpt shows where a leak is, with the value itself masked.
func excerpt(text string, at, n int) string {
	from, to := max(0, at-80), min(len(text), at+n+40)
	return strings.ReplaceAll(text[from:at]+"<SECRET>"+text[at+n:to], "\n", " ")
}

func getWebhookEndpoint(g Gomega, h *Herald, ns, name string) *heraldv1.WebhookEndpoint {
	ep := &heraldv1.WebhookEndpoint{}
	g.Expect(h.Client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, ep)).To(Succeed())
	return ep
}

// TestSecretsNeverLeak runs the known-secret scenario on the shared Herald
// and checks the values against everything Herald writes where users and
// log pipelines can read it. TestFaults repeats the scan on its own Herald,
// at debug log level and after every fault scenario.
func TestSecretsNeverLeak(t *testing.T) {
	ns := "e2e-secrets"
	createNamespace(t, ns)
	known, _ := leakScenario(t, herald, ns)
	assertNoSecretLeaked(t, herald, known, "InvalidSigningSecret", "InvalidSpec")
}
