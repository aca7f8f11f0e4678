package main

import (
	"fmt"
	"strconv"
	"time"

	"github.com/spf13/cobra"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/duration"
	"k8s.io/cli-runtime/pkg/printers"
	"sigs.k8s.io/controller-runtime/pkg/client"

	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
)

func newStatusCommand(a *app) *cobra.Command {
	var all bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show endpoints with delivery health, pending and dead-lettered deliveries",
		Example: `  kubectl herald status -n shop
  kubectl herald status -A`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var list heraldv1.WebhookEndpointList
			var opts []client.ListOption
			if !all {
				opts = append(opts, client.InNamespace(a.namespace))
			}
			if err := a.client.List(cmd.Context(), &list, opts...); err != nil {
				return listError("WebhookEndpoints", err)
			}
			if len(list.Items) == 0 {
				where := "namespace " + a.namespace
				if all {
					where = "any namespace"
				}
				_, err := fmt.Fprintf(a.out(), "No WebhookEndpoints found in %s.\n", where)
				return err
			}
			return printStatus(a, list.Items, all)
		},
	}
	cmd.Flags().BoolVarP(&all, "all-namespaces", "A", false, "List endpoints of every namespace.")
	return cmd
}

func printStatus(a *app, items []heraldv1.WebhookEndpoint, all bool) error {
	w := printers.GetNewTabWriter(a.out())
	if all {
		_, _ = fmt.Fprint(w, "NAMESPACE\t")
	}
	_, _ = fmt.Fprintln(w, "NAME\tREADY\tHEALTHY\tREASON\tPENDING\tDEAD-LETTERED\tLAST SUCCESS\tLAST FAILURE")
	for i := range items {
		ep := &items[i]
		if all {
			_, _ = fmt.Fprintf(w, "%s\t", ep.Namespace)
		}
		healthy := apimeta.FindStatusCondition(ep.Status.Conditions, heraldv1.DeliveryHealthyCondition)
		healthyStatus, reason := "Unknown", ""
		if healthy != nil {
			healthyStatus, reason = string(healthy.Status), healthy.Reason
		}
		pending, dead, lastSuccess, lastFailure := "0", "0", "<never>", "<none>"
		if d := ep.Status.Delivery; d != nil {
			pending, dead = strconv.FormatInt(d.Pending, 10), strconv.FormatInt(d.DeadLettered, 10)
			if d.LastSuccessTime != nil {
				lastSuccess = age(a.now(), d.LastSuccessTime) + " ago"
			}
			if d.LastFailureTime != nil {
				lastFailure = fmt.Sprintf("%s (%s ago)", d.LastFailureReason, age(a.now(), d.LastFailureTime))
			}
		}
		_, _ = fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", ep.Name, conditionStatus(ep.Status.Conditions, heraldv1.ReadyCondition),
			healthyStatus, orNone(reason), pending, dead, lastSuccess, lastFailure)
	}
	return w.Flush()
}

func conditionStatus(conds []metav1.Condition, typ string) string {
	if c := apimeta.FindStatusCondition(conds, typ); c != nil {
		return string(c.Status)
	}
	return "Unknown"
}

func age(now time.Time, t *metav1.Time) string {
	if t == nil || t.IsZero() {
		return "<unknown>"
	}
	return duration.HumanDuration(now.Sub(t.Time))
}

func orNone(s string) string {
	if s == "" {
		return "<none>"
	}
	return s
}
