// Command kubectl-herald is the kubectl plugin of Herald: `kubectl herald
// status|deliveries|redeliver|ping|rotate|verify`. It uses the user's
// kubeconfig and permissions, like kubectl itself.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	deliveryv1 "github.com/herald-dev/herald/api/delivery/v1alpha1"
	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
)

func main() {
	streams := genericiooptions.IOStreams{In: os.Stdin, Out: os.Stdout, ErrOut: os.Stderr}
	if err := newRootCommand(streams, nil).Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

var scheme = func() *runtime.Scheme {
	s := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(s))
	utilruntime.Must(heraldv1.AddToScheme(s))
	utilruntime.Must(deliveryv1.AddToScheme(s))
	return s
}()

// app is what every subcommand works with: a client of the user's
// cluster, the namespace, and where to print.
type app struct {
	flags   *genericclioptions.ConfigFlags
	streams genericiooptions.IOStreams
	// restConfig overrides the kubeconfig (tests).
	restConfig *rest.Config
	client     client.WithWatch
	namespace  string
	now        func() time.Time
	// poll is how often waiting commands look again.
	poll time.Duration
}

func (a *app) out() io.Writer { return a.streams.Out }

// init resolves the kubeconfig and builds the client.
func (a *app) init() error {
	cfg := a.restConfig
	if cfg == nil {
		var err error
		if cfg, err = a.flags.ToRESTConfig(); err != nil {
			return fmt.Errorf("read the kubeconfig: %w (set --kubeconfig or KUBECONFIG, or choose a --context)", err)
		}
		ns, _, err := a.flags.ToRawKubeConfigLoader().Namespace()
		if err != nil {
			return fmt.Errorf("read the namespace from the kubeconfig: %w", err)
		}
		a.namespace = ns
	} else if a.flags.Namespace != nil && *a.flags.Namespace != "" {
		a.namespace = *a.flags.Namespace
	}
	if a.namespace == "" {
		a.namespace = "default"
	}
	c, err := client.NewWithWatch(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return fmt.Errorf("connect to the cluster: %w", err)
	}
	a.client = c
	return nil
}

func newRootCommand(streams genericiooptions.IOStreams, restConfig *rest.Config) *cobra.Command {
	a := &app{
		flags:      genericclioptions.NewConfigFlags(true),
		streams:    streams,
		restConfig: restConfig,
		now:        time.Now,
		poll:       time.Second,
	}
	root := &cobra.Command{
		Use:   "kubectl-herald",
		Short: "Inspect and operate Herald webhook delivery",
		Long: `kubectl herald inspects and operates Herald's webhook delivery with your
kubeconfig and permissions:

  status      endpoints with delivery health, pending and dead-lettered counts
  deliveries  the delivery log (delivery.herald.dev deliveries), --watch to follow
  redeliver   queue an endpoint's dead letters (or other deliveries) again
  ping        send an endpoint a signed herald.ping event and show the answer
  rotate      rotate an endpoint's generated signing key
  verify      check a saved webhook request's signature against an endpoint's keys`,
		SilenceUsage:      true,
		SilenceErrors:     true,
		PersistentPreRunE: func(*cobra.Command, []string) error { return a.init() },
	}
	a.flags.AddFlags(root.PersistentFlags())
	root.AddCommand(
		newStatusCommand(a),
		newDeliveriesCommand(a),
		newRedeliverCommand(a),
		newPingCommand(a),
		newRotateCommand(a),
		newVerifyCommand(a),
	)
	return root
}

// waitContext bounds a waiting command by --timeout.
func waitContext(ctx context.Context, timeout time.Duration) (context.Context, context.CancelFunc) {
	if timeout <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, timeout)
}
