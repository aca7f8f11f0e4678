package controllers

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/recorder"
	"sigs.k8s.io/controller-runtime/pkg/source"

	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/dispatcher/signature"
)

// endpointSecretIndex indexes WebhookEndpoints by the names of the user
// Secrets they reference, so a Secret change reconciles exactly the
// endpoints that read it.
const endpointSecretIndex = ".spec.secretNames"

// WebhookEndpointReconciler validates WebhookEndpoints and keeps each
// endpoint's managed Secret (signing keys, header values from Secrets, TLS
// material) in step with its spec and the user Secrets it references.
type WebhookEndpointReconciler struct {
	Client client.Client
	// APIReader reads Secrets directly from the API server: the manager
	// caches only Secret metadata, never their data, and must never act on a
	// stale copy of the signing keys it generated.
	APIReader client.Reader
	Recorder  recorder.EventRecorder
	// Now returns the current time; tests may shorten the clock's path.
	Now func() time.Time
}

// +kubebuilder:rbac:groups=herald.dev,resources=webhookendpoints,verbs=get;list;watch
// Status is written with server-side apply only.
// +kubebuilder:rbac:groups=herald.dev,resources=webhookendpoints/status,verbs=patch
// The managed Secret's owner reference sets blockOwnerDeletion, which API
// servers enforcing owner-reference permissions allow only to those who may
// set the owner's finalizers.
// +kubebuilder:rbac:groups=herald.dev,resources=webhookendpoints/finalizers,verbs=update
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch;create;patch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Reconcile validates one WebhookEndpoint, applies its managed Secret and
// reports the outcome in its conditions.
func (r *WebhookEndpointReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	log := ctrl.LoggerFrom(ctx)
	ep := &heraldv1.WebhookEndpoint{}
	if err := r.Client.Get(ctx, req.NamespacedName, ep); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !ep.DeletionTimestamp.IsZero() {
		// The managed Secret is garbage collected through its owner reference.
		return ctrl.Result{}, nil
	}

	if err := r.markReconciling(ctx, ep); err != nil {
		return ctrl.Result{}, err
	}

	signing, requeueAfter, err := r.reconcileEndpoint(ctx, ep)

	var ready metav1.Condition
	var stalled *metav1.Condition
	var condErr *conditionError
	switch {
	case errors.As(err, &condErr):
		ready = metav1.Condition{Status: metav1.ConditionFalse, Reason: condErr.Reason, Message: condErr.Message}
		if condErr.Terminal {
			stalled = &metav1.Condition{Reason: condErr.Reason, Message: condErr.Message}
		}
		// A user error is not retried: a change of the spec or of a watched
		// Secret triggers the next reconcile.
		requeueAfter = 0
	case err != nil:
		// Transient: keep Ready as it was and let the workqueue retry.
		log.Error(err, "Reconcile failed", "webhookEndpoint", klog.KObj(ep))
		return ctrl.Result{}, err
	case ep.Spec.Suspend:
		ready = metav1.Condition{Status: metav1.ConditionTrue, Reason: heraldv1.SuspendedReason,
			Message: "Endpoint is valid and suspended: events queue until spec.suspend is false"}
	default:
		ready = metav1.Condition{Status: metav1.ConditionTrue, Reason: heraldv1.ReconciledReason,
			Message: "Signing keys and delivery settings are ready"}
	}

	if signing == nil {
		signing = ep.Status.Signing
	}
	if err := r.patchStatus(ctx, ep, ready, nil, stalled, signing); err != nil {
		return ctrl.Result{}, err
	}
	return ctrl.Result{RequeueAfter: requeueAfter}, nil
}

// markReconciling records, once per generation, that the manager is acting
// on a new spec: Ready becomes Unknown for the new generation, so
// `kubectl wait --for=condition=Ready` never passes on a stale verdict.
func (r *WebhookEndpointReconciler) markReconciling(ctx context.Context, ep *heraldv1.WebhookEndpoint) error {
	if ep.Status.ObservedGeneration == ep.Generation {
		return nil
	}
	msg := fmt.Sprintf("Reconciling generation %d", ep.Generation)
	return r.patchStatus(ctx, ep,
		metav1.Condition{Status: metav1.ConditionUnknown, Reason: heraldv1.ProgressingReason, Message: msg},
		&metav1.Condition{Reason: heraldv1.ProgressingReason, Message: msg}, nil, ep.Status.Signing)
}

