package catalog

import (
	"context"
	"testing"
	"time"

	"github.com/go-logr/logr"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/cache"

	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
)

// TestConfirmSettledSeesWhatTheInformersHaveNot: a Subscription and its
// endpoint exist on the API server but not yet in the catalog (a catalog
// whose informers do not reach the namespace stands for informers that lag
// or are reconnecting): ConfirmSettled does not confirm the namespace, so
// an event that matches nothing is held. The live catalog, once its
// informers delivered both, confirms it; a namespace with nothing new is
// confirmed at once.
func TestConfirmSettledSeesWhatTheInformersHaveNot(t *testing.T) {
	g := NewWithT(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ns, empty := "catalog-confirm", "catalog-confirm-empty"
	for _, name := range []string{ns, empty} {
		g.Expect(k8sClient.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}})).To(Succeed())
	}

	opts := CacheOptions(k8sClient.Scheme())
	opts.DefaultNamespaces = map[string]cache.Config{"catalog-elsewhere": {}}
	blindCache, err := cache.New(testConfig, opts)
	g.Expect(err).NotTo(HaveOccurred())
	blind := New(blindCache, logr.Discard())
	blind.UseAPIReader(k8sClient)
	g.Expect(blind.Start(ctx)).To(Succeed())
	go func() { _ = blindCache.Start(ctx) }()
	g.Expect(blindCache.WaitForCacheSync(ctx)).To(BeTrue())
	g.Expect(blind.WaitForSync(ctx)).To(Succeed())
	cat.UseAPIReader(k8sClient)

	ep := &heraldv1.WebhookEndpoint{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "orders"},
		Spec: heraldv1.WebhookEndpointSpec{URL: "https://example.com/hooks"}}
	g.Expect(k8sClient.Create(ctx, ep)).To(Succeed())
	sub := &heraldv1.Subscription{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "all"},
		Spec: heraldv1.SubscriptionSpec{EndpointRef: heraldv1.LocalObjectReference{Name: "orders"}, Types: []string{"*"}}}
	g.Expect(k8sClient.Create(ctx, sub)).To(Succeed())
	markReady(t, ep, "WebhookEndpoint", nil)
	markReady(t, sub, "Subscription", nil)
	published := time.Now()

	g.Expect(blind.InTransition(ns)).To(BeFalse(), "InTransition alone cannot see them")
	settled, retry := blind.ConfirmSettled(ctx, ns, published)
	g.Expect(settled).To(BeFalse(), "no list since the event: not confirmed")
	g.Expect(retry).To(BeNumerically(">", 0))
	caughtUp, err := blind.caughtUp(ctx, ns)
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(caughtUp).To(BeFalse(), "objects the catalog has not seen must not count as settled")

	// A namespace with nothing the catalog lacks is confirmed by the list
	// the first call starts.
	since := time.Now().Add(-time.Millisecond)
	g.Eventually(func() bool {
		settled, _ := blind.ConfirmSettled(ctx, empty, since)
		return settled
	}, 10*time.Second, 50*time.Millisecond).Should(BeTrue(), "a namespace with nothing the catalog lacks is settled")

	g.Eventually(func() bool {
		settled, _ := cat.ConfirmSettled(ctx, ns, published)
		return settled
	}, 10*time.Second, 100*time.Millisecond).Should(BeTrue(), "the live catalog catches up")
	subs, _ := cat.Subscriptions(ns)
	g.Expect(subs).To(HaveLen(1), "confirmed only once the Subscription is in the catalog")
}
