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
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	apiregistrationv1 "k8s.io/kube-aggregator/pkg/apis/apiregistration/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	deliveryv1 "github.com/herald-dev/herald/api/delivery/v1alpha1"
	heraldv1alpha1 "github.com/herald-dev/herald/api/v1alpha1"
)

// The APIService of the delivery API: created once, then applied by name.
// +kubebuilder:rbac:groups=apiregistration.k8s.io,resources=apiservices,verbs=create
// +kubebuilder:rbac:groups=apiregistration.k8s.io,resources=apiservices,verbs=patch,resourceNames=v1alpha1.delivery.herald.dev

// DeliveryAPIServiceName is the name of the delivery API's APIService.
var DeliveryAPIServiceName = deliveryv1.SchemeGroupVersion.Version + "." + deliveryv1.GroupName

// DeliveryAPIServicePort is the dispatcher Service's port of the delivery
// API, where the APIService points (443, the APIService default).
const DeliveryAPIServicePort = 443

// deliveryAPIRecheck is how often the APIService is applied again without
// a trigger, repairing edits (the manager does not watch APIServices: RBAC
// could not limit that to one name without a field-selected cache of its
// own, and a minute-scale repair is enough for a registration).
const deliveryAPIRecheck = 10 * time.Minute

// DeliveryAPIReconciler registers the dispatcher's delivery API with the
// API aggregation layer: the APIService v1alpha1.delivery.herald.dev points
// at the dispatcher Service's delivery-api port and trusts the CA that
// signed the dispatcher's certificate (the manager's CA, or the external
// issuer's ca.crt), so the aggregator verifies the dispatcher. It runs when
// the manager manages the dispatcher and ingest is HTTPS.
type DeliveryAPIReconciler struct {
	// Bundle reads the CA bundle, as for the herald-ca ConfigMaps.
	Bundle *CABundleReconciler
	Client client.Client
	Config DispatcherConfig
}

// DeliveryAPIService is the APIService for the CA bundle caBundle.
func DeliveryAPIService(cfg DispatcherConfig, caBundle []byte) *apiregistrationv1.APIService {
	port := int32(DeliveryAPIServicePort)
	return &apiregistrationv1.APIService{
		TypeMeta: metav1.TypeMeta{APIVersion: apiregistrationv1.SchemeGroupVersion.String(), Kind: "APIService"},
		ObjectMeta: metav1.ObjectMeta{
			Name:   DeliveryAPIServiceName,
			Labels: DispatcherLabels(),
		},
		Spec: apiregistrationv1.APIServiceSpec{
			Group:   deliveryv1.GroupName,
			Version: deliveryv1.SchemeGroupVersion.Version,
			Service: &apiregistrationv1.ServiceReference{
				Namespace: cfg.Namespace, Name: heraldv1alpha1.DispatcherName, Port: &port,
			},
			CABundle: caBundle,
			// A group of its own, after the built-in groups in discovery.
			GroupPriorityMinimum: 1000,
			VersionPriority:      15,
		},
	}
}

// Reconcile applies the APIService once the CA bundle exists.
func (r *DeliveryAPIReconciler) Reconcile(ctx context.Context, _ ctrl.Request) (ctrl.Result, error) {
	bundle, err := r.Bundle.bundle(ctx)
	if err != nil {
		return ctrl.Result{}, err
	}
	if len(bundle) == 0 {
		// The Secret's creation triggers this again.
		return ctrl.Result{}, nil
	}
	if err := applyObject(ctx, r.Client, DeliveryAPIService(r.Config, bundle)); err != nil {
		return ctrl.Result{}, err
	}
	return ctrl.Result{RequeueAfter: deliveryAPIRecheck}, nil
}

func (r *DeliveryAPIReconciler) request() reconcile.Request {
	return reconcile.Request{NamespacedName: types.NamespacedName{Name: DeliveryAPIServiceName}}
}

// SetupWithManager applies the APIService at start and whenever the CA
// bundle's Secret changes.
func (r *DeliveryAPIReconciler) SetupWithManager(mgr ctrl.Manager) error {
	toRequest := handler.EnqueueRequestsFromMapFunc(func(context.Context, client.Object) []reconcile.Request {
		return []reconcile.Request{r.request()}
	})
	return ctrl.NewControllerManagedBy(mgr).
		Named("delivery-api").
		WatchesMetadata(&corev1.Secret{}, toRequest,
			builder.WithPredicates(namedObjectPredicate(r.Config.Namespace, r.Bundle.bundleSecretName()))).
		WatchesRawSource(startupSource(r.request())).
		Complete(r)
}