func (r *WebhookEndpointReconciler) patchStatus(ctx context.Context, ep *heraldv1.WebhookEndpoint, ready metav1.Condition, reconciling, stalled *metav1.Condition, signing *heraldv1.SigningStatus) error {
	status := heraldv1.WebhookEndpointStatus{
		Conditions:       managerConditions(ep.Status.Conditions, ep.Generation, ready, reconciling, stalled),
		SigningSecretRef: ep.Status.SigningSecretRef,
		Signing:          signing,
	}
	if reconciling == nil {
		status.ObservedGeneration = ep.Generation
		if signing != nil {
			status.SigningSecretRef = &heraldv1.LocalObjectReference{Name: ManagedSecretName(ep.Name)}
		}
	} else {
		status.ObservedGeneration = ep.Status.ObservedGeneration
	}
	m, err := statusToMap(&status)
	if err != nil {
		return err
	}
	if err := applyStatus(ctx, r.Client, heraldv1.GroupVersion.WithKind("WebhookEndpoint"), client.ObjectKeyFromObject(ep), m); err != nil {
		return err
	}
	if reconciling == nil {
		recordReadyTransition(r.Recorder, ep, ep.Status.Conditions, ready)
	}
	return nil
}

// conditionError is a problem only the user can fix. It becomes Ready=False
// with Reason and Message; Terminal ones also set Stalled.
type conditionError struct {
	Reason   string
	Message  string
	Terminal bool
}

func (e *conditionError) Error() string { return e.Reason + ": " + e.Message }

func invalidSpec(format string, args ...any) error {
	return &conditionError{Reason: heraldv1.InvalidSpecReason, Message: fmt.Sprintf(format, args...), Terminal: true}
}

// reconcileEndpoint runs the reconcile steps in order.
func (r *WebhookEndpointReconciler) reconcileEndpoint(ctx context.Context, ep *heraldv1.WebhookEndpoint) (*heraldv1.SigningStatus, time.Duration, error) {
	if err := validateEndpointSpec(&ep.Spec); err != nil {
		return nil, 0, err
	}
	src, err := r.readSources(ctx, ep)
	if err != nil {
		return nil, 0, err
	}
	return r.reconcileManagedSecret(ctx, ep, src)
}

// validateEndpointSpec re-checks the CRD's CEL rules (an older API server
// may not enforce them) and what CEL cannot express.
func validateEndpointSpec(spec *heraldv1.WebhookEndpointSpec) error {
	u, err := url.Parse(spec.URL)
	if err != nil || u.Host == "" || u.Hostname() == "" {
		return invalidSpec("spec.url %q is not an absolute URL with a host", spec.URL)
	}
	if u.User != nil {
		return invalidSpec("spec.url must not contain credentials; send them with spec.headers[].valueFrom")
	}
	switch {
	case u.Scheme == "https":
	case u.Scheme == "http" && spec.AllowInsecureHTTP:
	case u.Scheme == "http":
		return invalidSpec("spec.url must use https; set spec.allowInsecureHTTP: true to allow plain http")
	default:
		return invalidSpec("spec.url scheme %q is not supported; use https", u.Scheme)
	}
	for _, h := range spec.Headers {
		name := strings.ToLower(h.Name)
		switch {
		case strings.HasPrefix(name, "webhook-"), strings.HasPrefix(name, "ce-"):
			return invalidSpec("spec.headers: %q is reserved for the headers Herald sets", h.Name)
		case name == "host", name == "content-type", name == "content-length", name == "transfer-encoding", name == "connection", name == "user-agent":
			return invalidSpec("spec.headers: %q is set by Herald and cannot be overridden", h.Name)
		case (h.Value == nil) == (h.ValueFrom == nil):
			return invalidSpec("spec.headers[%s]: exactly one of value or valueFrom must be set", h.Name)
		case h.Value != nil && strings.ContainsAny(*h.Value, "\r\n"):
			return invalidSpec("spec.headers[%s]: value must not contain line breaks", h.Name)
		}
	}
	retry := spec.GetRetry()
	if retry.InitialBackoff > retry.MaxBackoff {
		return invalidSpec("spec.retry: initialBackoff (%s) must not exceed maxBackoff (%s)", retry.InitialBackoff, retry.MaxBackoff)
	}
	if spec.GetOrdering() == heraldv1.Ordered && spec.MaxInFlight != nil && *spec.MaxInFlight != 1 {
		return invalidSpec("spec.maxInFlight must be 1 or unset when spec.ordering is Ordered")
	}
	if spec.Signing != nil && spec.Signing.SecretRef != nil && spec.Signing.SecretRef.Name != "" &&
		strings.HasSuffix(spec.Signing.SecretRef.Name, managedSecretSuffix) {
		return invalidSpec("spec.signing.secretRef: Secret names ending in %q are reserved for Secrets Herald manages", managedSecretSuffix)
	}
	return nil
}

// endpointSources is what the managed Secret is compiled from.
type endpointSources struct {
	signingKey string            // user-supplied key; empty when generated
	headers    map[string]string // header values taken from Secrets
	caBundle   []byte
	clientCert []byte
	clientKey  []byte
}

