package catalog

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/herald-dev/herald/api/filter"
	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
)

// CacheOptions restricts the dispatcher's informers: Secrets are
// label-selected, so the dispatcher never lists, watches or holds a Secret
// that is not an endpoint's managed Secret. Cached objects are kept without
// their managedFields and kubectl's last-applied-configuration annotation
// (stripUnread), which the dispatcher never reads (it writes status with
// server-side apply, and patches Redelivery status with a merge patch of
// status only) and which are often the larger part of an object; managed
// Secrets keep only what the catalog reads (trimSecret), WebhookEndpoints
// lose the status the dispatcher never reads (trimEndpoint).
func CacheOptions(scheme *runtime.Scheme) cache.Options {
	return cache.Options{
		Scheme:           scheme,
		DefaultTransform: stripUnread,
		ByObject: map[client.Object]cache.ByObject{
			&heraldv1.WebhookEndpoint{}: {Transform: trimEndpoint},
			&corev1.Secret{}: {
				Label:     labels.SelectorFromSet(labels.Set{heraldv1.SecretTypeLabel: heraldv1.SecretTypeEndpoint}),
				Transform: trimSecret,
			},
		},
	}
}

// lastAppliedAnnotation is where client-side `kubectl apply` keeps a copy
// of the object as last applied: as large as the spec again.
const lastAppliedAnnotation = "kubectl.kubernetes.io/last-applied-configuration"

// stripUnread drops from a cached object what the dispatcher never reads:
// managedFields and kubectl's last-applied copy.
func stripUnread(obj any) (any, error) {
	if o, ok := obj.(metav1.Object); ok {
		o.SetManagedFields(nil)
		if a := o.GetAnnotations(); a != nil {
			if _, ok := a[lastAppliedAnnotation]; ok {
				delete(a, lastAppliedAnnotation)
				if len(a) == 0 {
					o.SetAnnotations(nil)
				}
			}
		}
	}
	return obj, nil
}

// trimEndpoint is stripUnread for a WebhookEndpoint, which also drops the
// status the dispatcher never reads: status.signing (the manager's report
// on the keys; the catalog reads the keys from the managed Secret) and the
// messages of conditions other than DeliveryHealthy. The catalog reads
// Ready's status and observedGeneration, the ping handler Stalled's
// status, and the health reporter DeliveryHealthy in full, which it
// compares with the condition it would write. The dispatcher writes
// endpoints' status with server-side apply of its own fields only, so
// nothing dropped here is ever written back.
func trimEndpoint(obj any) (any, error) {
	obj, _ = stripUnread(obj)
	ep, ok := obj.(*heraldv1.WebhookEndpoint)
	if !ok {
		return obj, nil
	}
	ep.Status.Signing = nil
	for i := range ep.Status.Conditions {
		if c := &ep.Status.Conditions[i]; c.Type != heraldv1.DeliveryHealthyCondition {
			c.Message = ""
		}
	}
	return ep, nil
}

// trimSecret keeps of a managed Secret what the catalog reads: its
// identity, its controller (only a Secret the endpoint controls is trusted,
// and the controller names the endpoint to rebuild when the Secret
// changes) and its data. Labels (the informer selects on them at the API
// server), annotations, other owner references and managedFields are
// dropped: two small maps that were a third of a cached Secret. The
// dispatcher never writes Secrets, so nothing is lost by not caching them.
func trimSecret(obj any) (any, error) {
	s, ok := obj.(*corev1.Secret)
	if !ok {
		return obj, nil
	}
	// In place: the kept slice holds one entry, and the dropped values are
	// freed with the decoded object's other garbage.
	owners := s.OwnerReferences[:0]
	for _, ref := range s.OwnerReferences {
		if ref.Controller != nil && *ref.Controller {
			owners = append(owners, ref)
		}
	}
	clear(s.OwnerReferences[len(owners):])
	s.OwnerReferences = owners
	if len(owners) == 0 {
		s.OwnerReferences = nil
	}
	s.Labels, s.Annotations = nil, nil
	s.GenerateName, s.Finalizers, s.ManagedFields = "", nil, nil
	return s, nil
}

