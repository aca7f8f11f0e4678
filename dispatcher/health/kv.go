package health

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/herald-dev/herald/dispatcher/queue"
)

// Kinds of objects with an entry in the bucket; the kind is the first token
// of the entry's key.
const (
	kindEndpoint     = "ep"
	kindSubscription = "sub"
)

// casAttempts bounds the compare-and-swap retries of one merge. Conflicts
// happen only when replicas flush the same object at the same moment.
const casAttempts = 8

// objectKey names a WebhookEndpoint or Subscription.
type objectKey struct {
	kind      string
	namespace string
	name      string
}

func endpointKey(namespace, name string) objectKey {
	return objectKey{kind: kindEndpoint, namespace: namespace, name: name}
}

func subscriptionKey(namespace, name string) objectKey {
	return objectKey{kind: kindSubscription, namespace: namespace, name: name}
}

// bucketKey is the object's key in the bucket: "ep.<namespace>.<name>" with
// both names escaped as subject tokens (valid KV key characters, no dots).
func (k objectKey) bucketKey() string {
	return k.kind + "." + queue.SubjectToken(k.namespace) + "." + queue.SubjectToken(k.name)
}

func (k objectKey) String() string { return k.kind + ":" + k.namespace + "/" + k.name }

func parseBucketKey(key string) (objectKey, bool) {
	parts := strings.Split(key, ".")
	if len(parts) != 3 || (parts[0] != kindEndpoint && parts[0] != kindSubscription) {
		return objectKey{}, false
	}
	ns, err := queue.ParseSubjectToken(parts[1])
	if err != nil || ns == "" {
		return objectKey{}, false
	}
	name, err := queue.ParseSubjectToken(parts[2])
	if err != nil || name == "" {
		return objectKey{}, false
	}
	return objectKey{kind: parts[0], namespace: ns, name: name}, true
}

// cacheEntry is the latest revision of a key this replica has seen.
type cacheEntry struct {
	revision uint64
	value    []byte
	deleted  bool
}

