package catalog

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
)

var (
	k8sClient client.Client
	testCache cache.Cache
	// testConfig reaches the envtest API server.
	testConfig *rest.Config
	cat        *Catalog
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		fmt.Fprintln(os.Stderr, "KUBEBUILDER_ASSETS is not set: run `make test`, which builds etcd and kube-apiserver into bin/k8s")
		return 1
	}
	scheme := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(heraldv1.AddToScheme(scheme))
	env := &envtest.Environment{CRDDirectoryPaths: []string{filepath.Join("..", "..", "config", "crd", "bases")}, ErrorIfCRDPathMissing: true}
	cfg, err := env.Start()
	if err != nil {
		fmt.Fprintf(os.Stderr, "start envtest: %v\n", err)
		return 1
	}
	defer func() { _ = env.Stop() }()
	testConfig = cfg
	k8sClient, err = client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		fmt.Fprintf(os.Stderr, "client: %v\n", err)
		return 1
	}
	testCache, err = cache.New(cfg, CacheOptions(scheme))
	if err != nil {
		fmt.Fprintf(os.Stderr, "cache: %v\n", err)
		return 1
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cat = New(testCache, logr.Discard())
	if err := cat.Start(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "catalog: %v\n", err)
		return 1
	}
	go func() { _ = testCache.Start(ctx) }()
	if !testCache.WaitForCacheSync(ctx) {
		fmt.Fprintln(os.Stderr, "cache did not sync")
		return 1
	}
	if err := cat.WaitForSync(ctx); err != nil || !cat.HasSynced() {
		fmt.Fprintf(os.Stderr, "catalog did not sync: %v\n", err)
		return 1
	}
	return m.Run()
}

// markReady writes the Ready condition the manager would write.
func markReady(t *testing.T, obj client.Object, kind string, extra map[string]any) {
	t.Helper()
	markConditions(t, obj, kind, extra, map[string]any{
		"type": "Ready", "status": "True", "reason": "Reconciled", "message": "ok",
	})
}

// markConditions writes conditions for the object's current generation, as
// the manager would.
func markConditions(t *testing.T, obj client.Object, kind string, extra map[string]any, conds ...map[string]any) {
	t.Helper()
	var list []any
	for _, c := range conds {
		c["observedGeneration"] = obj.GetGeneration()
		c["lastTransitionTime"] = time.Now().UTC().Format(time.RFC3339)
		list = append(list, c)
	}
	status := map[string]any{"observedGeneration": obj.GetGeneration(), "conditions": list}
	for k, v := range extra {
		status[k] = v
	}
	u := &unstructured.Unstructured{Object: map[string]any{"status": status}}
	u.SetGroupVersionKind(heraldv1.GroupVersion.WithKind(kind))
	u.SetName(obj.GetName())
	u.SetNamespace(obj.GetNamespace())
	if err := k8sClient.Status().Apply(context.Background(), client.ApplyConfigurationFromUnstructured(u), client.FieldOwner("herald-manager"), client.ForceOwnership); err != nil {
		t.Fatalf("mark %s Ready: %v", kind, err)
	}
}

func managedSecretFor(ep *heraldv1.WebhookEndpoint, keys []heraldv1.SigningKey, headers map[string]string) *corev1.Secret {
	raw, _ := json.Marshal(keys)
	data := map[string][]byte{heraldv1.SigningKeysKey: raw}
	if headers != nil {
		h, _ := json.Marshal(headers)
		data[heraldv1.HeadersKey] = h
	}
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Namespace:   ep.Namespace,
			Name:        ep.Name + "-herald",
			Labels:      map[string]string{heraldv1.SecretTypeLabel: heraldv1.SecretTypeEndpoint},
			Annotations: map[string]string{heraldv1.EndpointNameAnnotation: ep.Name},
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion: heraldv1.GroupVersion.String(), Kind: "WebhookEndpoint", Name: ep.Name, UID: ep.UID, Controller: ptr.To(true),
			}},
		},
		Data: data,
	}
}

