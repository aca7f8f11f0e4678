package queue

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// OwnersBucket is the JetStream KeyValue bucket of endpoint ownership:
// with several dispatcher replicas, exactly one of them delivers to an
// endpoint at a time, so that the endpoint's maxInFlight, rate limit,
// Retry-After pauses and circuit breaker are the receiver's limits and not
// a replica's. A key per endpoint holds the owning replica's id; its
// revision is the lease, renewed with compare-and-swap.
const OwnersBucket = "HERALD_ENDPOINT_OWNERS"

// DefaultOwnershipTTL is how long an endpoint's lease outlives the last
// renewal of a replica that died without releasing it: the longest an
// endpoint of a crashed replica waits for another replica to take it over.
const DefaultOwnershipTTL = 15 * time.Second

// ErrLeaseLost is returned by Renew when another replica holds the lease
// now: the caller must stop delivering to the endpoint.
var ErrLeaseLost = errors.New("endpoint lease lost")

// Owners hands out endpoint leases to one replica.
type Owners struct {
	kv  jetstream.KeyValue
	id  string
	ttl time.Duration
}

// Lease is one replica's ownership of one endpoint; Renew extends it. It
// is safe for concurrent use.
type Lease struct {
	Namespace, Endpoint string
	key                 string
	ttl                 time.Duration

	mu       sync.Mutex
	revision uint64
	renewed  time.Time
}

func newLease(namespace, endpoint, key string, revision uint64, renewed time.Time, ttl time.Duration) *Lease {
	return &Lease{Namespace: namespace, Endpoint: endpoint, key: key, ttl: ttl, revision: revision, renewed: renewed}
}

// ValidAt reports whether the lease may still be relied on at now: its
// last renewal is younger than two thirds of the TTL, so a replica whose
// renewals fail stops delivering before the bucket lets another take over.
func (l *Lease) ValidAt(now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return now.Sub(l.renewed) < 2*l.ttl/3
}

func (l *Lease) current() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.revision
}

// Owners opens (creating if needed) the ownership bucket for the replica
// id. Keys expire ttl after their last renewal; zero means
// DefaultOwnershipTTL. An existing bucket is used as it is.
func (q *Queue) Owners(ctx context.Context, id string, ttl time.Duration) (*Owners, error) {
	if id == "" {
		return nil, errors.New("endpoint owners: a replica id is required")
	}
	if ttl <= 0 {
		ttl = DefaultOwnershipTTL
	}
	var kv jetstream.KeyValue
	err := retryTransient(ctx, q.cfg.PublishTimeout, func(attemptCtx context.Context) error {
		var err error
		kv, err = q.js.KeyValue(attemptCtx, OwnersBucket)
		if !errors.Is(err, jetstream.ErrBucketNotFound) {
			return err
		}
		kv, err = q.js.CreateKeyValue(attemptCtx, jetstream.KeyValueConfig{
			Bucket:      OwnersBucket,
			Description: "Herald: the dispatcher replica delivering to each WebhookEndpoint",
			History:     1,
			TTL:         ttl,
			Storage:     jetstream.FileStorage,
			Replicas:    q.cfg.Replicas,
		})
		if errors.Is(err, jetstream.ErrBucketExists) {
			kv, err = q.js.KeyValue(attemptCtx, OwnersBucket)
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("open the endpoint owners bucket %s: %w", OwnersBucket, classify(err))
	}
	status, err := kv.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("read the endpoint owners bucket %s: %w", OwnersBucket, classify(err))
	}
	if bucketTTL := status.TTL(); bucketTTL > 0 {
		ttl = bucketTTL // the bucket's, whoever created it
	}
	return &Owners{kv: kv, id: id, ttl: ttl}, nil
}

// ID is this replica's id, the value of the keys it owns.
func (o *Owners) ID() string { return o.id }

// TTL is how long a lease lives without renewal.
func (o *Owners) TTL() time.Duration { return o.ttl }

func ownerKey(namespace, endpoint string) string {
	return SubjectToken(namespace) + "." + SubjectToken(endpoint)
}

// Acquire takes the lease of an endpoint. When another replica holds it,
// Acquire returns a nil Lease, that replica's id and no error.
func (o *Owners) Acquire(ctx context.Context, namespace, endpoint string) (*Lease, string, error) {
	if err := validateEndpoint(namespace, endpoint); err != nil {
		return nil, "", err
	}
	key := ownerKey(namespace, endpoint)
	now := time.Now()
	rev, err := o.kv.Create(ctx, key, []byte(o.id))
	if err == nil {
		return newLease(namespace, endpoint, key, rev, now, o.ttl), "", nil
	}
	if !errors.Is(err, jetstream.ErrKeyExists) {
		return nil, "", fmt.Errorf("acquire the lease of %s/%s: %w", namespace, endpoint, classify(err))
	}
	entry, err := o.kv.Get(ctx, key)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return nil, "", nil // released meanwhile: the caller tries again later
	case err != nil:
		return nil, "", fmt.Errorf("read the lease of %s/%s: %w", namespace, endpoint, classify(err))
	}
	holder := string(entry.Value())
	if holder != o.id {
		return nil, holder, nil
	}
	// Ours from before (a lease this replica lost track of): take it over.
	rev, err = o.kv.Update(ctx, key, []byte(o.id), entry.Revision())
	if err != nil {
		return nil, holder, nil
	}
	return newLease(namespace, endpoint, key, rev, now, o.ttl), "", nil
}

// Renew extends the lease. It returns ErrLeaseLost when the key changed
// since this replica last wrote it (another replica took it over after it
// expired); other errors leave the lease as it was, to be renewed again.
func (o *Owners) Renew(ctx context.Context, l *Lease) error {
	now := time.Now()
	rev, err := o.kv.Update(ctx, l.key, []byte(o.id), l.current())
	if err != nil {
		if wrongRevision(err) {
			return fmt.Errorf("renew the lease of %s/%s: %w", l.Namespace, l.Endpoint, ErrLeaseLost)
		}
		return fmt.Errorf("renew the lease of %s/%s: %w", l.Namespace, l.Endpoint, classify(err))
	}
	l.mu.Lock()
	l.revision, l.renewed = rev, now
	l.mu.Unlock()
	return nil
}

// Release gives the lease up, unless another replica holds it by now.
func (o *Owners) Release(ctx context.Context, l *Lease) error {
	err := o.kv.Delete(ctx, l.key, jetstream.LastRevision(l.current()))
	if err != nil && !wrongRevision(err) {
		return fmt.Errorf("release the lease of %s/%s: %w", l.Namespace, l.Endpoint, classify(err))
	}
	return nil
}

// wrongRevision reports whether a compare-and-swap failed because the key
// changed: 10071, or 10164 from replicated streams.
func wrongRevision(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		return apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant
	}
	return errors.Is(err, jetstream.ErrKeyExists)
}