// controllingEndpoint returns the name of the WebhookEndpoint that
// controls o, or "" when none does.
func controllingEndpoint(o metav1.Object) string {
	ref := metav1.GetControllerOfNoCopy(o)
	if ref == nil || ref.Kind != "WebhookEndpoint" {
		return ""
	}
	if gv, err := schema.ParseGroupVersion(ref.APIVersion); err != nil || gv.Group != heraldv1.GroupVersion.Group {
		return ""
	}
	return ref.Name
}

// Catalog holds the Ready endpoints and Subscriptions, rebuilt object by
// object from informer events. Readers get immutable snapshots.
type Catalog struct {
	cache cache.Cache
	log   logr.Logger
	now   func() time.Time

	// rebuildMu serialises rebuilds: the handlers of different informers
	// run on different goroutines, and a rebuild that read the cache
	// earlier must not overwrite the result of one that read it later.
	rebuildMu sync.Mutex

	mu        sync.RWMutex
	endpoints map[string]*Endpoint                // namespace/name
	subs      map[string]map[string]*Subscription // namespace → name
	filters   map[string]*filter.Filter           // compiled filters by source text
	// sorted is the immutable snapshot Endpoints returns, built on the
	// first call after endpoints changed (nil until then).
	sorted []*Endpoint
	// ready is, per namespace, the immutable sorted snapshot Subscriptions
	// returns: Ready subscriptions whose endpoint is Ready. revision changes
	// whenever any snapshot does.
	ready    map[string][]*Subscription
	revision uint64
	// pending holds, per namespace, the objects ("WebhookEndpoint/name",
	// "Subscription/name") whose current generation the manager has not
	// reconciled yet: an event that matches nothing in their namespace may
	// match once it has.
	pending map[string]map[string]struct{}
	// seen holds, per namespace, the resourceVersion of every object
	// ("WebhookEndpoint/name", "Subscription/name") the catalog has
	// processed; ConfirmSettled compares it with the API server's.
	seen map[string]map[string]string
	// apiReader reads from the API server, not the cache (ConfirmSettled);
	// confirms keeps, per namespace, what the last confirmation found.
	apiReader client.Reader
	confirmMu sync.Mutex
	confirms  map[string]*confirmation
	listeners []func()
	deleted   []func(namespace, name string, uid types.UID)
	synced    []toolscache.ResourceEventHandlerRegistration
	expiry    map[string]*time.Timer // endpoint key → rebuild when a key expires
}

// New returns a Catalog fed by c, which must have been built with
// CacheOptions. Register handlers with Start before c is started.
func New(c cache.Cache, log logr.Logger) *Catalog {
	return &Catalog{
		cache:     c,
		log:       log,
		now:       time.Now,
		endpoints: map[string]*Endpoint{},
		subs:      map[string]map[string]*Subscription{},
		filters:   map[string]*filter.Filter{},
		ready:     map[string][]*Subscription{},
		pending:   map[string]map[string]struct{}{},
		seen:      map[string]map[string]string{},
		confirms:  map[string]*confirmation{},
		expiry:    map[string]*time.Timer{},
	}
}

// OnEndpointsChange registers f to run (synchronously, keep it short) after
// the set of Ready endpoints or any endpoint's snapshot changed.
// Subscription changes do not call it: the router reads them through
// Subscriptions' revision, and delivery only depends on endpoints (with
// 10,000 Subscriptions arriving, re-syncing delivery on each one was half
// of the dispatcher's CPU).
func (c *Catalog) OnEndpointsChange(f func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.listeners = append(c.listeners, f)
}

// OnEndpointDeleted registers f to run when a WebhookEndpoint is deleted
// from the cluster (not merely un-Ready), after the catalog dropped it,
// with the deleted object's UID: an endpoint recreated under the same name
// is another object.
func (c *Catalog) OnEndpointDeleted(f func(namespace, name string, uid types.UID)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.deleted = append(c.deleted, f)
}

