package main

import (
	"context"
	"fmt"

	"github.com/go-logr/logr"
	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/herald-dev/herald/dispatcher/catalog"
	"github.com/herald-dev/herald/dispatcher/delivery"
	"github.com/herald-dev/herald/dispatcher/deliverylog"
	"github.com/herald-dev/herald/dispatcher/health"
	"github.com/herald-dev/herald/dispatcher/ping"
	"github.com/herald-dev/herald/dispatcher/queue"
	"github.com/herald-dev/herald/dispatcher/redelivery"
)

// setupOperations registers the controllers of the operations users ask
// for: Redeliveries and pings. Every replica runs them; only the holder
// of the status-writer lease acts, so each runs on one replica. dlog may
// be nil (no delivery log): then only dead letters can be redelivered and
// pings are not logged.
func setupOperations(ctx context.Context, mgr ctrl.Manager, q *queue.Queue, dlog *deliverylog.Log,
	reporter *health.Reporter, deliveries *delivery.Manager, cat *catalog.Catalog, log logr.Logger) error {
	executor, err := redelivery.New(ctx, redelivery.Options{
		Client:  mgr.GetClient(),
		Queue:   q,
		Log:     dlog,
		Leading: reporter.IsStatusWriter,
		Wake:    deliveries.Wake,
		Logger:  log.WithName("redelivery"),
	})
	if err != nil {
		return err
	}
	if err := executor.SetupWithManager(mgr); err != nil {
		return fmt.Errorf("redelivery controller: %w", err)
	}
	pinger, err := ping.New(ctx, ping.Options{
		Client:    mgr.GetClient(),
		Catalog:   cat,
		Sender:    deliveries,
		Recorder:  mgr.GetEventRecorder("herald-dispatcher"),
		JetStream: q.JetStream(),
		Replicas:  q.Replicas(),
		Leading:   reporter.IsStatusWriter,
		Logger:    log.WithName("ping"),
	})
	if err != nil {
		return err
	}
	if err := pinger.SetupWithManager(mgr); err != nil {
		return fmt.Errorf("ping controller: %w", err)
	}
	return nil
}
