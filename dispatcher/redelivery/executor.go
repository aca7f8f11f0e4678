// Package redelivery executes Redeliveries: it queues the selected
// deliveries of an endpoint again, once each, with their webhook-id, a
// fresh attempt budget and retry.maxAge counted from the requeue, and
// reports progress in the Redelivery's status.
//
// Exactly once per delivery, also across crashes:
//
//   - One replica executes: the holder of the status-writer lease
//     (dispatcher/health); the others wait.
//   - Progress lives in the JetStream KeyValue bucket HERALD_REDELIVERIES,
//     next to the queue: a run record per Redelivery UID (the cutoffs of
//     what it selects from, the matched count, completion) and one key per
//     requeued webhook-id. A resumed run skips what is marked; a completed
//     run never starts again, and neither does a Redelivery whose status
//     says it completed.
//   - A delivery is published before it is marked, with the JetStream
//     de-duplication id hash(Redelivery UID, webhook-id): a crash between
//     the publish and the mark is absorbed by the deliveries stream's
//     duplicate window when the run resumes within it (the dispatcher
//     restarts in seconds; the window is two minutes by default).
//   - A dead letter leaves the dead-letter stream only after its delivery
//     was queued and marked, so an interrupted run loses nothing, and a
//     requeued delivery is never also left to be requeued by a later
//     Redelivery.
package redelivery

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	deliveryv1 "github.com/herald-dev/herald/api/delivery/v1alpha1"
	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/dispatcher/deliverylog"
	"github.com/herald-dev/herald/dispatcher/queue"
)

// FieldOwner is the field manager of the status the dispatcher writes.
const FieldOwner = "herald-dispatcher"

// endpointIndex indexes Redeliveries by spec.endpointRef.name.
const endpointIndex = "spec.endpointRef.name"

// waitForLease is how often a replica that does not execute checks
// whether it has become the one that does.
const waitForLease = 5 * time.Second

// statusEvery is how often a running Redelivery's status shows progress.
const statusEvery = 2 * time.Second

// Options configure an Executor.
type Options struct {
	// Client reads Redeliveries and WebhookEndpoints (cached) and patches
	// Redelivery status. Required.
	Client client.Client
	// Queue is the queue deliveries go back into. Required.
	Queue *queue.Queue
	// Log is the delivery log: the source of Succeeded deliveries, and
	// where each requeue is recorded. Optional; without it only dead
	// letters can be redelivered.
	Log *deliverylog.Log
	// Leading reports whether this replica executes (the status-writer
	// lease). Nil: always.
	Leading func() bool
	// Wake tells the delivery stage that an endpoint has deliveries
	// queued (delivery.Manager.Wake). Optional.
	Wake func(namespace, endpoint string)
	// Logger logs.
	Logger logr.Logger
	// Now is the clock; defaults to time.Now.
	Now func() time.Time
}

// Executor reconciles Redeliveries. Create it with New and register it
// with SetupWithManager.
type Executor struct {
	client   client.Client
	queue    *queue.Queue
	log      *deliverylog.Log
	leading  func() bool
	wake     func(namespace, endpoint string)
	logger   logr.Logger
	now      func() time.Time
	progress *progress
}

// New opens the progress bucket and returns an Executor.
func New(ctx context.Context, opts Options) (*Executor, error) {
	if opts.Client == nil || opts.Queue == nil {
		return nil, errors.New("redelivery executor: a client and a queue are required")
	}
	p, err := openProgress(ctx, opts.Queue.JetStream(), opts.Queue.Replicas())
	if err != nil {
		return nil, err
	}
	e := &Executor{client: opts.Client, queue: opts.Queue, log: opts.Log, leading: opts.Leading,
		wake: opts.Wake, logger: opts.Logger, now: opts.Now, progress: p}
	if e.leading == nil {
		e.leading = func() bool { return true }
	}
	if e.wake == nil {
		e.wake = func(string, string) {}
	}
	if e.now == nil {
		e.now = time.Now
	}
	return e, nil
}

