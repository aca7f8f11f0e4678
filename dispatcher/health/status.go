package health

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/dispatcher/catalog"
	"github.com/herald-dev/herald/dispatcher/queue"
)

// FieldOwner is the dispatcher's server-side apply field manager. It owns
// status.delivery and the DeliveryHealthy condition of WebhookEndpoints and
// status.matched, delivered and lastMatchedTime of Subscriptions; the
// manager ("herald-manager") owns the rest of status, so neither write
// removes the other's fields.
const FieldOwner = client.FieldOwner("herald-dispatcher")

// statsConcurrency bounds concurrent queue-count requests.
const statsConcurrency = 8

// writerState is the status writer's bookkeeping, reset whenever this
// replica takes the lease.
type writerState struct {
	lastWrite     map[objectKey]time.Time
	notFoundSince map[objectKey]time.Time
	queueStats    map[objectKey]queueStats
	known         map[objectKey]bool // catalog endpoints at the last pass
	// listed is the catalog's list at the last pass and endpoints the same
	// by key; a pass that gets the same snapshot again (SameEndpoints)
	// reuses them.
	listed        []*catalog.Endpoint
	endpoints     map[objectKey]*catalog.Endpoint
	lastStatsPoll time.Time
	lastResync    time.Time
}

// startWriting prepares a fresh writer: every object is checked on the first
// pass, so a new writer corrects whatever the previous one left behind.
func (r *Reporter) startWriting() {
	r.writer = writerState{
		lastWrite:     make(map[objectKey]time.Time),
		notFoundSince: make(map[objectKey]time.Time),
		queueStats:    make(map[objectKey]queueStats),
		known:         make(map[objectKey]bool),
		lastResync:    r.opts.Now(),
	}
	r.markDirty(r.cachedObjects()...)
}

// stopWriting drops the writer's state and its gauges: the new writer
// exports them, and two replicas exporting them would double sums.
func (r *Reporter) stopWriting() {
	for k := range r.writer.known {
		r.metrics.forgetEndpoint(k)
	}
	r.writer = writerState{}
}

// errWriteBudget means the global write budget is spent for now.
var errWriteBudget = errors.New("status write budget exhausted")

// writeStatuses is one pass of the status writer.
func (r *Reporter) writeStatuses(ctx context.Context) {
	now := r.opts.Now()
	w := &r.writer

	endpoints, appeared := r.catalogEndpoints()
	if now.Sub(w.lastResync) >= r.opts.ResyncInterval {
		w.lastResync = now
		r.markDirty(r.cachedObjects()...)
		for k := range endpoints {
			r.markDirty(k)
		}
	}
	if now.Sub(w.lastStatsPoll) >= r.opts.Interval {
		w.lastStatsPoll = now
		r.pollQueueStats(ctx, endpoints)
	} else if len(appeared) > 0 {
		// New endpoints get their counts before their first write.
		r.pollQueueStats(ctx, appeared)
	}

	dirty := r.takeDirty()
	// Endpoints before Subscriptions, then by name: a stable order, so a
	// write budget that runs out does not starve the same objects each time.
	slices.SortFunc(dirty, func(a, b objectKey) int {
		if a.kind != b.kind {
			if a.kind == kindEndpoint {
				return -1
			}
			return 1
		}
		if a.namespace != b.namespace {
			if a.namespace < b.namespace {
				return -1
			}
			return 1
		}
		switch {
		case a.name < b.name:
			return -1
		case a.name > b.name:
			return 1
		}
		return 0
	})
	var keep []objectKey
	for i, k := range dirty {
		if ctx.Err() != nil {
			keep = append(keep, dirty[i:]...)
			break
		}
		if last, ok := w.lastWrite[k]; ok && now.Sub(last) < r.opts.Interval {
			keep = append(keep, k) // written recently: wait for the interval
			continue
		}
		var (
			wrote, again bool
			err          error
		)
		if k.kind == kindEndpoint {
			wrote, again, err = r.writeEndpoint(ctx, k, endpoints[k], now)
		} else {
			wrote, again, err = r.writeSubscription(ctx, k, now)
		}
		if errors.Is(err, errWriteBudget) {
			keep = append(keep, dirty[i:]...)
			break
		}
		if err != nil {
			r.metrics.statusWrites.WithLabelValues(k.kind, "error").Inc()
			r.log.Error(err, "Writing delivery health status failed; retrying", "object", k.String())
			again = true
		}
		if wrote {
			w.lastWrite[k] = now
			r.metrics.statusWrites.WithLabelValues(k.kind, "success").Inc()
		}
		if again {
			keep = append(keep, k)
		}
	}
	r.markDirty(keep...)
}

