/*
Copyright 2026 The Herald Authors.

Licensed under the Apache License, Version 2.0 (the "License");
you may not use this file except in compliance with the License.
You may obtain a copy of the License at

    http://www.apache.org/licenses/LICENSE-2.0

Unless required by applicable law or agreed to in writing, software
distributed under the License is distributed on an "AS IS" BASIS,
WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
See the License for the specific language governing permissions and
limitations under the License.
*/

package controllers

import (
	"context"
	"errors"
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	heraldv1alpha1 "github.com/herald-dev/herald/api/v1alpha1"
)

// The manager creates and repairs the dispatcher's objects.
// +kubebuilder:rbac:groups=apps,resources=deployments,verbs=get;list;watch;create;update;patch
// +kubebuilder:rbac:groups="",resources=services;serviceaccounts,verbs=get;list;watch;create;update;patch
// +kubebuilder:rbac:groups="",resources=persistentvolumeclaims,verbs=get;list;watch;create;update;patch
// +kubebuilder:rbac:groups=rbac.authorization.k8s.io,resources=clusterroles,verbs=get;list;watch;create;update;patch
// +kubebuilder:rbac:groups=rbac.authorization.k8s.io,resources=clusterrolebindings,verbs=get;list;watch
// +kubebuilder:rbac:groups=rbac.authorization.k8s.io,resources=clusterrolebindings,verbs=create;update;patch

// RBAC escalation prevention: the manager may only grant what it holds, so it
// holds every permission of DispatcherClusterRole (rather than the broader
// bind/escalate verbs).
// +kubebuilder:rbac:groups=herald.dev,resources=webhookendpoints;subscriptions,verbs=get;list;watch
// +kubebuilder:rbac:groups=herald.dev,resources=webhookendpoints/status;subscriptions/status,verbs=get;patch
// +kubebuilder:rbac:groups=herald.dev,resources=redeliveries,verbs=get;list;watch
// +kubebuilder:rbac:groups=herald.dev,resources=redeliveries/status,verbs=get;patch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=namespaces,verbs=get
// +kubebuilder:rbac:groups=authentication.k8s.io,resources=tokenreviews,verbs=create
// +kubebuilder:rbac:groups=authorization.k8s.io,resources=subjectaccessreviews,verbs=create
// +kubebuilder:rbac:groups=coordination.k8s.io,resources=leases,verbs=create
// +kubebuilder:rbac:groups=coordination.k8s.io,resources=leases,verbs=get;update,resourceNames=herald-dispatcher-status

// DispatcherReconciler keeps the dispatcher's ServiceAccount, RBAC, Service,
// storage and Deployment as DispatcherObjects describes them, and puts them
// back when someone edits or deletes them. There is no custom resource for
// the dispatcher: its configuration comes from the manager's flags, so every
// event maps to one fixed request.
type DispatcherReconciler struct {
	Client client.Client
	Config DispatcherConfig
}

// request is the single request the reconciler handles.
func (r *DispatcherReconciler) request() reconcile.Request {
	return reconcile.Request{NamespacedName: types.NamespacedName{
		Namespace: r.Config.Namespace,
		Name:      heraldv1alpha1.DispatcherName,
	}}
}

// Reconcile applies every dispatcher object with server-side apply.
func (r *DispatcherReconciler) Reconcile(ctx context.Context, _ ctrl.Request) (ctrl.Result, error) {
	log := ctrl.LoggerFrom(ctx)

	if err := r.Config.Validate(); err != nil {
		// A flag error is fixed by restarting the manager with other flags;
		// retrying cannot help.
		return ctrl.Result{}, reconcile.TerminalError(fmt.Errorf("invalid dispatcher configuration: %w", err))
	}

	var errs []error
	for _, obj := range DispatcherObjects(r.Config) {
		kind := obj.GetObjectKind().GroupVersionKind().Kind
		// applyObject (apply.go) server-side applies with FieldOwner and
		// ForceOwnership, so fields someone took over by editing the object
		// are taken back.
		if err := applyObject(ctx, r.Client, obj); err != nil {
			if isNamespaceNotFound(err, r.Config.Namespace) {
				// Nothing namespaced can be created; stop here with an error
				// that says what to do. It is retried with backoff. (Read
				// from the apply error rather than a Namespace Get, which
				// would need a cluster-wide Namespace informer.)
				return ctrl.Result{}, fmt.Errorf("namespace %q of the dispatcher does not exist: create it, "+
					"or point --dispatcher-namespace at an existing one (the manager does not create namespaces)",
					r.Config.Namespace)
			}
			// Objects are independent enough to keep going: a rejected PVC
			// change must not stop a new image from rolling out.
			errs = append(errs, err)
			continue
		}
		log.V(1).Info("applied dispatcher object", "kind", kind, "object", klog.KObj(obj))
	}
	if err := errors.Join(errs...); err != nil {
		return ctrl.Result{}, err
	}
	log.V(1).Info("dispatcher objects up to date", "configHash", r.Config.Hash())
	return ctrl.Result{}, nil
}