func TestCatalogFollowsReadiness(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := "catalog-a"
	g.Expect(k8sClient.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})).To(Succeed())

	ep := &heraldv1.WebhookEndpoint{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "orders"},
		Spec: heraldv1.WebhookEndpointSpec{URL: "https://example.com/hooks"}}
	g.Expect(k8sClient.Create(ctx, ep)).To(Succeed())
	sub := &heraldv1.Subscription{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "all"},
		Spec: heraldv1.SubscriptionSpec{EndpointRef: heraldv1.LocalObjectReference{Name: "orders"}, Types: []string{"*"}, Filter: `data.total > 1`}}
	g.Expect(k8sClient.Create(ctx, sub)).To(Succeed())

	// Not Ready yet: the dispatcher ignores both.
	g.Consistently(func() int { return len(subsOf(ns)) + len(cat.Endpoints()) }, time.Second, 100*time.Millisecond).Should(BeZero())

	// A Secret without the label is never seen, even one named right.
	expired := time.Now().Add(-time.Minute)
	later := time.Now().Add(2 * time.Second)
	secret := managedSecretFor(ep, []heraldv1.SigningKey{
		{Secret: "whsec_old", NotAfter: &expired},
		{Secret: "whsec_previous", NotAfter: &later},
		{Secret: "whsec_current"},
	}, map[string]string{"Authorization": "Bearer t"})
	g.Expect(k8sClient.Create(ctx, secret)).To(Succeed())
	unlabelled := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "user-secret"}, StringData: map[string]string{"k": "v"}}
	g.Expect(k8sClient.Create(ctx, unlabelled)).To(Succeed())

	markReady(t, ep, "WebhookEndpoint", map[string]any{"signingSecretRef": map[string]any{"name": secret.Name}})
	markReady(t, sub, "Subscription", nil)

	g.Eventually(func(g Gomega) {
		e, ok := cat.Endpoint(ns, "orders")
		g.Expect(ok).To(BeTrue())
		g.Expect(e.Keys).To(HaveLen(2), "expired keys are dropped")
		g.Expect(e.SecretHeaders).To(HaveKeyWithValue("Authorization", "Bearer t"))
		subs := subsOf(ns)
		g.Expect(subs).To(HaveLen(1))
		g.Expect(subs[0].Filter).NotTo(BeNil())
	}, 10*time.Second, 50*time.Millisecond).Should(Succeed())

	// The catalog drops a key when it expires, without any API change.
	g.Eventually(func(g Gomega) {
		e, ok := cat.Endpoint(ns, "orders")
		g.Expect(ok).To(BeTrue())
		g.Expect(e.Keys).To(HaveLen(1))
		g.Expect(e.Keys[0].Secret).To(Equal("whsec_current"))
	}, 10*time.Second, 50*time.Millisecond).Should(Succeed())

	// Only the managed Secret's label selection is cached.
	g.Expect(testCache.Get(ctx, client.ObjectKeyFromObject(unlabelled), &corev1.Secret{})).NotTo(Succeed())

	// Deleting the managed Secret pauses delivery: the endpoint stays, with
	// no keys to sign with.
	g.Expect(k8sClient.Delete(ctx, secret)).To(Succeed())
	g.Eventually(func(g Gomega) {
		e, ok := cat.Endpoint(ns, "orders")
		g.Expect(ok).To(BeTrue())
		g.Expect(e.Keys).To(BeEmpty())
	}, 10*time.Second, 50*time.Millisecond).Should(Succeed())

	// A new generation is not acted on until the manager says Ready for
	// it; meanwhile the last known good one stays in use (never neither),
	// and the namespace is in transition.
	g.Expect(cat.InTransition(ns)).To(BeFalse())
	cur := &heraldv1.WebhookEndpoint{}
	g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(ep), cur)).To(Succeed())
	cur.Spec.URL = "https://example.com/v2"
	g.Expect(k8sClient.Update(ctx, cur)).To(Succeed())
	g.Eventually(func() bool { return cat.InTransition(ns) }, 10*time.Second, 50*time.Millisecond).Should(BeTrue())
	e, ok := cat.Endpoint(ns, "orders")
	g.Expect(ok).To(BeTrue(), "an endpoint being reconciled keeps its last known good configuration")
	g.Expect(e.Spec.URL).To(Equal("https://example.com/hooks"))
	g.Expect(e.Generation).To(Equal(ep.Generation))
	g.Expect(subsOf(ns)).To(HaveLen(1), "its subscriptions keep matching")
	// Even Ready=False for a reason that may pass keeps it.
	markConditions(t, cur, "WebhookEndpoint", nil, map[string]any{
		"type": "Ready", "status": "False", "reason": heraldv1.SecretNotFoundReason, "message": "Secret x not found",
	})
	g.Eventually(func() bool { return cat.InTransition(ns) }, 10*time.Second, 50*time.Millisecond).Should(BeFalse(),
		"a verdict of not Ready is not a transition: nothing is about to change")
	e, ok = cat.Endpoint(ns, "orders")
	g.Expect(ok).To(BeTrue())
	g.Expect(e.Spec.URL).To(Equal("https://example.com/hooks"))
	// Ready for the new generation: it replaces the old one.
	markReady(t, cur, "WebhookEndpoint", nil)
	g.Eventually(func() string { e, _ := cat.Endpoint(ns, "orders"); return e.Spec.URL }, 10*time.Second, 50*time.Millisecond).
		Should(Equal("https://example.com/v2"))
	g.Expect(cat.InTransition(ns)).To(BeFalse())

	// Suspended subscriptions match nothing once Ready for that.
	g.Eventually(func() int { return len(subsOf(ns)) }, 10*time.Second, 50*time.Millisecond).Should(Equal(1))
	s := &heraldv1.Subscription{}
	g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(sub), s)).To(Succeed())
	s.Spec.Suspend = true
	g.Expect(k8sClient.Update(ctx, s)).To(Succeed())
	g.Eventually(func() bool { return cat.InTransition(ns) }, 10*time.Second, 50*time.Millisecond).Should(BeTrue())
	g.Expect(subsOf(ns)).To(HaveLen(1), "a suspension not yet reconciled keeps the subscription matching")
	markReady(t, s, "Subscription", nil)
	g.Eventually(func() int { return len(subsOf(ns)) }, 10*time.Second, 50*time.Millisecond).Should(BeZero())
	g.Expect(cat.InTransition(ns)).To(BeFalse())

	// A definitively invalid generation (Stalled) drops the endpoint.
	g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(ep), cur)).To(Succeed())
	cur.Spec.URL = "https://example.com/v3"
	g.Expect(k8sClient.Update(ctx, cur)).To(Succeed())
	markConditions(t, cur, "WebhookEndpoint", nil,
		map[string]any{"type": "Ready", "status": "False", "reason": heraldv1.InvalidSpecReason, "message": "bad"},
		map[string]any{"type": "Stalled", "status": "True", "reason": heraldv1.InvalidSpecReason, "message": "bad"})
	g.Eventually(func() bool { _, ok := cat.Endpoint(ns, "orders"); return ok }, 10*time.Second, 50*time.Millisecond).Should(BeFalse())
	g.Expect(cat.InTransition(ns)).To(BeFalse())

	// Deleting the endpoint (not merely making it un-Ready) is announced
	// with its UID, so its queued deliveries can be removed.
	markReady(t, cur, "WebhookEndpoint", nil)
	g.Eventually(func() bool { _, ok := cat.Endpoint(ns, "orders"); return ok }, 10*time.Second, 50*time.Millisecond).Should(BeTrue())
	deleted := make(chan string, 4)
	cat.OnEndpointDeleted(func(namespace, name string, uid types.UID) { deleted <- namespace + "/" + name + "/" + string(uid) })
	g.Expect(k8sClient.Delete(ctx, cur)).To(Succeed())
	g.Eventually(deleted, 10*time.Second).Should(Receive(Equal(ns + "/orders/" + string(cur.UID))))
	_, ok = cat.Endpoint(ns, "orders")
	g.Expect(ok).To(BeFalse())

	// Recreated under the same name, it is a new object: the deleted one's
	// configuration is not its last known good one.
	again := &heraldv1.WebhookEndpoint{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "orders"},
		Spec: heraldv1.WebhookEndpointSpec{URL: "https://example.com/again"}}
	g.Expect(k8sClient.Create(ctx, again)).To(Succeed())
	g.Eventually(func() bool { return cat.InTransition(ns) }, 10*time.Second, 50*time.Millisecond).Should(BeTrue())
	_, ok = cat.Endpoint(ns, "orders")
	g.Expect(ok).To(BeFalse())
}