// catalogEndpoints returns the catalog's Ready endpoints by key, and those
// that appeared since the last pass. Endpoints that appeared or left are
// marked dirty; those that left lose their gauges. When the catalog's
// snapshot is the one of the last pass, nothing changed and nothing is
// rebuilt: an idle dispatcher's passes do no work per endpoint.
func (r *Reporter) catalogEndpoints() (endpoints, appeared map[objectKey]*catalog.Endpoint) {
	w := &r.writer
	var list []*catalog.Endpoint
	if r.endpoints != nil {
		list = r.endpoints.Endpoints()
	}
	if w.endpoints != nil && catalog.SameEndpoints(list, w.listed) {
		return w.endpoints, nil
	}
	endpoints = make(map[objectKey]*catalog.Endpoint, len(list))
	for _, ep := range list {
		if ep != nil {
			endpoints[endpointKey(ep.Namespace, ep.Name)] = ep
		}
	}
	appeared = make(map[objectKey]*catalog.Endpoint)
	for k, ep := range endpoints {
		if !w.known[k] {
			appeared[k] = ep
			r.markDirty(k)
		}
	}
	for k := range w.known {
		if _, ok := endpoints[k]; !ok {
			// Deleted, or no longer Ready: stop exporting its gauges; the
			// check in writeStatuses finds out which.
			r.metrics.forgetEndpoint(k)
			delete(w.queueStats, k)
			r.markDirty(k)
		}
	}
	w.known = make(map[objectKey]bool, len(endpoints))
	for k := range endpoints {
		w.known[k] = true
	}
	w.listed, w.endpoints = list, endpoints
	return endpoints, appeared
}

// pollQueueStats refreshes pending and dead-lettered counts and the gauges;
// endpoints whose counts changed get their status rewritten.
func (r *Reporter) pollQueueStats(ctx context.Context, endpoints map[objectKey]*catalog.Endpoint) {
	if r.stats == nil || len(endpoints) == 0 {
		return
	}
	keys := make([]queue.EndpointKey, 0, len(endpoints))
	for k := range endpoints {
		keys = append(keys, queue.EndpointKey{Namespace: k.namespace, Name: k.name})
	}
	opCtx, cancel := r.opContext(ctx)
	counts, err := r.stats.Counts(opCtx, keys)
	cancel()
	if err != nil {
		r.log.V(1).Info("Reading queue counts failed; keeping the previous ones", "endpoints", len(keys), "error", err.Error())
		return
	}
	var (
		mu      sync.Mutex
		wg      sync.WaitGroup
		changed []objectKey
		failed  int
		lastErr error
	)
	// The age of the oldest pending delivery is one request per endpoint
	// with deliveries pending; the others have none.
	sem := make(chan struct{}, statsConcurrency)
	for k := range endpoints {
		c := counts[queue.EndpointKey{Namespace: k.namespace, Name: k.name}]
		st := queueStats{Pending: int64(c.Pending), DeadLettered: int64(c.DeadLettered)}
		prev, seen := r.writer.queueStats[k]
		if prev != st {
			changed = append(changed, k)
		}
		// The gauges are set when a value changes, not on every poll.
		if !seen || prev != st {
			r.writer.queueStats[k] = st
			r.metrics.setEndpoint(k, st)
			if c.Pending == 0 {
				r.metrics.setOldestPending(k, time.Time{}, time.Now())
			}
		}
		if c.Pending == 0 {
			continue
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			opCtx, cancel := r.opContext(ctx)
			defer cancel()
			oldest, _, err := r.stats.OldestPending(opCtx, k.namespace, k.name)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed, lastErr = failed+1, err
				return
			}
			r.metrics.setOldestPending(k, oldest, time.Now())
		})
	}
	wg.Wait()
	r.markDirty(changed...)
	if failed > 0 {
		r.log.V(1).Info("Reading the oldest pending deliveries failed; keeping the previous ages", "endpoints", failed, "error", lastErr.Error())
	}
}

