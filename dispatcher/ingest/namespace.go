package ingest

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/cache"
	"k8s.io/client-go/kubernetes"
	corev1listers "k8s.io/client-go/listers/core/v1"
)

// NamespaceChecker tells whether events may be published to a namespace:
// ingest answers 404 for a namespace that does not exist, so a typo does not
// silently store events no Subscription will ever see.
type NamespaceChecker interface {
	// Exists reports whether the namespace exists and is not being deleted.
	// An error means the answer is unknown (the request is answered 503).
	Exists(ctx context.Context, name string) (bool, error)
}

// NamespaceCheckerFunc adapts a function to NamespaceChecker.
type NamespaceCheckerFunc func(ctx context.Context, name string) (bool, error)

// Exists implements NamespaceChecker.
func (f NamespaceCheckerFunc) Exists(ctx context.Context, name string) (bool, error) {
	return f(ctx, name)
}

// Defaults of the APINamespaceChecker cache.
const (
	// DefaultNamespacePresentTTL is how long an existing namespace is
	// remembered. Events published to a namespace deleted within this time
	// are still accepted; no Subscription is left to see them.
	DefaultNamespacePresentTTL = 30 * time.Second
	// DefaultNamespaceAbsentTTL is how long a missing namespace is
	// remembered: short, so a namespace created just now is usable at once.
	DefaultNamespaceAbsentTTL = 2 * time.Second
)

// APINamespaceChecker checks namespaces with a GET against the API server,
// caching the answers (present for 30s, absent for 2s by default). It needs
// only get on namespaces, not list and watch of all of them, which suits a
// dispatcher that publishers reach for a handful of namespaces.
type APINamespaceChecker struct {
	client kubernetes.Interface
	cache  *decisionCache
}

// NewAPINamespaceChecker returns a NamespaceChecker backed by cached GETs.
// In opts, AllowTTL applies to existing namespaces and DenyTTL to missing
// ones; zero fields take DefaultNamespacePresentTTL and
// DefaultNamespaceAbsentTTL.
func NewAPINamespaceChecker(client kubernetes.Interface, opts CacheOptions) *APINamespaceChecker {
	return newAPINamespaceChecker(client, opts, nil)
}

func newAPINamespaceChecker(client kubernetes.Interface, opts CacheOptions, clock cache.Clock) *APINamespaceChecker {
	if opts.AllowTTL <= 0 {
		opts.AllowTTL = DefaultNamespacePresentTTL
	}
	if opts.DenyTTL <= 0 {
		opts.DenyTTL = DefaultNamespaceAbsentTTL
	}
	return &APINamespaceChecker{client: client, cache: newDecisionCache(opts, clock)}
}

// Exists implements NamespaceChecker.
func (c *APINamespaceChecker) Exists(ctx context.Context, name string) (bool, error) {
	v, err := c.cache.get(ctx, name, func(ctx context.Context) (any, bool, error) {
		ns, err := c.client.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return false, false, nil
		}
		if err != nil {
			return nil, false, fmt.Errorf("get namespace %s: %w", name, err)
		}
		exists := namespaceActive(ns)
		return exists, exists, nil
	})
	if err != nil {
		return false, err
	}
	return v.(bool), nil
}

// ListerNamespaceChecker checks namespaces in an informer's cache, for a
// dispatcher that watches namespaces anyway (it needs list and watch on
// namespaces). Its answers are as fresh as the informer.
type ListerNamespaceChecker struct {
	Lister corev1listers.NamespaceLister
}

// Exists implements NamespaceChecker.
func (c ListerNamespaceChecker) Exists(_ context.Context, name string) (bool, error) {
	ns, err := c.Lister.Get(name)
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("get namespace %s from cache: %w", name, err)
	}
	return namespaceActive(ns), nil
}

// namespaceActive is false for a namespace being deleted: its Subscriptions
// are going away, and new objects cannot be created in it either.
func namespaceActive(ns *corev1.Namespace) bool {
	return ns.DeletionTimestamp == nil && ns.Status.Phase != corev1.NamespaceTerminating
}
