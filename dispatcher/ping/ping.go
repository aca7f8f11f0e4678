// Package ping sends a WebhookEndpoint one signed test event of type
// herald.ping for each new value of its herald.dev/ping annotation, like
// GitHub's ping on webhook creation. The outcome is a Kubernetes Event on
// the endpoint (PingSucceeded, PingFailed) naming the value, and a
// Delivery in the delivery log.
//
// Each value pings once, also across dispatcher restarts and replicas: the
// value last handled for each endpoint (with the endpoint's UID, so an
// endpoint recreated under the same name pings again) is kept in the
// JetStream KeyValue bucket HERALD_PINGS, claimed with compare-and-swap
// before the ping is sent, and only the replica holding the status-writer
// lease pings. A crash between the claim and the attempt loses that ping
// rather than sending it twice; a new value pings again.
package ping

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/go-logr/logr"
	"github.com/nats-io/nats.go/jetstream"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/predicate"

	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/dispatcher/catalog"
	"github.com/herald-dev/herald/dispatcher/delivery"
	"github.com/herald-dev/herald/dispatcher/queue"
)

// Bucket is the JetStream KeyValue bucket of the values pinged.
const Bucket = "HERALD_PINGS"

// Source is the CloudEvents source of pings, followed by the endpoint.
const Source = "/apis/herald.dev/v1alpha1/namespaces/"

// Timing of waits.
const (
	// waitForLease is how often a replica that does not ping checks
	// whether it has become the one that does.
	waitForLease = 5 * time.Second
	// waitForReady is how often a ping waits for an endpoint that is not
	// Ready yet (created together with its ping annotation).
	waitForReady = 2 * time.Second
	// attemptTimeout bounds a ping beyond the endpoint's own timeout.
	attemptTimeout = 2 * time.Minute
)

// Endpoints is what the Pinger needs of the catalog.
type Endpoints interface {
	Endpoint(namespace, name string) (*catalog.Endpoint, bool)
}

// Sender makes one attempt (delivery.Manager.Ping).
type Sender interface {
	Ping(ctx context.Context, ep *catalog.Endpoint, d delivery.Delivery) (delivery.Outcome, error)
}

// EventRecorder is the part of controller-runtime's recorder the Pinger
// uses (the events.k8s.io recorder of the manager).
type EventRecorder interface {
	Eventf(regarding, related runtime.Object, eventtype, reason, action, note string, args ...any)
}

// Options configure a Pinger.
type Options struct {
	// Client reads WebhookEndpoints (cached). Required.
	Client client.Reader
	// Catalog has the Ready endpoints' delivery configuration. Required.
	Catalog Endpoints
	// Sender sends pings. Required.
	Sender Sender
	// Recorder emits the outcome Events. Required.
	Recorder EventRecorder
	// JetStream and Replicas place the bucket. Required.
	JetStream jetstream.JetStream
	Replicas  int
	// Leading reports whether this replica pings (the status-writer
	// lease). Nil: always.
	Leading func() bool
	// Logger logs.
	Logger logr.Logger
}

// Pinger reconciles the ping annotation of WebhookEndpoints.
type Pinger struct {
	opts Options
	kv   jetstream.KeyValue
}

// New opens the bucket and returns a Pinger.
func New(ctx context.Context, opts Options) (*Pinger, error) {
	if opts.Client == nil || opts.Catalog == nil || opts.Sender == nil || opts.Recorder == nil || opts.JetStream == nil {
		return nil, errors.New("pinger: client, catalog, sender, recorder and JetStream are required")
	}
	if opts.Leading == nil {
		opts.Leading = func() bool { return true }
	}
	kv, err := opts.JetStream.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      Bucket,
		Description: "Herald: the herald.dev/ping value last handled per WebhookEndpoint",
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    max(opts.Replicas, 1),
	})
	if err != nil {
		return nil, fmt.Errorf("open the ping bucket %s: %w", Bucket, err)
	}
	return &Pinger{opts: opts, kv: kv}, nil
}

// SetupWithManager registers the Pinger as a controller of
// WebhookEndpoints that reacts to annotation changes.
func (p *Pinger) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		Named("ping").
		For(&heraldv1.WebhookEndpoint{}, builder.WithPredicates(predicate.AnnotationChangedPredicate{})).
		Complete(p)
}

// handled is the bucket's record of an endpoint's last ping.
type handled struct {
	UID   types.UID `json:"uid"`
	Value string    `json:"value"`
}

func key(namespace, name string) string {
	return queue.SubjectToken(namespace) + "." + queue.SubjectToken(name)
}

