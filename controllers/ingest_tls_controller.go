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
	"bytes"
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	heraldv1alpha1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/internal/pki"
)

// The CA and the ingest certificate are Secrets in the dispatcher's
// namespace, read fresh (never cached) and written with server-side apply.
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;create;patch

// The CA bundle ConfigMap herald-ca in namespaces with Herald objects:
// watched by name (the cache's field selector metadata.name=herald-ca lets
// RBAC limit list and watch to that name), written with server-side apply.
// Create cannot be limited to a name.
// +kubebuilder:rbac:groups="",resources=configmaps,verbs=create
// +kubebuilder:rbac:groups="",resources=configmaps,verbs=list;watch;patch,resourceNames=herald-ca

// caBundleComponent is the value of ComponentLabel on the CA Secrets and
// the CA bundle ConfigMaps.
const caBundleComponent = "ca"

// maxCertificateRecheck bounds how long the certificate reconciler sleeps
// even when nothing is due for months: it re-reads its Secrets twice a day.
const maxCertificateRecheck = 12 * time.Hour

func caLabels() map[string]string {
	return map[string]string{
		heraldv1alpha1.ManagedByLabel: heraldv1alpha1.ManagedByValue,
		heraldv1alpha1.ComponentLabel: caBundleComponent,
	}
}

// IngestServingHosts are the names in the ingest certificate: those of the
// dispatcher Service, then TLSExtraHosts.
func IngestServingHosts(cfg DispatcherConfig) []string {
	return slices.Concat(pki.ServiceHosts(heraldv1alpha1.DispatcherName, cfg.Namespace), cfg.TLSExtraHosts)
}

// IngestCertificateReconciler keeps the CA Secret (CASecretName) and the
// ingest certificate Secret (IngestTLSSecretName) of the dispatcher's
// namespace with a pki.Keeper: created when missing, repaired when edited,
// renewed at two thirds of their lifetime. It runs with
// --dispatcher-tls-issuer=manager, also when the dispatcher runs elsewhere
// (--manage-dispatcher=false), so a local dispatcher can be given the files.
type IngestCertificateReconciler struct {
	// Client applies the Secrets.
	Client client.Client
	// APIReader reads them: the manager caches no Secret data.
	APIReader client.Reader
	Config    DispatcherConfig
	// Clock is the time certificates are issued and renewed by; nil is the
	// real clock.
	Clock clock.PassiveClock
}

func (r *IngestCertificateReconciler) keeper() *pki.Keeper {
	return &pki.Keeper{
		Reader:       r.APIReader,
		Client:       r.Client,
		FieldOwner:   FieldOwner,
		Namespace:    r.Config.Namespace,
		CASecretName: heraldv1alpha1.CASecretName,
		CACommonName: "Herald CA (" + r.Config.Namespace + ")",
		Labels:       caLabels(),
		Clock:        r.Clock,
	}
}

// Reconcile ensures both Secrets and comes back when a certificate is due.
func (r *IngestCertificateReconciler) Reconcile(ctx context.Context, _ ctrl.Request) (ctrl.Result, error) {
	res, err := r.keeper().Ensure(ctx, pki.Serving{
		SecretName: heraldv1alpha1.IngestTLSSecretName,
		Hosts:      IngestServingHosts(r.Config),
	})
	if err != nil {
		return ctrl.Result{}, err
	}
	now := time.Now()
	if r.Clock != nil {
		now = r.Clock.Now()
	}
	ctrl.LoggerFrom(ctx).V(1).Info("Ingest certificate up to date", "renewAt", res.RenewAt)
	return ctrl.Result{RequeueAfter: min(max(res.RenewAt.Sub(now), time.Second), maxCertificateRecheck)}, nil
}

func (r *IngestCertificateReconciler) request() reconcile.Request {
	return reconcile.Request{NamespacedName: types.NamespacedName{
		Namespace: r.Config.Namespace, Name: heraldv1alpha1.IngestTLSSecretName,
	}}
}

// SetupWithManager reconciles once at start and whenever either Secret
// changes or is deleted (a metadata-only watch, shared with the endpoint
// controller's).
func (r *IngestCertificateReconciler) SetupWithManager(mgr ctrl.Manager) error {
	isOurs := namedObjectPredicate(r.Config.Namespace, heraldv1alpha1.CASecretName, heraldv1alpha1.IngestTLSSecretName)
	toRequest := handler.EnqueueRequestsFromMapFunc(func(context.Context, client.Object) []reconcile.Request {
		return []reconcile.Request{r.request()}
	})
	return ctrl.NewControllerManagedBy(mgr).
		Named("ingest-certificate").
		WatchesMetadata(&corev1.Secret{}, toRequest, builder.WithPredicates(isOurs)).
		WatchesRawSource(startupSource(r.request())).
		Complete(r)
}

