package redelivery

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"k8s.io/apimachinery/pkg/types"

	"github.com/herald-dev/herald/dispatcher/queue"
)

// Bucket is the JetStream KeyValue bucket holding the progress of
// Redeliveries.
const Bucket = "HERALD_REDELIVERIES"

// ProgressTTL is how long progress is kept. A Redelivery completes within
// minutes and its status then says so for good; the records only need to
// outlive a run interrupted by a crash.
const ProgressTTL = 7 * 24 * time.Hour

// run is the record of one Redelivery's execution, keyed by its UID.
type run struct {
	// Started is when the run began.
	Started time.Time `json:"started"`
	// DeadLetterCutoff and LogCutoff bound what the run considers: what
	// the dead-letter stream and the delivery log held when it started,
	// so a resumed run selects from the same deliveries.
	DeadLetterCutoff uint64 `json:"deadLetterCutoff"`
	LogCutoff        uint64 `json:"logCutoff"`
	// Matched is the number of deliveries selected; -1 until counted.
	Matched int64 `json:"matched"`
	// Completed is set once every selected delivery was requeued.
	Completed *time.Time `json:"completed,omitempty"`

	revision uint64
}

// progress keeps runs and the deliveries each has requeued, so that a run
// interrupted by a crash resumes without requeueing anything twice, and a
// completed one never runs again.
type progress struct {
	kv jetstream.KeyValue
}

func openProgress(ctx context.Context, js jetstream.JetStream, replicas int) (*progress, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      Bucket,
		Description: "Herald: progress of Redeliveries",
		History:     1,
		TTL:         ProgressTTL,
		Storage:     jetstream.FileStorage,
		Replicas:    max(replicas, 1),
	})
	if err != nil {
		return nil, fmt.Errorf("open the Redelivery progress bucket %s: %w", Bucket, err)
	}
	return &progress{kv: kv}, nil
}

func runKey(uid types.UID) string { return "run." + queue.SubjectToken(string(uid)) }

func doneKey(uid types.UID, webhookID string) string {
	return "done." + queue.SubjectToken(string(uid)) + "." + queue.SubjectToken(webhookID)
}

// start returns the run of uid, creating it with fresh when there is none.
func (p *progress) start(ctx context.Context, uid types.UID, fresh run) (*run, error) {
	key := runKey(uid)
	for {
		entry, err := p.kv.Get(ctx, key)
		if err == nil {
			r := &run{}
			if err := json.Unmarshal(entry.Value(), r); err != nil {
				return nil, fmt.Errorf("read Redelivery progress %s: %w", key, err)
			}
			r.revision = entry.Revision()
			return r, nil
		}
		if !errors.Is(err, jetstream.ErrKeyNotFound) {
			return nil, fmt.Errorf("read Redelivery progress %s: %w", key, err)
		}
		data, _ := json.Marshal(&fresh)
		rev, err := p.kv.Create(ctx, key, data)
		if errors.Is(err, jetstream.ErrKeyExists) {
			continue // another replica started it just now: use theirs
		}
		if err != nil {
			return nil, fmt.Errorf("record Redelivery progress %s: %w", key, err)
		}
		fresh.revision = rev
		return &fresh, nil
	}
}

// save writes r back, failing if someone else changed it meanwhile.
func (p *progress) save(ctx context.Context, uid types.UID, r *run) error {
	data, _ := json.Marshal(r)
	rev, err := p.kv.Update(ctx, runKey(uid), data, r.revision)
	if err != nil {
		return fmt.Errorf("record Redelivery progress %s: %w", runKey(uid), err)
	}
	r.revision = rev
	return nil
}

// requeued returns the webhook-ids uid has requeued.
func (p *progress) requeued(ctx context.Context, uid types.UID) (map[string]bool, error) {
	prefix := "done." + queue.SubjectToken(string(uid)) + "."
	lister, err := p.kv.ListKeysFiltered(ctx, prefix+">")
	if err != nil {
		return nil, fmt.Errorf("read Redelivery progress: %w", err)
	}
	done := map[string]bool{}
	for key := range lister.Keys() {
		id, err := queue.ParseSubjectToken(key[len(prefix):])
		if err == nil {
			done[id] = true
		}
	}
	return done, nil
}

// markRequeued records that uid requeued webhookID.
func (p *progress) markRequeued(ctx context.Context, uid types.UID, webhookID string) error {
	if _, err := p.kv.Put(ctx, doneKey(uid, webhookID), []byte("1")); err != nil {
		return fmt.Errorf("record Redelivery progress: %w", err)
	}
	return nil
}
