package controllers

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/dispatcher/signature"
)

const (
	waitTimeout = 20 * time.Second
	pollEvery   = 100 * time.Millisecond
)

func endpoint(ns, name string, mutate ...func(*heraldv1.WebhookEndpoint)) *heraldv1.WebhookEndpoint {
	ep := &heraldv1.WebhookEndpoint{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       heraldv1.WebhookEndpointSpec{URL: "https://receiver.example.com/hooks"},
	}
	for _, m := range mutate {
		m(ep)
	}
	return ep
}

func getEndpoint(g Gomega, key client.ObjectKey) *heraldv1.WebhookEndpoint {
	ep := &heraldv1.WebhookEndpoint{}
	g.Expect(k8sClient.Get(context.Background(), key, ep)).To(Succeed())
	return ep
}

// readyFor returns the Ready condition when it refers to the current
// generation, the way `kubectl wait` reads it.
func readyFor(conds []metav1.Condition, generation int64) *metav1.Condition {
	c := meta.FindStatusCondition(conds, heraldv1.ReadyCondition)
	if c == nil || c.ObservedGeneration != generation {
		return nil
	}
	return c
}

func waitEndpointReady(t *testing.T, key client.ObjectKey, status metav1.ConditionStatus, reason string) *heraldv1.WebhookEndpoint {
	t.Helper()
	g := NewWithT(t)
	var ep *heraldv1.WebhookEndpoint
	g.Eventually(func(g Gomega) {
		ep = getEndpoint(g, key)
		c := readyFor(ep.Status.Conditions, ep.Generation)
		g.Expect(c).NotTo(BeNil(), "Ready for generation %d", ep.Generation)
		g.Expect(c.Status).To(Equal(status), "Ready status; message: %s", c.Message)
		g.Expect(c.Reason).To(Equal(reason), "Ready reason; message: %s", c.Message)
		g.Expect(ep.Status.ObservedGeneration).To(Equal(ep.Generation))
	}, waitTimeout, pollEvery).Should(Succeed())
	return ep
}

func managedSecret(g Gomega, ns, endpoint string) *corev1.Secret {
	s := &corev1.Secret{}
	g.Expect(k8sClient.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: ManagedSecretName(endpoint)}, s)).To(Succeed())
	return s
}

func signingKeys(g Gomega, s *corev1.Secret) []heraldv1.SigningKey {
	var keys []heraldv1.SigningKey
	g.Expect(json.Unmarshal(s.Data[heraldv1.SigningKeysKey], &keys)).To(Succeed())
	return keys
}