// namedObjectPredicate passes events of the objects with these names in
// namespace.
func namedObjectPredicate(namespace string, names ...string) predicate.Predicate {
	return predicate.NewPredicateFuncs(func(o client.Object) bool {
		return o.GetNamespace() == namespace && slices.Contains(names, o.GetName())
	})
}

// CABundleReconciler keeps the ConfigMap herald-ca (key ca.crt) in every
// namespace that holds a WebhookEndpoint or a Subscription, as
// kube-root-ca.crt, so publishers can mount the CA that verifies ingest.
// The bundle is the ca.crt of the CA Secret (manager-issued) or of the
// ingest Secret (external issuer). A herald-ca ConfigMap it wrote stays,
// and is kept in step, after the namespace's last Herald object is
// deleted: publishers may still mount it, and the manager holds no delete.
type CABundleReconciler struct {
	// Client reads the cache (ConfigMaps named herald-ca, endpoints,
	// Subscriptions, Secret metadata) and applies ConfigMaps.
	Client client.Client
	// APIReader reads the bundle's Secret when it changed.
	APIReader client.Reader
	Config    DispatcherConfig

	mu   sync.Mutex
	memo struct {
		resourceVersion string
		bundle          []byte
	}
}

// CABundleCacheOptions restricts the manager's ConfigMap cache to the
// ConfigMaps named herald-ca. Merge it into cache.Options.ByObject.
func CABundleCacheOptions() map[client.Object]cache.ByObject {
	return map[client.Object]cache.ByObject{
		&corev1.ConfigMap{}: {Field: fields.OneTermEqualSelector("metadata.name", heraldv1alpha1.CABundleConfigMapName)},
	}
}

// bundleSecretName is the Secret whose ca.crt is published.
func (r *CABundleReconciler) bundleSecretName() string {
	if r.Config.TLSIssuer == TLSIssuerExternal {
		return heraldv1alpha1.IngestTLSSecretName
	}
	return heraldv1alpha1.CASecretName
}

// Reconcile creates or updates herald-ca in one namespace.
func (r *CABundleReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	log := ctrl.LoggerFrom(ctx)
	bundle, err := r.bundle(ctx)
	if err != nil {
		return ctrl.Result{}, err
	}
	if len(bundle) == 0 {
		// The Secret's creation or change triggers every namespace again.
		log.V(1).Info("No CA bundle yet", "secret", r.bundleSecretName())
		return ctrl.Result{}, nil
	}

	existing := &corev1.ConfigMap{}
	err = r.Client.Get(ctx, req.NamespacedName, existing)
	switch {
	case apierrors.IsNotFound(err):
		needed, err := r.holdsHeraldObjects(ctx, req.Namespace)
		if err != nil || !needed {
			return ctrl.Result{}, err
		}
	case err != nil:
		return ctrl.Result{}, fmt.Errorf("get ConfigMap %s: %w", req.NamespacedName, err)
	case existing.Data[pki.CABundleKey] == string(bundle) && hasLabels(existing, caLabels()):
		return ctrl.Result{}, nil
	}

	cm := corev1ac.ConfigMap(req.Name, req.Namespace).
		WithLabels(caLabels()).
		WithData(map[string]string{pki.CABundleKey: string(bundle)})
	if err := r.Client.Apply(ctx, cm, FieldOwner, client.ForceOwnership); err != nil {
		return ctrl.Result{}, fmt.Errorf("apply ConfigMap %s: %w", req.NamespacedName, err)
	}
	log.V(1).Info("Published CA bundle", "configMap", req.NamespacedName)
	return ctrl.Result{}, nil
}

func hasLabels(o metav1.Object, want map[string]string) bool {
	for k, v := range want {
		if o.GetLabels()[k] != v {
			return false
		}
	}
	return true
}

