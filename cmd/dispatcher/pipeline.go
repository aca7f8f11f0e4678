package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/go-logr/logr"
)

// pipeline runs the dispatcher's stages as one runnable, so that they start
// and stop in the order the data flows, which controller-runtime does not
// guarantee for separate runnables (it stops them concurrently):
//
//   - start: ingest (it only needs the queue: events are stored and wait),
//     then, once the catalog has seen every object, the removal of orphaned
//     queues, the health reporter, delivery, and fan-out last, so that no
//     event is routed before every Subscription and endpoint is known;
//   - stop: ingest stops accepting (requests in progress finish), fan-out
//     finishes its batch, delivery drains within the drain timeout, and the
//     health reporter flushes last, so outcomes seen during the drain (a
//     410 included) reach status.
type pipeline struct {
	log           logr.Logger
	drainTimeout  time.Duration
	catalog       interface{ WaitForSync(context.Context) error }
	ingest        func(context.Context) error
	removeOrphans func(context.Context) error
	startDelivery func()
	stopDelivery  func(context.Context) error
	router        func(context.Context) error
	reporter      func(context.Context) error
}

// stage is a running stage: cancel asks it to stop; done is closed when it
// returned, with err.
type stage struct {
	name   string
	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

// start runs a stage; a stage that returns before it is stopped is
// reported on failed.
func (p *pipeline) start(name string, run func(context.Context) error, failed chan<- error) *stage {
	ctx, cancel := context.WithCancel(context.Background())
	st := &stage{name: name, cancel: cancel, done: make(chan struct{})}
	go func() {
		st.err = run(ctx)
		close(st.done)
		if ctx.Err() == nil {
			select {
			case failed <- fmt.Errorf("%s stopped: %w", st.name, errOrUnexpected(st.err)):
			default:
			}
		}
	}()
	return st
}

// stop stops the stage and waits for it.
func (st *stage) stop() error {
	st.cancel()
	<-st.done
	if st.err != nil && !errors.Is(st.err, context.Canceled) {
		return fmt.Errorf("%s: %w", st.name, st.err)
	}
	return nil
}

// Start runs the stages until ctx ends or a stage fails, then stops them
// in order.
func (p *pipeline) Start(ctx context.Context) error {
	failed := make(chan error, 4)
	ingestStage := p.start("ingest", p.ingest, failed)

	var runErr error
	if err := p.catalog.WaitForSync(ctx); err != nil {
		runErr = err
	} else if err := p.removeOrphans(ctx); err != nil && ctx.Err() == nil {
		// Not fatal: orphans only cost space; the next start tries again.
		p.log.Error(err, "Removing the queues of deleted endpoints failed")
	}
	var reporterStage, routerStage *stage
	if runErr == nil && ctx.Err() == nil {
		reporterStage = p.start("health reporter", p.reporter, failed)
		p.startDelivery()
		routerStage = p.start("router", p.router, failed)
		select {
		case <-ctx.Done():
		case runErr = <-failed:
		}
	}

	// Stop in the order the data flows.
	p.log.Info("Stopping: ingest, then fan-out, then delivery, then health reporting")
	errs := []error{runErr}
	errs = append(errs, ingestStage.stop())
	if routerStage != nil {
		errs = append(errs, routerStage.stop())
	}
	if reporterStage != nil {
		drainCtx, cancel := context.WithTimeout(context.Background(), p.drainTimeout)
		errs = append(errs, p.stopDelivery(drainCtx))
		cancel()
		errs = append(errs, reporterStage.stop())
	}
	return errors.Join(errs...)
}

// errStoppedEarly is the failure of a stage that returned without error
// before it was asked to stop.
var errStoppedEarly = errors.New("stage ended before shutdown")

func errOrUnexpected(err error) error {
	if err == nil {
		return errStoppedEarly
	}
	return err
}
