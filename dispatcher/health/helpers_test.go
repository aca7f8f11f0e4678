package health

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/herald-dev/herald/dispatcher/queue"
	"github.com/herald-dev/herald/dispatcher/router"
)

func discardLog() logr.Logger { return logr.Discard() }

func splitDots(s string) []string { return strings.Split(s, ".") }

// stubJetStream satisfies New for tests that never call Run.
type stubJetStream struct{ jetstream.JetStream }

const testTimeout = 30 * time.Second

func testContext(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// jetStreamServer is an embedded JetStream server without network
// listeners; clients connect in-process.
type jetStreamServer struct {
	t   testing.TB
	srv *server.Server
}

func startJetStream(t testing.TB) *jetStreamServer {
	t.Helper()
	srv, err := server.NewServer(&server.Options{
		ServerName: "health-test",
		DontListen: true,
		JetStream:  true,
		StoreDir:   t.TempDir(),
		NoSigs:     true,
	})
	if err != nil {
		t.Fatal(err)
	}
	srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("embedded NATS server not ready")
	}
	t.Cleanup(func() {
		srv.Shutdown()
		srv.WaitForShutdown()
	})
	return &jetStreamServer{t: t, srv: srv}
}

// connect opens a connection of its own, as a separate dispatcher replica
// would.
func (s *jetStreamServer) connect() jetstream.JetStream {
	s.t.Helper()
	nc, err := nats.Connect("", nats.InProcessServer(s.srv))
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		s.t.Fatal(err)
	}
	return js
}

// manualClock is a settable clock for lease tests.
type manualClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *manualClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *manualClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// openReporter returns a Reporter with its bucket open and watched, without
// starting Run, so a test drives flush and lease steps itself.
func openReporter(t testing.TB, js jetstream.JetStream, c StatusClient, opts Options) *Reporter {
	t.Helper()
	opts.Queue, opts.Client, opts.Log = &testQueue{js: js}, c, discardLog()
	r, err := NewReporter(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	kv, err := r.openBucket(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	r.kv = kv
	initial := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.watch(ctx, initial)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	select {
	case <-initial:
	case <-time.After(10 * time.Second):
		t.Fatal("watch delivered no initial values")
	}
	return r
}

func readEndpointTotals(t testing.TB, js jetstream.JetStream, k objectKey) endpointState {
	t.Helper()
	kv, err := js.KeyValue(testContext(t), DefaultBucket)
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(testContext(t), k.bucketKey())
	if err != nil {
		t.Fatalf("get %s: %v", k, err)
	}
	st, err := decodeEndpointState(e.Value())
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func eventually(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", within, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stubClient is a StatusClient for tests that write no status: every
// object is missing.
type stubClient struct{}

func (stubClient) Get(_ context.Context, key client.ObjectKey, obj client.Object, _ ...client.GetOption) error {
	return apierrors.NewNotFound(schema.GroupResource{Group: "herald.dev"}, key.Name)
}

func (stubClient) List(context.Context, client.ObjectList, ...client.ListOption) error {
	return errors.New("stubClient: List not supported")
}

func (stubClient) Status() client.SubResourceWriter { return nil }

// running is a Reporter whose Run goroutine the test controls.
type running struct {
	r    *Reporter
	stop func()
}

func newRunning(t testing.TB, opts Options) *running {
	t.Helper()
	if opts.Client == nil {
		opts.Client = stubClient{}
	}
	opts.Log = discardLog()
	r, err := NewReporter(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(testTimeout):
				t.Errorf("Run did not return within %s", testTimeout)
			}
		})
	}
	t.Cleanup(stop)
	return &running{r: r, stop: stop}
}

// testQueue is the Queue of a test: a JetStream connection and fixed
// queue counts for every endpoint. polls counts the Counts calls: the
// status writer reads the counts once per pass that polls them, so a test
// can wait for passes.
type testQueue struct {
	js            jetstream.JetStream
	pending, dead uint64
	oldest        time.Time
	polls         atomic.Int64
}

func (q *testQueue) JetStream() jetstream.JetStream { return q.js }
func (q *testQueue) Counts(_ context.Context, endpoints []queue.EndpointKey) (map[queue.EndpointKey]queue.EndpointCounts, error) {
	q.polls.Add(1)
	out := make(map[queue.EndpointKey]queue.EndpointCounts, len(endpoints))
	for _, k := range endpoints {
		out[k] = queue.EndpointCounts{Pending: q.pending, DeadLettered: q.dead}
	}
	return out, nil
}
func (q *testQueue) OldestPending(context.Context, string, string) (time.Time, bool, error) {
	return q.oldest, !q.oldest.IsZero(), nil
}

// The router reports matches straight to the Reporter.
var _ router.MatchReporter = (*Reporter)(nil)
