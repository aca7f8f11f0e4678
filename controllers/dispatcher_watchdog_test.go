package controllers

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
)

// dispatcherFieldOwner is the dispatcher's field manager (health.FieldOwner;
// the control plane does not import the data plane).
const dispatcherFieldOwner = client.FieldOwner("herald-dispatcher")

// fakeStatusWriter plays the dispatcher's status writer as the API server
// sees it: it renews the status writer's Lease and applies DeliveryHealthy
// under the dispatcher's field manager with ForceOwnership, as
// dispatcher/health does.
type fakeStatusWriter struct {
	t         *testing.T
	namespace string

	mu        sync.Mutex
	lastRenew time.Time
	stop      chan struct{}
	done      chan struct{}
}

// renew writes the Lease once, with a one-second lease duration.
func (d *fakeStatusWriter) renew(ctx context.Context) {
	d.t.Helper()
	now := time.Now()
	lease := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: d.namespace, Name: heraldv1.StatusWriterLeaseName}}
	err := k8sClient.Get(ctx, client.ObjectKeyFromObject(lease), lease)
	switch {
	case apierrors.IsNotFound(err):
		lease.Spec = coordinationv1.LeaseSpec{HolderIdentity: ptr.To("dispatcher-0"), LeaseDurationSeconds: ptr.To[int32](1),
			AcquireTime: &metav1.MicroTime{Time: now}, RenewTime: &metav1.MicroTime{Time: now}}
		err = k8sClient.Create(ctx, lease)
	case err == nil:
		lease.Spec.RenewTime = &metav1.MicroTime{Time: now}
		err = k8sClient.Update(ctx, lease)
	}
	if err != nil {
		d.t.Errorf("renew the status writer's Lease: %v", err)
		return
	}
	d.mu.Lock()
	d.lastRenew = now
	d.mu.Unlock()
}

// start renews the Lease every 200ms until stopRenewing.
func (d *fakeStatusWriter) start(ctx context.Context) {
	d.renew(ctx)
	d.stop, d.done = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(d.done)
		ticker := time.NewTicker(200 * time.Millisecond)
		defer ticker.Stop()
		for {
			select {
			case <-d.stop:
				return
			case <-ticker.C:
				d.renew(ctx)
			}
		}
	}()
}

// stopRenewing stops the renewals (the dispatcher dies) and returns the
// last renewTime written.
func (d *fakeStatusWriter) stopRenewing() time.Time {
	close(d.stop)
	<-d.done
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.lastRenew
}

func (d *fakeStatusWriter) lastRenewTime() time.Time {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.lastRenew
}

// reportHealthy applies DeliveryHealthy=True as the dispatcher does.
func (d *fakeStatusWriter) reportHealthy(ctx context.Context, key client.ObjectKey) {
	d.t.Helper()
	ep := &heraldv1.WebhookEndpoint{}
	if err := k8sClient.Get(ctx, key, ep); err != nil {
		d.t.Fatal(err)
	}
	cond := metav1.Condition{Type: heraldv1.DeliveryHealthyCondition, Status: metav1.ConditionTrue, Reason: heraldv1.DeliveringReason,
		Message: "Deliveries succeed", ObservedGeneration: ep.Generation, LastTransitionTime: metav1.NewTime(time.Now().UTC().Truncate(time.Second))}
	if old := meta.FindStatusCondition(ep.Status.Conditions, cond.Type); old != nil && old.Status == cond.Status {
		cond.LastTransitionTime = old.LastTransitionTime
	}
	status, err := statusToMap(&heraldv1.WebhookEndpointStatus{Conditions: []metav1.Condition{cond}})
	if err != nil {
		d.t.Fatal(err)
	}
	u := &unstructured.Unstructured{Object: map[string]any{"status": status}}
	u.SetGroupVersionKind(heraldv1.GroupVersion.WithKind("WebhookEndpoint"))
	u.SetNamespace(key.Namespace)
	u.SetName(key.Name)
	if err := k8sClient.Status().Apply(ctx, client.ApplyConfigurationFromUnstructured(u), dispatcherFieldOwner, client.ForceOwnership); err != nil {
		d.t.Fatalf("apply DeliveryHealthy as the dispatcher: %v", err)
	}
}

// startWatchdog runs a DispatcherWatchdog in a manager of its own (the
// suite's manager has none) whose cache sees only ns and the dispatcher's
// namespace.
func startWatchdog(t *testing.T, ns string) *DispatcherWatchdog {
	t.Helper()
	mgr, err := ctrl.NewManager(testCfg, ctrl.Options{
		Scheme:  testScheme,
		Metrics: metricsserver.Options{BindAddress: "0"},
		Cache: cache.Options{
			DefaultNamespaces: map[string]cache.Config{ns: {}, testDispCfg.Namespace: {}},
			ByObject:          map[client.Object]cache.ByObject{&coordinationv1.Lease{}: StatusWriterLeaseCacheOptions(testDispCfg.Namespace)},
		},
		Controller: config.Controller{SkipNameValidation: ptr.To(true)},
	})
	if err != nil {
		t.Fatal(err)
	}
	w := &DispatcherWatchdog{Client: mgr.GetClient(), LeaseNamespace: testDispCfg.Namespace, CheckInterval: 50 * time.Millisecond}
	if err := w.SetupWithManager(mgr); err != nil {
		t.Fatal(err)
	}
	startManager(t, context.Background(), mgr)
	return w
}

