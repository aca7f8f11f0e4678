package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"

	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
)

func newPingCommand(a *app) *cobra.Command {
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "ping ENDPOINT",
		Short: "Send an endpoint one signed herald.ping event and show the receiver's answer",
		Long: `ping sets the herald.dev/ping annotation of ENDPOINT to a new value; the
dispatcher sends one signed event of type herald.ping (outside any
Subscription) and reports the answer as an Event on the endpoint, which ping
waits for and prints. It exits non-zero when the ping failed.`,
		Example: `  kubectl herald ping orders-receiver -n shop`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runPing(cmd.Context(), a, args[0], timeout)
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 2*time.Minute, "How long to wait for the answer.")
	return cmd
}

// newValue is a fresh annotation value: the time, to the nanosecond.
func newValue(now time.Time) string { return strconv.FormatInt(now.UnixNano(), 10) }

// annotate sets one annotation of an endpoint with a merge patch.
func annotate(ctx context.Context, a *app, name, key, value string) error {
	ep := &heraldv1.WebhookEndpoint{}
	if err := a.client.Get(ctx, client.ObjectKey{Namespace: a.namespace, Name: name}, ep); err != nil {
		return endpointError(a.namespace, name, err)
	}
	patch := fmt.Appendf(nil, `{"metadata":{"annotations":{%q:%q}}}`, key, value)
	if err := a.client.Patch(ctx, ep, client.RawPatch(types.MergePatchType, patch)); err != nil {
		return fmt.Errorf("annotate WebhookEndpoint %s/%s with %s: %w (you need patch on webhookendpoints, as in the herald-editor role)", a.namespace, name, key, err)
	}
	return nil
}

func runPing(ctx context.Context, a *app, name string, timeout time.Duration) error {
	value := newValue(a.now())
	if err := annotate(ctx, a, name, heraldv1.PingAnnotation, value); err != nil {
		return err
	}
	_, _ = fmt.Fprintf(a.out(), "Ping %q requested; waiting for the dispatcher's answer…\n", value)
	ctx, cancel := waitContext(ctx, timeout)
	defer cancel()
	var found *corev1.Event
	err := wait.PollUntilContextCancel(ctx, a.poll, true, func(ctx context.Context) (bool, error) {
		var events corev1.EventList
		err := a.client.List(ctx, &events, client.InNamespace(a.namespace), client.MatchingFieldsSelector{
			Selector: fields.SelectorFromSet(fields.Set{"involvedObject.kind": "WebhookEndpoint", "involvedObject.name": name}),
		})
		if err != nil {
			return false, nil //nolint:nilerr // transient or not permitted yet: look again until the timeout
		}
		for i := range events.Items {
			ev := &events.Items[i]
			if (ev.Reason == heraldv1.PingSucceededReason || ev.Reason == heraldv1.PingFailedReason) && strings.Contains(ev.Message, strconv.Quote(value)) {
				found = ev
				return true, nil
			}
		}
		return false, nil
	})
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("no answer to ping %q after %s: is the dispatcher running, and is the endpoint Ready? (kubectl describe webhookendpoint %s -n %s)", value, timeout, name, a.namespace)
	}
	if err != nil {
		return err
	}
	_, _ = fmt.Fprintf(a.out(), "%s: %s\n", found.Reason, found.Message)
	if found.Reason == heraldv1.PingFailedReason {
		return fmt.Errorf("ping failed; the attempt is in the delivery log: kubectl herald deliveries -n %s --endpoint %s --type herald.ping", a.namespace, name)
	}
	return nil
}

func newRotateCommand(a *app) *cobra.Command {
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:     "rotate ENDPOINT",
		Short:   "Rotate an endpoint's generated signing key (the old key stays valid for the overlap window)",
		Example: `  kubectl herald rotate orders-receiver -n shop`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runRotate(cmd.Context(), a, args[0], timeout)
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", time.Minute, "How long to wait for the manager to rotate.")
	return cmd
}

func runRotate(ctx context.Context, a *app, name string, timeout time.Duration) error {
	value := newValue(a.now())
	if err := annotate(ctx, a, name, heraldv1.RotateSigningKeyAnnotation, value); err != nil {
		return err
	}
	ctx, cancel := waitContext(ctx, timeout)
	defer cancel()
	ep := &heraldv1.WebhookEndpoint{}
	err := wait.PollUntilContextCancel(ctx, a.poll, true, func(ctx context.Context) (bool, error) {
		if err := a.client.Get(ctx, client.ObjectKey{Namespace: a.namespace, Name: name}, ep); err != nil {
			return false, nil //nolint:nilerr // transient: look again
		}
		return ep.Status.Signing != nil && ep.Status.Signing.LastHandledRotation == value, nil
	})
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("the manager has not rotated the key after %s: a key from spec.signing.secretRef is rotated by changing that Secret; otherwise check the manager (kubectl describe webhookendpoint %s -n %s)", timeout, name, a.namespace)
	}
	if err != nil {
		return err
	}
	secret := "<see status.signingSecretRef>"
	if ep.Status.SigningSecretRef != nil {
		secret = ep.Status.SigningSecretRef.Name
	}
	_, _ = fmt.Fprintf(a.out(), "Signing key of %s/%s rotated. Receivers read the new secret from Secret %s, key %q; the old key keeps signing during the overlap window.\n",
		a.namespace, name, secret, heraldv1.SigningSecretKey)
	return nil
}