func subsOf(ns string) []*Subscription {
	s, _ := cat.Subscriptions(ns)
	return s
}

// TestEndpointsSnapshotIsSharedUntilAnEndpointChanges: Endpoints hands out
// one immutable list until an endpoint changes, so the health reporter can
// tell an idle catalog from a changed one without comparing 1,000 entries.
func TestEndpointsSnapshotIsSharedUntilAnEndpointChanges(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := "catalog-snapshot"
	g.Expect(k8sClient.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})).To(Succeed())
	ep := &heraldv1.WebhookEndpoint{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "billing"},
		Spec: heraldv1.WebhookEndpointSpec{URL: "https://example.com/v1"}}
	g.Expect(k8sClient.Create(ctx, ep)).To(Succeed())
	secret := managedSecretFor(ep, []heraldv1.SigningKey{{Secret: "whsec_current"}}, nil)
	g.Expect(k8sClient.Create(ctx, secret)).To(Succeed())
	markReady(t, ep, "WebhookEndpoint", map[string]any{"signingSecretRef": map[string]any{"name": secret.Name}})
	g.Eventually(func() bool { _, ok := cat.Endpoint(ns, "billing"); return ok }, 10*time.Second, 50*time.Millisecond).Should(BeTrue())

	urlIn := func(list []*Endpoint) string {
		for _, e := range list {
			if e.Namespace == ns && e.Name == "billing" {
				return e.Spec.URL
			}
		}
		return ""
	}
	first := cat.Endpoints()
	g.Expect(urlIn(first)).To(Equal("https://example.com/v1"))
	g.Expect(SameEndpoints(first, cat.Endpoints())).To(BeTrue(), "no change, same snapshot")

	// A status write that changes nothing the catalog keeps (the
	// dispatcher's own writes come back this way) keeps the snapshot.
	markReady(t, ep, "WebhookEndpoint", map[string]any{"signingSecretRef": map[string]any{"name": secret.Name}, "delivery": map[string]any{"pending": 0}})
	g.Consistently(func() bool { return SameEndpoints(first, cat.Endpoints()) }, time.Second, 100*time.Millisecond).Should(BeTrue())

	// A new generation, once Ready, is a new snapshot; the old one is
	// left as it was for whoever still holds it.
	cur := &heraldv1.WebhookEndpoint{}
	g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(ep), cur)).To(Succeed())
	cur.Spec.URL = "https://example.com/v2"
	g.Expect(k8sClient.Update(ctx, cur)).To(Succeed())
	markReady(t, cur, "WebhookEndpoint", map[string]any{"signingSecretRef": map[string]any{"name": secret.Name}})
	g.Eventually(func() string { return urlIn(cat.Endpoints()) }, 10*time.Second, 50*time.Millisecond).Should(Equal("https://example.com/v2"))
	g.Expect(SameEndpoints(first, cat.Endpoints())).To(BeFalse())
	g.Expect(urlIn(first)).To(Equal("https://example.com/v1"))

	// Deleted: gone from the next snapshot.
	g.Expect(k8sClient.Delete(ctx, cur)).To(Succeed())
	g.Eventually(func() string { return urlIn(cat.Endpoints()) }, 10*time.Second, 50*time.Millisecond).Should(BeEmpty())
}

