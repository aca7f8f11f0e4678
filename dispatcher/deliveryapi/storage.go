package deliveryapi

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metainternalversion "k8s.io/apimachinery/pkg/apis/meta/internalversion"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	genericapirequest "k8s.io/apiserver/pkg/endpoints/request"
	"k8s.io/apiserver/pkg/registry/rest"

	deliveryv1 "github.com/herald-dev/herald/api/delivery/v1alpha1"
	"github.com/herald-dev/herald/dispatcher/deliverylog"
)

// Log is the part of the delivery log the API reads.
type Log interface {
	List(ctx context.Context, q deliverylog.Query) ([]*deliveryv1.Delivery, uint64, error)
	Watch(ctx context.Context, q deliverylog.Query, after uint64) (<-chan deliverylog.Change, error)
}

// storage serves the deliveries resource from the log: get, list and
// watch; nothing else, the log is written by deliveries only.
type storage struct {
	log Log
}

var (
	_ rest.Storage              = (*storage)(nil)
	_ rest.Scoper               = (*storage)(nil)
	_ rest.KindProvider         = (*storage)(nil)
	_ rest.SingularNameProvider = (*storage)(nil)
	_ rest.Getter               = (*storage)(nil)
	_ rest.Lister               = (*storage)(nil)
	_ rest.Watcher              = (*storage)(nil)
	_ rest.TableConvertor       = (*storage)(nil)
)

var resource = deliveryv1.Resource("deliveries")

func (s *storage) New() runtime.Object     { return &deliveryv1.Delivery{} }
func (s *storage) NewList() runtime.Object { return &deliveryv1.DeliveryList{} }
func (s *storage) Destroy()                {}
func (s *storage) NamespaceScoped() bool   { return true }
func (s *storage) Kind() string            { return "Delivery" }
func (s *storage) GetSingularName() string { return "delivery" }

// Get returns one delivery by name (<webhook-id>.<endpoint>).
func (s *storage) Get(ctx context.Context, name string, _ *metav1.GetOptions) (runtime.Object, error) {
	namespace := genericapirequest.NamespaceValue(ctx)
	id, endpoint, err := deliverylog.ParseName(name)
	if err != nil {
		return nil, apierrors.NewNotFound(resource, name)
	}
	ds, _, err := s.log.List(ctx, deliverylog.Query{Namespace: namespace, Endpoint: endpoint, WebhookID: id})
	if err != nil {
		return nil, unavailable(err)
	}
	if len(ds) == 0 {
		return nil, apierrors.NewNotFound(resource, name)
	}
	return ds[0], nil
}

// selection is a list or watch request's query and selectors.
type selection struct {
	query  deliverylog.Query
	labels labels.Selector
	fields fields.Selector
}

func newSelection(ctx context.Context, opts *metainternalversion.ListOptions) selection {
	sel := selection{
		query:  deliverylog.Query{Namespace: genericapirequest.NamespaceValue(ctx)},
		labels: labels.Everything(),
		fields: fields.Everything(),
	}
	if opts != nil && opts.LabelSelector != nil {
		sel.labels = opts.LabelSelector
	}
	if opts != nil && opts.FieldSelector != nil {
		sel.fields = opts.FieldSelector
	}
	// An exact endpoint or name narrows what is read from the log, not
	// only what is returned.
	if ep, ok := sel.labels.RequiresExactMatch(deliveryv1.LabelEndpoint); ok && ep != "" {
		sel.query.Endpoint = ep
	}
	if name, ok := sel.fields.RequiresExactMatch("metadata.name"); ok {
		if id, ep, err := deliverylog.ParseName(name); err == nil && (sel.query.Endpoint == "" || sel.query.Endpoint == ep) {
			sel.query.Endpoint, sel.query.WebhookID = ep, id
		}
	}
	return sel
}

func (sel selection) matches(d *deliveryv1.Delivery) bool {
	return sel.labels.Matches(labels.Set(d.Labels)) && sel.fields.Matches(fields.Set{
		"metadata.name":       d.Name,
		"metadata.namespace":  d.Namespace,
		deliveryv1.FieldPhase: string(d.Status.Phase),
	})
}

// List returns the deliveries the request selects.
func (s *storage) List(ctx context.Context, opts *metainternalversion.ListOptions) (runtime.Object, error) {
	sel := newSelection(ctx, opts)
	ds, rv, err := s.log.List(ctx, sel.query)
	if err != nil {
		return nil, unavailable(err)
	}
	list := &deliveryv1.DeliveryList{ListMeta: metav1.ListMeta{ResourceVersion: strconv.FormatUint(rv, 10)}}
	for _, d := range ds {
		if sel.matches(d) {
			list.Items = append(list.Items, *d)
		}
	}
	return list, nil
}

// Watch streams changes of the deliveries the request selects. From a
// resourceVersion (a list's) it sends what changed after it; without one
// it first sends every selected delivery as ADDED, as the Kubernetes API
// does.
func (s *storage) Watch(ctx context.Context, opts *metainternalversion.ListOptions) (watch.Interface, error) {
	sel := newSelection(ctx, opts)
	var after uint64
	var initial []*deliveryv1.Delivery
	rv := ""
	if opts != nil {
		rv = opts.ResourceVersion
	}
	if rv == "" || rv == "0" {
		ds, last, err := s.log.List(ctx, sel.query)
		if err != nil {
			return nil, unavailable(err)
		}
		initial, after = ds, last
	} else {
		n, err := strconv.ParseUint(rv, 10, 64)
		if err != nil {
			return nil, apierrors.NewBadRequest(fmt.Sprintf("resourceVersion %q is not a delivery log position", rv))
		}
		after = n
	}
	wctx, cancel := context.WithCancel(ctx)
	changes, err := s.log.Watch(wctx, sel.query, after)
	if err != nil {
		cancel()
		return nil, unavailable(err)
	}
	w := &watcher{result: make(chan watch.Event), cancel: cancel}
	go w.run(wctx, sel, initial, changes)
	return w, nil
}

// watcher adapts the log's changes to watch.Interface.
type watcher struct {
	result chan watch.Event
	cancel context.CancelFunc
	once   sync.Once
}

func (w *watcher) Stop()                          { w.once.Do(w.cancel) }
func (w *watcher) ResultChan() <-chan watch.Event { return w.result }

func (w *watcher) run(ctx context.Context, sel selection, initial []*deliveryv1.Delivery, changes <-chan deliverylog.Change) {
	defer close(w.result)
	send := func(t watch.EventType, d *deliveryv1.Delivery) bool {
		select {
		case w.result <- watch.Event{Type: t, Object: d}:
			return true
		case <-ctx.Done():
			return false
		}
	}
	for _, d := range initial {
		if sel.matches(d) && !send(watch.Added, d) {
			return
		}
	}
	for c := range changes {
		if !sel.matches(c.Delivery) {
			continue
		}
		t := watch.Modified
		if c.Added {
			t = watch.Added
		}
		if !send(t, c.Delivery) {
			return
		}
	}
}

// unavailable turns a log failure into 503: the log is JetStream, and a
// failed read is the queue being unavailable, not a bad request.
func unavailable(err error) error {
	if errors.Is(err, context.Canceled) {
		return err
	}
	return apierrors.NewServiceUnavailable(fmt.Sprintf("the delivery log cannot be read: %v", err))
}