// ownsDeliveryHealthyStatus reports whether a field manager owns the
// status field of the DeliveryHealthy condition.
func ownsDeliveryHealthyStatus(g Gomega, ep *heraldv1.WebhookEndpoint, manager client.FieldOwner) bool {
	for _, mf := range ep.ManagedFields {
		if mf.Manager != string(manager) || mf.Subresource != "status" || mf.FieldsV1 == nil {
			continue
		}
		var fields map[string]any
		g.Expect(json.Unmarshal(mf.FieldsV1.GetRawBytes(), &fields)).To(Succeed())
		status, _ := fields["f:status"].(map[string]any)
		conditions, _ := status["f:conditions"].(map[string]any)
		entry, _ := conditions[`k:{"type":"DeliveryHealthy"}`].(map[string]any)
		if _, ok := entry["f:status"]; ok {
			return true
		}
	}
	return false
}

func deliveryHealthy(ep *heraldv1.WebhookEndpoint) metav1.Condition {
	if c := meta.FindStatusCondition(ep.Status.Conditions, heraldv1.DeliveryHealthyCondition); c != nil {
		return *c
	}
	return metav1.Condition{}
}

// TestDispatcherNotReportingIsVisible: while the status writer renews its
// Lease, DeliveryHealthy is the dispatcher's; when it stops, the manager
// turns it Unknown (DispatcherNotReporting) with a message that names the
// last renewal and does not change; when the dispatcher is back, its own
// write wins and stays.
func TestDispatcherNotReportingIsVisible(t *testing.T) {
	g := NewWithT(t)
	ctx := context.Background()
	ns := newNamespace(t)
	key := client.ObjectKey{Namespace: ns, Name: "orders"}
	g.Expect(k8sClient.Create(ctx, endpoint(ns, key.Name))).To(Succeed())
	waitEndpointReady(t, key, metav1.ConditionTrue, heraldv1.ReconciledReason)

	w := startWatchdog(t, ns)
	d := &fakeStatusWriter{t: t, namespace: testDispCfg.Namespace}
	t.Cleanup(func() {
		_ = k8sClient.Delete(context.Background(), &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: testDispCfg.Namespace, Name: heraldv1.StatusWriterLeaseName}})
	})

	// The dispatcher reports. Nothing changes for longer than the
	// not-reporting threshold (two one-second lease durations): anchored
	// on the watchdog having seen a renewal written three seconds after
	// the first.
	d.start(ctx)
	d.reportHealthy(ctx, key)
	first := d.lastRenewTime()
	g.Eventually(func() time.Time {
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.lease.renewTime
	}, waitTimeout, pollEvery).Should(BeTemporally(">", first.Add(3*time.Second)))
	ep := getEndpoint(g, key)
	g.Expect(deliveryHealthy(ep).Status).To(Equal(metav1.ConditionTrue), "DeliveryHealthy while the dispatcher reports")
	g.Expect(ownsDeliveryHealthyStatus(g, ep, DeliveryHealthFieldOwner)).To(BeFalse())

	// The dispatcher dies.
	lastRenew := d.stopRenewing()
	wantMessage := "No dispatcher has reported delivery health since " + lastRenew.UTC().Format(time.RFC3339)
	g.Eventually(func(g Gomega) {
		c := deliveryHealthy(getEndpoint(g, key))
		g.Expect(c.Status).To(Equal(metav1.ConditionUnknown))
		g.Expect(c.Reason).To(Equal(heraldv1.DispatcherNotReportingReason))
	}, waitTimeout, pollEvery).Should(Succeed())
	ep = getEndpoint(g, key)
	c := deliveryHealthy(ep)
	g.Expect(c.Message).To(HavePrefix(wantMessage))
	g.Expect(c.Message).To(ContainSubstring(testDispCfg.Namespace + "/" + heraldv1.StatusWriterLeaseName))
	g.Expect(c.ObservedGeneration).To(Equal(ep.Generation))
	g.Expect(ownsDeliveryHealthyStatus(g, ep, DeliveryHealthFieldOwner)).To(BeTrue())
	g.Expect(ownsDeliveryHealthyStatus(g, ep, dispatcherFieldOwner)).To(BeFalse())
	// The manager's own conditions are untouched.
	g.Expect(readyFor(ep.Status.Conditions, ep.Generation)).NotTo(BeNil())
	g.Expect(readyFor(ep.Status.Conditions, ep.Generation).Status).To(Equal(metav1.ConditionTrue))

	// The mark is written once: reconciling again writes nothing.
	if _, err := w.Reconcile(ctx, ctrl.Request{NamespacedName: key}); err != nil {
		t.Fatal(err)
	}
	g.Expect(getEndpoint(g, key).ResourceVersion).To(Equal(ep.ResourceVersion), "a second reconcile rewrote the condition")

	// An endpoint created meanwhile is marked too.
	key2 := client.ObjectKey{Namespace: ns, Name: "invoices"}
	g.Expect(k8sClient.Create(ctx, endpoint(ns, key2.Name))).To(Succeed())
	g.Eventually(func(g Gomega) {
		g.Expect(deliveryHealthy(getEndpoint(g, key2)).Reason).To(Equal(heraldv1.DispatcherNotReportingReason))
	}, waitTimeout, pollEvery).Should(Succeed())

	// The dispatcher is back: it renews its Lease, then writes status.
	d.start(ctx)
	back := d.lastRenewTime()
	d.reportHealthy(ctx, key)
	g.Eventually(func(g Gomega) {
		ep := getEndpoint(g, key)
		g.Expect(deliveryHealthy(ep).Status).To(Equal(metav1.ConditionTrue))
		g.Expect(ownsDeliveryHealthyStatus(g, ep, dispatcherFieldOwner)).To(BeTrue())
		g.Expect(ownsDeliveryHealthyStatus(g, ep, DeliveryHealthFieldOwner)).To(BeFalse())
	}, waitTimeout, pollEvery).Should(Succeed())
	// A spec change reconciles the endpoint in both of the manager's
	// controllers; the dispatcher's condition survives both.
	ep = getEndpoint(g, key)
	ep.Spec.Timeout = &metav1.Duration{Duration: 7 * time.Second}
	g.Expect(k8sClient.Update(ctx, ep)).To(Succeed())
	waitEndpointReady(t, key, metav1.ConditionTrue, heraldv1.ReconciledReason)
	// And it stays the dispatcher's for longer than the threshold.
	g.Eventually(func() time.Time {
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.lease.renewTime
	}, waitTimeout, pollEvery).Should(BeTemporally(">", back.Add(3*time.Second)))
	ep = getEndpoint(g, key)
	c = deliveryHealthy(ep)
	g.Expect(c.Status).To(Equal(metav1.ConditionTrue), "DeliveryHealthy after the dispatcher came back: %+v", c)
	g.Expect(c.Reason).To(Equal(heraldv1.DeliveringReason))
	g.Expect(ownsDeliveryHealthyStatus(g, ep, DeliveryHealthFieldOwner)).To(BeFalse())

	// Dying again is seen again, with the new last renewal.
	lastRenew = d.stopRenewing()
	g.Eventually(func(g Gomega) {
		c := deliveryHealthy(getEndpoint(g, key))
		g.Expect(c.Reason).To(Equal(heraldv1.DispatcherNotReportingReason))
		g.Expect(strings.HasPrefix(c.Message, "No dispatcher has reported delivery health since "+lastRenew.UTC().Format(time.RFC3339))).To(BeTrue(), c.Message)
	}, waitTimeout, pollEvery).Should(Succeed())
}

