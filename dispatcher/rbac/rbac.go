// Package rbac holds the dispatcher's RBAC markers and nothing else: it
// imports nothing, so controller-gen reads it without loading the
// dispatcher (whose generated OpenAPI package it would skip).
package rbac

// The dispatcher's permissions. `make manifests` generates them into
// config/rbac/dispatcher/role.yaml: a ClusterRole herald-dispatcher for what
// spans every namespace (all of it read-only, plus status and reviews), and
// a Role herald-dispatcher in herald-system for the one thing the dispatcher
// writes there. config/rbac/dispatcher/role_binding.yaml binds both to the
// ServiceAccount herald-dispatcher. They ship with Herald's manifests rather
// than being created by the manager, so that the manager needs no RBAC
// verbs at all; docs/security/rbac.md says why each rule exists.

// Catalog informers (dispatcher/catalog): routing and delivery settings come
// from the specs.
// +kubebuilder:rbac:groups=herald.dev,resources=webhookendpoints;subscriptions,verbs=get;list;watch

// Health reporter (dispatcher/health): server-side apply of status.delivery,
// DeliveryHealthy and the Subscription counters under its own field manager.
// +kubebuilder:rbac:groups=herald.dev,resources=webhookendpoints/status;subscriptions/status,verbs=patch

// Managed Secrets of endpoints (signing keys, header values, TLS material).
// RBAC cannot scope by label; the informer is label-selected on
// herald.dev/secret-type=endpoint (catalog.CacheOptions), so no other Secret
// is listed, watched or held. Read-only.
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch

// Ingest: 404 for events published to a namespace that does not exist.
// +kubebuilder:rbac:groups="",resources=namespaces,verbs=get

// Ingest and the metrics endpoint authenticate and authorize bearer tokens.
// +kubebuilder:rbac:groups=authentication.k8s.io,resources=tokenreviews,verbs=create
// +kubebuilder:rbac:groups=authorization.k8s.io,resources=subjectaccessreviews,verbs=create

// The status writer renews the Lease heraldv1.StatusWriterLeaseName in its
// own namespace (statusLeaseHeartbeat) so the manager can tell when no
// dispatcher reports. Create cannot be limited to a name; get and update
// are.
// +kubebuilder:rbac:groups=coordination.k8s.io,resources=leases,verbs=create,namespace=herald-system
// +kubebuilder:rbac:groups=coordination.k8s.io,resources=leases,verbs=get;update,namespace=herald-system,resourceNames=herald-dispatcher-status

// Redeliveries are executed by the dispatcher (it owns the queue), which
// reports their progress in their status; it never creates, changes or
// deletes them.
// +kubebuilder:rbac:groups=herald.dev,resources=redeliveries,verbs=get;list;watch
// +kubebuilder:rbac:groups=herald.dev,resources=redeliveries/status,verbs=patch

// A ping's outcome is an Event on the endpoint (PingSucceeded, PingFailed).
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch
