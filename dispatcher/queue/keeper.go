package queue

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Keeper messages keep the work-queue streams' last message block from
// emptying while traffic flows.
//
// JetStream's file store deletes a message block once its last message is
// removed and, when that block is the one being written, opens a new block
// file and writes a tombstone into it first. A work queue at a modest rate
// is emptied by its consumer after nearly every message, so each event and
// each delivery paid for a file created, written and unlinked: a tenth of
// the dispatcher's CPU at 1,000 events/s (docs/benchmarks). A keeper is a
// small message on a subject of the stream that no consumer reads
// (herald.keep.events, herald.keep.deliveries). While the stream receives
// messages, a new keeper is stored every keeperInterval and the previous
// one deleted, so the block being written always holds one and never
// empties; acknowledged messages are then removed from it in memory. When
// a block fills up, the next one holds no keeper for at most one interval.
//
// Keepers are invisible to Herald's consumers and to the per-subject counts
// (queue depth, pending deliveries); they raise a stream's total message
// count by one. When traffic stops the last keeper stays, one message per
// stream, and is replaced when traffic resumes.
const (
	eventsKeeperSubject     = "herald.keep.events"
	deliveriesKeeperSubject = "herald.keep.deliveries"
	keeperInterval          = 100 * time.Millisecond
)

// keeper maintains the keeper message of one stream.
type keeper struct {
	name    string
	stream  jetstream.Stream
	subject string
	// written counts publishes to the stream; the keeper acts only when it
	// moved since the last tick.
	written atomic.Uint64
	seen    uint64
	// last is the sequence of the keeper stored last; 0 before the first,
	// when leftovers of an earlier process are purged instead.
	last uint64
}

type keepers struct {
	byStream map[string]*keeper
	// asleep is set while the loop waits for a write instead of ticking;
	// the first write after it wakes the loop through kick.
	asleep atomic.Bool
	kick   chan struct{}
	stop   context.CancelFunc
	done   sync.WaitGroup
}

// startKeepers starts maintaining the keepers of the work-queue streams.
// The loop ticks while the streams receive messages and sleeps, costing an
// idle dispatcher nothing, when a tick finds nothing written.
func (q *Queue) startKeepers() {
	ks := &keepers{
		byStream: map[string]*keeper{
			EventsStream:     {name: EventsStream, stream: q.events, subject: eventsKeeperSubject},
			DeliveriesStream: {name: DeliveriesStream, stream: q.deliveries, subject: deliveriesKeeperSubject},
		},
		kick: make(chan struct{}, 1),
	}
	ctx, cancel := context.WithCancel(context.Background())
	ks.stop = cancel
	ks.done.Go(func() {
		tick := time.NewTicker(keeperInterval)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			wrote := false
			for _, k := range ks.byStream {
				wrote = q.keep(ctx, k) || wrote
			}
			if wrote {
				continue
			}
			ks.asleep.Store(true)
			if ks.moved() { // a write between the tick and falling asleep
				ks.asleep.Store(false)
				continue
			}
			select {
			case <-ctx.Done():
				return
			case <-ks.kick:
			}
			tick.Reset(keeperInterval)
		}
	})
	q.keepers = ks
}

// moved reports whether any stream was written since its keeper's last
// look.
func (ks *keepers) moved() bool {
	for _, k := range ks.byStream {
		if k.written.Load() != k.seen {
			return true
		}
	}
	return false
}

// stopKeepers stops the keeper loop; the keepers stored stay.
func (q *Queue) stopKeepers() {
	if q.keepers == nil {
		return
	}
	q.keepers.stop()
	q.keepers.done.Wait()
}

// wrote records that a message was published to stream, and wakes the
// keeper loop if it sleeps.
func (q *Queue) wrote(stream string) {
	ks := q.keepers
	if ks == nil {
		return
	}
	if k := ks.byStream[stream]; k != nil {
		k.written.Add(1)
	}
	if ks.asleep.Load() && ks.asleep.CompareAndSwap(true, false) {
		select {
		case ks.kick <- struct{}{}:
		default:
		}
	}
}

// keep stores a new keeper in k's stream and deletes the previous one, if
// the stream received messages since the last call, and reports whether it
// had. Failures only cost the optimisation, so they are logged at debug
// level and retried next tick.
func (q *Queue) keep(ctx context.Context, k *keeper) bool {
	written := k.written.Load()
	if written == k.seen {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, q.cfg.PublishTimeout)
	defer cancel()
	ack, err := q.js.Publish(ctx, k.subject, nil, jetstream.WithExpectStream(k.name))
	if err != nil {
		q.log.V(1).Info("Storing a keeper message failed", "subject", k.subject, "error", err.Error())
		return true
	}
	k.seen = written
	if k.last == 0 {
		// Leftovers of an earlier process, or of failed deletes.
		err = k.stream.Purge(ctx, jetstream.WithPurgeSubject(k.subject), jetstream.WithPurgeKeep(1))
	} else {
		err = k.stream.DeleteMsg(ctx, k.last)
	}
	if err != nil {
		q.log.V(1).Info("Deleting an earlier keeper message failed", "subject", k.subject, "error", err.Error())
		k.last = 0 // purge next time
		return true
	}
	k.last = ack.Sequence
	return true
}