// readSecretKey reads one key of a user Secret; errors name the field that
// references it and never include the value.
func (r *WebhookEndpointReconciler) readSecretKey(ctx context.Context, ns, field, name, key string) ([]byte, error) {
	s := &corev1.Secret{}
	if err := r.APIReader.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, s); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, &conditionError{Reason: heraldv1.SecretNotFoundReason,
				Message: fmt.Sprintf("Secret %q referenced by %s not found; create it or change the reference", name, field)}
		}
		return nil, fmt.Errorf("get Secret %s/%s for %s: %w", ns, name, field, err)
	}
	// Defence in depth behind the admission policy: a ServiceAccount token
	// is a credential to this cluster, never a webhook secret, so its
	// content is not read, whoever the author of the reference is.
	if s.Type == corev1.SecretTypeServiceAccountToken {
		return nil, &conditionError{Reason: heraldv1.ForbiddenSecretTypeReason, Terminal: true,
			Message: fmt.Sprintf("Secret %q referenced by %s is a ServiceAccount token (type %s), which Herald never reads; reference a Secret of another type", name, field, corev1.SecretTypeServiceAccountToken)}
	}
	v, ok := s.Data[key]
	if !ok {
		return nil, &conditionError{Reason: heraldv1.SecretKeyNotFoundReason,
			Message: fmt.Sprintf("Secret %q referenced by %s has no key %q", name, field, key)}
	}
	return v, nil
}

func (r *WebhookEndpointReconciler) readSources(ctx context.Context, ep *heraldv1.WebhookEndpoint) (*endpointSources, error) {
	src := &endpointSources{}
	ns := ep.Namespace
	alg := ep.Spec.GetSigningAlgorithm()

	if ep.Spec.Signing != nil && ep.Spec.Signing.SecretRef != nil {
		ref := ep.Spec.Signing.SecretRef
		v, err := r.readSecretKey(ctx, ns, "spec.signing.secretRef", ref.Name, ref.KeyOr(heraldv1.DefaultSigningSecretKey))
		if err != nil {
			return nil, err
		}
		key, err := signature.ParseKey(string(v))
		want := signature.KindHMAC
		if alg == heraldv1.Ed25519 {
			want = signature.KindEd25519Private
		}
		if err != nil || key.Kind != want {
			msg := fmt.Sprintf("Secret %q key %q is not a valid %s signing key", ref.Name, ref.KeyOr(heraldv1.DefaultSigningSecretKey), alg)
			if err != nil {
				msg += ": " + strings.TrimPrefix(err.Error(), signature.ErrInvalidKey.Error()+": ")
			} else if alg == heraldv1.Ed25519 {
				msg += ": want a " + signature.Ed25519SecretPfx + " private key"
			} else {
				msg += ": want a " + signature.HMACPrefix + " secret"
			}
			return nil, &conditionError{Reason: heraldv1.InvalidSigningSecretReason, Message: msg, Terminal: true}
		}
		src.signingKey = strings.TrimSpace(string(v))
	}

	for _, h := range ep.Spec.Headers {
		if h.ValueFrom == nil {
			continue
		}
		field := fmt.Sprintf("spec.headers[%s].valueFrom", h.Name)
		v, err := r.readSecretKey(ctx, ns, field, h.ValueFrom.Name, h.ValueFrom.KeyOr(heraldv1.DefaultHeaderSecretKey))
		if err != nil {
			return nil, err
		}
		if strings.ContainsAny(string(v), "\r\n") {
			return nil, &conditionError{Reason: heraldv1.InvalidSpecReason, Terminal: true,
				Message: fmt.Sprintf("Secret %q referenced by %s holds a value with line breaks, which is not a valid header value", h.ValueFrom.Name, field)}
		}
		if src.headers == nil {
			src.headers = map[string]string{}
		}
		src.headers[h.Name] = string(v)
	}

	if t := ep.Spec.TLS; t != nil {
		if t.CASecretRef != nil {
			key := t.CASecretRef.KeyOr(heraldv1.DefaultCASecretKey)
			v, err := r.readSecretKey(ctx, ns, "spec.tls.caSecretRef", t.CASecretRef.Name, key)
			if err != nil {
				return nil, err
			}
			if !x509.NewCertPool().AppendCertsFromPEM(v) {
				return nil, &conditionError{Reason: heraldv1.InvalidTLSReason, Terminal: true,
					Message: fmt.Sprintf("Secret %q key %q holds no PEM certificate", t.CASecretRef.Name, key)}
			}
			src.caBundle = v
		}
		if t.ClientCertificateSecretRef != nil {
			name := t.ClientCertificateSecretRef.Name
			crt, err := r.readSecretKey(ctx, ns, "spec.tls.clientCertificateSecretRef", name, corev1.TLSCertKey)
			if err != nil {
				return nil, err
			}
			key, err := r.readSecretKey(ctx, ns, "spec.tls.clientCertificateSecretRef", name, corev1.TLSPrivateKeyKey)
			if err != nil {
				return nil, err
			}
			if _, err := tls.X509KeyPair(crt, key); err != nil {
				// The parse error is not quoted: it could echo key bytes.
				return nil, &conditionError{Reason: heraldv1.InvalidTLSReason, Terminal: true,
					Message: fmt.Sprintf("Secret %q: tls.crt and tls.key are not a valid PEM certificate and matching private key", name)}
			}
			src.clientCert, src.clientKey = crt, key
		}
	}
	return src, nil
}

// managedSecretSuffix ends the name of every endpoint's managed Secret.
const managedSecretSuffix = "-herald"

// ManagedSecretName is the name of an endpoint's managed Secret. Names that
// would exceed the 253-character limit are shortened with a hash suffix so
// they stay unique.
func ManagedSecretName(endpoint string) string {
	name := endpoint + managedSecretSuffix
	if len(name) <= 253 {
		return name
	}
	sum := sha256.Sum256([]byte(endpoint))
	return endpoint[:253-len(managedSecretSuffix)-9] + "-" + hex.EncodeToString(sum[:4]) + managedSecretSuffix
}

// reconcileManagedSecret computes the signing keys (generation, rotation,
// pruning) and applies the managed Secret. It returns the signing status and
// when the next replaced key expires.
func (r *WebhookEndpointReconciler) reconcileManagedSecret(ctx context.Context, ep *heraldv1.WebhookEndpoint, src *endpointSources) (*heraldv1.SigningStatus, time.Duration, error) {
	name := ManagedSecretName(ep.Name)
	existing := &corev1.Secret{}
	if err := r.APIReader.Get(ctx, types.NamespacedName{Namespace: ep.Namespace, Name: name}, existing); err != nil {
		if !apierrors.IsNotFound(err) {
			return nil, 0, fmt.Errorf("get managed Secret %s/%s: %w", ep.Namespace, name, err)
		}
		existing = nil
	}
	if existing != nil && !metav1.IsControlledBy(existing, ep) {
		return nil, 0, &conditionError{Reason: heraldv1.SecretConflictReason, Terminal: true,
			Message: fmt.Sprintf("Secret %q exists and is not managed by this endpoint; Herald will not overwrite it: rename or delete it", name)}
	}

	var keys []heraldv1.SigningKey
	handled := ""
	if existing != nil {
		if raw := existing.Data[heraldv1.SigningKeysKey]; len(raw) > 0 {
			if err := json.Unmarshal(raw, &keys); err != nil {
				// Corrupted by hand: start over with a fresh key rather than fail forever.
				ctrl.LoggerFrom(ctx).Info("Managed Secret has unreadable signing keys; replacing them", "secret", klog.KObj(existing))
				keys = nil
			}
		}
		handled = existing.Annotations[heraldv1.HandledRotationAnnotation]
	}

	now := r.now()
	keys, rotated, err := nextSigningKeys(keys, keyPlan{
		algorithm:       ep.Spec.GetSigningAlgorithm(),
		userKey:         src.signingKey,
		rotate:          existing != nil && ep.Annotations[heraldv1.RotateSigningKeyAnnotation] != "" && ep.Annotations[heraldv1.RotateSigningKeyAnnotation] != handled,
		rotationOverlap: ep.Spec.GetRotationOverlap(),
		now:             now,
	})
	if err != nil {
		return nil, 0, err
	}
	if rotated || existing == nil {
		handled = ep.Annotations[heraldv1.RotateSigningKeyAnnotation]
	}

	secret, status, err := buildManagedSecret(ep, name, keys, src, handled)
	if err != nil {
		return nil, 0, err
	}
	if err := applyObject(ctx, r.Client, secret); err != nil {
		return nil, 0, err
	}
	if existing == nil && src.signingKey == "" && ep.Status.Signing != nil && ep.Status.Signing.CurrentKeySince != nil {
		// The endpoint had a generated key, so its managed Secret was
		// deleted: the old key is gone and cannot overlap with the new one.
		r.Recorder.Eventf(ep, nil, corev1.EventTypeWarning, "SigningKeyRegenerated", "Reconcile",
			"Managed Secret %s was deleted; a new signing key was generated without overlap: update receivers with the new key", name)
	}
	if rotated {
		r.Recorder.Eventf(ep, nil, corev1.EventTypeNormal, "SigningKeyRotated", "Rotate",
			"Signing key rotated; %d keys sign each delivery until %s", len(keys), status.PreviousKeysExpireAt.UTC().Format(time.RFC3339))
	}

	var requeueAfter time.Duration
	for _, k := range keys {
		if k.NotAfter != nil {
			if d := k.NotAfter.Sub(now); requeueAfter == 0 || d < requeueAfter {
				requeueAfter = d
			}
		}
	}
	if requeueAfter > 0 {
		requeueAfter += time.Second // prune just after expiry, not just before
	}
	return status, requeueAfter, nil
}

func (r *WebhookEndpointReconciler) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