// isNamespaceNotFound reports whether err is the API server refusing to
// create an object because its namespace does not exist.
func isNamespaceNotFound(err error, namespace string) bool {
	var apiStatus apierrors.APIStatus
	if !errors.As(err, &apiStatus) {
		return false
	}
	status := apiStatus.Status()
	return status.Reason == metav1.StatusReasonNotFound &&
		status.Details != nil &&
		status.Details.Kind == "namespaces" &&
		status.Details.Name == namespace
}

// SetupWithManager watches every dispatcher object, so that a manual edit or
// deletion is repaired, and reconciles once when the controller starts.
//
// The start-up reconcile comes from a source.Func that enqueues the fixed
// request when the controller starts its sources. It is the controller's own
// queue, started after leader election, so a new leader always reconciles
// once; informers alone would not, because on a fresh cluster no dispatcher
// object exists to produce an event. A source.Channel would need a goroutine
// and a placeholder object, and a manager.RunnableFunc cannot reach the
// controller's queue.
func (r *DispatcherReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.Config.Embedded() && r.Config.Replicas > 1 {
		mgr.GetLogger().Info("Ignoring --dispatcher-replicas: the embedded JetStream server runs one replica; "+
			"set --dispatcher-nats-url to scale out", "replicas", r.Config.Replicas)
	}

	toDispatcher := handler.EnqueueRequestsFromMapFunc(func(context.Context, client.Object) []reconcile.Request {
		return []reconcile.Request{r.request()}
	})
	owned := builder.WithPredicates(r.dispatcherObjectPredicate())
	// Deployment status changes with every pod transition; only spec,
	// label and annotation changes can be drift.
	deploymentChanged := builder.WithPredicates(r.dispatcherObjectPredicate(), predicate.Or[client.Object](
		predicate.GenerationChangedPredicate{},
		predicate.LabelChangedPredicate{},
		predicate.AnnotationChangedPredicate{},
	))

	return ctrl.NewControllerManagedBy(mgr).
		Named("dispatcher").
		Watches(&appsv1.Deployment{}, toDispatcher, deploymentChanged).
		Watches(&corev1.Service{}, toDispatcher, owned).
		Watches(&corev1.ServiceAccount{}, toDispatcher, owned).
		Watches(&corev1.PersistentVolumeClaim{}, toDispatcher, owned).
		Watches(&rbacv1.ClusterRole{}, toDispatcher, owned).
		Watches(&rbacv1.ClusterRoleBinding{}, toDispatcher, owned).
		WatchesRawSource(source.Func(r.enqueueAtStart)).
		Complete(r)
}

// enqueueAtStart is the start-up source: it enqueues the fixed request once,
// when the controller starts.
func (r *DispatcherReconciler) enqueueAtStart(
	_ context.Context, queue workqueue.TypedRateLimitingInterface[reconcile.Request],
) error {
	queue.Add(r.request())
	return nil
}

// dispatcherObjectPredicate passes events of objects labelled as the
// dispatcher's, in the dispatcher's namespace or cluster-scoped. An update
// passes when either version carries the label, so removing the label is
// drift that gets repaired too.
func (r *DispatcherReconciler) dispatcherObjectPredicate() predicate.Predicate {
	isDispatcherObject := func(obj client.Object) bool {
		if obj == nil || obj.GetLabels()[heraldv1alpha1.NameLabel] != heraldv1alpha1.DispatcherName {
			return false
		}
		return obj.GetNamespace() == "" || obj.GetNamespace() == r.Config.Namespace
	}
	return predicate.Funcs{
		CreateFunc: func(e event.CreateEvent) bool { return isDispatcherObject(e.Object) },
		UpdateFunc: func(e event.UpdateEvent) bool {
			return isDispatcherObject(e.ObjectOld) || isDispatcherObject(e.ObjectNew)
		},
		DeleteFunc:  func(e event.DeleteEvent) bool { return isDispatcherObject(e.Object) },
		GenericFunc: func(e event.GenericEvent) bool { return isDispatcherObject(e.Object) },
	}
}

// DispatcherCacheOptions restricts the manager's cache for the dispatcher's
// object kinds to the dispatcher's own objects (by label, and by namespace
// for namespaced kinds). Without it, the watches of DispatcherReconciler
// cache every Deployment, Service, ServiceAccount, PVC, ClusterRole and
// ClusterRoleBinding in the cluster. Merge it into cache.Options.ByObject.
//
// With this cache, removing the label from an object looks like its deletion
// to the manager; the reconciler then re-applies it, label included.
func DispatcherCacheOptions(cfg DispatcherConfig) map[client.Object]cache.ByObject {
	selector := labels.SelectorFromSet(labels.Set{heraldv1alpha1.NameLabel: heraldv1alpha1.DispatcherName})
	namespaced := cache.ByObject{
		Label:      selector,
		Namespaces: map[string]cache.Config{cfg.Namespace: {}},
	}
	clusterScoped := cache.ByObject{Label: selector}
	return map[client.Object]cache.ByObject{
		&appsv1.Deployment{}:            namespaced,
		&corev1.Service{}:               namespaced,
		&corev1.ServiceAccount{}:        namespaced,
		&corev1.PersistentVolumeClaim{}: namespaced,
		&rbacv1.ClusterRole{}:           clusterScoped,
		&rbacv1.ClusterRoleBinding{}:    clusterScoped,
	}
}