// SetupWithManager registers the Executor as the controller of
// Redeliveries. A Redelivery stalled because its endpoint does not exist
// is reconciled again when the endpoint appears.
func (e *Executor) SetupWithManager(mgr ctrl.Manager) error {
	if err := mgr.GetFieldIndexer().IndexField(context.Background(), &heraldv1.Redelivery{}, endpointIndex,
		func(o client.Object) []string { return []string{o.(*heraldv1.Redelivery).Spec.EndpointRef.Name} }); err != nil {
		return fmt.Errorf("index Redeliveries by endpoint: %w", err)
	}
	return ctrl.NewControllerManagedBy(mgr).
		Named("redelivery").
		// Status writes of a run do not start it again.
		For(&heraldv1.Redelivery{}, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Watches(&heraldv1.WebhookEndpoint{}, handler.EnqueueRequestsFromMapFunc(e.redeliveriesOf),
			// Only an endpoint that appears can unblock a Redelivery.
			builder.WithPredicates(predicate.Funcs{
				UpdateFunc:  func(event.UpdateEvent) bool { return false },
				DeleteFunc:  func(event.DeleteEvent) bool { return false },
				GenericFunc: func(event.GenericEvent) bool { return false },
			})).
		Complete(e)
}

// redeliveriesOf maps an endpoint to the Redeliveries naming it.
func (e *Executor) redeliveriesOf(ctx context.Context, o client.Object) []reconcile.Request {
	var list heraldv1.RedeliveryList
	if err := e.client.List(ctx, &list, client.InNamespace(o.GetNamespace()), client.MatchingFields{endpointIndex: o.GetName()}); err != nil {
		return nil
	}
	out := make([]reconcile.Request, 0, len(list.Items))
	for i := range list.Items {
		if !completed(&list.Items[i]) {
			out = append(out, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&list.Items[i])})
		}
	}
	return out
}

// completed reports whether a Redelivery's status says it ran.
func completed(rd *heraldv1.Redelivery) bool { return rd.Status.CompletionTime != nil }

// Reconcile runs a Redelivery once: check it, wait for the lease, start or
// resume its run, requeue what it selects, complete it.
func (e *Executor) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	log := ctrl.LoggerFrom(ctx)
	rd := &heraldv1.Redelivery{}
	if err := e.client.Get(ctx, req.NamespacedName, rd); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if completed(rd) {
		return ctrl.Result{}, nil
	}
	sel, err := newSelector(&rd.Spec)
	if err != nil {
		return ctrl.Result{}, e.stall(ctx, rd, heraldv1.InvalidSpecReason, err.Error())
	}
	if sel.phases[heraldv1.RedeliverSucceeded] && e.log == nil {
		return ctrl.Result{}, e.stall(ctx, rd, "DeliveryLogDisabled",
			"spec.phases includes Succeeded, but this dispatcher keeps no delivery log to take them from: enable the delivery log or redeliver DeadLettered only")
	}
	err = e.client.Get(ctx, types.NamespacedName{Namespace: rd.Namespace, Name: rd.Spec.EndpointRef.Name}, &heraldv1.WebhookEndpoint{})
	if apierrors.IsNotFound(err) {
		return ctrl.Result{}, e.stall(ctx, rd, heraldv1.EndpointNotFoundReason,
			fmt.Sprintf("WebhookEndpoint %q does not exist in namespace %s: create it, or delete this Redelivery and name an existing endpoint", rd.Spec.EndpointRef.Name, rd.Namespace))
	}
	if err != nil {
		return ctrl.Result{}, err
	}
	if !e.leading() {
		log.V(1).Info("Waiting for the status-writer lease to execute the Redelivery")
		return ctrl.Result{RequeueAfter: waitForLease}, nil
	}
	result, err := e.execute(ctx, rd, sel)
	if err != nil {
		// Reflect the failure, then let the controller retry with backoff.
		if serr := e.patchStatus(ctx, rd, func(s *heraldv1.RedeliveryStatus) {
			setCondition(s, rd.Generation, heraldv1.ReadyCondition, metav1.ConditionFalse, heraldv1.RequeueFailedReason,
				"Queueing deliveries again failed; retrying: "+err.Error())
		}); serr != nil {
			log.Error(serr, "Writing Redelivery status failed")
		}
	}
	return result, err
}