// keyPlan is the input of nextSigningKeys.
type keyPlan struct {
	algorithm       heraldv1.SigningAlgorithm
	userKey         string // empty: Herald generates the key
	rotate          bool   // a rotation was requested and not yet handled
	rotationOverlap time.Duration
	now             time.Time
}

// nextSigningKeys returns the key list after generation, rotation and
// pruning. A replaced current key stays valid for the rotation overlap.
func nextSigningKeys(keys []heraldv1.SigningKey, p keyPlan) ([]heraldv1.SigningKey, bool, error) {
	var current *heraldv1.SigningKey
	for i := range keys {
		if keys[i].NotAfter == nil {
			current = &keys[i]
		}
	}

	var replacement *heraldv1.SigningKey
	switch {
	case p.userKey != "":
		if current == nil || current.Secret != p.userKey {
			replacement = &heraldv1.SigningKey{Secret: p.userKey, Since: p.now}
		}
	case current == nil || !current.Generated || keyAlgorithm(current.Secret) != p.algorithm || p.rotate:
		secret, err := generateKey(p.algorithm)
		if err != nil {
			return nil, false, err
		}
		replacement = &heraldv1.SigningKey{Secret: secret, Since: p.now, Generated: true}
	}

	rotated := replacement != nil && current != nil
	if replacement != nil {
		notAfter := p.now.Add(p.rotationOverlap)
		for i := range keys {
			if keys[i].NotAfter == nil {
				keys[i].NotAfter = &notAfter
			}
		}
		keys = append(keys, *replacement)
	}

	kept := keys[:0]
	for _, k := range keys {
		if k.NotAfter == nil || k.NotAfter.After(p.now) {
			kept = append(kept, k)
		}
	}
	return kept, rotated, nil
}

func keyAlgorithm(secret string) heraldv1.SigningAlgorithm {
	if strings.HasPrefix(secret, signature.Ed25519SecretPfx) {
		return heraldv1.Ed25519
	}
	return heraldv1.HMACSHA256
}

func generateKey(alg heraldv1.SigningAlgorithm) (string, error) {
	if alg == heraldv1.Ed25519 {
		sk, _, err := signature.NewEd25519Key()
		return sk, err
	}
	return signature.NewHMACSecret()
}

// buildManagedSecret is a pure function of its inputs: the managed Secret
// and the signing status that describes it.
func buildManagedSecret(ep *heraldv1.WebhookEndpoint, name string, keys []heraldv1.SigningKey, src *endpointSources, handledRotation string) (*corev1.Secret, *heraldv1.SigningStatus, error) {
	keysJSON, err := json.Marshal(keys)
	if err != nil {
		return nil, nil, fmt.Errorf("encode signing keys: %w", err)
	}
	status := &heraldv1.SigningStatus{
		Algorithm:           ep.Spec.GetSigningAlgorithm(),
		ValidKeys:           int32(len(keys)),
		LastHandledRotation: handledRotation,
	}
	data := map[string][]byte{heraldv1.SigningKeysKey: keysJSON}
	for _, k := range keys {
		if k.NotAfter != nil {
			if status.PreviousKeysExpireAt == nil || k.NotAfter.After(status.PreviousKeysExpireAt.Time) {
				status.PreviousKeysExpireAt = &metav1.Time{Time: k.NotAfter.UTC().Truncate(time.Second)}
			}
			continue
		}
		status.CurrentKeySince = &metav1.Time{Time: k.Since.UTC().Truncate(time.Second)}
		receiverKey := k.Secret
		if keyAlgorithm(k.Secret) == heraldv1.Ed25519 {
			pub, err := signature.PublicKeyOf(k.Secret)
			if err != nil {
				return nil, nil, fmt.Errorf("derive public key: %w", err)
			}
			receiverKey, status.PublicKey = pub, pub
		}
		data[heraldv1.SigningSecretKey] = []byte(receiverKey)
	}
	if len(src.headers) > 0 {
		h, err := json.Marshal(src.headers)
		if err != nil {
			return nil, nil, fmt.Errorf("encode headers: %w", err)
		}
		data[heraldv1.HeadersKey] = h
	}
	if len(src.caBundle) > 0 {
		data[heraldv1.CABundleKey] = src.caBundle
	}
	if len(src.clientCert) > 0 {
		data[heraldv1.ClientCertKey] = src.clientCert
		data[heraldv1.ClientKeyKey] = src.clientKey
	}

	annotations := map[string]string{heraldv1.EndpointNameAnnotation: ep.Name}
	if handledRotation != "" {
		annotations[heraldv1.HandledRotationAnnotation] = handledRotation
	}
	isController := true
	secret := &corev1.Secret{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
		ObjectMeta: metav1.ObjectMeta{
			Name:      name,
			Namespace: ep.Namespace,
			Labels: map[string]string{
				heraldv1.ManagedByLabel:  heraldv1.ManagedByValue,
				heraldv1.SecretTypeLabel: heraldv1.SecretTypeEndpoint,
			},
			Annotations: annotations,
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion:         heraldv1.GroupVersion.String(),
				Kind:               "WebhookEndpoint",
				Name:               ep.Name,
				UID:                ep.UID,
				Controller:         &isController,
				BlockOwnerDeletion: &isController,
			}},
		},
		Type: corev1.SecretTypeOpaque,
		Data: data,
	}
	return secret, status, nil
}

