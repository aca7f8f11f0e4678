package controllers

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
)

func subscription(ns, name, endpoint string, mutate ...func(*heraldv1.Subscription)) *heraldv1.Subscription {
	s := &heraldv1.Subscription{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: heraldv1.SubscriptionSpec{
			EndpointRef: heraldv1.LocalObjectReference{Name: endpoint},
			Types:       []string{"order.*"},
		},
	}
	for _, m := range mutate {
		m(s)
	}
	return s
}

func waitSubscriptionReady(t *testing.T, key client.ObjectKey, status metav1.ConditionStatus, reason string) *heraldv1.Subscription {
	t.Helper()
	g := NewWithT(t)
	var sub *heraldv1.Subscription
	g.Eventually(func(g Gomega) {
		sub = &heraldv1.Subscription{}
		g.Expect(k8sClient.Get(context.Background(), key, sub)).To(Succeed())
		c := readyFor(sub.Status.Conditions, sub.Generation)
		g.Expect(c).NotTo(BeNil())
		g.Expect(c.Status).To(Equal(status), "message: %s", c.Message)
		g.Expect(c.Reason).To(Equal(reason), "message: %s", c.Message)
	}, waitTimeout, pollEvery).Should(Succeed())
	return sub
}

func TestSubscriptionFollowsEndpoint(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := newNamespace(t)

	sub := subscription(ns, "orders-to-erp", "erp")
	g.Expect(k8sClient.Create(ctx, sub)).To(Succeed())
	got := waitSubscriptionReady(t, client.ObjectKeyFromObject(sub), metav1.ConditionFalse, heraldv1.EndpointNotFoundReason)
	g.Expect(readyFor(got.Status.Conditions, got.Generation).Message).To(ContainSubstring(`WebhookEndpoint "erp" not found`))

	// An endpoint that is not Ready keeps the Subscription not Ready, with
	// the endpoint's reason in the message.
	ep := endpoint(ns, "erp", func(e *heraldv1.WebhookEndpoint) {
		e.Spec.Signing = &heraldv1.SigningSpec{SecretRef: &heraldv1.SecretKeyReference{Name: "missing"}}
	})
	g.Expect(k8sClient.Create(ctx, ep)).To(Succeed())
	g.Eventually(func(g Gomega) {
		got = waitSubscriptionReady(t, client.ObjectKeyFromObject(sub), metav1.ConditionFalse, heraldv1.EndpointNotReadyReason)
		g.Expect(readyFor(got.Status.Conditions, got.Generation).Message).To(ContainSubstring(
			`WebhookEndpoint "erp" is not Ready (SecretNotFound: Secret "missing" referenced by spec.signing.secretRef not found`))
	}, waitTimeout, pollEvery).Should(Succeed())

	// Fixing the endpoint makes the Subscription Ready within seconds,
	// through the watch (no spec change of the Subscription).
	cur := getEndpoint(g, client.ObjectKeyFromObject(ep))
	patch := client.MergeFrom(cur.DeepCopy())
	cur.Spec.Signing = nil
	g.Expect(k8sClient.Patch(ctx, cur, patch)).To(Succeed())
	waitSubscriptionReady(t, client.ObjectKeyFromObject(sub), metav1.ConditionTrue, heraldv1.ReconciledReason)

	// Deleting the endpoint makes it un-Ready again.
	g.Expect(k8sClient.Delete(ctx, cur)).To(Succeed())
	waitSubscriptionReady(t, client.ObjectKeyFromObject(sub), metav1.ConditionFalse, heraldv1.EndpointNotFoundReason)

	// An endpoint in another namespace does not satisfy the reference.
	other := newNamespace(t)
	g.Expect(k8sClient.Create(ctx, endpoint(other, "erp"))).To(Succeed())
	waitEndpointReady(t, client.ObjectKey{Namespace: other, Name: "erp"}, metav1.ConditionTrue, heraldv1.ReconciledReason)
	g.Consistently(func(g Gomega) {
		s := &heraldv1.Subscription{}
		g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(sub), s)).To(Succeed())
		g.Expect(meta.IsStatusConditionTrue(s.Status.Conditions, heraldv1.ReadyCondition)).To(BeFalse())
	}, 2*time.Second, 200*time.Millisecond).Should(Succeed())
}