// Endpoint returns the Ready endpoint namespace/name.
func (c *Catalog) Endpoint(namespace, name string) (*Endpoint, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	e, ok := c.endpoints[namespace+"/"+name]
	return e, ok
}

// Endpoints returns every Ready endpoint, sorted by namespace, then name.
// The slice is an immutable snapshot, shared by every caller until the set
// of endpoints or one of them changes: callers must not modify it, and may
// tell that nothing changed by comparing it with the previous one
// (SameEndpoints). The health reporter calls it every few seconds; with
// 1,000 idle endpoints, sorting a fresh copy each time was a third of an
// idle dispatcher's CPU.
func (c *Catalog) Endpoints() []*Endpoint {
	c.mu.RLock()
	out := c.sorted
	c.mu.RUnlock()
	if out != nil {
		return out
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sorted == nil {
		c.sorted = make([]*Endpoint, 0, len(c.endpoints))
		for _, e := range c.endpoints {
			c.sorted = append(c.sorted, e)
		}
		slices.SortFunc(c.sorted, func(a, b *Endpoint) int {
			return cmp.Or(strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.Name, b.Name))
		})
	}
	return c.sorted
}

// SameEndpoints reports whether two results of Catalog.Endpoints are the
// same snapshot, which means no endpoint changed between the two calls.
func SameEndpoints(a, b []*Endpoint) bool {
	return a != nil && b != nil && len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

// Subscriptions returns the Ready, unsuspended Subscriptions of a
// namespace whose endpoint is in the catalog, sorted by name, and the
// catalog's revision, which changes whenever any such list changes. The
// slice is an immutable snapshot: callers must not modify it.
func (c *Catalog) Subscriptions(namespace string) ([]*Subscription, uint64) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.ready[namespace], c.revision
}

// refreshLocked rebuilds the snapshot of a namespace; c.mu must be held.
func (c *Catalog) refreshLocked(namespace string) {
	var out []*Subscription
	for _, s := range c.subs[namespace] {
		if _, ok := c.endpoints[namespace+"/"+s.Endpoint]; ok {
			out = append(out, s)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	if len(out) == 0 {
		delete(c.ready, namespace)
	} else {
		c.ready[namespace] = out
	}
	c.revision++
}

// Start registers the informer handlers. Call it before the cache starts;
// the cache's WaitForCacheSync then tells when the catalog is complete.
func (c *Catalog) Start(ctx context.Context) error {
	handlers := []struct {
		obj     client.Object
		rebuild func(ctx context.Context, obj any)
		deleted func(obj any)
	}{
		{&heraldv1.WebhookEndpoint{}, func(ctx context.Context, obj any) {
			if o, ok := objectOf(obj); ok {
				c.rebuildEndpoint(ctx, o.GetNamespace(), o.GetName())
			}
		}, func(obj any) {
			// Only the endpoint informer's delete event means the object is
			// gone: a cache miss elsewhere may just be an informer that has
			// not listed yet.
			if o, ok := objectOf(obj); ok {
				c.mu.RLock()
				fs := append([]func(string, string, types.UID){}, c.deleted...)
				c.mu.RUnlock()
				for _, f := range fs {
					f(o.GetNamespace(), o.GetName(), o.GetUID())
				}
			}
		}},
		{&corev1.Secret{}, func(ctx context.Context, obj any) {
			if o, ok := objectOf(obj); ok {
				if ep := controllingEndpoint(o); ep != "" {
					c.rebuildEndpoint(ctx, o.GetNamespace(), ep)
				}
			}
		}, nil},
		{&heraldv1.Subscription{}, func(ctx context.Context, obj any) {
			if o, ok := objectOf(obj); ok {
				c.rebuildSubscription(ctx, o.GetNamespace(), o.GetName())
			}
		}, nil},
	}
	for _, h := range handlers {
		inf, err := c.cache.GetInformer(ctx, h.obj)
		if err != nil {
			return fmt.Errorf("informer for %T: %w", h.obj, err)
		}
		rebuild, deleted := h.rebuild, h.deleted
		reg, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
			AddFunc:    func(obj any) { rebuild(ctx, obj) },
			UpdateFunc: func(_, obj any) { rebuild(ctx, obj) },
			DeleteFunc: func(obj any) {
				rebuild(ctx, obj)
				if deleted != nil {
					deleted(obj)
				}
			},
		})
		if err != nil {
			return fmt.Errorf("register handler for %T: %w", h.obj, err)
		}
		c.mu.Lock()
		c.synced = append(c.synced, reg)
		c.mu.Unlock()
	}
	return nil
}