// referencedSecretNames lists the user Secrets an endpoint reads.
func referencedSecretNames(ep *heraldv1.WebhookEndpoint) []string {
	var names []string
	if s := ep.Spec.Signing; s != nil && s.SecretRef != nil {
		names = append(names, s.SecretRef.Name)
	}
	for _, h := range ep.Spec.Headers {
		if h.ValueFrom != nil {
			names = append(names, h.ValueFrom.Name)
		}
	}
	if t := ep.Spec.TLS; t != nil {
		if t.CASecretRef != nil {
			names = append(names, t.CASecretRef.Name)
		}
		if t.ClientCertificateSecretRef != nil {
			names = append(names, t.ClientCertificateSecretRef.Name)
		}
	}
	return names
}

// SetupWithManager registers the controller. Secrets are watched
// metadata-only: a change of resourceVersion is all the trigger needs.
func (r *WebhookEndpointReconciler) SetupWithManager(ctx context.Context, mgr ctrl.Manager) error {
	if err := mgr.GetFieldIndexer().IndexField(ctx, &heraldv1.WebhookEndpoint{}, endpointSecretIndex, func(o client.Object) []string {
		return referencedSecretNames(o.(*heraldv1.WebhookEndpoint))
	}); err != nil {
		return fmt.Errorf("index WebhookEndpoints by Secret: %w", err)
	}
	return ctrl.NewControllerManagedBy(mgr).
		For(&heraldv1.WebhookEndpoint{}, builder.WithPredicates(predicate.Or(
			predicate.GenerationChangedPredicate{}, predicate.AnnotationChangedPredicate{}))).
		Owns(&corev1.Secret{}, builder.OnlyMetadata).
		Watches(&corev1.Secret{}, handler.EnqueueRequestsFromMapFunc(
			requestsForIndex(r.Client, func() client.ObjectList { return &heraldv1.WebhookEndpointList{} }, endpointSecretIndex)), builder.OnlyMetadata).
		Named("webhookendpoint").
		// Reconciles of different objects are independent; one worker made
		// 10,000 Subscriptions take over a minute to become Ready.
		WithOptions(controller.Options{MaxConcurrentReconciles: 4}).
		Complete(r)
}

// DeliveryHealthFieldOwner is the server-side apply field manager under
// which the manager marks DeliveryHealthy Unknown while no dispatcher
// reports (DispatcherWatchdog). It is not FieldOwner: the WebhookEndpoint
// reconciler's status applies never mention DeliveryHealthy, so they can
// neither remove the mark nor keep it alive once the dispatcher is back.
const DeliveryHealthFieldOwner = client.FieldOwner("herald-manager-delivery-health")

// Tuning of DispatcherWatchdog.
const (
	// defaultStatusWriterLeaseDuration is assumed when the Lease does not
	// say: the dispatcher's default lease duration, three status intervals.
	defaultStatusWriterLeaseDuration = 15 * time.Second
	// notReportingLeaseDurations is how many lease durations the Lease may
	// go unrenewed before no dispatcher counts as reporting: one for
	// another replica to take the status writer's role over, one more.
	notReportingLeaseDurations   = 2
	defaultWatchdogCheckInterval = time.Second
)

// DispatcherWatchdog makes a dead dispatcher visible. The dispatcher
// replica that writes delivery health renews the Lease
// heraldv1.StatusWriterLeaseName in the dispatcher's namespace while it
// does. When that Lease has gone unrenewed for two lease durations, no
// dispatcher reports, and the watchdog sets DeliveryHealthy Unknown with
// reason DispatcherNotReporting on every WebhookEndpoint, rather than
// leaving the last verdict (True, say) standing forever.
//
// DeliveryHealthy belongs to the dispatcher (field manager
// "herald-dispatcher"). The watchdog takes it over only while no dispatcher
// reports: with ForceOwnership, under DeliveryHealthFieldOwner, and with
// the endpoint's resourceVersion as a precondition, so it never overwrites
// a dispatcher write it has not seen. It writes once per endpoint when the
// dispatcher stops reporting (and for endpoints created or changed
// meanwhile), never while the Lease is renewed. A dispatcher that comes
// back takes the condition back with its next apply (its first pass as
// status writer checks every endpoint), and nothing fights it.
//
// The Lease's age is measured on the manager's clock, from the moment the
// manager saw its renewTime change; renewTime is compared with nothing, so
// clock skew between pods does not matter. Without a Lease (no dispatcher
// ever reported, or a dispatcher that predates the Lease) there is no
// verdict.
type DispatcherWatchdog struct {
	Client client.Client
	// LeaseNamespace is the dispatcher's namespace, which holds the Lease.
	LeaseNamespace string
	// Now is the clock; defaults to time.Now.
	Now func() time.Time
	// CheckInterval is how often the Lease's age is checked. Default 1s.
	CheckInterval time.Duration

	events chan event.GenericEvent

	mu    sync.Mutex
	lease statusWriterLease
}

