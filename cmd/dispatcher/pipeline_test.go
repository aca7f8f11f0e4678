package main

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
)

// journal records what the stages did, in order.
type journal struct {
	mu      sync.Mutex
	entries []string
	started chan string
}

func (j *journal) add(e string) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.entries = append(j.entries, e)
}

func (j *journal) get() []string {
	j.mu.Lock()
	defer j.mu.Unlock()
	return slices.Clone(j.entries)
}

// stage runs until asked to stop, journaling both.
func (j *journal) stage(name string) func(context.Context) error {
	return func(ctx context.Context) error {
		j.add("start " + name)
		j.started <- name
		<-ctx.Done()
		j.add("stop " + name)
		return nil
	}
}

type syncedCatalog struct {
	j      *journal
	synced chan struct{}
}

func (c syncedCatalog) WaitForSync(ctx context.Context) error {
	select {
	case <-c.synced:
		c.j.add("catalog synced")
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func newTestPipeline(j *journal, synced chan struct{}) *pipeline {
	return &pipeline{
		log:          logr.Discard(),
		drainTimeout: time.Minute,
		catalog:      syncedCatalog{j: j, synced: synced},
		ingest:       j.stage("ingest"),
		removeOrphans: func(context.Context) error {
			j.add("remove orphans")
			return nil
		},
		startDelivery: func() { j.add("start delivery"); j.started <- "delivery" },
		stopDelivery: func(context.Context) error {
			j.add("stop delivery")
			return nil
		},
		router:   j.stage("router"),
		reporter: j.stage("health reporter"),
	}
}

// TestPipelineStartsAndStopsInDataFlowOrder: ingest accepts before the
// catalog has synced; nothing behind it starts before; fan-out starts
// last; on shutdown ingest stops first, then fan-out, then delivery drains,
// and health reporting is flushed last.
func TestPipelineStartsAndStopsInDataFlowOrder(t *testing.T) {
	j := &journal{started: make(chan string, 8)}
	synced := make(chan struct{})
	p := newTestPipeline(j, synced)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Start(ctx) }()

	if got := <-j.started; got != "ingest" {
		t.Fatalf("first stage started: %s, want ingest", got)
	}
	// Ingest runs and waits for nothing; the rest waits for the catalog.
	if got := j.get(); !slices.Equal(got, []string{"start ingest"}) {
		t.Fatalf("before the catalog synced: %v", got)
	}
	close(synced)
	for range 3 {
		<-j.started
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Start: %v", err)
	}
	got := j.get()
	if len(got) != 10 {
		t.Fatalf("journal: %v", got)
	}
	// Start: ingest, the catalog, orphans, then the other stages, fan-out
	// after delivery (the reporter runs on its own and may come later).
	if want := []string{"start ingest", "catalog synced", "remove orphans"}; !slices.Equal(got[:3], want) {
		t.Errorf("start: %v, want %v first", got[:6], want)
	}
	if d, r := slices.Index(got, "start delivery"), slices.Index(got, "start router"); d < 3 || r < d {
		t.Errorf("start: %v, want delivery before fan-out", got[3:6])
	}
	// Stop: exactly in data-flow order.
	if want := []string{"stop ingest", "stop router", "stop delivery", "stop health reporter"}; !slices.Equal(got[6:], want) {
		t.Errorf("stop: %v, want %v", got[6:], want)
	}
}

// TestPipelineStopsWhenAStageFails: a stage that ends on its own stops the
// dispatcher (in order), and its error is returned.
func TestPipelineStopsWhenAStageFails(t *testing.T) {
	j := &journal{started: make(chan string, 8)}
	synced := make(chan struct{})
	close(synced)
	p := newTestPipeline(j, synced)
	failure := errors.New("listen: address in use")
	p.ingest = func(context.Context) error { j.add("ingest failed"); return failure }
	err := p.Start(context.Background())
	if !errors.Is(err, failure) {
		t.Fatalf("Start = %v, want the ingest failure", err)
	}
	got := j.get()
	if i, k := slices.Index(got, "stop router"), slices.Index(got, "stop health reporter"); i < 0 || k < i {
		t.Errorf("stages not stopped in order after the failure: %v", got)
	}
}