// TestTrimSecretKeepsWhatTheCatalogReads: the cached managed Secret keeps
// its identity, its controller, the endpoint annotation, labels and data,
// and drops the rest.
func TestTrimSecretKeepsWhatTheCatalogReads(t *testing.T) {
	controller := true
	in := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Name: "orders-signing", Namespace: "shop", UID: "u-1", ResourceVersion: "42",
			Labels:      map[string]string{heraldv1.SecretTypeLabel: heraldv1.SecretTypeEndpoint},
			Annotations: map[string]string{heraldv1.EndpointNameAnnotation: "orders", "example.com/other": strings.Repeat("x", 512)},
			OwnerReferences: []metav1.OwnerReference{
				{APIVersion: "example.com/v1", Kind: "Other", Name: "o", UID: "u-2"},
				{APIVersion: heraldv1.GroupVersion.String(), Kind: "WebhookEndpoint", Name: "orders", UID: "u-3", Controller: &controller},
			},
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "herald-manager"}},
		},
		Data: map[string][]byte{heraldv1.SigningKeysKey: []byte("[]")},
	}
	out, err := trimSecret(in.DeepCopy())
	if err != nil {
		t.Fatal(err)
	}
	got := out.(*corev1.Secret)
	if got.Name != in.Name || got.Namespace != in.Namespace || got.UID != in.UID || got.ResourceVersion != in.ResourceVersion {
		t.Errorf("identity changed: %+v", got.ObjectMeta)
	}
	if owner := metav1.GetControllerOf(got); owner == nil || owner.UID != "u-3" || len(got.OwnerReferences) != 1 {
		t.Errorf("owner references %+v, want only the controlling endpoint", got.OwnerReferences)
	}
	if got.Annotations != nil || got.Labels != nil {
		t.Errorf("annotations %v, labels %v, want none", got.Annotations, got.Labels)
	}
	if string(got.Data[heraldv1.SigningKeysKey]) != "[]" || got.ManagedFields != nil {
		t.Errorf("data %v, managedFields %v", got.Data, got.ManagedFields)
	}
	if ep := controllingEndpoint(got); ep != "orders" {
		t.Errorf("the trimmed Secret names endpoint %q, want orders", ep)
	}
	if other, err := trimSecret("not a Secret"); err != nil || other != "not a Secret" {
		t.Errorf("a non-Secret is returned unchanged, got %v, %v", other, err)
	}
}

