package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"

	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
)

type redeliverOptions struct {
	phases     []string
	types      []string
	since      time.Duration
	deliveries []string
	noWait     bool
	timeout    time.Duration
}

func newRedeliverCommand(a *app) *cobra.Command {
	o := &redeliverOptions{}
	cmd := &cobra.Command{
		Use:   "redeliver ENDPOINT",
		Short: "Queue an endpoint's dead letters (or other deliveries) again, once, and follow it to completion",
		Long: `redeliver creates a Redelivery (herald.dev/v1alpha1) for ENDPOINT and follows
it until every matching delivery is queued again. Each delivery keeps its
webhook-id (receivers deduplicate on it), gets a fresh attempt budget, and
leaves the dead-letter queue. A Redelivery runs once; run redeliver again
for a new one.`,
		Example: `  kubectl herald redeliver orders-receiver -n shop
  kubectl herald redeliver orders-receiver -n shop --type 'order.*' --since 2h
  kubectl herald redeliver orders-receiver -n shop --delivery msg_2b…x.orders-receiver
  kubectl herald redeliver orders-receiver -n shop --phase Succeeded --since 30m`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runRedeliver(cmd.Context(), a, o, args[0])
		},
	}
	cmd.Flags().StringSliceVar(&o.phases, "phase", nil, "Phases to requeue: DeadLettered (default) and/or Succeeded.")
	cmd.Flags().StringSliceVar(&o.types, "type", nil, "Only events of these types (patterns as in a Subscription: order.*).")
	cmd.Flags().DurationVar(&o.since, "since", 0, "Only deliveries of events ingested within this duration (e.g. 2h).")
	cmd.Flags().StringSliceVar(&o.deliveries, "delivery", nil, "Only these deliveries: names from kubectl herald deliveries, or webhook-ids.")
	cmd.Flags().BoolVar(&o.noWait, "no-wait", false, "Create the Redelivery and return without following it.")
	cmd.Flags().DurationVar(&o.timeout, "timeout", 5*time.Minute, "How long to follow the Redelivery (0: no limit).")
	return cmd
}

func runRedeliver(ctx context.Context, a *app, o *redeliverOptions, endpoint string) error {
	if err := a.client.Get(ctx, client.ObjectKey{Namespace: a.namespace, Name: endpoint}, &heraldv1.WebhookEndpoint{}); err != nil {
		return endpointError(a.namespace, endpoint, err)
	}
	rd := &heraldv1.Redelivery{
		ObjectMeta: metav1.ObjectMeta{Namespace: a.namespace, GenerateName: endpoint + "-"},
		Spec: heraldv1.RedeliverySpec{
			EndpointRef: heraldv1.LocalObjectReference{Name: endpoint},
			Types:       o.types,
			Deliveries:  o.deliveries,
		},
	}
	for _, p := range o.phases {
		rd.Spec.Phases = append(rd.Spec.Phases, heraldv1.RedeliveryPhase(p))
	}
	if o.since > 0 {
		since := metav1.NewTime(a.now().Add(-o.since))
		rd.Spec.Since = &since
	}
	if err := a.client.Create(ctx, rd); err != nil {
		switch {
		case apierrors.IsForbidden(err):
			return fmt.Errorf("you may not create Redeliveries in namespace %s: %w (ask for the herald-editor role, which aggregates to edit)", a.namespace, err)
		case apierrors.IsInvalid(err):
			return fmt.Errorf("the Redelivery was refused: %w", err)
		}
		return fmt.Errorf("create a Redelivery: %w", err)
	}
	_, _ = fmt.Fprintf(a.out(), "redelivery.herald.dev/%s created\n", rd.Name)
	if o.noWait {
		return nil
	}
	ctx, cancel := waitContext(ctx, o.timeout)
	defer cancel()
	lastMsg := ""
	err := wait.PollUntilContextCancel(ctx, a.poll, true, func(ctx context.Context) (bool, error) {
		if err := a.client.Get(ctx, client.ObjectKeyFromObject(rd), rd); err != nil {
			return false, nil //nolint:nilerr // transient: look again
		}
		if stalled := apimeta.FindStatusCondition(rd.Status.Conditions, heraldv1.StalledCondition); stalled != nil && stalled.Status == metav1.ConditionTrue {
			return true, fmt.Errorf("redelivery %s cannot run (%s): %s", rd.Name, stalled.Reason, stalled.Message)
		}
		msg := fmt.Sprintf("matched %d, requeued %d", rd.Status.Matched, rd.Status.Requeued)
		if rd.Status.StartTime != nil && msg != lastMsg {
			_, _ = fmt.Fprintln(a.out(), msg)
			lastMsg = msg
		}
		return rd.Status.CompletionTime != nil, nil
	})
	switch {
	case err == nil:
		ready := apimeta.FindStatusCondition(rd.Status.Conditions, heraldv1.ReadyCondition)
		if ready != nil {
			_, _ = fmt.Fprintln(a.out(), ready.Message)
		}
		_, _ = fmt.Fprintf(a.out(), "Follow the deliveries with: kubectl herald deliveries -n %s --endpoint %s --watch\n", a.namespace, endpoint)
		return nil
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("redelivery %s has not completed after %s: is the dispatcher running? (kubectl get redelivery %s -n %s -o yaml shows its conditions)", rd.Name, o.timeout, rd.Name, a.namespace)
	}
	return err
}