// TestDispatcherWatchdogVerdict covers the verdict without a cluster: no
// Lease, no verdict; the Lease's age counts on the manager's clock from
// the last change of renewTime, whatever renewTime says; a renewal ends
// the verdict at once.
func TestDispatcherWatchdogVerdict(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	w := &DispatcherWatchdog{LeaseNamespace: "herald-system", Now: func() time.Time { return now }}
	ctx := context.Background()
	lease := func(renew time.Time) *coordinationv1.Lease {
		return &coordinationv1.Lease{Spec: coordinationv1.LeaseSpec{LeaseDurationSeconds: ptr.To[int32](10), RenewTime: &metav1.MicroTime{Time: renew}}}
	}
	if w.check(now.Add(time.Hour)) {
		t.Fatal("a verdict without a Lease")
	}
	// A renewTime far in the past (a skewed clock, or a long-dead
	// dispatcher seen by a manager that just started) starts the count now.
	old := now.Add(-24 * time.Hour)
	w.observe(ctx, lease(old))
	if w.check(now.Add(20 * time.Second)) {
		t.Fatal("not reporting after two lease durations exactly")
	}
	// The same renewTime again (a resync) is not a renewal.
	now = now.Add(15 * time.Second)
	w.observe(ctx, lease(old))
	if !w.check(now.Add(6 * time.Second)) {
		t.Fatal("still reporting after more than two lease durations without a renewal")
	}
	since, ok := w.notReportingSince()
	if !ok || !since.Equal(old) {
		t.Fatalf("notReportingSince = %s, %v", since, ok)
	}
	if w.check(now.Add(time.Hour)) {
		t.Fatal("the verdict turned twice")
	}
	w.observe(ctx, lease(now))
	if _, ok := w.notReportingSince(); ok {
		t.Fatal("a renewal did not end the verdict")
	}
	w.forget()
	if w.check(now.Add(time.Hour)) {
		t.Fatal("a verdict after the Lease was deleted")
	}
}