// Reconcile pings an endpoint whose annotation holds a value not handled
// yet.
func (p *Pinger) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	ep := &heraldv1.WebhookEndpoint{}
	if err := p.opts.Client.Get(ctx, req.NamespacedName, ep); err != nil {
		if apierrors.IsNotFound(err) {
			// Forget it; an endpoint created again pings again.
			if err := p.kv.Delete(ctx, key(req.Namespace, req.Name)); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
				return ctrl.Result{}, fmt.Errorf("forget the ping of %s: %w", req, err)
			}
			return ctrl.Result{}, nil
		}
		return ctrl.Result{}, err
	}
	value := ep.Annotations[heraldv1.PingAnnotation]
	if value == "" {
		return ctrl.Result{}, nil
	}
	k := key(ep.Namespace, ep.Name)
	entry, err := p.kv.Get(ctx, k)
	var revision uint64
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
	case err != nil:
		return ctrl.Result{}, fmt.Errorf("read the ping of %s: %w", req, err)
	default:
		revision = entry.Revision()
		var last handled
		if json.Unmarshal(entry.Value(), &last) == nil && last == (handled{UID: ep.UID, Value: value}) {
			return ctrl.Result{}, nil
		}
	}
	if !p.opts.Leading() {
		return ctrl.Result{RequeueAfter: waitForLease}, nil
	}
	target, ready := p.opts.Catalog.Endpoint(ep.Namespace, ep.Name)
	if !ready || target.UID != ep.UID {
		if !apimeta.IsStatusConditionTrue(ep.Status.Conditions, heraldv1.StalledCondition) {
			return ctrl.Result{RequeueAfter: waitForReady}, nil // not Ready yet
		}
		target = nil
	}
	// Claim the value before sending: at most one ping per value.
	data, _ := json.Marshal(handled{UID: ep.UID, Value: value})
	if revision == 0 {
		_, err = p.kv.Create(ctx, k, data)
	} else {
		_, err = p.kv.Update(ctx, k, data, revision)
	}
	if err != nil {
		return ctrl.Result{}, fmt.Errorf("claim the ping %q of %s: %w", value, req, err)
	}
	if target == nil {
		p.opts.Recorder.Eventf(ep, nil, corev1.EventTypeWarning, heraldv1.PingFailedReason, "Ping",
			"Ping %q not sent: the endpoint is Stalled; fix what its Ready condition says, then set a new %s value", value, heraldv1.PingAnnotation)
		return ctrl.Result{}, nil
	}
	p.send(ctx, ep, target, value)
	return ctrl.Result{}, nil
}

// send pings target and emits the outcome Event.
func (p *Pinger) send(ctx context.Context, ep *heraldv1.WebhookEndpoint, target *catalog.Endpoint, value string) {
	now := time.Now().UTC()
	payload, source, id := Event(ep.Namespace, ep.Name, ep.UID, value, now)
	webhookID := queue.WebhookID(ep.Namespace, source, id)
	ctx, cancel := context.WithTimeout(ctx, target.Spec.GetTimeout()+attemptTimeout)
	defer cancel()
	o, err := p.opts.Sender.Ping(ctx, target, delivery.Delivery{
		Namespace: ep.Namespace, Payload: payload, WebhookID: webhookID, IngestedAt: now,
	})
	switch {
	case err != nil:
		p.opts.Logger.Error(err, "Ping not sent", "namespace", ep.Namespace, "name", ep.Name)
		p.opts.Recorder.Eventf(ep, nil, corev1.EventTypeWarning, heraldv1.PingFailedReason, "Ping",
			"Ping %q not sent: %v (webhook-id %s)", value, err, webhookID)
	case o.Success:
		p.opts.Recorder.Eventf(ep, nil, corev1.EventTypeNormal, heraldv1.PingSucceededReason, "Ping",
			"Ping %q answered HTTP %d (webhook-id %s)", value, o.StatusCode, webhookID)
	default:
		p.opts.Recorder.Eventf(ep, nil, corev1.EventTypeWarning, heraldv1.PingFailedReason, "Ping",
			"Ping %q failed: %s (webhook-id %s); see kubectl get delivery %s.%s", value, o.Reason, webhookID, webhookID, ep.Name)
	}
}

// Event returns the structured CloudEvent of a ping, its source and id.
// The id derives from the endpoint's UID and the value, so one value has
// one webhook-id.
func Event(namespace, name string, uid types.UID, value string, now time.Time) (payload []byte, source, id string) {
	sum := sha256.Sum256([]byte(string(uid) + "\x00" + value))
	id = "ping-" + hex.EncodeToString(sum[:12])
	source = Source + namespace + "/webhookendpoints/" + name
	payload, _ = json.Marshal(map[string]any{
		"specversion":     "1.0",
		"id":              id,
		"source":          source,
		"type":            heraldv1.PingEventType,
		"time":            now.Format(time.RFC3339Nano),
		"datacontenttype": "application/json",
		"data": map[string]any{
			"endpoint": map[string]string{"namespace": namespace, "name": name},
			"ping":     value,
		},
	})
	return payload, source, id
}
