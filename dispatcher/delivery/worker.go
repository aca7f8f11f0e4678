package delivery

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"

	"github.com/herald-dev/herald/dispatcher/catalog"
	"github.com/herald-dev/herald/dispatcher/queue"
)

// worker is the delivery loop of one endpoint: its own consumer, pacer and
// goroutines, so nothing it waits for can hold up another endpoint. While
// the endpoint is idle the worker has no goroutine and no consumer; wake
// starts its loop again. An endpoint that never had a delivery has no
// pacer either: the loop makes it before its first fetch, and it is kept
// from then on (it holds the circuit breaker's memory of the endpoint).
type worker struct {
	m                    *Manager
	key, namespace, name string

	// pacer is set by beginLoop, under mu, and never changes afterwards; the
	// loop and its attempts read it without the lock.
	pacer *Pacer
	done  chan struct{} // closed once stopped and the loop has exited

	mu  sync.Mutex
	cfg *workerConfig
	// cancelLoop ends the current fetch loop so that run recreates the
	// consumer with new options.
	cancelLoop context.CancelFunc
	// cancelRun ends the running loop's context (a child of the Manager's
	// loopsCtx, made by start and released when the goroutine ends); nil
	// while no loop runs.
	cancelRun context.CancelFunc
	// running is whether a goroutine runs the loop; stopped is set by stop.
	running, stopped bool

	// idle is set while the endpoint is idle: no consumer, no goroutine.
	// wakes counts wake calls, so that a loop about to go idle notices a
	// wake that came after it checked the queue.
	idle  atomic.Bool
	wakes atomic.Uint64

	// With ownership (several replicas): lease is this replica's lease of
	// the endpoint, nil when it holds none (guarded by mu); notOwnerUntil
	// (Unix nanoseconds) is until when wakes are left to the replica that
	// holds it; wakeDeferred is set while a wake is scheduled for then.
	lease         *queue.Lease
	notOwnerUntil atomic.Int64
	wakeDeferred  atomic.Bool
	// lastHolder and holdFor are the replica found holding the lease and
	// how long wakes are left to it (used by the loop's goroutine only).
	lastHolder string
	holdFor    time.Duration

	// lastAcked is the delivery acknowledged last while the endpoint's
	// consumer exists; Manager.Stop confirms the acknowledgements up to it
	// (queue.Message.ConfirmAcknowledged).
	lastAcked atomic.Pointer[queue.Message]
}

func newWorker(m *Manager, ep *catalog.Endpoint, cfg *workerConfig) *worker {
	return &worker{
		m:         m,
		key:       ep.Key(),
		namespace: ep.Namespace,
		name:      ep.Name,
		done:      make(chan struct{}),
		cfg:       cfg,
	}
}

// logger is the worker's logger, built when something is logged rather
// than kept: a logger with values holds an encoding buffer of its own
// (1 KiB with zap), a tenth of an idle endpoint's memory, and workers log
// only on failures and state changes.
func (w *worker) logger() logr.Logger {
	return w.m.log.WithValues("namespace", w.namespace, "name", w.name)
}

func (w *worker) config() *workerConfig {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.cfg
}

func (w *worker) endpoint() *catalog.Endpoint { return w.config().endpoint }

// update applies a new configuration: attempts that start afterwards use it,
// attempts in flight finish with the old one. The consumer is recreated only
// when its options changed (ordering, timeout).
func (w *worker) update(cfg *workerConfig) {
	w.mu.Lock()
	old := w.cfg
	w.cfg = cfg
	if old.consumerOpts != cfg.consumerOpts && w.cancelLoop != nil {
		w.cancelLoop()
	}
	pacer := w.pacer
	w.mu.Unlock()
	if pacer != nil {
		pacer.Update(cfg.endpoint.Spec.GetMaxInFlight(), cfg.endpoint.Spec.RateLimit)
	}
	old.closeIdleConnections()
	w.logger().V(1).Info("Updated delivery configuration", "generation", cfg.endpoint.Generation)
}