func TestSubscriptionInvalidFilter(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := newNamespace(t)
	g.Expect(k8sClient.Create(ctx, endpoint(ns, "ep"))).To(Succeed())

	sub := subscription(ns, "bad-filter", "ep", func(s *heraldv1.Subscription) {
		s.Spec.Filter = `event.type == "order.created" &&`
	})
	g.Expect(k8sClient.Create(ctx, sub)).To(Succeed())
	got := waitSubscriptionReady(t, client.ObjectKeyFromObject(sub), metav1.ConditionFalse, heraldv1.InvalidFilterReason)
	msg := readyFor(got.Status.Conditions, got.Generation).Message
	g.Expect(msg).To(HavePrefix("spec.filter: filter does not compile"))
	g.Expect(msg).To(ContainSubstring("Syntax error"))
	g.Expect(meta.IsStatusConditionTrue(got.Status.Conditions, heraldv1.StalledCondition)).To(BeTrue())

	// A filter of the wrong type is rejected too.
	patch := client.MergeFrom(got.DeepCopy())
	got.Spec.Filter = `event.type + "x"`
	g.Expect(k8sClient.Patch(ctx, got, patch)).To(Succeed())
	got = waitSubscriptionReady(t, client.ObjectKeyFromObject(sub), metav1.ConditionFalse, heraldv1.InvalidFilterReason)
	g.Expect(readyFor(got.Status.Conditions, got.Generation).Message).To(ContainSubstring("must evaluate to a bool, not string"))

	// Fixing it clears Stalled and makes the Subscription Ready.
	patch = client.MergeFrom(got.DeepCopy())
	got.Spec.Filter = `event.subject.startsWith("eu/") && data.total > 100`
	g.Expect(k8sClient.Patch(ctx, got, patch)).To(Succeed())
	got = waitSubscriptionReady(t, client.ObjectKeyFromObject(sub), metav1.ConditionTrue, heraldv1.ReconciledReason)
	g.Expect(meta.FindStatusCondition(got.Status.Conditions, heraldv1.StalledCondition)).To(BeNil())
}

func TestSubscriptionTypePatternsValidated(t *testing.T) {
	g := NewWithT(t)
	ns := newNamespace(t)
	for _, bad := range []string{"order*", "*.created", "order. created", ""} {
		err := k8sClient.Create(context.Background(), subscription(ns, "bad", "ep", func(s *heraldv1.Subscription) { s.Spec.Types = []string{bad} }))
		g.Expect(err).To(HaveOccurred(), "type pattern %q", bad)
		g.Expect(err.Error()).To(ContainSubstring("spec.types[0]"))
	}
	err := k8sClient.Create(context.Background(), subscription(ns, "none", "ep", func(s *heraldv1.Subscription) { s.Spec.Types = nil }))
	g.Expect(err).To(HaveOccurred())
	g.Expect(err.Error()).To(ContainSubstring("spec.types"))
}