// writeEndpoint brings one WebhookEndpoint's status.delivery and
// DeliveryHealthy condition up to date. It reports whether it wrote, and
// whether the object must be looked at again on the next pass.
func (r *Reporter) writeEndpoint(ctx context.Context, k objectKey, catEp *catalog.Endpoint, now time.Time) (wrote, again bool, err error) {
	opCtx, cancel := r.opContext(ctx)
	defer cancel()
	var ep heraldv1.WebhookEndpoint
	if err := r.client.Get(opCtx, types.NamespacedName{Namespace: k.namespace, Name: k.name}, &ep); err != nil {
		if apierrors.IsNotFound(err) {
			return false, r.collectGarbage(ctx, k, now), nil
		}
		return false, true, fmt.Errorf("get WebhookEndpoint %s/%s: %w", k.namespace, k.name, err)
	}
	delete(r.writer.notFoundSince, k)

	st, err := r.attachEndpoint(ctx, k, &ep)
	if err != nil {
		return false, true, err
	}
	stats, polled := r.writer.queueStats[k]
	if !polled && ep.Status.Delivery != nil {
		// Not in the catalog (not Ready): its counts are not polled, so
		// keep the last ones written rather than claim zero.
		stats = queueStats{Pending: ep.Status.Delivery.Pending, DeadLettered: ep.Status.Delivery.DeadLettered}
	}
	delivery := deliveryStatus(st, stats)
	cond := deliveryHealthy(endpointFacts{
		Generation:        ep.Generation,
		Suspended:         ep.Spec.Suspend,
		SigningKeyMissing: catEp != nil && len(catEp.Keys) == 0,
		State:             st,
		Threshold:         r.opts.FailureThreshold,
	})
	cond = withTransitionTime(cond, ep.Status.Conditions, now)
	if endpointStatusCurrent(&ep, delivery, cond) {
		return false, false, nil
	}
	if !r.limiter.Allow() {
		return false, true, errWriteBudget
	}
	status := heraldv1.WebhookEndpointStatus{Conditions: []metav1.Condition{cond}, Delivery: &delivery}
	if err := applyStatus(opCtx, r.client, heraldv1.GroupVersion.WithKind("WebhookEndpoint"), k, &status); err != nil {
		return false, true, err
	}
	return true, false, nil
}

// writeSubscription brings one Subscription's counts up to date.
func (r *Reporter) writeSubscription(ctx context.Context, k objectKey, now time.Time) (wrote, again bool, err error) {
	opCtx, cancel := r.opContext(ctx)
	defer cancel()
	var sub heraldv1.Subscription
	if err := r.client.Get(opCtx, types.NamespacedName{Namespace: k.namespace, Name: k.name}, &sub); err != nil {
		if apierrors.IsNotFound(err) {
			return false, r.collectGarbage(ctx, k, now), nil
		}
		return false, true, fmt.Errorf("get Subscription %s/%s: %w", k.namespace, k.name, err)
	}
	delete(r.writer.notFoundSince, k)

	st, err := r.attachSubscription(ctx, k, &sub)
	if err != nil {
		return false, true, err
	}
	if subscriptionStatusCurrent(&sub, st) {
		return false, false, nil
	}
	if !r.limiter.Allow() {
		return false, true, errWriteBudget
	}
	status := heraldv1.SubscriptionStatus{Matched: st.Matched, Delivered: st.Delivered, LastMatchedTime: apiTime(st.LastMatchedTime)}
	if err := applyStatus(opCtx, r.client, heraldv1.GroupVersion.WithKind("Subscription"), k, &status); err != nil {
		return false, true, err
	}
	return true, false, nil
}

