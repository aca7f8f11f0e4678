package v1alpha1

// Condition types. Ready, Reconciling and Stalled follow kstatus: Reconciling
// and Stalled are abnormal-true and only present while true.
const (
	// ReadyCondition is True when the object's spec was validated and every
	// object it depends on is in place; the dispatcher acts only on objects
	// whose Ready condition is True for their current generation.
	ReadyCondition = "Ready"

	// ReconcilingCondition is True while the manager is working towards the
	// desired state.
	ReconcilingCondition = "Reconciling"

	// StalledCondition is True when reconciliation cannot progress until the
	// user changes something.
	StalledCondition = "Stalled"

	// DeliveryHealthyCondition reports delivery health of a WebhookEndpoint.
	// It is written by the dispatcher under its own field manager.
	DeliveryHealthyCondition = "DeliveryHealthy"
)

// Reasons of the Ready, Reconciling and Stalled conditions.
const (
	// ReconciledReason: the spec was fully processed.
	ReconciledReason = "Reconciled"
	// ProgressingReason: the manager is acting on a new generation.
	ProgressingReason = "Progressing"
	// SuspendedReason: spec.suspend is true; the object is valid but inactive.
	SuspendedReason = "Suspended"
	// InvalidSpecReason: a validation rule failed (terminal).
	InvalidSpecReason = "InvalidSpec"
	// SecretNotFoundReason: a referenced Secret does not exist.
	SecretNotFoundReason = "SecretNotFound"
	// SecretKeyNotFoundReason: a referenced Secret lacks the named key.
	SecretKeyNotFoundReason = "SecretKeyNotFound"
	// ForbiddenSecretTypeReason: a reference names a ServiceAccount token
	// Secret, which Herald never reads (it would hand a cluster credential
	// to a receiver).
	ForbiddenSecretTypeReason = "ForbiddenSecretType"
	// InvalidSigningSecretReason: the user-supplied signing secret cannot be
	// decoded as a Standard Webhooks secret.
	InvalidSigningSecretReason = "InvalidSigningSecret"
	// SecretConflictReason: a Secret with the managed Secret's name exists
	// and is not controlled by this endpoint; Herald will not overwrite it.
	SecretConflictReason = "SecretConflict"
	// InvalidTLSReason: the CA bundle or client certificate cannot be parsed.
	InvalidTLSReason = "InvalidTLS"
	// EndpointNotFoundReason: a Subscription's endpoint does not exist.
	EndpointNotFoundReason = "EndpointNotFound"
	// EndpointNotReadyReason: a Subscription's endpoint exists but is not Ready.
	EndpointNotReadyReason = "EndpointNotReady"
	// InvalidFilterReason: a Subscription's CEL filter does not compile.
	InvalidFilterReason = "InvalidFilter"
	// RequeueingReason: a Redelivery is queueing its deliveries again.
	RequeueingReason = "Requeueing"
	// RequeueFailedReason: queueing a Redelivery's deliveries failed for
	// now (the queue is full or unreachable); the dispatcher retries.
	RequeueFailedReason = "RequeueFailed"
	// CompletedReason: a Redelivery queued every matching delivery again;
	// it never runs again.
	CompletedReason = "Completed"
)

// Reasons of the Events on a WebhookEndpoint after a ping
// (PingAnnotation).
const (
	PingSucceededReason = "PingSucceeded"
	PingFailedReason    = "PingFailed"
)

// Reasons of the DeliveryHealthy condition.
const (
	DeliveringReason          = "Delivering"
	NoTrafficReason           = "NoTraffic"
	ConsecutiveFailuresReason = "ConsecutiveFailures"
	CircuitOpenReason         = "CircuitOpen"
	DisabledReason            = "Disabled"
	EndpointGoneReason        = "EndpointGone"
	BlockedAddressReason      = "BlockedAddress"
	SigningKeyMissingReason   = "SigningKeyMissing"
	// DispatcherNotReportingReason is set by the manager, not the
	// dispatcher: no dispatcher has renewed the status writer's Lease
	// (StatusWriterLeaseName) for two lease durations, so the delivery
	// status shown is stale. The dispatcher replaces it when it reports
	// again.
	DispatcherNotReportingReason = "DispatcherNotReporting"
)

