package health

import (
	"context"
	"encoding/json"
	"errors"

	"github.com/nats-io/nats.go/jetstream"
)

// leaseKey is the bucket entry naming the replica that writes status.
const leaseKey = "status-writer"

type leaseRecord struct {
	Holder string `json:"holder"`
}

// leaseState is this replica's view of the status-writer lease.
type leaseState struct {
	holding bool
	// revision of the lease entry this replica last wrote, while holding.
	revision  uint64
	lastRenew int64 // Unix nanoseconds of the last successful renewal
	// The latest revision seen of another holder's lease, and when this
	// replica first saw it: a revision unchanged for LeaseDuration means the
	// holder stopped renewing.
	observedRevision uint64
	observedAt       int64
}

// updateLease acquires, renews or gives up the lease. Takeover compares
// revisions observed over this replica's own clock, never timestamps written
// by another pod, so clock skew does not matter. A holder stops writing
// status after failing to renew for two thirds of LeaseDuration; a
// contender takes over only after a full LeaseDuration without renewal.
//
// A holder renews with one compare-and-swap on the revision it wrote last;
// only when that fails (another replica wrote the entry, or the bucket is
// unreachable) does it read the entry to find out why.
func (r *Reporter) updateLease(ctx context.Context) {
	now := r.opts.Now().UnixNano()
	me := r.leaseValue

	opCtx, cancel := r.opContext(ctx)
	defer cancel()
	if r.lease.holding {
		if revision, err := r.kv.Update(opCtx, leaseKey, me, r.lease.revision); err == nil {
			r.acquired(revision, now)
			return
		}
	}
	entry, err := r.kv.Get(opCtx, leaseKey)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		if revision, err := r.kv.Create(opCtx, leaseKey, me); err == nil {
			r.acquired(revision, now)
			return
		}
		// Someone else created it first; look again next tick.
		r.stepDownIfExpired(now)
		return
	case err != nil:
		r.stepDownIfExpired(now)
		return
	}

	var current leaseRecord
	_ = json.Unmarshal(entry.Value(), &current) // an undecodable lease is held by nobody
	if current.Holder == r.opts.Replica {
		revision, err := r.kv.Update(opCtx, leaseKey, me, entry.Revision())
		if err != nil {
			r.stepDownIfExpired(now)
			return
		}
		r.acquired(revision, now)
		return
	}
	if r.lease.holding {
		// Another replica took the lease: it judged ours expired.
		r.stepDown("lease taken over by " + current.Holder)
	}
	if entry.Revision() != r.lease.observedRevision {
		r.lease.observedRevision, r.lease.observedAt = entry.Revision(), now
		return
	}
	if now-r.lease.observedAt < r.opts.LeaseDuration.Nanoseconds() {
		return
	}
	if revision, err := r.kv.Update(opCtx, leaseKey, me, entry.Revision()); err == nil {
		r.log.Info("Took over the status-writer lease from an unresponsive replica", "previousHolder", current.Holder)
		r.acquired(revision, now)
	}
}

func (r *Reporter) acquired(revision uint64, now int64) {
	wasHolding := r.lease.holding
	r.lease.holding, r.lease.revision, r.lease.lastRenew = true, revision, now
	r.holding.Store(true)
	if !wasHolding {
		r.log.Info("Became the status writer", "replica", r.opts.Replica)
		r.metrics.writer.Set(1)
		r.startWriting()
	}
}

func (r *Reporter) stepDownIfExpired(now int64) {
	if r.lease.holding && now-r.lease.lastRenew > r.opts.LeaseDuration.Nanoseconds()*2/3 {
		r.stepDown("lease could not be renewed")
	}
}

func (r *Reporter) stepDown(why string) {
	r.log.Info("Stopped writing status", "reason", why)
	r.lease.holding = false
	r.holding.Store(false)
	r.metrics.writer.Set(0)
	r.stopWriting()
}

// IsStatusWriter reports whether this replica holds the status-writer
// lease. Other one-replica duties (executing Redeliveries, pings) follow
// the lease, so that exactly one replica performs them.
func (r *Reporter) IsStatusWriter() bool { return r.holding.Load() }

// releaseLease deletes the lease if this replica still holds it, so another
// replica takes over at its next tick instead of after LeaseDuration.
func (r *Reporter) releaseLease(ctx context.Context) {
	opCtx, cancel := r.opContext(ctx)
	defer cancel()
	if err := r.kv.Delete(opCtx, leaseKey, jetstream.LastRevision(r.lease.revision)); err != nil {
		r.log.Info("Releasing the status-writer lease failed; it expires on its own", "error", err.Error())
	}
	r.stepDown("shutting down")
}