// attachEndpoint returns the endpoint's totals, first tying the entry to the
// object's UID. An entry without a UID is new (or the bucket was lost): the
// counts the object already shows are added, so a new NATS store does not
// zero them. An entry with another UID belongs to a deleted object of the
// same name: it starts afresh.
func (r *Reporter) attachEndpoint(ctx context.Context, k objectKey, ep *heraldv1.WebhookEndpoint) (endpointState, error) {
	uid := string(ep.UID)
	if e, ok := r.cached(k.bucketKey()); ok && !e.deleted {
		if st, err := decodeEndpointState(e.value); err == nil && st.UID == uid {
			return st, nil
		}
	}
	var result endpointState
	err := r.mergeInto(ctx, k, func(current []byte) ([]byte, error) {
		st, err := decodeEndpointState(current)
		if err != nil {
			st = endpointState{}
		}
		switch st.UID {
		case uid:
			result = st
			return nil, nil
		case "":
			st.merge(stateFromEndpointStatus(ep.Status.Delivery))
		default:
			st = stateFromEndpointStatus(ep.Status.Delivery)
		}
		st.UID = uid
		result = st
		return encode(st)
	})
	return result, err
}

// attachSubscription is attachEndpoint for Subscriptions.
func (r *Reporter) attachSubscription(ctx context.Context, k objectKey, sub *heraldv1.Subscription) (subscriptionState, error) {
	uid := string(sub.UID)
	if e, ok := r.cached(k.bucketKey()); ok && !e.deleted {
		if st, err := decodeSubscriptionState(e.value); err == nil && st.UID == uid {
			return st, nil
		}
	}
	var result subscriptionState
	err := r.mergeInto(ctx, k, func(current []byte) ([]byte, error) {
		st, err := decodeSubscriptionState(current)
		if err != nil {
			st = subscriptionState{}
		}
		switch st.UID {
		case uid:
			result = st
			return nil, nil
		case "":
			st.merge(stateFromSubscriptionStatus(sub.Status))
		default:
			st = stateFromSubscriptionStatus(sub.Status)
		}
		st.UID = uid
		result = st
		return encode(st)
	})
	return result, err
}

// collectGarbage handles an object the API does not have: once it has been
// missing for GCGrace (a cache can lag behind a create), its entry is
// deleted. It reports whether to look again.
func (r *Reporter) collectGarbage(ctx context.Context, k objectKey, now time.Time) bool {
	w := &r.writer
	since, ok := w.notFoundSince[k]
	if !ok {
		w.notFoundSince[k] = now
		return true
	}
	if now.Sub(since) < r.opts.GCGrace {
		return true
	}
	if err := r.deleteEntry(ctx, k); err != nil {
		// Changed meanwhile (an attempt still in flight): the watch marks
		// it again and it is checked once more.
		r.log.V(1).Info("Deleting health entry of a deleted object failed", "object", k.String(), "error", err.Error())
	}
	delete(w.notFoundSince, k)
	delete(w.lastWrite, k)
	r.metrics.forgetEndpoint(k)
	return false
}

// applyStatus server-side applies the dispatcher's part of an object's
// status: status holds only the fields the dispatcher owns (the typed
// status is converted with omitempty, so the manager's fields are absent).
// Mirrors controllers/apply.go, with the dispatcher's field owner.
func applyStatus(ctx context.Context, c StatusClient, gvk schema.GroupVersionKind, k objectKey, status any) error {
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(status)
	if err != nil {
		return fmt.Errorf("convert status of %s %s/%s: %w", gvk.Kind, k.namespace, k.name, err)
	}
	u := &unstructured.Unstructured{Object: map[string]any{"status": m}}
	u.SetGroupVersionKind(gvk)
	u.SetNamespace(k.namespace)
	u.SetName(k.name)
	if err := c.Status().Apply(ctx, client.ApplyConfigurationFromUnstructured(u), FieldOwner, client.ForceOwnership); err != nil {
		return fmt.Errorf("apply status of %s %s/%s: %w", gvk.Kind, k.namespace, k.name, err)
	}
	return nil
}