func TestEndpointGeneratesSigningSecret(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := newNamespace(t)
	ep := endpoint(ns, "orders")
	g.Expect(k8sClient.Create(ctx, ep)).To(Succeed())

	got := waitEndpointReady(t, client.ObjectKeyFromObject(ep), metav1.ConditionTrue, heraldv1.ReconciledReason)
	g.Expect(got.Status.SigningSecretRef).To(Equal(&heraldv1.LocalObjectReference{Name: "orders-herald"}))
	g.Expect(got.Status.Signing.Algorithm).To(Equal(heraldv1.HMACSHA256))
	g.Expect(got.Status.Signing.ValidKeys).To(BeEquivalentTo(1))
	g.Expect(meta.FindStatusCondition(got.Status.Conditions, heraldv1.ReconcilingCondition)).To(BeNil(), "Reconciling is removed once done")
	g.Expect(meta.FindStatusCondition(got.Status.Conditions, heraldv1.StalledCondition)).To(BeNil())

	s := managedSecret(g, ns, "orders")
	secret := string(s.Data[heraldv1.SigningSecretKey])
	g.Expect(secret).To(HavePrefix("whsec_"))
	key, err := signature.ParseKey(secret)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(key.HMAC).To(HaveLen(32), "whsec_ + base64 of 32 random bytes")
	g.Expect(s.Labels).To(HaveKeyWithValue(heraldv1.SecretTypeLabel, heraldv1.SecretTypeEndpoint))
	g.Expect(metav1.IsControlledBy(s, got)).To(BeTrue(), "managed Secret is owned by its endpoint")
	keys := signingKeys(g, s)
	g.Expect(keys).To(HaveLen(1))
	g.Expect(keys[0].Secret).To(Equal(secret))

	// Status never carries signing material.
	raw, err := json.Marshal(got.Status)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(string(raw)).NotTo(ContainSubstring(strings.TrimPrefix(secret, "whsec_")))

	// A reconcile triggered by anything else keeps the key.
	patch := client.MergeFrom(got.DeepCopy())
	got.Spec.Timeout = &metav1.Duration{Duration: 5 * time.Second}
	g.Expect(k8sClient.Patch(ctx, got, patch)).To(Succeed())
	waitEndpointReady(t, client.ObjectKeyFromObject(ep), metav1.ConditionTrue, heraldv1.ReconciledReason)
	g.Expect(string(managedSecret(g, ns, "orders").Data[heraldv1.SigningSecretKey])).To(Equal(secret))

	// Deleting the managed Secret regenerates a key (the old one is gone)
	// and says so with a Warning Event.
	g.Expect(k8sClient.Delete(ctx, managedSecret(g, ns, "orders"))).To(Succeed())
	g.Eventually(func(g Gomega) {
		s := managedSecret(g, ns, "orders")
		g.Expect(string(s.Data[heraldv1.SigningSecretKey])).To(HavePrefix("whsec_"))
		g.Expect(string(s.Data[heraldv1.SigningSecretKey])).NotTo(Equal(secret))
		list := &eventsv1.EventList{}
		g.Expect(k8sClient.List(ctx, list, client.InNamespace(ns))).To(Succeed())
		var reasons []string
		for _, e := range list.Items {
			if e.Regarding.Name == "orders" && e.Type == corev1.EventTypeWarning {
				reasons = append(reasons, e.Reason)
			}
		}
		g.Expect(reasons).To(ContainElement("SigningKeyRegenerated"))
	}, waitTimeout, pollEvery).Should(Succeed())

	// An Ed25519 endpoint exposes its public key, never the private one.
	ed := endpoint(ns, "ed", func(e *heraldv1.WebhookEndpoint) {
		e.Spec.Signing = &heraldv1.SigningSpec{Algorithm: heraldv1.Ed25519}
	})
	g.Expect(k8sClient.Create(ctx, ed)).To(Succeed())
	gotEd := waitEndpointReady(t, client.ObjectKeyFromObject(ed), metav1.ConditionTrue, heraldv1.ReconciledReason)
	g.Expect(gotEd.Status.Signing.PublicKey).To(HavePrefix("whpk_"))
	edSecret := managedSecret(g, ns, "ed")
	g.Expect(string(edSecret.Data[heraldv1.SigningSecretKey])).To(Equal(gotEd.Status.Signing.PublicKey))
	g.Expect(signingKeys(g, edSecret)[0].Secret).To(HavePrefix("whsk_"))
}

