package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httputil"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	deliveryv1 "github.com/herald-dev/herald/api/delivery/v1alpha1"
	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/dispatcher/signature"
	"github.com/herald-dev/herald/internal/testenv"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testenv.Stop()
	os.Exit(code)
}

// kubectlHerald runs the plugin with args against the envtest API server.
func kubectlHerald(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	cmd := newRootCommand(genericiooptions.IOStreams{In: strings.NewReader(""), Out: &out, ErrOut: &errOut}, testenv.Config())
	cmd.SetArgs(args)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := cmd.ExecuteContext(ctx)
	return out.String() + errOut.String(), err
}

func setup(t *testing.T) (context.Context, client.Client, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	c := testenv.Client(t)
	return ctx, c, testenv.Namespace(t, c, "plugin")
}

func createEndpoint(t *testing.T, ctx context.Context, c client.Client, ns, name string) *heraldv1.WebhookEndpoint {
	t.Helper()
	ep := &heraldv1.WebhookEndpoint{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       heraldv1.WebhookEndpointSpec{URL: "https://receiver.example/hooks"},
	}
	if err := c.Create(ctx, ep); err != nil {
		t.Fatal(err)
	}
	return ep
}

// row returns the output line whose first column is name.
func row(out, name string) []string {
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 0 && f[0] == name {
			return f
		}
	}
	return nil
}