// TestControllingEndpoint: a managed Secret is mapped to the endpoint that
// controls it, and to nothing when its controller is anything else.
func TestControllingEndpoint(t *testing.T) {
	controller := true
	owned := func(apiVersion, kind string, isController bool) *corev1.Secret {
		c := isController
		return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{OwnerReferences: []metav1.OwnerReference{
			{APIVersion: apiVersion, Kind: kind, Name: "orders", UID: "u-1", Controller: &c},
		}}}
	}
	for _, tc := range []struct {
		name   string
		secret *corev1.Secret
		want   string
	}{
		{"controlled by an endpoint", owned(heraldv1.GroupVersion.String(), "WebhookEndpoint", controller), "orders"},
		{"another version of the group", owned(heraldv1.GroupVersion.Group+"/v9", "WebhookEndpoint", controller), "orders"},
		{"owned, not controlled", owned(heraldv1.GroupVersion.String(), "WebhookEndpoint", false), ""},
		{"another group's kind of that name", owned("example.com/v1", "WebhookEndpoint", controller), ""},
		{"another kind", owned(heraldv1.GroupVersion.String(), "Subscription", controller), ""},
		{"no owner", &corev1.Secret{}, ""},
	} {
		if got := controllingEndpoint(tc.secret); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}

// TestTrimEndpointKeepsWhatTheDispatcherReads: the cached WebhookEndpoint
// keeps its spec, the ping annotation, the conditions' states and
// DeliveryHealthy in full (the health reporter compares it with what it
// would write), and loses the last-applied copy, status.signing and the
// other conditions' messages.
func TestTrimEndpointKeepsWhatTheDispatcherReads(t *testing.T) {
	now := metav1.Now()
	in := &heraldv1.WebhookEndpoint{
		ObjectMeta: metav1.ObjectMeta{
			Name: "orders", Namespace: "shop", UID: "u-1", ResourceVersion: "42", Generation: 3,
			Annotations: map[string]string{lastAppliedAnnotation: "{}", heraldv1.PingAnnotation: "1"},
		},
		Spec: heraldv1.WebhookEndpointSpec{URL: "https://receiver.example.com/hooks"},
		Status: heraldv1.WebhookEndpointStatus{
			ObservedGeneration: 3,
			Conditions: []metav1.Condition{
				{Type: heraldv1.ReadyCondition, Status: metav1.ConditionTrue, Reason: "Ready", Message: "The endpoint is configured", ObservedGeneration: 3, LastTransitionTime: now},
				{Type: heraldv1.DeliveryHealthyCondition, Status: metav1.ConditionTrue, Reason: heraldv1.DeliveringReason, Message: "Deliveries succeed", ObservedGeneration: 3, LastTransitionTime: now},
			},
			SigningSecretRef: &heraldv1.LocalObjectReference{Name: "orders-signing"},
			Signing:          &heraldv1.SigningStatus{ValidKeys: 1, CurrentKeySince: &now},
			Delivery:         &heraldv1.DeliveryStatus{Pending: 2, GoneGeneration: 1},
		},
	}
	out, err := trimEndpoint(in.DeepCopy())
	if err != nil {
		t.Fatal(err)
	}
	got := out.(*heraldv1.WebhookEndpoint)
	if got.Name != in.Name || got.UID != in.UID || got.ResourceVersion != in.ResourceVersion || got.Generation != in.Generation || got.Spec.URL != in.Spec.URL {
		t.Errorf("identity or spec changed: %+v", got)
	}
	if len(got.Annotations) != 1 || got.Annotations[heraldv1.PingAnnotation] != "1" {
		t.Errorf("annotations %v, want only the ping annotation", got.Annotations)
	}
	if got.Status.Signing != nil {
		t.Errorf("status.signing %+v, want it dropped", got.Status.Signing)
	}
	ready := apimeta.FindStatusCondition(got.Status.Conditions, heraldv1.ReadyCondition)
	if ready == nil || ready.Status != metav1.ConditionTrue || ready.ObservedGeneration != 3 || ready.Reason != "Ready" || ready.Message != "" {
		t.Errorf("Ready %+v, want its state without the message", ready)
	}
	if healthy := apimeta.FindStatusCondition(got.Status.Conditions, heraldv1.DeliveryHealthyCondition); healthy == nil || *healthy != in.Status.Conditions[1] {
		t.Errorf("DeliveryHealthy %+v, want it unchanged", healthy)
	}
	if got.Status.SigningSecretRef == nil || got.Status.SigningSecretRef.Name != "orders-signing" || got.Status.Delivery == nil || *got.Status.Delivery != *in.Status.Delivery {
		t.Errorf("signingSecretRef %+v, delivery %+v, want both kept", got.Status.SigningSecretRef, got.Status.Delivery)
	}
	if other, err := trimEndpoint(&heraldv1.Subscription{}); err != nil || other == nil {
		t.Errorf("a non-endpoint is returned, got %v, %v", other, err)
	}
}