// openBucket binds to the bucket, creating it if it does not exist. An
// existing bucket is used as it is, so replicas started with different
// settings do not fight over its configuration. It retries until ctx ends
// (JetStream may still be electing leaders at start-up).
func (r *Reporter) openBucket(ctx context.Context) (jetstream.KeyValue, error) {
	backoff := 100 * time.Millisecond
	for {
		kv, err := r.bindOrCreateBucket(ctx)
		if err == nil {
			return kv, nil
		}
		r.log.Info("Health bucket not ready yet", "bucket", r.opts.Bucket, "error", err.Error(), "retryIn", backoff)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("open health bucket %s: %w", r.opts.Bucket, errors.Join(ctx.Err(), err))
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func (r *Reporter) bindOrCreateBucket(ctx context.Context) (jetstream.KeyValue, error) {
	opCtx, cancel := r.opContext(ctx)
	defer cancel()
	kv, err := r.js.KeyValue(opCtx, r.opts.Bucket)
	if err == nil || !errors.Is(err, jetstream.ErrBucketNotFound) {
		return kv, err
	}
	kv, err = r.js.CreateKeyValue(opCtx, jetstream.KeyValueConfig{
		Bucket:      r.opts.Bucket,
		Description: "Herald: delivery health totals shared by dispatcher replicas",
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    r.opts.BucketReplicas,
	})
	if errors.Is(err, jetstream.ErrBucketExists) {
		// Another replica created it meanwhile.
		return r.js.KeyValue(opCtx, r.opts.Bucket)
	}
	return kv, err
}

// watch keeps the cache in step with the bucket and marks the objects whose
// totals changed. It closes initial once the bucket's current content has
// been delivered, and restarts the watch if it ends before ctx does.
func (r *Reporter) watch(ctx context.Context, initial chan struct{}) {
	initialClosed := false
	for ctx.Err() == nil {
		w, err := r.kv.WatchAll(ctx)
		if err != nil {
			r.log.Error(err, "Watching the health bucket failed; retrying")
		} else {
			for e := range w.Updates() {
				if e == nil {
					if !initialClosed {
						close(initial)
						initialClosed = true
					}
					continue
				}
				r.observe(e)
			}
			_ = w.Stop()
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// observe records a bucket entry seen on the watch.
func (r *Reporter) observe(e jetstream.KeyValueEntry) {
	if e.Key() == leaseKey {
		return
	}
	key, ok := parseBucketKey(e.Key())
	if !ok {
		return
	}
	r.storeCache(e.Key(), cacheEntry{revision: e.Revision(), value: e.Value(), deleted: e.Operation() != jetstream.KeyValuePut})
	r.markDirty(key)
}

// storeCache keeps the entry unless a newer revision is known already (the
// watch can deliver a revision after this replica wrote a later one).
func (r *Reporter) storeCache(key string, e cacheEntry) {
	r.cacheMu.Lock()
	defer r.cacheMu.Unlock()
	if cur, ok := r.cache[key]; ok && cur.revision > e.revision {
		return
	}
	r.cache[key] = e
}

func (r *Reporter) cached(key string) (cacheEntry, bool) {
	r.cacheMu.Lock()
	defer r.cacheMu.Unlock()
	e, ok := r.cache[key]
	return e, ok
}

func (r *Reporter) markDirty(keys ...objectKey) {
	r.cacheMu.Lock()
	defer r.cacheMu.Unlock()
	for _, k := range keys {
		r.dirty[k] = struct{}{}
	}
}

// takeDirty returns and clears the set of changed objects.
func (r *Reporter) takeDirty() []objectKey {
	r.cacheMu.Lock()
	defer r.cacheMu.Unlock()
	out := make([]objectKey, 0, len(r.dirty))
	for k := range r.dirty {
		out = append(out, k)
	}
	clear(r.dirty)
	return out
}

// cachedObjects lists the objects with an entry in the cache.
func (r *Reporter) cachedObjects() []objectKey {
	r.cacheMu.Lock()
	defer r.cacheMu.Unlock()
	out := make([]objectKey, 0, len(r.cache))
	for bk, e := range r.cache {
		if k, ok := parseBucketKey(bk); ok && !e.deleted {
			out = append(out, k)
		}
	}
	return out
}

// mergeInto replaces an object's entry by update(current value) with
// compare-and-swap, retrying on conflicts with other replicas. current is
// nil when the entry does not exist. It starts from the cached revision, so
// the usual case is one round trip.
func (r *Reporter) mergeInto(ctx context.Context, key objectKey, update func(current []byte) ([]byte, error)) error {
	bk := key.bucketKey()
	entry, known := r.cached(bk)
	var lastErr error
	for range casAttempts {
		var current []byte
		exists := known && !entry.deleted
		if exists {
			current = entry.value
		}
		next, err := update(current)
		if err != nil {
			return fmt.Errorf("merge %s: %w", key, err)
		}
		if next == nil {
			return nil // nothing to change
		}
		opCtx, cancel := r.opContext(ctx)
		var revision uint64
		if exists {
			revision, err = r.kv.Update(opCtx, bk, next, entry.revision)
		} else {
			// Create also succeeds over a delete marker.
			revision, err = r.kv.Create(opCtx, bk, next)
		}
		cancel()
		if err == nil {
			r.storeCache(bk, cacheEntry{revision: revision, value: next})
			return nil
		}
		lastErr = err
		if ctx.Err() != nil {
			break
		}
		r.metrics.casConflicts.Inc()
		// Someone else wrote (or the cache was stale): read the latest.
		opCtx, cancel = r.opContext(ctx)
		latest, err := r.kv.Get(opCtx, bk)
		cancel()
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted):
			known = false
		case err != nil:
			return fmt.Errorf("merge %s: %w", key, errors.Join(lastErr, err))
		default:
			entry = cacheEntry{revision: latest.Revision(), value: latest.Value(), deleted: latest.Operation() != jetstream.KeyValuePut}
			known = true
			r.storeCache(bk, entry)
		}
	}
	return fmt.Errorf("merge %s: %w", key, lastErr)
}

// deleteEntry removes an object's entry unless it changed since revision.
func (r *Reporter) deleteEntry(ctx context.Context, key objectKey) error {
	bk := key.bucketKey()
	entry, ok := r.cached(bk)
	if !ok || entry.deleted {
		return nil
	}
	opCtx, cancel := r.opContext(ctx)
	defer cancel()
	err := r.kv.Delete(opCtx, bk, jetstream.LastRevision(entry.revision))
	if err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("delete %s: %w", key, err)
	}
	return nil
}

func decodeEndpointState(b []byte) (endpointState, error) {
	var st endpointState
	if len(b) == 0 {
		return st, nil
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("decode endpoint totals: %w", err)
	}
	return st, nil
}

func decodeSubscriptionState(b []byte) (subscriptionState, error) {
	var st subscriptionState
	if len(b) == 0 {
		return st, nil
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("decode subscription totals: %w", err)
	}
	return st, nil
}

func encode(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encode totals: %w", err)
	}
	return b, nil
}
