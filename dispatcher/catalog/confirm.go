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
// namespace per interval. confirmTimeout bounds one list.
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
	// inflight is closed when the list in progress ends; nil when none is.
	inflight chan struct{}
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
// matched nothing, ConfirmSettled checks, with a list from the API server
// that started after the event was ingested (since), that the catalog has
// processed every WebhookEndpoint and Subscription of the namespace at the
// version the API server has. It reports settled=true when one did; else
// the event should be held and matched again after retry (the catalog is
// catching up, a list ran too recently, or the API server did not answer).
//
// It blocks for at most one metadata list of the namespace; concurrent
// callers share it.
func (c *Catalog) ConfirmSettled(ctx context.Context, namespace string, since time.Time) (settled bool, retry time.Duration) {
	if c.apiReader == nil {
		return true, 0
	}
	for {
		c.confirmMu.Lock()
		cf := c.confirms[namespace]
		if cf == nil {
			cf = &confirmation{}
			c.confirms[namespace] = cf
		}
		if cf.settled.After(since) {
			c.confirmMu.Unlock()
			return true, 0
		}
		if wait := cf.inflight; wait != nil {
			startedAfter := cf.started.After(since)
			c.confirmMu.Unlock()
			if !startedAfter {
				return false, catchUpRetry
			}
			select {
			case <-wait:
				continue // read its result
			case <-ctx.Done():
				return false, catchUpRetry
			}
		}
		now := c.now()
		if next := cf.started.Add(confirmInterval); now.Before(next) {
			c.confirmMu.Unlock()
			return false, max(next.Sub(now), catchUpRetry)
		}
		if !now.After(since) {
			// Same clock reading as the ingest: a list now might not see
			// an object created just before it.
			c.confirmMu.Unlock()
			return false, catchUpRetry
		}
		cf.started, cf.inflight = now, make(chan struct{})
		c.confirmMu.Unlock()

		caughtUp, err := c.caughtUp(ctx, namespace)
		if err != nil {
			c.log.V(1).Info("Cannot confirm the catalog is up to date; holding unmatched events", "namespace", namespace, "error", err.Error())
		}
		c.confirmMu.Lock()
		if caughtUp {
			cf.settled = now
		}
		close(cf.inflight)
		cf.inflight = nil
		c.confirmMu.Unlock()
		if caughtUp {
			return true, 0
		}
		return false, catchUpRetry
	}
}

// caughtUp lists the namespace's WebhookEndpoints and Subscriptions from
// the API server (metadata only) and reports whether the catalog has
// processed each of them at the listed resourceVersion.
func (c *Catalog) caughtUp(ctx context.Context, namespace string) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, confirmTimeout)
	defer cancel()
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
