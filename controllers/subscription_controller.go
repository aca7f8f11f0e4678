package controllers

import (
	"context"
	"errors"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/recorder"

	"github.com/herald-dev/herald/api/filter"
	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
)

// subscriptionEndpointIndex indexes Subscriptions by spec.endpointRef.name.
const subscriptionEndpointIndex = ".spec.endpointRef.name"

// SubscriptionReconciler validates Subscriptions: it compiles the CEL filter
// and resolves the endpoint, and is Ready when both are usable.
type SubscriptionReconciler struct {
	Client   client.Client
	Recorder recorder.EventRecorder
}

// +kubebuilder:rbac:groups=herald.dev,resources=subscriptions,verbs=get;list;watch
// +kubebuilder:rbac:groups=herald.dev,resources=subscriptions/status,verbs=patch

// Reconcile validates one Subscription and reports the result in Ready.
func (r *SubscriptionReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	sub := &heraldv1.Subscription{}
	if err := r.Client.Get(ctx, req.NamespacedName, sub); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !sub.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, nil
	}

	err := r.reconcileSubscription(ctx, sub)
	var ready metav1.Condition
	var stalled *metav1.Condition
	var condErr *conditionError
	switch {
	case errors.As(err, &condErr):
		ready = metav1.Condition{Status: metav1.ConditionFalse, Reason: condErr.Reason, Message: condErr.Message}
		if condErr.Terminal {
			stalled = &metav1.Condition{Reason: condErr.Reason, Message: condErr.Message}
		}
	case err != nil:
		return ctrl.Result{}, err
	case sub.Spec.Suspend:
		ready = metav1.Condition{Status: metav1.ConditionTrue, Reason: heraldv1.SuspendedReason,
			Message: "Subscription is valid and suspended: it matches no events until spec.suspend is false"}
	default:
		ready = metav1.Condition{Status: metav1.ConditionTrue, Reason: heraldv1.ReconciledReason,
			Message: fmt.Sprintf("Delivering matching events to WebhookEndpoint %q", sub.Spec.EndpointRef.Name)}
	}
	return ctrl.Result{}, r.patchStatus(ctx, sub, ready, stalled)
}

// reconcileSubscription runs the validation steps in order.
func (r *SubscriptionReconciler) reconcileSubscription(ctx context.Context, sub *heraldv1.Subscription) error {
	if sub.Spec.Filter != "" {
		if _, err := filter.Compile(sub.Spec.Filter); err != nil {
			return &conditionError{Reason: heraldv1.InvalidFilterReason, Terminal: true,
				Message: "spec.filter: " + err.Error()}
		}
	}
	return r.checkEndpoint(ctx, sub)
}

// checkEndpoint requires the endpoint to exist and be Ready for its
// current generation. Not terminal: the endpoint watch brings the next try.
func (r *SubscriptionReconciler) checkEndpoint(ctx context.Context, sub *heraldv1.Subscription) error {
	name := sub.Spec.EndpointRef.Name
	ep := &heraldv1.WebhookEndpoint{}
	if err := r.Client.Get(ctx, client.ObjectKey{Namespace: sub.Namespace, Name: name}, ep); err != nil {
		if apierrors.IsNotFound(err) {
			return &conditionError{Reason: heraldv1.EndpointNotFoundReason,
				Message: fmt.Sprintf("WebhookEndpoint %q not found in namespace %q; create it or fix spec.endpointRef.name", name, sub.Namespace)}
		}
		return fmt.Errorf("get WebhookEndpoint %s/%s: %w", sub.Namespace, name, err)
	}
	if c := meta.FindStatusCondition(ep.Status.Conditions, heraldv1.ReadyCondition); c == nil ||
		c.Status != metav1.ConditionTrue || c.ObservedGeneration != ep.Generation {
		msg := fmt.Sprintf("WebhookEndpoint %q is not Ready", name)
		if c != nil && c.Status == metav1.ConditionFalse {
			msg += fmt.Sprintf(" (%s: %s)", c.Reason, c.Message)
		}
		return &conditionError{Reason: heraldv1.EndpointNotReadyReason, Message: msg}
	}
	return nil
}

func (r *SubscriptionReconciler) patchStatus(ctx context.Context, sub *heraldv1.Subscription, ready metav1.Condition, stalled *metav1.Condition) error {
	status := heraldv1.SubscriptionStatus{
		ObservedGeneration: sub.Generation,
		Conditions:         managerConditions(sub.Status.Conditions, sub.Generation, ready, nil, stalled),
	}
	m, err := statusToMap(&status)
	if err != nil {
		return err
	}
	if err := applyStatus(ctx, r.Client, heraldv1.GroupVersion.WithKind("Subscription"), client.ObjectKeyFromObject(sub), m); err != nil {
		return err
	}
	recordReadyTransition(r.Recorder, sub, sub.Status.Conditions, ready)
	return nil
}

// SetupWithManager registers the controller; endpoint changes reach the
// Subscriptions that reference them through a field index.
func (r *SubscriptionReconciler) SetupWithManager(ctx context.Context, mgr ctrl.Manager) error {
	if err := mgr.GetFieldIndexer().IndexField(ctx, &heraldv1.Subscription{}, subscriptionEndpointIndex, func(o client.Object) []string {
		return []string{o.(*heraldv1.Subscription).Spec.EndpointRef.Name}
	}); err != nil {
		return fmt.Errorf("index Subscriptions by endpoint: %w", err)
	}
	return ctrl.NewControllerManagedBy(mgr).
		For(&heraldv1.Subscription{}, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Watches(&heraldv1.WebhookEndpoint{}, handler.EnqueueRequestsFromMapFunc(
			requestsForIndex(r.Client, func() client.ObjectList { return &heraldv1.SubscriptionList{} }, subscriptionEndpointIndex)),
			builder.WithPredicates(endpointReadinessChanged())).
		Named("subscription").
		// Reconciles of different objects are independent; one worker made
		// 10,000 Subscriptions take over a minute to become Ready.
		WithOptions(controller.Options{MaxConcurrentReconciles: 4}).
		Complete(r)
}

// endpointReadinessChanged passes endpoint creations, deletions and updates
// that change the Ready condition or the generation it refers to; the
// dispatcher's frequent delivery-status writes are filtered out.
func endpointReadinessChanged() predicate.Predicate {
	return predicate.Funcs{
		UpdateFunc: func(e event.UpdateEvent) bool {
			return readyKey(e.ObjectOld) != readyKey(e.ObjectNew)
		},
	}
}

func readyKey(o client.Object) string {
	ep, ok := o.(*heraldv1.WebhookEndpoint)
	if !ok {
		return ""
	}
	c := meta.FindStatusCondition(ep.Status.Conditions, heraldv1.ReadyCondition)
	if c == nil {
		return fmt.Sprintf("%d", ep.Generation)
	}
	return fmt.Sprintf("%d/%s/%s/%d/%s", ep.Generation, c.Status, c.Reason, c.ObservedGeneration, c.Message)
}