// HasSynced reports whether the catalog has seen every object that existed
// when it started. A synced informer cache is not enough: its handlers may
// still be working through the initial list, and an event routed before
// they finish would match no Subscription and be dropped.
func (c *Catalog) HasSynced() bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if len(c.synced) == 0 {
		return false
	}
	for _, r := range c.synced {
		if !r.HasSynced() {
			return false
		}
	}
	return true
}

// WaitForSync blocks until HasSynced or ctx ends.
func (c *Catalog) WaitForSync(ctx context.Context) error {
	if !toolscache.WaitForCacheSync(ctx.Done(), c.HasSynced) {
		return fmt.Errorf("catalog did not sync: %w", ctx.Err())
	}
	return nil
}

func objectOf(obj any) (metav1.Object, bool) {
	if d, ok := obj.(toolscache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	o, err := meta.Accessor(obj)
	return o, err == nil
}

// configState is what the manager said about an object's current
// generation.
type configState int

const (
	// statePending: not validated yet (Reconciling, Ready Unknown, an older
	// observedGeneration) or not Ready for a reason that may pass (an
	// endpoint not Ready yet, a missing Secret). The last known good
	// configuration stays in use.
	statePending configState = iota
	// stateReady: Ready for the current generation; it replaces the last
	// known good configuration.
	stateReady
	// stateStalled: definitively invalid for the current generation (the
	// user must change the spec); the object is dropped.
	stateStalled
)

// stateOf reads the manager's conditions for the current generation.
// unreconciled is true while the manager has given no verdict on it yet
// (no Ready condition for this generation, or Ready Unknown): the object
// is in transition. Ready=False for this generation is a verdict: the last
// known good configuration stays, but nothing is about to change.
func stateOf(conds []metav1.Condition, generation int64) (state configState, unreconciled bool) {
	if c := meta.FindStatusCondition(conds, heraldv1.StalledCondition); c != nil &&
		c.Status == metav1.ConditionTrue && c.ObservedGeneration == generation {
		return stateStalled, false
	}
	c := meta.FindStatusCondition(conds, heraldv1.ReadyCondition)
	switch {
	case c == nil || c.ObservedGeneration != generation || c.Status == metav1.ConditionUnknown:
		return statePending, true
	case c.Status == metav1.ConditionTrue:
		return stateReady, false
	}
	return statePending, false
}

// InTransition reports whether any WebhookEndpoint or Subscription of the
// namespace has a generation the manager has not reconciled yet (an edit
// in flight, a new object, the manager down). The router holds an event
// that matches nothing while its namespace is in transition, instead of
// discarding it: the event may match once the new generation is Ready. An
// object the manager declared not Ready (a Subscription whose endpoint does
// not exist, a missing Secret) does not count: holding events for it could
// last for ever.
func (c *Catalog) InTransition(namespace string) bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.pending[namespace]) > 0
}

// setPendingLocked records whether an object is pending; c.mu must be held.
func (c *Catalog) setPendingLocked(namespace, object string, pending bool) {
	if pending {
		if c.pending[namespace] == nil {
			c.pending[namespace] = map[string]struct{}{}
		}
		c.pending[namespace][object] = struct{}{}
		return
	}
	delete(c.pending[namespace], object)
	if len(c.pending[namespace]) == 0 {
		delete(c.pending, namespace)
	}
}

