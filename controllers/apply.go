package controllers

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/recorder"

	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
)

// FieldOwner is the server-side apply field manager of the manager. The
// dispatcher applies status.delivery and DeliveryHealthy under its own, so
// neither clobbers the other.
const FieldOwner = client.FieldOwner("herald-manager")

// applyObject server-side applies a typed object (TypeMeta set) with
// Herald's field owner, taking ownership of the fields it sets.
func applyObject(ctx context.Context, c client.Client, obj client.Object) error {
	u, err := toApplyUnstructured(obj)
	if err != nil {
		return err
	}
	if err := c.Apply(ctx, client.ApplyConfigurationFromUnstructured(u), FieldOwner, client.ForceOwnership); err != nil {
		return fmt.Errorf("apply %s %s: %w", u.GetKind(), client.ObjectKeyFromObject(obj), err)
	}
	return nil
}

// toApplyUnstructured converts obj for an apply request: server-populated
// metadata and status are dropped so the manager never claims them.
func toApplyUnstructured(obj client.Object) (*unstructured.Unstructured, error) {
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		return nil, fmt.Errorf("convert %T: %w", obj, err)
	}
	u := &unstructured.Unstructured{Object: m}
	if u.GetAPIVersion() == "" || u.GetKind() == "" {
		return nil, fmt.Errorf("apply %T %s: TypeMeta must be set", obj, client.ObjectKeyFromObject(obj))
	}
	unstructured.RemoveNestedField(u.Object, "metadata", "creationTimestamp")
	unstructured.RemoveNestedField(u.Object, "status")
	return u, nil
}

// applyStatus server-side applies the manager's part of an object's status:
// status holds only the fields the manager owns. Fields the manager applied
// before and omits now are removed; fields of other managers (the
// dispatcher's status.delivery and DeliveryHealthy condition) are untouched.
func applyStatus(ctx context.Context, c client.Client, gvk schema.GroupVersionKind, key client.ObjectKey, status map[string]any) error {
	u := &unstructured.Unstructured{Object: map[string]any{"status": status}}
	u.SetGroupVersionKind(gvk)
	u.SetName(key.Name)
	u.SetNamespace(key.Namespace)
	if err := c.Status().Apply(ctx, client.ApplyConfigurationFromUnstructured(u), FieldOwner, client.ForceOwnership); err != nil {
		return fmt.Errorf("apply status of %s %s: %w", gvk.Kind, key, err)
	}
	return nil
}

// statusToMap converts a typed status fragment to the map applyStatus sends.
func statusToMap(v any) (map[string]any, error) {
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(v)
	if err != nil {
		return nil, fmt.Errorf("convert status: %w", err)
	}
	return m, nil
}

// managerConditions computes the manager-owned conditions (Ready,
// Reconciling, Stalled) from the existing ones, keeping lastTransitionTime
// when a condition's status is unchanged. Reconciling and Stalled are
// abnormal-true: passing nil for them removes them.
func managerConditions(existing []metav1.Condition, generation int64, ready metav1.Condition, reconciling, stalled *metav1.Condition) []metav1.Condition {
	var out []metav1.Condition
	for _, t := range []string{heraldv1.ReadyCondition, heraldv1.ReconcilingCondition, heraldv1.StalledCondition} {
		if c := meta.FindStatusCondition(existing, t); c != nil {
			out = append(out, *c)
		}
	}
	set := func(c metav1.Condition) {
		c.ObservedGeneration = generation
		meta.SetStatusCondition(&out, c)
	}
	ready.Type = heraldv1.ReadyCondition
	set(ready)
	if reconciling != nil {
		reconciling.Type = heraldv1.ReconcilingCondition
		reconciling.Status = metav1.ConditionTrue
		set(*reconciling)
	} else {
		meta.RemoveStatusCondition(&out, heraldv1.ReconcilingCondition)
	}
	if stalled != nil {
		stalled.Type = heraldv1.StalledCondition
		stalled.Status = metav1.ConditionTrue
		set(*stalled)
	} else {
		meta.RemoveStatusCondition(&out, heraldv1.StalledCondition)
	}
	return out
}

// recordReadyTransition records an Event when the Ready condition's status
// or reason changes: Warning when it turns False, Normal otherwise.
func recordReadyTransition(rec recorder.EventRecorder, obj runtime.Object, existing []metav1.Condition, ready metav1.Condition) {
	old := meta.FindStatusCondition(existing, heraldv1.ReadyCondition)
	if old != nil && old.Status == ready.Status && old.Reason == ready.Reason {
		return
	}
	eventType := corev1.EventTypeNormal
	if ready.Status == metav1.ConditionFalse {
		eventType = corev1.EventTypeWarning
	}
	rec.Eventf(obj, nil, eventType, ready.Reason, "Reconcile", "%s", ready.Message)
}

// requestsForIndex returns a map function enqueueing the objects of the
// list type whose field index holds the name of the object that changed,
// in its namespace (a Secret → its endpoints, an endpoint → its
// Subscriptions).
func requestsForIndex(c client.Client, newList func() client.ObjectList, index string) handler.MapFunc {
	return func(ctx context.Context, o client.Object) []reconcile.Request {
		list := newList()
		if err := c.List(ctx, list, client.InNamespace(o.GetNamespace()), client.MatchingFields{index: o.GetName()}); err != nil {
			ctrl.LoggerFrom(ctx).Error(err, "List objects to reconcile", "index", index, "trigger", klog.KObj(o))
			return nil
		}
		var reqs []reconcile.Request
		_ = meta.EachListItem(list, func(item runtime.Object) error {
			if obj, ok := item.(client.Object); ok {
				reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(obj)})
			}
			return nil
		})
		return reqs
	}
}
