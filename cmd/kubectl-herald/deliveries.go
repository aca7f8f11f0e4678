package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strconv"
	"time"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/cli-runtime/pkg/printers"
	"sigs.k8s.io/controller-runtime/pkg/client"

	deliveryv1 "github.com/herald-dev/herald/api/delivery/v1alpha1"
	"github.com/herald-dev/herald/dispatcher/router"
)

type deliveriesOptions struct {
	all      bool
	endpoint string
	phase    string
	types    []string
	since    time.Duration
	watch    bool
}

func newDeliveriesCommand(a *app) *cobra.Command {
	o := &deliveriesOptions{}
	cmd := &cobra.Command{
		Use:     "deliveries",
		Aliases: []string{"delivery", "dl"},
		Short:   "List deliveries from the delivery log (delivery.herald.dev), or follow them with --watch",
		Example: `  kubectl herald deliveries -n shop --endpoint orders-receiver --phase DeadLettered
  kubectl herald deliveries -n shop --type 'order.*' --since 1h
  kubectl herald deliveries -n shop --watch`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.phase != "" && !slices.Contains(deliveryv1.Phases, deliveryv1.DeliveryPhase(o.phase)) {
				return fmt.Errorf("--phase %q: use one of %v", o.phase, deliveryv1.Phases)
			}
			return runDeliveries(cmd.Context(), a, o)
		},
	}
	cmd.Flags().BoolVarP(&o.all, "all-namespaces", "A", false, "List deliveries of every namespace.")
	cmd.Flags().StringVar(&o.endpoint, "endpoint", "", "Only deliveries to this WebhookEndpoint (label herald.dev/endpoint).")
	cmd.Flags().StringVar(&o.phase, "phase", "", "Only deliveries in this phase: Pending, Retrying, Succeeded or DeadLettered (field status.phase).")
	cmd.Flags().StringSliceVar(&o.types, "type", nil, "Only events of these CloudEvents types (patterns as in a Subscription: order.*).")
	cmd.Flags().DurationVar(&o.since, "since", 0, "Only deliveries of events ingested within this duration (e.g. 1h).")
	cmd.Flags().BoolVarP(&o.watch, "watch", "w", false, "After listing, print every change of a delivery as it happens.")
	return cmd
}

func (o *deliveriesOptions) listOptions(a *app) []client.ListOption {
	var opts []client.ListOption
	if !o.all {
		opts = append(opts, client.InNamespace(a.namespace))
	}
	if o.endpoint != "" {
		opts = append(opts, client.MatchingLabels{deliveryv1.LabelEndpoint: o.endpoint})
	}
	if o.phase != "" {
		opts = append(opts, client.MatchingFieldsSelector{Selector: fields.OneTermEqualSelector(deliveryv1.FieldPhase, o.phase)})
	}
	return opts
}

// keep applies the filters the API has no selector for.
func (o *deliveriesOptions) keep(a *app, d *deliveryv1.Delivery) bool {
	if len(o.types) > 0 && !slices.ContainsFunc(o.types, func(p string) bool { return router.MatchType(p, d.Spec.Event.Type) }) {
		return false
	}
	if o.since > 0 && d.CreationTimestamp.Time.Before(a.now().Add(-o.since)) {
		return false
	}
	return true
}

func runDeliveries(ctx context.Context, a *app, o *deliveriesOptions) error {
	var list deliveryv1.DeliveryList
	if err := a.client.List(ctx, &list, o.listOptions(a)...); err != nil {
		return listError("deliveries.delivery.herald.dev", err)
	}
	w := printers.GetNewTabWriter(a.out())
	printDeliveryHeader(w, o.all)
	n := 0
	for i := range list.Items {
		if o.keep(a, &list.Items[i]) {
			printDelivery(w, a, &list.Items[i], o.all)
			n++
		}
	}
	if err := w.Flush(); err != nil {
		return err
	}
	if n == 0 && !o.watch {
		_, err := fmt.Fprintln(a.streams.ErrOut, "No deliveries found (the log keeps them for a bounded time; widen --since or drop a filter).")
		return err
	}
	if !o.watch {
		return nil
	}
	// Continue where the list ended: every change after it, none twice.
	opts := append(o.listOptions(a), resourceVersion(list.ResourceVersion))
	watcher, err := a.client.Watch(ctx, &deliveryv1.DeliveryList{}, opts...)
	if err != nil {
		return listError("deliveries.delivery.herald.dev (watch)", err)
	}
	defer watcher.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-watcher.ResultChan():
			if !ok {
				return nil
			}
			d, isDelivery := ev.Object.(*deliveryv1.Delivery)
			if !isDelivery || ev.Type == watch.Bookmark || !o.keep(a, d) {
				continue
			}
			printDelivery(w, a, d, o.all)
			if err := w.Flush(); err != nil {
				return err
			}
		}
	}
}

// resourceVersion starts a watch where the list ended.
type resourceVersion string

func (rv resourceVersion) ApplyToList(o *client.ListOptions) {
	if o.Raw == nil {
		o.Raw = &metav1.ListOptions{}
	}
	o.Raw.ResourceVersion = string(rv)
}

func printDeliveryHeader(w io.Writer, all bool) {
	if all {
		_, _ = fmt.Fprint(w, "NAMESPACE\t")
	}
	_, _ = fmt.Fprintln(w, "NAME\tENDPOINT\tTYPE\tPHASE\tATTEMPTS\tLAST STATUS\tAGE")
}

func printDelivery(w io.Writer, a *app, d *deliveryv1.Delivery, all bool) {
	if all {
		_, _ = fmt.Fprintf(w, "%s\t", d.Namespace)
	}
	last := "<none>"
	if n := len(d.Status.Attempts); n > 0 {
		at := d.Status.Attempts[n-1]
		switch {
		case at.Error != "":
			last = at.Error
		case at.StatusCode != 0:
			last = "HTTP " + strconv.Itoa(int(at.StatusCode))
		}
	}
	_, _ = fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%s\t%s\n", d.Name, d.Spec.EndpointRef.Name, orNone(d.Spec.Event.Type),
		d.Status.Phase, d.Status.AttemptCount, last, age(a.now(), &d.CreationTimestamp))
}