func TestEndpointUserSuppliedSecretUntouched(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := newNamespace(t)

	// The endpoint exists before its Secret: Ready=False names the Secret.
	ep := endpoint(ns, "billing", func(e *heraldv1.WebhookEndpoint) {
		e.Spec.Signing = &heraldv1.SigningSpec{SecretRef: &heraldv1.SecretKeyReference{Name: "billing-signing"}, RotationOverlap: &metav1.Duration{Duration: time.Hour}}
		e.Spec.Headers = []heraldv1.HeaderSpec{
			{Name: "Authorization", ValueFrom: &heraldv1.SecretKeyReference{Name: "billing-token", Key: "token"}},
			{Name: "X-Team", Value: ptr.To("billing")},
		}
	})
	g.Expect(k8sClient.Create(ctx, ep)).To(Succeed())
	notReady := waitEndpointReady(t, client.ObjectKeyFromObject(ep), metav1.ConditionFalse, heraldv1.SecretNotFoundReason)
	g.Expect(readyFor(notReady.Status.Conditions, notReady.Generation).Message).To(ContainSubstring(`Secret "billing-signing" referenced by spec.signing.secretRef not found`))

	userSecret, err := signature.NewHMACSecret()
	g.Expect(err).NotTo(HaveOccurred())
	user := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "billing-signing", Labels: map[string]string{"team": "billing"}},
		Data:       map[string][]byte{"secret": []byte(userSecret)},
	}
	g.Expect(k8sClient.Create(ctx, user)).To(Succeed())
	token := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "billing-token"},
		Data:       map[string][]byte{"token": []byte("Bearer s3cr3t-token")},
	}
	g.Expect(k8sClient.Create(ctx, token)).To(Succeed())

	// The Secret watch brings the endpoint to Ready without any spec change.
	waitEndpointReady(t, client.ObjectKeyFromObject(ep), metav1.ConditionTrue, heraldv1.ReconciledReason)
	s := managedSecret(g, ns, "billing")
	g.Expect(string(s.Data[heraldv1.SigningSecretKey])).To(Equal(userSecret))
	var headers map[string]string
	g.Expect(json.Unmarshal(s.Data[heraldv1.HeadersKey], &headers)).To(Succeed())
	g.Expect(headers).To(Equal(map[string]string{"Authorization": "Bearer s3cr3t-token"}), "literal headers stay in the spec")

	// Herald never modifies the user's Secret: same resourceVersion, no
	// owner reference, no Herald labels, same data.
	after := &corev1.Secret{}
	g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(user), after)).To(Succeed())
	g.Expect(after.ResourceVersion).To(Equal(user.ResourceVersion))
	g.Expect(after.OwnerReferences).To(BeEmpty())
	g.Expect(after.Labels).To(Equal(map[string]string{"team": "billing"}))
	for _, f := range after.ManagedFields {
		g.Expect(f.Manager).NotTo(Equal(string(FieldOwner)))
	}

	// Changing the user's value rotates with overlap: both keys sign.
	newSecret, err := signature.NewHMACSecret()
	g.Expect(err).NotTo(HaveOccurred())
	after.Data["secret"] = []byte(newSecret)
	g.Expect(k8sClient.Update(ctx, after)).To(Succeed())
	g.Eventually(func(g Gomega) {
		s := managedSecret(g, ns, "billing")
		g.Expect(string(s.Data[heraldv1.SigningSecretKey])).To(Equal(newSecret))
		keys := signingKeys(g, s)
		g.Expect(keys).To(HaveLen(2))
		g.Expect(keys[0].Secret).To(Equal(userSecret))
		g.Expect(keys[0].NotAfter).NotTo(BeNil())
		g.Expect(keys[0].NotAfter.Sub(keys[1].Since)).To(BeNumerically("~", time.Hour, time.Second))
	}, waitTimeout, pollEvery).Should(Succeed())

	// Deleting the endpoint leaves the user's Secrets in place.
	g.Expect(k8sClient.Delete(ctx, ep)).To(Succeed())
	g.Eventually(func() error {
		return k8sClient.Get(ctx, client.ObjectKeyFromObject(ep), &heraldv1.WebhookEndpoint{})
	}, waitTimeout, pollEvery).ShouldNot(Succeed())
	g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(user), &corev1.Secret{})).To(Succeed())
	g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(token), &corev1.Secret{})).To(Succeed())
}

func TestEndpointInvalidUserSecretIsStalled(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := newNamespace(t)
	const leaked = "not-base64-but-secret!!"
	g.Expect(k8sClient.Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "bad"},
		Data:       map[string][]byte{"secret": []byte(leaked)},
	})).To(Succeed())
	ep := endpoint(ns, "bad", func(e *heraldv1.WebhookEndpoint) {
		e.Spec.Signing = &heraldv1.SigningSpec{SecretRef: &heraldv1.SecretKeyReference{Name: "bad"}}
	})
	g.Expect(k8sClient.Create(ctx, ep)).To(Succeed())
	got := waitEndpointReady(t, client.ObjectKeyFromObject(ep), metav1.ConditionFalse, heraldv1.InvalidSigningSecretReason)
	ready := readyFor(got.Status.Conditions, got.Generation)
	g.Expect(ready.Message).To(ContainSubstring(`Secret "bad" key "secret" is not a valid HMACSHA256 signing key`))
	g.Expect(ready.Message).NotTo(ContainSubstring(leaked))
	stalled := meta.FindStatusCondition(got.Status.Conditions, heraldv1.StalledCondition)
	g.Expect(stalled).NotTo(BeNil())
	g.Expect(stalled.Status).To(Equal(metav1.ConditionTrue))

	// A Warning Event names the reason and never the value.
	g.Eventually(func(g Gomega) {
		list := &eventsv1.EventList{}
		g.Expect(k8sClient.List(ctx, list, client.InNamespace(ns))).To(Succeed())
		var found bool
		for _, e := range list.Items {
			g.Expect(e.Note).NotTo(ContainSubstring(leaked))
			if e.Regarding.Name == "bad" && e.Reason == heraldv1.InvalidSigningSecretReason && e.Type == corev1.EventTypeWarning {
				found = true
			}
		}
		g.Expect(found).To(BeTrue(), "Warning event for the invalid secret")
	}, waitTimeout, pollEvery).Should(Succeed())
}

