package delivery

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/go-logr/logr"

	"github.com/herald-dev/herald/dispatcher/queue"
)

// ownership makes limits per endpoint rather than per replica. With
// several dispatcher replicas on one JetStream, a replica delivers to an
// endpoint only while it holds the endpoint's lease (queue.Owners), so one
// pacer — one maxInFlight, one token bucket, one Retry-After pause, one
// circuit breaker — governs everything the receiver sees.
//
// The protocol, and why no delivery waits for long:
//   - A worker takes the lease before it creates the endpoint's consumer,
//     and stops fetching as soon as the lease is not known valid.
//   - A replica that finds the lease held parks the worker (no consumer,
//     no goroutine) and ignores wakes for notOwnerHold, then wakes once:
//     the owner delivers what this replica queued meanwhile.
//   - The owner gives the lease up only when the endpoint is idle, and
//     checks the queue once more afterwards: a delivery queued by a
//     replica that found the lease held is then seen, and the owner takes
//     the lease again.
//   - A replica that dies keeps its leases until they expire (the
//     bucket's TTL); the sweep of the others then finds the endpoints'
//     queued deliveries and takes them over.
//
// With one replica (embedded JetStream) there is no ownership: Options.Owners
// is nil and every worker delivers.
type ownership struct {
	owners *queue.Owners
	log    logr.Logger

	mu     sync.Mutex
	leases map[*worker]*queue.Lease
}

// notOwnerHold is how long a replica leaves an endpoint to the replica
// that holds its lease before it checks again; it doubles, up to a third
// of the lease's TTL, while the same replica keeps holding it, so a busy
// endpoint owned elsewhere costs a check every few seconds.
const notOwnerHold = time.Second

func newOwnership(owners *queue.Owners, log logr.Logger) *ownership {
	return &ownership{owners: owners, log: log, leases: map[*worker]*queue.Lease{}}
}

// renew extends every lease this replica holds, every third of the TTL,
// until ctx ends. A lease another replica took over is dropped and its
// worker's fetch loop ends; a renewal that fails for another reason is
// tried again next time, and the lease stops being valid if they keep
// failing.
func (o *ownership) renew(ctx context.Context) {
	ticker := time.NewTicker(o.owners.TTL() / 3)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		o.mu.Lock()
		held := make(map[*worker]*queue.Lease, len(o.leases))
		for w, l := range o.leases {
			held[w] = l
		}
		o.mu.Unlock()
		for w, l := range held {
			opCtx, cancel := context.WithTimeout(ctx, finishTimeout)
			err := o.owners.Renew(opCtx, l)
			cancel()
			switch {
			case errors.Is(err, queue.ErrLeaseLost):
				o.log.Info("Another replica took over the endpoint", "namespace", l.Namespace, "name", l.Endpoint)
				w.leaseLost(l)
			case err != nil && ctx.Err() == nil:
				o.log.Error(err, "Renewing an endpoint lease failed; retrying", "namespace", l.Namespace, "name", l.Endpoint)
			}
		}
	}
}

func (o *ownership) add(w *worker, l *queue.Lease) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.leases[w] = l
}

// remove forgets w's lease if it is still l, and reports whether it was.
func (o *ownership) remove(w *worker, l *queue.Lease) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.leases[w] != l {
		return false
	}
	delete(o.leases, w)
	return true
}

// releaseAll gives up every lease still held (on shutdown, once the
// attempts in flight are finished).
func (o *ownership) releaseAll(ctx context.Context) {
	o.mu.Lock()
	held := o.leases
	o.leases = map[*worker]*queue.Lease{}
	o.mu.Unlock()
	for _, l := range held {
		if err := o.owners.Release(ctx, l); err != nil {
			o.log.Error(err, "Releasing an endpoint lease failed; it expires by itself", "namespace", l.Namespace, "name", l.Endpoint)
		}
	}
}

// own reports whether this replica may deliver to the worker's endpoint
// now, taking the endpoint's lease if it is free.
func (w *worker) own(ctx context.Context) (bool, error) {
	o := w.m.ownership
	if o == nil {
		return true, nil
	}
	if l := w.currentLease(); l != nil {
		if l.ValidAt(time.Now()) {
			return true, nil
		}
		// Renewals failed for a while: renew now, or give it up.
		err := o.owners.Renew(ctx, l)
		if err == nil {
			return true, nil
		}
		if !errors.Is(err, queue.ErrLeaseLost) {
			return false, err
		}
		w.leaseLost(l)
	}
	l, holder, err := o.owners.Acquire(ctx, w.namespace, w.name)
	if err != nil {
		return false, err
	}
	if l == nil {
		if holder == "" || holder != w.lastHolder {
			w.holdFor = notOwnerHold
		} else {
			w.holdFor = min(2*w.holdFor, o.owners.TTL()/3)
		}
		w.lastHolder = holder
		w.notOwnerUntil.Store(time.Now().Add(w.holdFor).UnixNano())
		w.logger().V(2).Info("Another replica delivers to the endpoint", "owner", holder)
		return false, nil
	}
	w.lastHolder = ""
	w.mu.Lock()
	w.lease = l
	w.mu.Unlock()
	o.add(w, l)
	w.logger().V(1).Info("Took over delivery to the endpoint")
	return true, nil
}

func (w *worker) currentLease() *queue.Lease {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.lease
}

// leaseValid reports whether the fetch loop may go on fetching: always
// without ownership, otherwise while the lease is known valid.
func (w *worker) leaseValid() bool {
	if w.m.ownership == nil {
		return true
	}
	l := w.currentLease()
	return l != nil && l.ValidAt(time.Now())
}

// leaseLost forgets a lease another replica holds now and ends the fetch
// loop; attempts in flight finish.
func (w *worker) leaseLost(l *queue.Lease) {
	w.m.ownership.remove(w, l)
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.lease == l {
		w.lease = nil
		if w.cancelLoop != nil {
			w.cancelLoop()
		}
	}
}

// releaseLease gives the endpoint's lease up, if this replica holds it,
// and reports whether it did.
func (w *worker) releaseLease(ctx context.Context) bool {
	o := w.m.ownership
	if o == nil {
		return false
	}
	w.mu.Lock()
	l := w.lease
	w.lease = nil
	w.mu.Unlock()
	if l == nil || !o.remove(w, l) {
		return false
	}
	if err := o.owners.Release(ctx, l); err != nil {
		w.logger().Error(err, "Releasing the endpoint lease failed; it expires by itself")
	}
	return true
}

// leftToOwner reports how long wakes are left to the replica that holds
// the lease; zero when this replica should look itself.
func (w *worker) leftToOwner() time.Duration {
	until := w.notOwnerUntil.Load()
	if until == 0 {
		return 0
	}
	return max(time.Until(time.Unix(0, until)), 0)
}