// start runs the loop in a goroutine unless one runs already or the worker
// was stopped.
func (w *worker) start() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.running || w.stopped {
		return
	}
	ctx, cancel := context.WithCancel(w.m.loopsCtx)
	w.cancelRun = cancel
	w.running = true
	w.idle.Store(false)
	go w.run(ctx)
}

// endRunLocked releases the context of a loop whose goroutine ends.
func (w *worker) endRunLocked() {
	w.running = false
	if w.cancelRun != nil {
		w.cancelRun()
		w.cancelRun = nil
	}
}

// stop ends the fetch loop; attempts in flight finish. done is closed once
// the loop has exited (at once when the endpoint is idle).
func (w *worker) stop() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.cancelRun != nil {
		w.cancelRun()
	}
	if !w.stopped {
		w.stopped = true
		if !w.running {
			close(w.done)
		}
	}
}

// exit ends the loop's goroutine.
func (w *worker) exit() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.endRunLocked()
	if w.stopped {
		close(w.done)
	}
}

// park ends the loop's goroutine because the endpoint is idle, unless
// wake was called since wakes read woken; it reports whether it did.
func (w *worker) park(woken uint64) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	// Set idle before reading wakes: a wake that finds idle unset has
	// already counted, and is seen here.
	w.idle.Store(true)
	if w.wakes.Load() != woken || w.stopped {
		w.idle.Store(false)
		return false
	}
	w.endRunLocked()
	w.logger().V(2).Info("Endpoint idle")
	return true
}

// parkNotOwner ends the loop's goroutine because another replica holds
// the endpoint's lease. Wakes that came meanwhile are the owner's to
// serve (see ownership); it reports false when the worker was stopped.
func (w *worker) parkNotOwner() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stopped {
		return false
	}
	w.idle.Store(true)
	w.endRunLocked()
	return true
}

// wake starts the loop of an idle endpoint; for a running loop it only
// counts, so that the loop does not go idle on a stale check. While
// another replica holds the endpoint's lease, the wake is put off until
// this replica should look again.
func (w *worker) wake() {
	w.wakes.Add(1)
	if !w.idle.Load() {
		return
	}
	if wait := w.leftToOwner(); wait > 0 {
		if w.wakeDeferred.CompareAndSwap(false, true) {
			time.AfterFunc(wait, func() {
				w.wakeDeferred.Store(false)
				w.wake()
			})
		}
		return
	}
	w.start()
}

// beginLoop starts a fetch loop within the run's context, making the
// endpoint's pacer on its first.
func (w *worker) beginLoop(runCtx context.Context) (*workerConfig, context.Context, context.CancelFunc) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.pacer == nil {
		spec := w.cfg.endpoint.Spec
		w.pacer = NewPacer(spec.GetMaxInFlight(), spec.RateLimit, w.m.breaker, w.m.clock)
	}
	ctx, cancel := context.WithCancel(runCtx)
	w.cancelLoop = cancel
	return w.cfg, ctx, cancel
}

// run fetches the endpoint's deliveries until the worker stops or the
// endpoint is idle. While nothing is queued, in flight or waiting for a
// retry, the endpoint is idle: the loop releases the consumer and its
// goroutine ends, until wake starts it again. Otherwise it creates the
// consumer and fetches until nothing came for the manager's idleAfter,
// recreating the consumer when its options change.
func (w *worker) run(ctx context.Context) {
	if parked := w.loop(ctx); !parked {
		// A retired endpoint's lease is given up now; on shutdown, the
		// Manager gives them up once the attempts in flight are finished.
		if w.m.loopsCtx.Err() == nil {
			ctx, cancel := context.WithTimeout(context.Background(), finishTimeout)
			w.releaseLease(ctx)
			cancel()
		}
		w.exit()
	}
}