// TestObservedGenerationMakesKubectlWaitTruthful drives the real kubectl:
// `kubectl wait --for=condition=Ready` must not pass on a verdict about an
// older generation.
func TestObservedGenerationMakesKubectlWaitTruthful(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := newNamespace(t)
	kubeconfig := writeKubeconfig(t)

	ep := endpoint(ns, "waited")
	g.Expect(k8sClient.Create(ctx, ep)).To(Succeed())
	out, err := kubectl(kubeconfig, "wait", "-n", ns, "--for=condition=Ready", "webhookendpoint/waited", "--timeout=30s")
	g.Expect(err).NotTo(HaveOccurred(), out)

	// Break the spec: the Ready verdict must follow the new generation, so a
	// wait for Ready now times out instead of passing on the old verdict.
	cur := getEndpoint(g, client.ObjectKeyFromObject(ep))
	patch := client.MergeFrom(cur.DeepCopy())
	cur.Spec.URL = "https://user:pw@receiver.example.com/"
	g.Expect(k8sClient.Patch(ctx, cur, patch)).To(Succeed())
	got := waitEndpointReady(t, client.ObjectKeyFromObject(ep), metav1.ConditionFalse, heraldv1.InvalidSpecReason)
	g.Expect(got.Generation).To(BeEquivalentTo(2))
	g.Expect(got.Status.ObservedGeneration).To(BeEquivalentTo(2))
	out, err = kubectl(kubeconfig, "wait", "-n", ns, "--for=condition=Ready", "webhookendpoint/waited", "--timeout=2s")
	g.Expect(err).To(HaveOccurred(), "wait must not pass for a broken generation: %s", out)
	out, err = kubectl(kubeconfig, "wait", "-n", ns, "--for=condition=Stalled", "webhookendpoint/waited", "--timeout=10s")
	g.Expect(err).NotTo(HaveOccurred(), out)

	// Fix it: Ready again for generation 3, and Stalled gone.
	cur = getEndpoint(g, client.ObjectKeyFromObject(ep))
	patch = client.MergeFrom(cur.DeepCopy())
	cur.Spec.URL = "https://receiver.example.com/v2"
	g.Expect(k8sClient.Patch(ctx, cur, patch)).To(Succeed())
	out, err = kubectl(kubeconfig, "wait", "-n", ns, "--for=condition=Ready", "webhookendpoint/waited", "--timeout=30s")
	g.Expect(err).NotTo(HaveOccurred(), out)
	got = getEndpoint(g, client.ObjectKeyFromObject(ep))
	g.Expect(readyFor(got.Status.Conditions, 3)).NotTo(BeNil())
	g.Expect(meta.FindStatusCondition(got.Status.Conditions, heraldv1.StalledCondition)).To(BeNil())

	// Printer columns and the category: `kubectl get webhooks` lists both kinds.
	g.Expect(k8sClient.Create(ctx, subscription(ns, "s", "waited"))).To(Succeed())
	out, err = kubectl(kubeconfig, "get", "webhooks", "-n", ns)
	g.Expect(err).NotTo(HaveOccurred(), out)
	g.Expect(out).To(ContainSubstring("webhookendpoint.herald.dev/waited"))
	g.Expect(out).To(ContainSubstring("subscription.herald.dev/s"))
	out, err = kubectl(kubeconfig, "get", "whep", "-n", ns)
	g.Expect(err).NotTo(HaveOccurred(), out)
	header := strings.Fields(strings.SplitN(out, "\n", 2)[0])
	g.Expect(header).To(Equal([]string{"NAME", "URL", "READY", "HEALTHY", "PENDING", "LAST", "SUCCESS", "AGE"}))
	g.Expect(out).To(ContainSubstring("https://receiver.example.com/v2   True"))
}

func writeKubeconfig(t *testing.T) string {
	t.Helper()
	user, err := testEnv.AddUser(envtestAdmin(), nil)
	if err != nil {
		t.Fatalf("add kubeconfig user: %v", err)
	}
	raw, err := user.KubeConfig()
	if err != nil {
		t.Fatalf("kubeconfig: %v", err)
	}
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		t.Fatalf("write kubeconfig: %v", err)
	}
	return path
}

func kubectl(kubeconfig string, args ...string) (string, error) {
	bin := filepath.Join(os.Getenv("KUBEBUILDER_ASSETS"), "kubectl")
	cmd := exec.Command(bin, append([]string{"--kubeconfig", kubeconfig}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}