// Labels, annotations and well-known names shared by the manager and the
// dispatcher.
const (
	// ManagedByLabel marks every object Herald creates.
	ManagedByLabel = "app.kubernetes.io/managed-by"
	// ManagedByValue is the value of ManagedByLabel on Herald's objects.
	ManagedByValue = "herald"

	// SecretTypeLabel selects the Secrets the dispatcher may read. The
	// dispatcher's informer is restricted to SecretTypeLabel=SecretTypeEndpoint.
	SecretTypeLabel = "herald.dev/secret-type"
	// SecretTypeEndpoint labels an endpoint's managed Secret.
	SecretTypeEndpoint = "endpoint"

	// HandledRotationAnnotation on a managed Secret records the value of
	// RotateSigningKeyAnnotation the last rotation acted on.
	HandledRotationAnnotation = "herald.dev/handled-rotation"

	// EndpointNameAnnotation on a managed Secret names its WebhookEndpoint.
	// (Object names can exceed the 63 characters a label value allows.)
	EndpointNameAnnotation = "herald.dev/endpoint"

	// RotateSigningKeyAnnotation requests a rotation of a generated signing
	// key: set it to any new value (for example a timestamp). The manager
	// rotates once per distinct value and records the value it handled in
	// status.signing.lastHandledRotation.
	RotateSigningKeyAnnotation = "herald.dev/rotate-signing-key"

	// PingAnnotation requests a ping of a WebhookEndpoint: set it to any
	// new value. The dispatcher sends one signed event of type PingEventType
	// per distinct value, outside any Subscription, and reports the outcome
	// as an Event (PingSucceededReason, PingFailedReason) whose message
	// names the value, and as a Delivery in the delivery log.
	PingAnnotation = "herald.dev/ping"
	// PingEventType is the CloudEvents type of a ping.
	PingEventType = "herald.ping"

	// ComponentLabel names the part of Herald an object belongs to.
	ComponentLabel = "app.kubernetes.io/component"
	// NameLabel is the application name label.
	NameLabel = "app.kubernetes.io/name"
	// DispatcherName is the name of the dispatcher's objects and the value
	// of NameLabel on them.
	DispatcherName = "herald-dispatcher"
	// StatusWriterLeaseName is the coordination.k8s.io Lease, in the
	// dispatcher's namespace, that the dispatcher replica writing delivery
	// health renews while it does (spec.holderIdentity, spec.renewTime,
	// spec.leaseDurationSeconds). The manager watches it to tell whether
	// any dispatcher reports; a Lease that does not exist means no verdict.
	StatusWriterLeaseName = "herald-dispatcher-status"
	// DefaultNamespace is where Herald's manager and dispatcher run unless
	// told otherwise.
	DefaultNamespace = "herald-system"

	// IngestTLSSecretName is the kubernetes.io/tls Secret, in the
	// dispatcher's namespace, holding the ingest serving certificate
	// (tls.crt, tls.key) and the CA bundle that verifies it (ca.crt). The
	// manager issues it, or cert-manager does (config/components/cert-manager).
	IngestTLSSecretName = "herald-dispatcher-tls"
	// CASecretName is the Secret, in the dispatcher's namespace, of the CA
	// the manager issues serving certificates with.
	CASecretName = "herald-ca"
	// CABundleConfigMapName is the ConfigMap the manager keeps in every
	// namespace holding a WebhookEndpoint or a Subscription, as
	// kube-root-ca.crt: its key ca.crt is the PEM bundle publishers verify
	// the dispatcher's ingest with.
	CABundleConfigMapName = "herald-ca"
)

// Keys of an endpoint's managed Secret. The manager writes them; the
// dispatcher reads them.
const (
	// SigningSecretKey holds the current signing secret (whsec_… for
	// HMAC-SHA256, whpk_… public key for Ed25519) for receivers to copy.
	SigningSecretKey = "secret"
	// SigningKeysKey holds the JSON list of valid signing keys (SigningKey).
	SigningKeysKey = "signing-keys.json"
	// HeadersKey holds a JSON object of header values taken from Secrets.
	HeadersKey = "headers.json"
	// CABundleKey holds the PEM CA bundle used to verify the receiver.
	CABundleKey = "ca.crt"
	// ClientCertKey and ClientKeyKey hold the client certificate and key.
	ClientCertKey = "tls.crt"
	ClientKeyKey  = "tls.key"
)

// Standard Webhooks header names. They cannot be set through spec.headers.
const (
	WebhookIDHeader        = "webhook-id"
	WebhookTimestampHeader = "webhook-timestamp"
	WebhookSignatureHeader = "webhook-signature"
)

// DefaultAudience is the token audience the dispatcher's ingest accepts by
// default.
const DefaultAudience = "herald.dev"