func TestEndpointRotationOverlapAndPruning(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := newNamespace(t)
	ep := endpoint(ns, "rotating", func(e *heraldv1.WebhookEndpoint) {
		e.Spec.Signing = &heraldv1.SigningSpec{RotationOverlap: &metav1.Duration{Duration: 3 * time.Second}}
	})
	g.Expect(k8sClient.Create(ctx, ep)).To(Succeed())
	waitEndpointReady(t, client.ObjectKeyFromObject(ep), metav1.ConditionTrue, heraldv1.ReconciledReason)
	oldSecret := string(managedSecret(g, ns, "rotating").Data[heraldv1.SigningSecretKey])

	// Rotation is requested with an annotation.
	cur := getEndpoint(g, client.ObjectKeyFromObject(ep))
	patch := client.MergeFrom(cur.DeepCopy())
	cur.Annotations = map[string]string{heraldv1.RotateSigningKeyAnnotation: "2026-11-26T17:00:00Z"}
	g.Expect(k8sClient.Patch(ctx, cur, patch)).To(Succeed())

	var newSecret string
	g.Eventually(func(g Gomega) {
		s := managedSecret(g, ns, "rotating")
		keys := signingKeys(g, s)
		g.Expect(keys).To(HaveLen(2), "old and new key sign during the overlap")
		g.Expect(keys[0].Secret).To(Equal(oldSecret))
		g.Expect(keys[0].NotAfter).NotTo(BeNil())
		newSecret = string(s.Data[heraldv1.SigningSecretKey])
		g.Expect(newSecret).NotTo(Equal(oldSecret))
		g.Expect(keys[1].Secret).To(Equal(newSecret))
		got := getEndpoint(g, client.ObjectKeyFromObject(ep))
		g.Expect(got.Status.Signing.ValidKeys).To(BeEquivalentTo(2))
		g.Expect(got.Status.Signing.LastHandledRotation).To(Equal("2026-11-26T17:00:00Z"))
		g.Expect(got.Status.Signing.PreviousKeysExpireAt).NotTo(BeNil())
	}, waitTimeout, pollEvery).Should(Succeed())

	// After the overlap the old key is pruned without any trigger but time.
	g.Eventually(func(g Gomega) {
		s := managedSecret(g, ns, "rotating")
		keys := signingKeys(g, s)
		g.Expect(keys).To(HaveLen(1))
		g.Expect(keys[0].Secret).To(Equal(newSecret))
		got := getEndpoint(g, client.ObjectKeyFromObject(ep))
		g.Expect(got.Status.Signing.ValidKeys).To(BeEquivalentTo(1))
		g.Expect(got.Status.Signing.PreviousKeysExpireAt).To(BeNil())
	}, waitTimeout, pollEvery).Should(Succeed())

	// The same annotation value does not rotate again.
	cur = getEndpoint(g, client.ObjectKeyFromObject(ep))
	patch = client.MergeFrom(cur.DeepCopy())
	cur.Spec.Suspend = true
	g.Expect(k8sClient.Patch(ctx, cur, patch)).To(Succeed())
	waitEndpointReady(t, client.ObjectKeyFromObject(ep), metav1.ConditionTrue, heraldv1.SuspendedReason)
	g.Expect(signingKeys(g, managedSecret(g, ns, "rotating"))).To(HaveLen(1))
}

func TestEndpointInvalidSpecRejectedByAPIServer(t *testing.T) {
	ns := newNamespace(t)
	cases := []struct {
		name    string
		mutate  func(*heraldv1.WebhookEndpoint)
		message string
	}{
		{"plain http", func(e *heraldv1.WebhookEndpoint) { e.Spec.URL = "http://receiver.example.com" },
			"url must use https; set allowInsecureHTTP: true to allow plain http"},
		{"not a url", func(e *heraldv1.WebhookEndpoint) { e.Spec.URL = "receiver" },
			"url must be an absolute URL with a host"},
		{"reserved webhook header", func(e *heraldv1.WebhookEndpoint) {
			e.Spec.Headers = []heraldv1.HeaderSpec{{Name: "Webhook-Signature", Value: ptr.To("x")}}
		}, "header names starting with webhook- are reserved"},
		{"reserved content-type", func(e *heraldv1.WebhookEndpoint) {
			e.Spec.Headers = []heraldv1.HeaderSpec{{Name: "Content-Type", Value: ptr.To("x")}}
		}, "this header is set by Herald and cannot be overridden"},
		{"header with value and valueFrom", func(e *heraldv1.WebhookEndpoint) {
			e.Spec.Headers = []heraldv1.HeaderSpec{{Name: "X-A", Value: ptr.To("x"), ValueFrom: &heraldv1.SecretKeyReference{Name: "s"}}}
		}, "exactly one of value or valueFrom must be set"},
		{"backoff min above max", func(e *heraldv1.WebhookEndpoint) {
			e.Spec.Retry = &heraldv1.RetrySpec{InitialBackoff: &metav1.Duration{Duration: time.Hour}, MaxBackoff: &metav1.Duration{Duration: time.Minute}}
		}, "initialBackoff must not exceed maxBackoff"},
		{"timeout out of range", func(e *heraldv1.WebhookEndpoint) { e.Spec.Timeout = &metav1.Duration{Duration: time.Hour} },
			"timeout must be between 100ms and 5m"},
		{"ordered with concurrency", func(e *heraldv1.WebhookEndpoint) {
			e.Spec.Ordering = heraldv1.Ordered
			e.Spec.MaxInFlight = ptr.To[int32](4)
		}, "maxInFlight must be 1 or unset when ordering is Ordered"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := NewWithT(t)
			ep := endpoint(ns, "bad-"+string(rune('a'+i)), tc.mutate)
			err := k8sClient.Create(context.Background(), ep)
			g.Expect(err).To(HaveOccurred())
			g.Expect(err.Error()).To(ContainSubstring(tc.message))
		})
	}

	// Durations that are not durations are rejected by the schema, before
	// any controller sees them.
	g := NewWithT(t)
	bad := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "herald.dev/v1alpha1", "kind": "WebhookEndpoint",
		"metadata": map[string]any{"name": "bad-duration", "namespace": ns},
		"spec":     map[string]any{"url": "https://x.example.com", "timeout": "soon"},
	}}
	err := k8sClient.Create(context.Background(), bad)
	g.Expect(err).To(HaveOccurred())
	g.Expect(err.Error()).To(ContainSubstring("spec.timeout"))
}