// loop is run's body; it returns true when it parked the worker, false
// when the worker stopped.
func (w *worker) loop(ctx context.Context) (parked bool) {
	const minRetry, maxRetry = 500 * time.Millisecond, 30 * time.Second
	retry := minRetry
	// backOff logs a failed step and waits before the loop tries again.
	backOff := func(err error, what string) {
		w.logger().Error(err, "Cannot "+what+", retrying", "retryIn", retry)
		sleep(ctx, retry)
		retry = min(2*retry, maxRetry)
	}
	for ctx.Err() == nil {
		// Read before checking: a Wake after this point is not missed.
		woken := w.wakes.Load()
		idle, err := w.releaseIfIdle(ctx)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			backOff(err, "check the endpoint's queue")
			continue
		}
		if idle && w.park(woken) {
			return true
		}
		if idle {
			continue
		}
		owned, err := w.own(ctx)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			backOff(err, "take the endpoint's lease")
			continue
		}
		if !owned {
			if w.parkNotOwner() {
				return true
			}
			break
		}

		cfg, loopCtx, cancel := w.beginLoop(ctx)
		consumer, err := w.m.queue.DeliveryConsumer(loopCtx, w.namespace, w.name, cfg.consumerOpts)
		if err != nil {
			cancel()
			if ctx.Err() != nil {
				return false
			}
			backOff(err, "create the endpoint's delivery consumer")
			continue
		}
		retry = minRetry
		w.fetchLoop(loopCtx, consumer)
		// Hands back to the queue what arrived after the loop's last fetch.
		consumer.Close()
		cancel()
	}
	return false
}

// fetchLoop takes deliveries from the consumer as fast as the pacer lets
// it and starts an attempt for each. It waits for one ticket, then takes
// further tickets without waiting for the backlog the previous fetch
// reported, and fetches that many deliveries in one round trip: one per
// round trip when the endpoint keeps up, up to maxInFlight when it has a
// backlog.
func (w *worker) fetchLoop(ctx context.Context, consumer *queue.Consumer) {
	var backlog uint64
	lastDelivery := time.Now()
	for {
		ticket, err := w.pacer.Acquire(ctx)
		if err != nil {
			return
		}
		if !w.leaseValid() {
			ticket.Release()
			return // run takes the lease again or leaves the endpoint
		}
		tickets := []*Ticket{ticket}
		if backlog > 0 {
			tickets = append(tickets, w.pacer.TryAcquire(int(min(backlog, maxFetchBatch-1)))...)
		}
		// The fetch itself is not cut short when the loop is asked to stop:
		// a pull request abandoned by the client stays on the server until
		// it expires and can take a delivery nobody receives, which would
		// then wait for its whole AckWait. It ends by itself within the
		// consumer's FetchWait; only Stop running out of time cancels it.
		msgs, err := consumer.Fetch(w.m.attemptsCtx, len(tickets))
		for _, t := range tickets[len(msgs):] {
			t.Release()
		}
		if ctx.Err() != nil {
			for i, msg := range msgs {
				tickets[i].Release()
				w.handBack(msg)
			}
			return
		}
		if len(msgs) == 0 {
			backlog = 0
			if err != nil {
				if w.m.attemptsCtx.Err() != nil {
					return
				}
				// The consumer may be gone (another replica released it):
				// run checks the queue and creates it again.
				w.logger().Error(err, "Fetching deliveries failed, retrying")
				sleep(ctx, time.Second)
				return
			}
			if time.Since(lastDelivery) >= w.m.idleAfter && w.pacer.InFlight() == 0 {
				return // run releases the consumer if nothing is pending
			}
			continue
		}
		lastDelivery = time.Now()
		// An error after some messages arrived is the next fetch's to
		// report; the messages are ours now.
		backlog = msgs[len(msgs)-1].Pending
		cfg := w.config()
		w.m.attempts.Add(len(msgs))
		for i, msg := range msgs {
			go func() {
				defer w.m.attempts.Done()
				w.process(cfg, msg, tickets[i])
			}()
		}
	}
}

// maxFetchBatch bounds the deliveries one fetch takes.
const maxFetchBatch = 64

// handBackDelay is how long a delivery handed back without an attempt
// waits before the queue offers it again.
const handBackDelay = time.Second

// handBack returns a delivery to the queue without attempting it.
func (w *worker) handBack(msg *queue.Message) {
	w.nak(msg, handBackDelay)
}

