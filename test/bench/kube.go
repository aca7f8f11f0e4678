package bench

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/test/e2e"
)

// newFastClient returns a client for the kubeconfig without client-side
// rate limiting: creating 10,000 Subscriptions at client-go's default 5
// requests/s would measure the client, not Herald. The API server's own
// priority and fairness still applies.
func newFastClient(kubeconfig string) (client.WithWatch, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", kubeconfig, err)
	}
	cfg.QPS, cfg.Burst = -1, 0
	cfg.UserAgent = "herald-bench"
	return client.NewWithWatch(cfg, client.Options{Scheme: e2e.Scheme})
}

// createAll creates objs with up to parallel requests in flight and
// returns the first error.
func createAll(ctx context.Context, c client.Client, objs []client.Object, parallel int) error {
	var (
		next     atomic.Int64
		firstErr atomic.Pointer[error]
		wg       sync.WaitGroup
	)
	for range parallel {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= len(objs) || firstErr.Load() != nil || ctx.Err() != nil {
					return
				}
				if err := c.Create(ctx, objs[i]); err != nil && !apierrors.IsAlreadyExists(err) {
					err = fmt.Errorf("create %T %s: %w", objs[i], objs[i].GetName(), err)
					firstErr.CompareAndSwap(nil, &err)
					return
				}
			}
		})
	}
	wg.Wait()
	if e := firstErr.Load(); e != nil {
		return *e
	}
	return ctx.Err()
}

// readyFor reports whether conditions say Ready=True for generation.
func readyFor(conditions []metav1.Condition, generation int64) bool {
	c := meta.FindStatusCondition(conditions, heraldv1.ReadyCondition)
	return c != nil && c.Status == metav1.ConditionTrue && c.ObservedGeneration == generation
}

// waitReady waits until want objects of list's kind in namespace are Ready
// for their generation (and, when extra is set, extra holds), following a
// watch rather than re-listing: listing 10,000 objects every second would
// load the API server the manager shares. It returns when ctx ends.
func waitReady[L client.ObjectList](ctx context.Context, c client.WithWatch, namespace string, newList func() L, want int, extra func(client.Object) bool) error {
	ready := map[string]bool{}
	count := func() int {
		n := 0
		for _, ok := range ready {
			if ok {
				n++
			}
		}
		return n
	}
	isReady := func(obj client.Object) bool {
		var conditions []metav1.Condition
		switch o := obj.(type) {
		case *heraldv1.WebhookEndpoint:
			conditions = o.Status.Conditions
		case *heraldv1.Subscription:
			conditions = o.Status.Conditions
		default:
			return false
		}
		return readyFor(conditions, obj.GetGeneration()) && (extra == nil || extra(obj))
	}
	for ctx.Err() == nil {
		list := newList()
		if err := c.List(ctx, list, client.InNamespace(namespace)); err != nil {
			return fmt.Errorf("list: %w", err)
		}
		clear(ready)
		if err := meta.EachListItem(list, func(o runtime.Object) error {
			obj := o.(client.Object)
			ready[obj.GetName()] = isReady(obj)
			return nil
		}); err != nil {
			return err
		}
		if count() >= want {
			return nil
		}
		rv := list.GetResourceVersion()
		w, err := c.Watch(ctx, newList(), &client.ListOptions{Namespace: namespace, Raw: &metav1.ListOptions{ResourceVersion: rv}})
		if err != nil {
			return fmt.Errorf("watch: %w", err)
		}
		n := count()
		for ev := range w.ResultChan() {
			obj, ok := ev.Object.(client.Object)
			if !ok {
				continue
			}
			switch ev.Type {
			case watch.Added, watch.Modified:
				ready[obj.GetName()] = isReady(obj)
			case watch.Deleted:
				delete(ready, obj.GetName())
			}
			if n = count(); n >= want {
				break
			}
		}
		w.Stop()
		if n >= want {
			return nil
		}
	}
	return fmt.Errorf("waiting for %d Ready objects in %s: %w", want, namespace, ctx.Err())
}

// endpointSecrets returns the current signing secret of every endpoint in
// namespace, from the managed Secrets (<endpoint>-herald, key "secret").
func endpointSecrets(ctx context.Context, c client.Client, namespace string) (map[string]string, error) {
	var secrets corev1.SecretList
	if err := c.List(ctx, &secrets, client.InNamespace(namespace), client.MatchingLabels{heraldv1.SecretTypeLabel: heraldv1.SecretTypeEndpoint}); err != nil {
		return nil, fmt.Errorf("list managed Secrets: %w", err)
	}
	out := map[string]string{}
	for _, s := range secrets.Items {
		if v := s.Data["secret"]; len(v) > 0 {
			out[s.Name] = string(v)
		}
	}
	return out, nil
}

// deleteScenarioObjects deletes the Subscriptions and WebhookEndpoints of a
// namespace and waits (bounded) until the endpoints are gone, so an idle
// scenario's endpoints do not weigh on the next one.
func deleteScenarioObjects(ctx context.Context, c client.Client, namespace string) error {
	if err := c.DeleteAllOf(ctx, &heraldv1.Subscription{}, client.InNamespace(namespace)); err != nil {
		return fmt.Errorf("delete Subscriptions: %w", err)
	}
	if err := c.DeleteAllOf(ctx, &heraldv1.WebhookEndpoint{}, client.InNamespace(namespace)); err != nil {
		return fmt.Errorf("delete WebhookEndpoints: %w", err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		var eps heraldv1.WebhookEndpointList
		if err := c.List(ctx, &eps, client.InNamespace(namespace)); err != nil {
			return err
		}
		if len(eps.Items) == 0 {
			return nil
		}
		sleepCtx(ctx, 500*time.Millisecond)
	}
	return fmt.Errorf("endpoints of %s still present after 60s", namespace)
}