// bundle returns the ca.crt of the bundle's Secret, nil while it has none.
// The Secret is read from the API server only when its resourceVersion (in
// the metadata cache) changed, not once per namespace.
func (r *CABundleReconciler) bundle(ctx context.Context) ([]byte, error) {
	key := client.ObjectKey{Namespace: r.Config.Namespace, Name: r.bundleSecretName()}
	secretMeta := &metav1.PartialObjectMetadata{}
	secretMeta.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("Secret"))
	if err := r.Client.Get(ctx, key, secretMeta); apierrors.IsNotFound(err) {
		return nil, nil
	} else if err != nil {
		return nil, fmt.Errorf("get Secret %s metadata: %w", key, err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.memo.resourceVersion == secretMeta.ResourceVersion {
		return r.memo.bundle, nil
	}
	secret := &corev1.Secret{}
	if err := r.APIReader.Get(ctx, key, secret); apierrors.IsNotFound(err) {
		return nil, nil
	} else if err != nil {
		return nil, fmt.Errorf("get Secret %s: %w", key, err)
	}
	bundle := secret.Data[pki.CABundleKey]
	if len(pki.ParseCertificates(bundle)) == 0 {
		bundle = nil // nothing a client could use; wait for the issuer
	}
	r.memo.resourceVersion, r.memo.bundle = secret.ResourceVersion, bytes.Clone(bundle)
	return bundle, nil
}

// holdsHeraldObjects reports whether namespace holds a WebhookEndpoint or a
// Subscription.
func (r *CABundleReconciler) holdsHeraldObjects(ctx context.Context, namespace string) (bool, error) {
	for _, list := range []client.ObjectList{&heraldv1alpha1.WebhookEndpointList{}, &heraldv1alpha1.SubscriptionList{}} {
		if err := r.Client.List(ctx, list, client.InNamespace(namespace)); err != nil {
			return false, fmt.Errorf("list Herald objects in %s: %w", namespace, err)
		}
		if meta.LenList(list) > 0 {
			return true, nil
		}
	}
	return false, nil
}

// SetupWithManager watches the herald-ca ConfigMaps (edits and deletions
// are repaired), the creation of WebhookEndpoints and Subscriptions (a
// namespace that needs the ConfigMap) and the bundle's Secret (every
// namespace is brought in step).
func (r *CABundleReconciler) SetupWithManager(mgr ctrl.Manager) error {
	toNamespace := handler.EnqueueRequestsFromMapFunc(func(_ context.Context, o client.Object) []reconcile.Request {
		return []reconcile.Request{caBundleRequest(o.GetNamespace())}
	})
	// An object's existence matters, not its changes.
	createdOrDeleted := builder.WithPredicates(predicate.Funcs{
		UpdateFunc: func(event.UpdateEvent) bool { return false },
	})
	return ctrl.NewControllerManagedBy(mgr).
		Named("ca-bundle").
		For(&corev1.ConfigMap{}, builder.WithPredicates(predicate.NewPredicateFuncs(func(o client.Object) bool {
			return o.GetName() == heraldv1alpha1.CABundleConfigMapName
		}))).
		Watches(&heraldv1alpha1.WebhookEndpoint{}, toNamespace, createdOrDeleted).
		Watches(&heraldv1alpha1.Subscription{}, toNamespace, createdOrDeleted).
		WatchesMetadata(&corev1.Secret{}, handler.EnqueueRequestsFromMapFunc(r.everyNamespace),
			builder.WithPredicates(namedObjectPredicate(r.Config.Namespace, r.bundleSecretName()))).
		Complete(r)
}

func caBundleRequest(namespace string) reconcile.Request {
	return reconcile.Request{NamespacedName: types.NamespacedName{Namespace: namespace, Name: heraldv1alpha1.CABundleConfigMapName}}
}

// everyNamespace enqueues each namespace with Herald objects or a
// herald-ca ConfigMap.
func (r *CABundleReconciler) everyNamespace(ctx context.Context, _ client.Object) []reconcile.Request {
	namespaces := map[string]bool{}
	for _, list := range []client.ObjectList{&heraldv1alpha1.WebhookEndpointList{}, &heraldv1alpha1.SubscriptionList{}, &corev1.ConfigMapList{}} {
		if err := r.Client.List(ctx, list); err != nil {
			ctrl.LoggerFrom(ctx).Error(err, "List namespaces to publish the CA bundle to")
			return nil
		}
		_ = meta.EachListItem(list, func(o runtime.Object) error {
			if obj, ok := o.(metav1.Object); ok {
				namespaces[obj.GetNamespace()] = true
			}
			return nil
		})
	}
	reqs := make([]reconcile.Request, 0, len(namespaces))
	for ns := range namespaces {
		reqs = append(reqs, caBundleRequest(ns))
	}
	return reqs
}
