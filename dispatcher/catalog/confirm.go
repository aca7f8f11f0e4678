package catalog

import (
	"context"
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
)

// Confirmation pacing. An unmatched event waits for a confirmation that
// started after it was ingested; a namespace is listed at most once per
// confirmInterval, so steady unmatched traffic costs one metadata list per
// namespace per interval, and an unmatched event is discarded within about
// a second. confirmTimeout bounds one list.
const (
	confirmInterval = time.Second
	confirmTimeout  = 5 * time.Second
	// catchUpRetry is how soon an event is matched again when the API
	// server holds objects the catalog has not processed yet: informer
	// lag is milliseconds.
	catchUpRetry = 250 * time.Millisecond
)

// confirmation is what the last list of a namespace found.
type confirmation struct {
	// started is when the last list started; settled is the start of the
	// last list that found the catalog caught up (zero if none did).
	started, settled time.Time
	// inflight is set while a list runs.
	inflight bool
}

// UseAPIReader sets the reader ConfirmSettled lists with: one that reads
// from the API server (the manager's APIReader), not from the cache.
// Without it ConfirmSettled confirms nothing and reports every namespace
// settled.
func (c *Catalog) UseAPIReader(r client.Reader) { c.apiReader = r }

// ConfirmSettled closes the informer-lag gap of InTransition: informers
// see a Subscription created a moment ago a moment later, so an event
// ingested in between would match nothing in a namespace that looks
// settled, and be discarded. Before the router discards an event that
// matched nothing, ConfirmSettled checks that a list from the API server
// that started after the event was ingested (since) found the catalog
// with every WebhookEndpoint and Subscription of the namespace at the
// version the API server has. It reports settled=true when one did;
// otherwise it starts such a list in the background (at most one per
// namespace per confirmInterval) and the event should be held and matched
// again after retry.
//
// It never blocks on the API server: the router's batch goes on while the
// list runs.
func (c *Catalog) ConfirmSettled(_ context.Context, namespace string, since time.Time) (settled bool, retry time.Duration) {
	if c.apiReader == nil {
		return true, 0
	}
	c.confirmMu.Lock()
	defer c.confirmMu.Unlock()
	cf := c.confirms[namespace]
	if cf == nil {
		cf = &confirmation{}
		c.confirms[namespace] = cf
	}
	switch now := c.now(); {
	case cf.settled.After(since):
		return true, 0
	case cf.inflight:
		return false, catchUpRetry
	case now.Before(cf.started.Add(confirmInterval)):
		return false, max(cf.started.Add(confirmInterval).Sub(now), catchUpRetry)
	case !now.After(since):
		// Same clock reading as the ingest: a list now might not see an
		// object created just before it.
		return false, catchUpRetry
	default:
		cf.started, cf.inflight = now, true
		go c.confirm(namespace, cf, now)
		return false, catchUpRetry
	}
}

// confirm runs one list for ConfirmSettled and records what it found.
func (c *Catalog) confirm(namespace string, cf *confirmation, started time.Time) {
	ctx, cancel := context.WithTimeout(context.Background(), confirmTimeout)
	defer cancel()
	caughtUp, err := c.caughtUp(ctx, namespace)
	if err != nil {
		c.log.V(1).Info("Cannot confirm the catalog is up to date; holding unmatched events", "namespace", namespace, "error", err.Error())
	}
	c.confirmMu.Lock()
	defer c.confirmMu.Unlock()
	cf.inflight = false
	if caughtUp {
		cf.settled = started
	}
}

// caughtUp lists the namespace's WebhookEndpoints and Subscriptions from
// the API server (metadata only) and reports whether the catalog has
// processed each of them at the listed resourceVersion.
func (c *Catalog) caughtUp(ctx context.Context, namespace string) (bool, error) {
	for _, kind := range []string{"WebhookEndpoint", "Subscription"} {
		list := &metav1.PartialObjectMetadataList{}
		list.SetGroupVersionKind(heraldv1.GroupVersion.WithKind(kind + "List"))
		if err := c.apiReader.List(ctx, list, client.InNamespace(namespace)); err != nil {
			return false, fmt.Errorf("list %ss in %s: %w", kind, namespace, err)
		}
		c.mu.RLock()
		seen := c.seen[namespace]
		for i := range list.Items {
			item := &list.Items[i]
			if seen[kind+"/"+item.Name] != item.ResourceVersion {
				c.mu.RUnlock()
				return false, nil
			}
		}
		c.mu.RUnlock()
	}
	return true, nil
}

// resourceVersionOf is the resourceVersion of an object read from the
// cache, or "" when the read found none (err non-nil).
func resourceVersionOf(obj client.Object, err error) string {
	if err != nil {
		return ""
	}
	return obj.GetResourceVersion()
}

// setSeenLocked records the resourceVersion of an object the catalog has
// processed; "" forgets a deleted one. c.mu must be held.
func (c *Catalog) setSeenLocked(namespace, object, resourceVersion string) {
	if resourceVersion == "" {
		delete(c.seen[namespace], object)
		if len(c.seen[namespace]) == 0 {
			delete(c.seen, namespace)
		}
		return
	}
	if c.seen[namespace] == nil {
		c.seen[namespace] = map[string]string{}
	}
	c.seen[namespace][object] = resourceVersion
}