// execute starts or resumes the run of rd and queues what it selects.
func (e *Executor) execute(ctx context.Context, rd *heraldv1.Redelivery, sel *selector) (ctrl.Result, error) {
	log := ctrl.LoggerFrom(ctx)
	ns, endpoint := rd.Namespace, rd.Spec.EndpointRef.Name
	cutoff, err := e.queue.DeadLetterPosition(ctx)
	if err != nil {
		return ctrl.Result{}, err
	}
	r, err := e.progress.start(ctx, rd.UID, run{Started: e.now().UTC(), DeadLetterCutoff: cutoff, Matched: -1})
	if err != nil {
		return ctrl.Result{}, err
	}
	done, err := e.progress.requeued(ctx, rd.UID)
	if err != nil {
		return ctrl.Result{}, err
	}
	if r.Completed != nil {
		return ctrl.Result{}, e.complete(ctx, rd, r, int64(len(done)))
	}
	candidates, err := e.collect(ctx, ns, endpoint, sel, r)
	if err != nil {
		return ctrl.Result{}, err
	}
	if r.Matched < 0 {
		r.Matched = int64(len(candidates))
		if err := e.progress.save(ctx, rd.UID, r); err != nil {
			return ctrl.Result{}, err
		}
	}
	requeued := int64(len(done))
	started := metav1.NewTime(r.Started)
	progress := func() error {
		return e.patchStatus(ctx, rd, func(s *heraldv1.RedeliveryStatus) {
			s.Matched, s.Requeued, s.StartTime = r.Matched, requeued, &started
			msg := fmt.Sprintf("Queueing the deliveries of WebhookEndpoint %s again", endpoint)
			setCondition(s, rd.Generation, heraldv1.ReconcilingCondition, metav1.ConditionTrue, heraldv1.RequeueingReason, msg)
			setCondition(s, rd.Generation, heraldv1.ReadyCondition, metav1.ConditionFalse, heraldv1.RequeueingReason, msg)
			apimeta.RemoveStatusCondition(&s.Conditions, heraldv1.StalledCondition)
		})
	}
	if err := progress(); err != nil {
		return ctrl.Result{}, err
	}
	log.Info("Redelivery started", "endpoint", endpoint, "matched", r.Matched, "alreadyRequeued", requeued)

	lastStatus := e.now()
	woken := false
	for _, c := range candidates {
		if !e.leading() {
			// Another replica took over; it resumes from the marks.
			log.Info("Lost the status-writer lease; another replica resumes the Redelivery")
			return ctrl.Result{RequeueAfter: waitForLease}, nil
		}
		if !done[c.webhookID] {
			if err := e.requeue(ctx, rd, c); err != nil {
				return ctrl.Result{}, err
			}
			done[c.webhookID] = true
			requeued++
			if !woken {
				e.wake(ns, endpoint)
				woken = true
			}
		}
		// Marked: its dead letters go (a crash may have left them after
		// the mark).
		for _, seq := range c.deadLetters {
			if err := e.queue.DeleteDeadLetter(ctx, seq); err != nil {
				return ctrl.Result{}, err
			}
		}
		if e.now().Sub(lastStatus) >= statusEvery {
			if err := progress(); err != nil {
				log.Error(err, "Writing Redelivery progress failed")
			}
			lastStatus = e.now()
		}
	}
	e.wake(ns, endpoint)
	now := e.now().UTC()
	r.Completed = &now
	if err := e.progress.save(ctx, rd.UID, r); err != nil {
		return ctrl.Result{}, err
	}
	log.Info("Redelivery completed", "endpoint", endpoint, "matched", r.Matched, "requeued", requeued)
	return ctrl.Result{}, e.complete(ctx, rd, r, requeued)
}