func TestEndpointTerminalValidationInReconciler(t *testing.T) {
	// Rules CEL cannot express are enforced by the reconciler as terminal
	// errors: credentials in the URL.
	g := NewWithT(t)
	ns := newNamespace(t)
	ep := endpoint(ns, "creds", func(e *heraldv1.WebhookEndpoint) { e.Spec.URL = "https://user:pass@receiver.example.com/" })
	g.Expect(k8sClient.Create(context.Background(), ep)).To(Succeed())
	got := waitEndpointReady(t, client.ObjectKeyFromObject(ep), metav1.ConditionFalse, heraldv1.InvalidSpecReason)
	g.Expect(readyFor(got.Status.Conditions, got.Generation).Message).To(ContainSubstring("must not contain credentials"))
	g.Expect(readyFor(got.Status.Conditions, got.Generation).Message).NotTo(ContainSubstring("pass"))
	g.Expect(meta.IsStatusConditionTrue(got.Status.Conditions, heraldv1.StalledCondition)).To(BeTrue())
}

// TestEndpointNeverReadsServiceAccountTokens: a reference to a Secret of
// type kubernetes.io/service-account-token is refused (Stalled,
// ForbiddenSecretType) and the token never reaches the managed Secret.
func TestEndpointNeverReadsServiceAccountTokens(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := newNamespace(t)
	const token = "eyJhbGciOiJSUzI1NiJ9.cluster-credential"
	g.Expect(k8sClient.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "builder"}})).To(Succeed())
	g.Expect(k8sClient.Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "builder-token",
			Annotations: map[string]string{corev1.ServiceAccountNameKey: "builder"}},
		Type: corev1.SecretTypeServiceAccountToken,
		Data: map[string][]byte{"token": []byte(token), "value": []byte(token)},
	})).To(Succeed())
	ep := endpoint(ns, "exfil", func(e *heraldv1.WebhookEndpoint) {
		e.Spec.Headers = []heraldv1.HeaderSpec{{Name: "Authorization", ValueFrom: &heraldv1.SecretKeyReference{Name: "builder-token"}}}
	})
	g.Expect(k8sClient.Create(ctx, ep)).To(Succeed())
	got := waitEndpointReady(t, client.ObjectKeyFromObject(ep), metav1.ConditionFalse, heraldv1.ForbiddenSecretTypeReason)
	ready := readyFor(got.Status.Conditions, got.Generation)
	g.Expect(ready.Message).To(ContainSubstring(`Secret "builder-token"`))
	g.Expect(ready.Message).NotTo(ContainSubstring(token))
	g.Expect(meta.IsStatusConditionTrue(got.Status.Conditions, heraldv1.StalledCondition)).To(BeTrue())
	managed := &corev1.Secret{}
	err := k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "exfil-herald"}, managed)
	if err == nil {
		for k, v := range managed.Data {
			g.Expect(string(v)).NotTo(ContainSubstring(token), "managed Secret key %s holds the token", k)
		}
	}
}