// TestStripUnreadKeepsOtherAnnotations: the cache drops managedFields and
// kubectl's last-applied copy and keeps every other annotation (the ping
// annotation is read from the cache).
func TestStripUnreadKeepsOtherAnnotations(t *testing.T) {
	ep := &heraldv1.WebhookEndpoint{ObjectMeta: metav1.ObjectMeta{
		Name: "orders", Namespace: "shop",
		Annotations: map[string]string{
			lastAppliedAnnotation:   `{"apiVersion":"herald.dev/v1alpha1","kind":"WebhookEndpoint"}`,
			heraldv1.PingAnnotation: "1",
		},
		ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl"}},
	}}
	out, err := stripUnread(ep)
	if err != nil {
		t.Fatal(err)
	}
	got := out.(*heraldv1.WebhookEndpoint)
	if got.ManagedFields != nil || len(got.Annotations) != 1 || got.Annotations[heraldv1.PingAnnotation] != "1" {
		t.Errorf("managedFields %v, annotations %v; want none and only the ping annotation", got.ManagedFields, got.Annotations)
	}
	only := &heraldv1.Subscription{ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{lastAppliedAnnotation: "{}"}}}
	if out, _ := stripUnread(only); out.(*heraldv1.Subscription).Annotations != nil {
		t.Errorf("annotations %v, want nil once the last-applied copy is gone", out.(*heraldv1.Subscription).Annotations)
	}
	if out, err := stripUnread("not an object"); err != nil || out != "not an object" {
		t.Errorf("a non-object is returned unchanged, got %v, %v", out, err)
	}
}