// statusWriterLease is what the watchdog knows of the Lease.
type statusWriterLease struct {
	seen bool
	// renewTime is the Lease's spec.renewTime, as the dispatcher wrote it;
	// it only goes into messages.
	renewTime time.Time
	duration  time.Duration
	// observedAt is when, on the manager's clock, renewTime last changed.
	observedAt time.Time
	// notReporting is the verdict, changed by check (to true) and by
	// observe (back to false).
	notReporting bool
}

// The watchdog reads the status writer's Lease in the dispatcher's
// namespace only (StatusWriterLeaseCacheOptions).
// +kubebuilder:rbac:groups=coordination.k8s.io,resources=leases,verbs=get;list;watch,namespace=herald-system

// Reconcile marks one WebhookEndpoint's DeliveryHealthy condition Unknown
// when no dispatcher reports, and does nothing otherwise.
func (w *DispatcherWatchdog) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	since, notReporting := w.notReportingSince()
	if !notReporting {
		return ctrl.Result{}, nil
	}
	ep := &heraldv1.WebhookEndpoint{}
	if err := w.Client.Get(ctx, req.NamespacedName, ep); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !ep.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, nil
	}
	cond := metav1.Condition{
		Type:               heraldv1.DeliveryHealthyCondition,
		Status:             metav1.ConditionUnknown,
		Reason:             heraldv1.DispatcherNotReportingReason,
		Message:            w.notReportingMessage(since),
		ObservedGeneration: ep.Generation,
		LastTransitionTime: metav1.NewTime(w.now().UTC().Truncate(time.Second)),
	}
	old := meta.FindStatusCondition(ep.Status.Conditions, heraldv1.DeliveryHealthyCondition)
	if old != nil && old.Status == cond.Status {
		if old.Reason == cond.Reason && old.Message == cond.Message && old.ObservedGeneration == cond.ObservedGeneration {
			return ctrl.Result{}, nil
		}
		cond.LastTransitionTime = old.LastTransitionTime
	}
	conditions, err := statusToMap(&heraldv1.WebhookEndpointStatus{Conditions: []metav1.Condition{cond}})
	if err != nil {
		return ctrl.Result{}, err
	}
	u := &unstructured.Unstructured{Object: map[string]any{"status": conditions}}
	u.SetGroupVersionKind(heraldv1.GroupVersion.WithKind("WebhookEndpoint"))
	u.SetNamespace(ep.Namespace)
	u.SetName(ep.Name)
	// A precondition: a dispatcher write this copy does not show wins.
	u.SetResourceVersion(ep.ResourceVersion)
	if err := w.Client.Status().Apply(ctx, client.ApplyConfigurationFromUnstructured(u), DeliveryHealthFieldOwner, client.ForceOwnership); err != nil {
		if apierrors.IsConflict(err) {
			// Changed meanwhile: look again with a fresh copy.
			return ctrl.Result{RequeueAfter: time.Second}, nil
		}
		return ctrl.Result{}, fmt.Errorf("apply DeliveryHealthy of WebhookEndpoint %s: %w", req.NamespacedName, err)
	}
	ctrl.LoggerFrom(ctx).V(1).Info("Marked delivery health unknown: no dispatcher reports", "webhookEndpoint", klog.KObj(ep))
	return ctrl.Result{}, nil
}

// notReportingMessage names the last renewal, which does not change while
// no dispatcher reports: the message is written once, not on every check.
func (w *DispatcherWatchdog) notReportingMessage(since time.Time) string {
	return fmt.Sprintf("No dispatcher has reported delivery health since %s: the status writer's Lease %s/%s is not renewed; the delivery status shown is stale",
		since.UTC().Format(time.RFC3339), w.LeaseNamespace, heraldv1.StatusWriterLeaseName)
}

func (w *DispatcherWatchdog) now() time.Time {
	if w.Now != nil {
		return w.Now()
	}
	return time.Now()
}

// notReportingSince returns the Lease's last renewTime when the verdict is
// that no dispatcher reports.
func (w *DispatcherWatchdog) notReportingSince() (time.Time, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.lease.renewTime, w.lease.seen && w.lease.notReporting
}