// releaseIfIdle releases the endpoint's consumer, and its lease, when
// nothing is queued, in flight or waiting for a retry, and reports whether
// the endpoint is idle. A replica that does not hold the lease leaves the
// consumer to the one that does.
func (w *worker) releaseIfIdle(runCtx context.Context) (bool, error) {
	ctx, cancel := context.WithTimeout(runCtx, finishTimeout)
	defer cancel()
	pending, err := w.m.queue.Pending(ctx, w.namespace, w.name)
	if err != nil || pending > 0 {
		return false, err
	}
	if w.m.ownership != nil && w.currentLease() == nil {
		return true, nil
	}
	if err := w.m.queue.ReleaseDeliveryConsumer(ctx, w.namespace, w.name); err != nil {
		return false, err
	}
	// Nothing was pending, so every acknowledgement was processed.
	w.lastAcked.Store(nil)
	if !w.releaseLease(ctx) {
		return true, nil
	}
	// Deliveries queued by a replica that found the lease held are this
	// replica's to deliver: look once more now that it is free.
	pending, err = w.m.queue.Pending(ctx, w.namespace, w.name)
	if err != nil || pending > 0 {
		return false, err
	}
	return true, nil
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// process makes one attempt of a delivery and settles the message.
func (w *worker) process(cfg *workerConfig, msg *queue.Message, ticket *Ticket) {
	ep := cfg.endpoint
	o := Outcome{
		Namespace:     w.namespace,
		Endpoint:      w.name,
		Generation:    ep.Generation,
		Attempt:       int(msg.NumDelivered),
		WebhookID:     msg.Header.Get(queue.HeaderWebhookID),
		Subscriptions: msg.Header.Get(queue.HeaderSubscriptions),
	}
	policy := cfg.retry
	ingested := msg.IngestedAt()
	// retry.maxAge counts from ingest, or from the requeue of a delivery
	// queued again by a Redelivery.
	queued := msg.QueuedAt()
	if msg.NumDelivered == 1 {
		w.m.metrics.startLag.Observe(max(time.Since(queued), 0).Seconds())
	}

	if time.Since(queued) > policy.MaxAge {
		ticket.Release()
		o.Reason = ReasonMaxAge
		w.deadLetter(msg, ReasonMaxAge, &o)
		w.finish(msg, nil, o, nil)
		return
	}

	snd, err := cfg.sender()
	if err != nil {
		// Cannot happen: the configuration was made after the same sender
		// was built once. Keep the delivery for the next configuration.
		ticket.Release()
		w.logger().Error(err, "Cannot build the endpoint's sender; keeping the delivery")
		o.Reason = ReasonOther
		if errors.Is(err, ErrNoSigningKey) {
			o.Reason = ReasonSigningKeyMissing
		}
		o.RetryDelay, o.Time = Backoff(o.Attempt, policy.InitialBackoff, policy.MaxBackoff), time.Now()
		w.nak(msg, o.RetryDelay)
		w.finish(msg, nil, o, nil)
		return
	}
	// Parsed once, for the request and for the delivery log's record.
	ev, err := parseEvent(msg.Data)
	var req *http.Request
	if err == nil {
		req, err = snd.target.buildRequest(w.m.attemptsCtx, ev, Delivery{
			Namespace:  w.namespace,
			Payload:    msg.Data,
			WebhookID:  o.WebhookID,
			IngestedAt: ingested,
		}, w.m.now())
	}
	if err != nil {
		ticket.Release()
		if errors.Is(err, errInvalidEvent) {
			w.logger().Error(err, "Dead-lettering an undeliverable payload", "sequence", msg.Sequence)
			o.Reason = ReasonInvalidPayload
			w.deadLetter(msg, ReasonInvalidPayload, &o)
		} else {
			// No valid signing key right now: the manager is expected to
			// provide one; keep the delivery and try again later.
			o.Reason = ReasonSigningKeyMissing
			o.RetryDelay = Backoff(o.Attempt, policy.InitialBackoff, policy.MaxBackoff)
			w.nak(msg, o.RetryDelay)
		}
		o.Time = time.Now()
		w.finish(msg, ev, o, nil)
		return
	}

	resp, err := snd.client.Do(req)
	o.Sent, o.Time, o.Latency = true, time.Now(), resp.Latency
	res := attemptResult{}
	if err != nil {
		if w.m.attemptsCtx.Err() != nil {
			// Stop ran out of time and cancelled the attempt: not the
			// receiver's fault. Hand the delivery back at once.
			ticket.Release()
			w.handBack(msg)
			return
		}
		res.reason = ClassifyError(err)
		w.logger().V(1).Info("Delivery attempt failed", "attempt", o.Attempt, "reason", res.reason, "error", safeErrorText(err))
	} else {
		res.statusCode, res.retryAfter, res.body = resp.StatusCode, resp.RetryAfter, resp.Body
		res.success = resp.StatusCode >= 200 && resp.StatusCode < 300
		if !res.success {
			res.reason = HTTPReason(resp.StatusCode)
		}
	}
	o.Success, o.StatusCode, o.Reason = res.success, res.statusCode, res.reason
	result, pause := breakerResult(res, policy.MaxBackoff, o.Time)
	if pause > 0 {
		w.pacer.Pause(w.m.clock.Now().Add(pause))
	}
	o.CircuitOpen = ticket.Done(result)

	d := decide(res, policy, o.Attempt, queued, time.Now())
	switch d.action {
	case actionAck:
		// Not confirmed: if the acknowledgement is lost with the
		// connection, the queue redelivers after AckWait with the same
		// webhook-id, which at-least-once allows (see AckNoWait).
		if err := msg.AckNoWait(); err != nil {
			w.logger().Error(err, "Acknowledging a delivered message failed", "sequence", msg.Sequence)
		} else {
			w.lastAcked.Store(msg)
		}
	case actionRetry:
		o.RetryDelay = d.delay
		w.nak(msg, d.delay)
	case actionDeadLetter:
		w.deadLetter(msg, d.deadLetterReason, &o)
	case actionGone:
		o.Gone = true
		// Stop fetching first, then hand the delivery back: it waits in the
		// queue until the endpoint's spec changes.
		w.m.markGone(w, ep.Generation)
		w.handBack(msg)
	}
	w.finish(msg, ev, o, res.body)
}

// nak schedules the redelivery of msg after delay. A full-jitter draw
// may be zero; the nak is still a delayed one (by a millisecond), because
// the queue counts a message waiting for a delayed redelivery as pending
// and one waiting after a plain nak not at all.
func (w *worker) nak(msg *queue.Message, delay time.Duration) {
	if err := msg.NakWithDelay(max(delay, time.Millisecond)); err != nil {
		// Lost naks end in a redelivery after AckWait.
		w.logger().Error(err, "Returning a delivery to the queue failed", "sequence", msg.Sequence)
	}
}

func (w *worker) deadLetter(msg *queue.Message, reason string, o *Outcome) {
	ctx, cancel := context.WithTimeout(context.Background(), finishTimeout)
	defer cancel()
	if err := w.m.queue.DeadLetter(ctx, msg, reason); err != nil {
		w.logger().Error(err, "Dead-lettering a delivery failed; it stays queued", "sequence", msg.Sequence, "reason", reason)
		w.nak(msg, deadLetterRetryDelay)
		return
	}
	o.DeadLettered, o.DeadLetterReason = true, reason
	w.logger().Info("Delivery dead-lettered", "sequence", msg.Sequence, "attempt", o.Attempt, "reason", reason)
}

// deadLetterRetryDelay delays the next try of a delivery whose dead-lettering
// failed, so that a queue problem does not spin.
const deadLetterRetryDelay = 5 * time.Second

// finish reports the outcome of a processed delivery and records it in
// the delivery log, with the start of the response body. ev is the parsed
// payload, nil when it was not parsed (or could not be).
func (w *worker) finish(msg *queue.Message, ev *cloudEvent, o Outcome, body []byte) {
	if w.m.recorder != nil {
		w.m.recorder.Record(logEntry(w.namespace, w.name, msg, ev, &o, body))
	}
	w.report(o)
}

func (w *worker) report(o Outcome) {
	if o.Time.IsZero() {
		o.Time = time.Now()
	}
	w.m.metrics.observe(o)
	w.m.reporter.Attempted(w.key, o)
}