func (c *Catalog) rebuildEndpoint(ctx context.Context, namespace, name string) {
	c.rebuildMu.Lock()
	defer c.rebuildMu.Unlock()
	key := Key(namespace, name)
	ep := &heraldv1.WebhookEndpoint{}
	var next *Endpoint
	pending := false
	err := c.cache.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, ep)
	if err != nil && client.IgnoreNotFound(err) != nil {
		c.log.Error(err, "Read WebhookEndpoint from cache", "endpoint", key)
		return
	}
	if err == nil {
		state, unreconciled := stateOf(ep.Status.Conditions, ep.Generation)
		pending = unreconciled
		switch state {
		case stateReady:
			next = c.endpointFrom(ctx, key, ep)
		case statePending:
			// The last known good configuration of this same object (not
			// of a deleted one of the same name), with the managed
			// Secret's current material: keys rotate and expire
			// independently of the spec.
			c.mu.RLock()
			last := c.endpoints[key]
			c.mu.RUnlock()
			if last != nil && last.UID == ep.UID {
				lastGood := ep.DeepCopy()
				lastGood.Generation, lastGood.Spec = last.Generation, *last.Spec.DeepCopy()
				next = c.endpointFrom(ctx, key, lastGood)
			}
		}
	}

	c.mu.Lock()
	c.setPendingLocked(namespace, "WebhookEndpoint/"+name, pending)
	c.setSeenLocked(namespace, "WebhookEndpoint/"+name, resourceVersionOf(ep, err))
	if old := c.endpoints[key]; (old == nil && next == nil) || (old != nil && next != nil && reflect.DeepEqual(old, next)) {
		// Nothing the stages use changed (the dispatcher's own status
		// writes come back through the informer): no refresh, no
		// revision bump, no listeners.
		c.mu.Unlock()
		return
	}
	if t := c.expiry[key]; t != nil {
		t.Stop()
		delete(c.expiry, key)
	}
	c.sorted = nil
	if next == nil {
		delete(c.endpoints, key)
	} else {
		c.endpoints[key] = next
		if at := nextExpiry(next.allKeys, c.now()); !at.IsZero() {
			c.expiry[key] = time.AfterFunc(time.Until(at)+10*time.Millisecond, func() { c.rebuildEndpoint(ctx, namespace, name) })
		}
	}
	c.refreshLocked(namespace)
	listeners := append([]func(){}, c.listeners...)
	c.mu.Unlock()
	for _, f := range listeners {
		f()
	}
}

// endpointFrom builds the snapshot of a Ready endpoint. A missing or
// unreadable managed Secret leaves Keys empty: delivery pauses (events stay
// queued) and health reports SigningKeyMissing.
func (c *Catalog) endpointFrom(ctx context.Context, key string, ep *heraldv1.WebhookEndpoint) *Endpoint {
	out := &Endpoint{
		key:        key,
		Namespace:  ep.Namespace,
		Name:       ep.Name,
		UID:        ep.UID,
		Generation: ep.Generation,
		Spec:       *ep.Spec.DeepCopy(),
		Gone:       ep.Status.Delivery != nil && ep.Status.Delivery.GoneGeneration == ep.Generation,
	}
	if ep.Status.SigningSecretRef == nil {
		return out
	}
	secret := &corev1.Secret{}
	if err := c.cache.Get(ctx, client.ObjectKey{Namespace: ep.Namespace, Name: ep.Status.SigningSecretRef.Name}, secret); err != nil {
		if client.IgnoreNotFound(err) != nil {
			c.log.Error(err, "Read managed Secret from cache", "endpoint", out.Key())
		}
		return out
	}
	if !metav1.IsControlledBy(secret, ep) {
		// Only the Secret the manager wrote for this endpoint is trusted.
		return out
	}
	var keys []heraldv1.SigningKey
	if err := json.Unmarshal(secret.Data[heraldv1.SigningKeysKey], &keys); err != nil {
		c.log.Info("Managed Secret has unreadable signing keys; deliveries pause until the manager rewrites it", "endpoint", out.Key())
		return out
	}
	out.allKeys = keys
	now := c.now()
	for _, k := range keys {
		if k.NotAfter == nil || k.NotAfter.After(now) {
			out.Keys = append(out.Keys, k)
		}
	}
	if raw := secret.Data[heraldv1.HeadersKey]; len(raw) > 0 {
		if err := json.Unmarshal(raw, &out.SecretHeaders); err != nil {
			c.log.Info("Managed Secret has unreadable headers; deliveries pause until the manager rewrites it", "endpoint", out.Key())
			out.Keys = nil
			return out
		}
	}
	out.CABundle = secret.Data[heraldv1.CABundleKey]
	out.ClientCert = secret.Data[heraldv1.ClientCertKey]
	out.ClientKey = secret.Data[heraldv1.ClientKeyKey]
	return out
}