// observe records the Lease as the watch delivers it. A changed renewTime
// is a renewal: a dispatcher reports.
func (w *DispatcherWatchdog) observe(ctx context.Context, lease *coordinationv1.Lease) {
	renewTime := lease.CreationTimestamp.Time
	switch {
	case lease.Spec.RenewTime != nil:
		renewTime = lease.Spec.RenewTime.Time
	case lease.Spec.AcquireTime != nil:
		renewTime = lease.Spec.AcquireTime.Time
	}
	duration := defaultStatusWriterLeaseDuration
	if s := lease.Spec.LeaseDurationSeconds; s != nil && *s > 0 {
		duration = time.Duration(*s) * time.Second
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.lease.duration = duration
	if w.lease.seen && renewTime.Equal(w.lease.renewTime) {
		return
	}
	w.lease.seen, w.lease.renewTime, w.lease.observedAt = true, renewTime, w.now()
	if w.lease.notReporting {
		w.lease.notReporting = false
		ctrl.LoggerFrom(ctx).Info("A dispatcher reports delivery health again", "holder", ptr.Deref(lease.Spec.HolderIdentity, ""))
	}
}

// forget drops the Lease: without one there is no verdict.
func (w *DispatcherWatchdog) forget() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.lease = statusWriterLease{}
}

// check reports whether the verdict has just turned to "not reporting".
func (w *DispatcherWatchdog) check(now time.Time) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	l := &w.lease
	if !l.seen || l.notReporting || now.Sub(l.observedAt) <= notReportingLeaseDurations*l.duration {
		return false
	}
	l.notReporting = true
	return true
}

// Start checks the Lease's age until ctx ends and, when no dispatcher
// reports any more, queues every WebhookEndpoint.
func (w *DispatcherWatchdog) Start(ctx context.Context) error {
	interval := w.CheckInterval
	if interval <= 0 {
		interval = defaultWatchdogCheckInterval
	}
	log := ctrl.LoggerFrom(ctx).WithName("dispatcher-watchdog")
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
		}
		if !w.check(w.now()) {
			continue
		}
		since, _ := w.notReportingSince()
		log.Info("No dispatcher reports delivery health; marking it unknown on every WebhookEndpoint",
			"lease", klog.KRef(w.LeaseNamespace, heraldv1.StatusWriterLeaseName), "lastRenewTime", since)
		if err := w.queueEndpoints(ctx); err != nil {
			// The verdict stands; endpoints created or changed are still
			// marked, and the next time the verdict turns all are queued.
			log.Error(err, "Listing WebhookEndpoints to mark failed")
		}
	}
}

func (w *DispatcherWatchdog) queueEndpoints(ctx context.Context) error {
	var list heraldv1.WebhookEndpointList
	if err := w.Client.List(ctx, &list); err != nil {
		return fmt.Errorf("list WebhookEndpoints: %w", err)
	}
	for i := range list.Items {
		select {
		case w.events <- event.GenericEvent{Object: &list.Items[i]}:
		case <-ctx.Done():
			return nil
		}
	}
	return nil
}

// StatusWriterLeaseCacheOptions restricts the manager's cache of Leases to
// the status writer's Lease in the dispatcher's namespace.
func StatusWriterLeaseCacheOptions(dispatcherNamespace string) cache.ByObject {
	return cache.ByObject{
		Namespaces: map[string]cache.Config{dispatcherNamespace: {}},
		Field:      fields.OneTermEqualSelector("metadata.name", heraldv1.StatusWriterLeaseName),
	}
}

// SetupWithManager registers the watchdog: a controller of
// WebhookEndpoints, fed when they are created or their spec changes, when
// the watchdog's check queues them all, and observing the Lease.
func (w *DispatcherWatchdog) SetupWithManager(mgr ctrl.Manager) error {
	if w.LeaseNamespace == "" {
		return errors.New("dispatcher watchdog: LeaseNamespace is required")
	}
	w.events = make(chan event.GenericEvent)
	if err := mgr.Add(w); err != nil {
		return fmt.Errorf("add dispatcher watchdog: %w", err)
	}
	isStatusWriterLease := predicate.NewPredicateFuncs(func(o client.Object) bool {
		return o.GetNamespace() == w.LeaseNamespace && o.GetName() == heraldv1.StatusWriterLeaseName
	})
	observe := func(ctx context.Context, o client.Object) {
		if lease, ok := o.(*coordinationv1.Lease); ok {
			w.observe(ctx, lease)
		}
	}
	leaseEvents := handler.Funcs{
		CreateFunc: func(ctx context.Context, e event.CreateEvent, _ workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			observe(ctx, e.Object)
		},
		UpdateFunc: func(ctx context.Context, e event.UpdateEvent, _ workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			observe(ctx, e.ObjectNew)
		},
		DeleteFunc: func(context.Context, event.DeleteEvent, workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			w.forget()
		},
	}
	return ctrl.NewControllerManagedBy(mgr).
		For(&heraldv1.WebhookEndpoint{}, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Watches(&coordinationv1.Lease{}, leaseEvents, builder.WithPredicates(isStatusWriterLease)).
		WatchesRawSource(source.Channel(w.events, &handler.EnqueueRequestForObject{})).
		Named("dispatcherwatchdog").
		Complete(w)
}