// in runs fn in the background (the dispatcher or manager side of a
// command that waits), failing the test on error.
func in(t *testing.T, fn func() error) {
	done := make(chan error, 1)
	go func() { done <- fn() }()
	t.Cleanup(func() {
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
}

// until polls cond every 50ms until it holds or ctx ends.
func until(ctx context.Context, cond func() bool) error {
	for !cond() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}

func TestStatus(t *testing.T) {
	ctx, c, ns := setup(t)
	ep := createEndpoint(t, ctx, c, ns, "orders")
	now := metav1.Now()
	ep.Status.Conditions = []metav1.Condition{
		{Type: heraldv1.ReadyCondition, Status: metav1.ConditionTrue, Reason: heraldv1.ReconciledReason, LastTransitionTime: now},
		{Type: heraldv1.DeliveryHealthyCondition, Status: metav1.ConditionFalse, Reason: heraldv1.ConsecutiveFailuresReason, LastTransitionTime: now},
	}
	ep.Status.Delivery = &heraldv1.DeliveryStatus{Pending: 7, DeadLettered: 3, LastFailureReason: "HTTP 503", LastFailureTime: &now}
	if err := c.Status().Update(ctx, ep); err != nil {
		t.Fatal(err)
	}
	out, err := kubectlHerald(t, "status", "-n", ns)
	if err != nil {
		t.Fatal(err, out)
	}
	want := []string{"orders", "True", "False", "ConsecutiveFailures", "7", "3", "<never>", "HTTP"}
	if got := row(out, "orders"); len(got) < len(want) || !equal(got[:len(want)], want) {
		t.Errorf("status row = %v; want %v…\n%s", got, want, out)
	}
	if !strings.HasPrefix(out, "NAME ") {
		t.Errorf("status output starts %q; want a kubectl-style header", strings.SplitN(out, "\n", 2)[0])
	}
	out, err = kubectlHerald(t, "status", "-A")
	if err != nil || row(out, ns) == nil {
		t.Errorf("status -A: %v, no row for namespace %s:\n%s", err, ns, out)
	}
}

func equal(a, b []string) bool { return strings.Join(a, " ") == strings.Join(b, " ") }

func TestDeliveries(t *testing.T) {
	ctx, _, ns := setup(t)
	c, err := client.New(testenv.Config(), client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := envtest.InstallCRDs(testenv.Config(), envtest.CRDInstallOptions{Paths: []string{filepath.Join("testdata", "deliveries-crd.yaml")}}); err != nil {
		t.Fatal(err)
	}
	for _, d := range []struct {
		name, endpoint, typ string
		phase               deliveryv1.DeliveryPhase
		code                int32
	}{
		{"msg-a.orders", "orders", "order.created", deliveryv1.DeliveryDeadLettered, 503},
		{"msg-b.orders", "orders", "invoice.sent", deliveryv1.DeliveryDeadLettered, 500},
		{"msg-c.orders", "orders", "order.paid", deliveryv1.DeliverySucceeded, 200},
		{"msg-a.billing", "billing", "order.created", deliveryv1.DeliveryDeadLettered, 503},
	} {
		// (The dispatcher names deliveries msg_….<endpoint>; the stand-in
		// CRD only takes DNS names.)
		obj := &deliveryv1.Delivery{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: d.name, Labels: map[string]string{deliveryv1.LabelEndpoint: d.endpoint}},
			Spec:       deliveryv1.DeliverySpec{EndpointRef: deliveryv1.EndpointReference{Name: d.endpoint}, Event: deliveryv1.EventReference{ID: "e", Source: "/s", Type: d.typ}},
			Status: deliveryv1.DeliveryStatus{Phase: d.phase, AttemptCount: 5,
				Attempts: []deliveryv1.DeliveryAttempt{{Time: metav1.Now(), StatusCode: d.code}}},
		}
		if err := c.Create(ctx, obj); err != nil {
			t.Fatal(err)
		}
	}
	out, err := kubectlHerald(t, "deliveries", "-n", ns, "--endpoint", "orders", "--phase", "DeadLettered", "--type", "order.*")
	if err != nil {
		t.Fatal(err, out)
	}
	want := []string{"msg-a.orders", "orders", "order.created", "DeadLettered", "5", "HTTP", "503"}
	if got := row(out, "msg-a.orders"); !equal(got[:min(len(got), len(want))], want) {
		t.Errorf("row = %v; want %v\n%s", got, want, out)
	}
	for _, other := range []string{"msg-b.orders", "msg-c.orders", "msg-a.billing"} {
		if row(out, other) != nil {
			t.Errorf("%s listed despite the filters:\n%s", other, out)
		}
	}
	if _, err := kubectlHerald(t, "deliveries", "-n", ns, "--phase", "Lost"); err == nil || !strings.Contains(err.Error(), "DeadLettered") {
		t.Errorf("--phase Lost: %v; want an error listing the phases", err)
	}
}

func TestRedeliver(t *testing.T) {
	ctx, c, ns := setup(t)
	createEndpoint(t, ctx, c, ns, "orders")
	// The dispatcher's side: complete the Redelivery the plugin creates.
	in(t, func() error {
		var list heraldv1.RedeliveryList
		if err := until(ctx, func() bool { return c.List(ctx, &list, client.InNamespace(ns)) == nil && len(list.Items) == 1 }); err != nil {
			return err
		}
		rd := &list.Items[0]
		now := metav1.Now()
		rd.Status = heraldv1.RedeliveryStatus{Matched: 2, Requeued: 2, StartTime: &now, CompletionTime: &now, ObservedGeneration: 1,
			Conditions: []metav1.Condition{{Type: heraldv1.ReadyCondition, Status: metav1.ConditionTrue, Reason: heraldv1.CompletedReason,
				Message: "Queued 2 of 2 matching deliveries again", LastTransitionTime: now}}}
		return c.Status().Update(ctx, rd)
	})
	out, err := kubectlHerald(t, "redeliver", "orders", "-n", ns, "--type", "order.*", "--since", "2h")
	if err != nil {
		t.Fatal(err, out)
	}
	if !strings.Contains(out, "matched 2, requeued 2") || !strings.Contains(out, "Queued 2 of 2") {
		t.Errorf("redeliver output:\n%s\nwant the progress and the result", out)
	}
	var list heraldv1.RedeliveryList
	if err := c.List(ctx, &list, client.InNamespace(ns)); err != nil || len(list.Items) != 1 {
		t.Fatalf("Redeliveries: %v %d", err, len(list.Items))
	}
	spec := list.Items[0].Spec
	if spec.EndpointRef.Name != "orders" || !equal(spec.Types, []string{"order.*"}) || spec.Since == nil || time.Since(spec.Since.Time) < 2*time.Hour-time.Minute {
		t.Errorf("Redelivery spec = %+v; want endpoint orders, types order.*, since 2h ago", spec)
	}

	if out, err := kubectlHerald(t, "redeliver", "missing", "-n", ns); err == nil || !strings.Contains(err.Error(), "kubectl herald status") {
		t.Errorf("redeliver of a missing endpoint: %v\n%s; want an error saying what to do", err, out)
	}
}

// answerPing is the dispatcher's side of a ping: an Event answering the
// annotation's value.
func answerPing(t *testing.T, ctx context.Context, c client.Client, ep *heraldv1.WebhookEndpoint, reason, result string) {
	in(t, func() error {
		var value string
		err := until(ctx, func() bool {
			cur := &heraldv1.WebhookEndpoint{}
			if c.Get(ctx, client.ObjectKeyFromObject(ep), cur) != nil {
				return false
			}
			value = cur.Annotations[heraldv1.PingAnnotation]
			return value != ""
		})
		if err != nil {
			return err
		}
		now := metav1.Now()
		return c.Create(ctx, &corev1.Event{
			ObjectMeta:     metav1.ObjectMeta{Namespace: ep.Namespace, GenerateName: ep.Name + "."},
			InvolvedObject: corev1.ObjectReference{Kind: "WebhookEndpoint", APIVersion: heraldv1.GroupVersion.String(), Namespace: ep.Namespace, Name: ep.Name, UID: ep.UID},
			Reason:         reason, Message: "Ping " + strconv.Quote(value) + " " + result, Type: corev1.EventTypeNormal,
			FirstTimestamp: now, LastTimestamp: now, Count: 1,
		})
	})
}

func TestPing(t *testing.T) {
	ctx, c, ns := setup(t)
	ok := createEndpoint(t, ctx, c, ns, "orders")
	answerPing(t, ctx, c, ok, heraldv1.PingSucceededReason, "answered HTTP 204")
	out, err := kubectlHerald(t, "ping", "orders", "-n", ns)
	if err != nil || !strings.Contains(out, "PingSucceeded") || !strings.Contains(out, "HTTP 204") {
		t.Errorf("ping: %v\n%s; want PingSucceeded with the answer", err, out)
	}
	failing := createEndpoint(t, ctx, c, ns, "legacy")
	answerPing(t, ctx, c, failing, heraldv1.PingFailedReason, "failed: HTTP 500")
	out, err = kubectlHerald(t, "ping", "legacy", "-n", ns)
	if err == nil || !strings.Contains(out, "HTTP 500") || !strings.Contains(err.Error(), "kubectl herald deliveries") {
		t.Errorf("failed ping: %v\n%s; want an error pointing at the delivery log", err, out)
	}
}

func TestRotate(t *testing.T) {
	ctx, c, ns := setup(t)
	ep := createEndpoint(t, ctx, c, ns, "orders")
	// The manager's side: record the rotation it handled.
	in(t, func() error {
		cur := &heraldv1.WebhookEndpoint{}
		err := until(ctx, func() bool {
			return c.Get(ctx, client.ObjectKeyFromObject(ep), cur) == nil && cur.Annotations[heraldv1.RotateSigningKeyAnnotation] != ""
		})
		if err != nil {
			return err
		}
		cur.Status.Signing = &heraldv1.SigningStatus{LastHandledRotation: cur.Annotations[heraldv1.RotateSigningKeyAnnotation]}
		cur.Status.SigningSecretRef = &heraldv1.LocalObjectReference{Name: "orders-herald"}
		return c.Status().Update(ctx, cur)
	})
	out, err := kubectlHerald(t, "rotate", "orders", "-n", ns)
	if err != nil || !strings.Contains(out, "rotated") || !strings.Contains(out, "orders-herald") {
		t.Errorf("rotate: %v\n%s", err, out)
	}
}

func TestVerify(t *testing.T) {
	ctx, c, ns := setup(t)
	const oldKey, newKey = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
	ep := createEndpoint(t, ctx, c, ns, "orders")
	keys, _ := json.Marshal([]heraldv1.SigningKey{{Secret: newKey, Since: time.Now()}, {Secret: oldKey, Since: time.Now().Add(-time.Hour)}})
	if err := c.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "orders-herald"},
		Data: map[string][]byte{heraldv1.SigningKeysKey: keys, heraldv1.SigningSecretKey: []byte(newKey)}}); err != nil {
		t.Fatal(err)
	}
	ep.Status.SigningSecretRef = &heraldv1.LocalObjectReference{Name: "orders-herald"}
	if err := c.Status().Update(ctx, ep); err != nil {
		t.Fatal(err)
	}

	// A request signed a day ago with the old key, saved raw.
	signer, err := signature.NewSigner(oldKey)
	if err != nil {
		t.Fatal(err)
	}
	body := []byte(`{"type":"order.created","timestamp":"2026-01-02T03:04:05Z","data":{"id":1}}`)
	req, _ := http.NewRequest(http.MethodPost, "https://receiver.example/hooks", bytes.NewReader(body))
	signer.SetHeaders(req.Header, "msg_abc", time.Now().Add(-24*time.Hour), body)
	raw, err := httputil.DumpRequest(req, true)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	good := filepath.Join(dir, "good.http")
	bad := filepath.Join(dir, "bad.http")
	if err := os.WriteFile(good, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bad, bytes.Replace(raw, []byte(`"id":1`), []byte(`"id":2`), 1), 0o600); err != nil {
		t.Fatal(err)
	}

	out, err := kubectlHerald(t, "verify", "orders", "-n", ns, "--request", good)
	if err != nil || !strings.Contains(out, "Signature valid") || !strings.Contains(out, "msg_abc") {
		t.Errorf("verify of a valid request: %v\n%s", err, out)
	}
	out, err = kubectlHerald(t, "verify", "orders", "-n", ns, "--request", bad)
	if err == nil || !strings.Contains(err.Error(), "NOT valid") || !strings.Contains(err.Error(), "byte for byte") {
		t.Errorf("verify of a tampered request: %v\n%s; want NOT valid with advice", err, out)
	}
	// The same with --body and -H.
	bodyFile := filepath.Join(dir, "body.json")
	if err := os.WriteFile(bodyFile, body, 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"verify", "orders", "-n", ns, "--body", bodyFile}
	for _, h := range []string{"webhook-id", "webhook-timestamp", "webhook-signature"} {
		args = append(args, "-H", h+": "+req.Header.Get(h))
	}
	if out, err := kubectlHerald(t, args...); err != nil || !strings.Contains(out, "Signature valid") {
		t.Errorf("verify --body -H: %v\n%s", err, out)
	}
}
