package queue

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestOwnersLeaseIsExclusiveAndExpires: one replica at a time holds an
// endpoint's lease; the other learns who holds it, takes it once it is
// released or has expired, and the first replica's renewal then reports
// the loss instead of silently taking it back.
func TestOwnersLeaseIsExclusiveAndExpires(t *testing.T) {
	testOwnersLease(t, openEmbedded(t, t.TempDir()))
}

// TestClusterOwnersLease is the same on a three-node cluster, where the
// bucket is R3 and a failed compare-and-swap has another error code.
func TestClusterOwnersLease(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a three-node JetStream cluster")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	testOwnersLease(t, openCluster(t, ctx, startCluster(t, 3)))
}

func testOwnersLease(t *testing.T, q *Queue) {
	ctx := testContext(t)
	const ttl = 2 * time.Second
	a, err := q.Owners(ctx, "replica-a", ttl)
	if err != nil {
		t.Fatalf("Owners(a): %v", err)
	}
	b, err := q.Owners(ctx, "replica-b", time.Hour)
	if err != nil {
		t.Fatalf("Owners(b): %v", err)
	}
	if b.TTL() != ttl {
		t.Errorf("second replica's TTL = %s, want the bucket's %s", b.TTL(), ttl)
	}

	la, _, err := a.Acquire(ctx, "shop", "orders")
	if err != nil || la == nil {
		t.Fatalf("a.Acquire = %v, %v; want the lease", la, err)
	}
	lb, holder, err := b.Acquire(ctx, "shop", "orders")
	if err != nil || lb != nil || holder != "replica-a" {
		t.Fatalf("b.Acquire while a holds it = %v, %q, %v; want no lease, holder replica-a", lb, holder, err)
	}
	if err := a.Renew(ctx, la); err != nil {
		t.Fatalf("a.Renew: %v", err)
	}
	// Another endpoint is independent.
	if other, _, err := b.Acquire(ctx, "shop", "billing"); err != nil || other == nil {
		t.Fatalf("b.Acquire(billing) = %v, %v; want the lease", other, err)
	}

	// Released: b takes it at once.
	if err := a.Release(ctx, la); err != nil {
		t.Fatalf("a.Release: %v", err)
	}
	lb, _, err = b.Acquire(ctx, "shop", "orders")
	if err != nil || lb == nil {
		t.Fatalf("b.Acquire after release = %v, %v; want the lease", lb, err)
	}
	// a's old lease is gone: releasing it does not take b's away.
	if err := a.Release(ctx, la); err != nil {
		t.Fatalf("a.Release of a lease b holds now: %v", err)
	}
	if l, holder, _ := a.Acquire(ctx, "shop", "orders"); l != nil || holder != "replica-b" {
		t.Fatalf("a.Acquire after releasing a stale lease = %v, %q; want b to hold it still", l, holder)
	}

	// b stops renewing (a crashed replica): the lease expires and a takes
	// it; b's renewal then reports the loss.
	deadline := time.Now().Add(10 * ttl)
	for {
		la, _, err = a.Acquire(ctx, "shop", "orders")
		if err != nil {
			t.Fatalf("a.Acquire: %v", err)
		}
		if la != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the lease of a replica that stopped renewing did not expire within %s", 10*ttl)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := b.Renew(ctx, lb); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("b.Renew after a took over = %v, want ErrLeaseLost", err)
	}
	if lb.ValidAt(time.Now().Add(ttl)) {
		t.Errorf("a lease is valid a whole TTL after its last renewal")
	}
}
