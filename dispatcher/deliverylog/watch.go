package deliverylog

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
	"k8s.io/apimachinery/pkg/types"

	deliveryv1 "github.com/herald-dev/herald/api/delivery/v1alpha1"
)

// Change is a delivery that changed: a new record arrived for it.
type Change struct {
	Delivery *deliveryv1.Delivery
	// Added is true when the record was the delivery's first.
	Added bool
}

// Watch sends a Change for every record q selects written after sequence
// after (0: from now), until ctx ends or the log fails; then the channel
// is closed. Each Change carries the whole delivery as of that record.
func (l *Log) Watch(ctx context.Context, q Query, after uint64) (<-chan Change, error) {
	filter, err := q.filter()
	if err != nil {
		return nil, err
	}
	cfg := jetstream.OrderedConsumerConfig{FilterSubjects: []string{filter}, DeliverPolicy: jetstream.DeliverNewPolicy}
	if after > 0 {
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, after+1
	}
	cons, err := l.stream.OrderedConsumer(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("watch the delivery log: %w", err)
	}
	it, err := cons.Messages()
	if err != nil {
		return nil, fmt.Errorf("watch the delivery log: %w", err)
	}
	out := make(chan Change)
	go func() {
		<-ctx.Done()
		it.Stop()
	}()
	go func() {
		defer close(out)
		for {
			msg, err := it.Next()
			if err != nil {
				if ctx.Err() == nil {
					l.log.V(1).Info("Delivery log watch ended", "error", err.Error())
				}
				return
			}
			md, err := msg.Metadata()
			if err != nil {
				continue
			}
			// The delivery as of this record: each change is one state.
			_, folds, err := l.collect(ctx, msg.Subject(), md.Sequence.Stream)
			f := folds[msg.Subject()]
			if err != nil || f == nil {
				continue
			}
			d, err := f.delivery(msg.Subject())
			if err != nil {
				continue
			}
			// The first record of a delivery adds it (or the first one
			// left after older ones expired).
			c := Change{Delivery: d, Added: f.records == 1}
			select {
			case out <- c:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out, nil
}

// uidOf is a stable UID for a delivery, derived from its subject.
func uidOf(subject string) types.UID {
	sum := sha256.Sum256([]byte(subject))
	h := hex.EncodeToString(sum[:16])
	return types.UID(h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32])
}