func nextExpiry(keys []heraldv1.SigningKey, now time.Time) time.Time {
	var at time.Time
	for _, k := range keys {
		if k.NotAfter != nil && k.NotAfter.After(now) && (at.IsZero() || k.NotAfter.Before(at)) {
			at = *k.NotAfter
		}
	}
	return at
}

func (c *Catalog) rebuildSubscription(ctx context.Context, namespace, name string) {
	c.rebuildMu.Lock()
	defer c.rebuildMu.Unlock()
	sub := &heraldv1.Subscription{}
	var next *Subscription
	pending := false
	err := c.cache.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, sub)
	state := stateStalled // deleted: dropped like a definitively invalid one
	if err == nil {
		state, pending = stateOf(sub.Status.Conditions, sub.Generation)
	}
	switch {
	case err != nil && client.IgnoreNotFound(err) != nil:
		c.log.Error(err, "Read Subscription from cache", "subscription", namespace+"/"+name)
		return
	case state == statePending:
		// The last known good configuration of this same object stays.
		c.mu.RLock()
		if last := c.subs[namespace][name]; last != nil && last.UID == sub.UID {
			next = last
		}
		c.mu.RUnlock()
	case state == stateReady && !sub.Spec.Suspend:
		next = &Subscription{
			Namespace:  namespace,
			Name:       name,
			UID:        sub.UID,
			Generation: sub.Generation,
			Endpoint:   sub.Spec.EndpointRef.Name,
			Types:      append([]string(nil), sub.Spec.Types...),
			Sources:    append([]string(nil), sub.Spec.Sources...),
		}
		if sub.Spec.Filter != "" {
			f, err := c.compiled(sub.Spec.Filter)
			if err != nil {
				// The manager said Ready, so this means the two disagree on
				// the CEL environment: match nothing rather than everything.
				c.log.Error(err, "Filter of a Ready Subscription does not compile", "subscription", namespace+"/"+name)
				next = nil
			} else {
				next.Filter = f
			}
		}
	}

	c.mu.Lock()
	c.setPendingLocked(namespace, "Subscription/"+name, pending)
	c.setSeenLocked(namespace, "Subscription/"+name, resourceVersionOf(sub, err))
	if old := c.subs[namespace][name]; (old == nil && next == nil) || (old != nil && next != nil && reflect.DeepEqual(old, next)) {
		c.mu.Unlock()
		return
	}
	if next == nil {
		delete(c.subs[namespace], name)
	} else {
		if c.subs[namespace] == nil {
			c.subs[namespace] = map[string]*Subscription{}
		}
		c.subs[namespace][name] = next
	}
	c.refreshLocked(namespace)
	c.mu.Unlock()
}

// compiled returns the compiled filter for expr, compiling each distinct
// expression once (10,000 Subscriptions often share a few filters).
func (c *Catalog) compiled(expr string) (*filter.Filter, error) {
	c.mu.RLock()
	f := c.filters[expr]
	c.mu.RUnlock()
	if f != nil {
		return f, nil
	}
	f, err := filter.Compile(expr)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.filters[expr] = f
	c.mu.Unlock()
	return f, nil
}