// requeue queues one delivery again and marks it requeued.
func (e *Executor) requeue(ctx context.Context, rd *heraldv1.Redelivery, c *candidate) error {
	now := e.now()
	header := queue.RequeueHeader(c.header, now)
	header.Set(queue.HeaderWebhookID, c.webhookID)
	dedupID := queue.RequeueDedupID(string(rd.UID), c.webhookID)
	if _, _, err := e.queue.PublishDelivery(ctx, rd.Namespace, rd.Spec.EndpointRef.Name, dedupID, c.payload, header); err != nil {
		return fmt.Errorf("queue delivery %s again: %w", c.webhookID, err)
	}
	if err := e.progress.markRequeued(ctx, rd.UID, c.webhookID); err != nil {
		return err
	}
	if e.log != nil {
		e.log.Record(deliverylog.Entry{
			Namespace:  rd.Namespace,
			Endpoint:   rd.Spec.EndpointRef.Name,
			WebhookID:  c.webhookID,
			Event:      c.event,
			IngestedAt: c.ingested,
			Requeued:   true,
			Time:       now,
			Phase:      deliveryv1.DeliveryPending,
			Payload:    c.payload,
		})
	}
	return nil
}

// complete writes the final status of a run.
func (e *Executor) complete(ctx context.Context, rd *heraldv1.Redelivery, r *run, requeued int64) error {
	started, finished := metav1.NewTime(r.Started), metav1.NewTime(*r.Completed)
	return e.patchStatus(ctx, rd, func(s *heraldv1.RedeliveryStatus) {
		s.Matched, s.Requeued, s.StartTime, s.CompletionTime = max(r.Matched, 0), requeued, &started, &finished
		s.ObservedGeneration = rd.Generation
		apimeta.RemoveStatusCondition(&s.Conditions, heraldv1.ReconcilingCondition)
		apimeta.RemoveStatusCondition(&s.Conditions, heraldv1.StalledCondition)
		setCondition(s, rd.Generation, heraldv1.ReadyCondition, metav1.ConditionTrue, heraldv1.CompletedReason,
			fmt.Sprintf("Queued %d of %d matching deliveries again", requeued, max(r.Matched, 0)))
	})
}

// stall reports that rd cannot run until something changes: Stalled with
// reason, Ready False. It is terminal for this reconcile: no requeue.
func (e *Executor) stall(ctx context.Context, rd *heraldv1.Redelivery, reason, message string) error {
	return e.patchStatus(ctx, rd, func(s *heraldv1.RedeliveryStatus) {
		s.ObservedGeneration = rd.Generation
		apimeta.RemoveStatusCondition(&s.Conditions, heraldv1.ReconcilingCondition)
		setCondition(s, rd.Generation, heraldv1.StalledCondition, metav1.ConditionTrue, reason, message)
		setCondition(s, rd.Generation, heraldv1.ReadyCondition, metav1.ConditionFalse, reason, message)
	})
}

// patchStatus applies change to rd's status and patches it when it
// changed.
func (e *Executor) patchStatus(ctx context.Context, rd *heraldv1.Redelivery, change func(*heraldv1.RedeliveryStatus)) error {
	before := rd.DeepCopy()
	change(&rd.Status)
	if equality.Semantic.DeepEqual(before.Status, rd.Status) {
		return nil
	}
	if err := e.client.Status().Patch(ctx, rd, client.MergeFrom(before), client.FieldOwner(FieldOwner)); err != nil {
		return fmt.Errorf("patch status of Redelivery %s/%s: %w", rd.Namespace, rd.Name, err)
	}
	return nil
}

func setCondition(s *heraldv1.RedeliveryStatus, generation int64, typ string, status metav1.ConditionStatus, reason, message string) {
	apimeta.SetStatusCondition(&s.Conditions, metav1.Condition{
		Type: typ, Status: status, Reason: reason, Message: message, ObservedGeneration: generation,
	})
}
