package delivery

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/dispatcher/catalog"
	"github.com/herald-dev/herald/dispatcher/delivery/ssrf"
	"github.com/herald-dev/herald/dispatcher/queue"
)

// testTimeout bounds every test's context and every wait in a test.
const testTimeout = 30 * time.Second

func testContext(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// Standard Webhooks secrets of the tests (the spec's example secret and
// two more).
const (
	testSecret  = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	otherSecret = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
	thirdSecret = "whsec_V09IZ2VuZXJhdGVkU2VjcmV0MTIzNDU2Nzg5MA=="
)

// loopbackAllowlist is the test configuration's operator allowlist: the test
// receivers listen on 127.0.0.1.
var loopbackAllowlist = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}

// errRefusedByTest is what refusingDialer answers for any destination
// outside loopback.
var errRefusedByTest = errors.New("test dialer refuses non-loopback destinations")

// refusingDialer is installed under the SSRF guard in every test: it records
// each address it is asked to connect to and connects only to 127.0.0.0/8
// and ::1, refusing everything else without touching the network — so even
// a broken guard cannot send test traffic anywhere but this machine.
type refusingDialer struct {
	mu     sync.Mutex
	dialed []netip.Addr
}

func (r *refusingDialer) Dial(ctx context.Context, network, address string) (net.Conn, error) {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return nil, fmt.Errorf("test dialer: %q is not an IP literal: %w", address, err)
	}
	r.mu.Lock()
	r.dialed = append(r.dialed, ap.Addr())
	r.mu.Unlock()
	if a := ap.Addr(); !(a.Is4() && a.IsLoopback()) && a != netip.IPv6Loopback() {
		return nil, errRefusedByTest
	}
	var d net.Dialer
	return d.DialContext(ctx, network, address)
}

func (r *refusingDialer) addresses() []netip.Addr {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.dialed)
}

// lookupTable resolves host names from a table; a host may answer
// differently on successive lookups (DNS rebinding).
type lookupTable struct {
	mu      sync.Mutex
	answers map[string][][]netip.Addr
	calls   map[string]int
}

func (l *lookupTable) Lookup(_ context.Context, host string) ([]netip.Addr, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	answers, ok := l.answers[host]
	if !ok {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	if l.calls == nil {
		l.calls = map[string]int{}
	}
	i := min(l.calls[host], len(answers)-1)
	l.calls[host]++
	return answers[i], nil
}

// testDialer returns an SSRF dialer over a refusingDialer.
func testDialer(allow []netip.Prefix, lookup ssrf.LookupFunc) (*ssrf.Dialer, *refusingDialer) {
	rec := &refusingDialer{}
	if lookup == nil {
		lookup = (&lookupTable{}).Lookup
	}
	return ssrf.NewDialer(ssrf.New(allow), ssrf.DialerOptions{Lookup: lookup, Dial: rec.Dial}), rec
}

// receivedRequest is what a test receiver saw.
type receivedRequest struct {
	Header http.Header
	Body   []byte
	At     time.Time
}

// receiver is an httptest server on 127.0.0.1 that records requests and
// answers them with respond (index counts from 0).
type receiver struct {
	*httptest.Server
	mu       sync.Mutex
	requests []receivedRequest
	arrived  chan struct{} // one value per request, never blocks the handler
	respond  func(i int, w http.ResponseWriter, r *http.Request)
}

func newReceiver(t testing.TB, respond func(i int, w http.ResponseWriter, r *http.Request)) *receiver {
	t.Helper()
	rc := &receiver{respond: respond, arrived: make(chan struct{}, 10000)}
	rc.Server = httptest.NewServer(http.HandlerFunc(rc.serve))
	t.Cleanup(rc.Close)
	return rc
}

func (rc *receiver) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	rc.mu.Lock()
	i := len(rc.requests)
	rc.requests = append(rc.requests, receivedRequest{Header: r.Header.Clone(), Body: body, At: time.Now()})
	rc.mu.Unlock()
	select {
	case rc.arrived <- struct{}{}:
	default:
	}
	if rc.respond == nil {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	rc.respond(i, w, r)
}

func (rc *receiver) received() []receivedRequest {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return slices.Clone(rc.requests)
}

func (rc *receiver) count() int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return len(rc.requests)
}

// respondStatus answers every request with code.
func respondStatus(code int) func(int, http.ResponseWriter, *http.Request) {
	return func(_ int, w http.ResponseWriter, _ *http.Request) { w.WriteHeader(code) }
}

// testEndpoint is a Ready endpoint with one signing key, delivering to url
// with short timeouts and backoffs.
func testEndpoint(namespace, name, url string) *catalog.Endpoint {
	maxAttempts := int32(5)
	return &catalog.Endpoint{
		Namespace:  namespace,
		Name:       name,
		Generation: 1,
		Spec: heraldv1.WebhookEndpointSpec{
			URL:               url,
			AllowInsecureHTTP: true,
			Timeout:           &metav1.Duration{Duration: 5 * time.Second},
			Retry: &heraldv1.RetrySpec{
				MaxAttempts:    &maxAttempts,
				InitialBackoff: &metav1.Duration{Duration: 100 * time.Millisecond},
				MaxBackoff:     &metav1.Duration{Duration: 200 * time.Millisecond},
			},
		},
		Keys: []heraldv1.SigningKey{{Secret: testSecret, Since: time.Now().Add(-time.Hour)}},
	}
}

// testEvent is a structured CloudEvent with the given id.
func testEvent(id string) []byte {
	return fmt.Appendf(nil, `{"specversion":"1.0","id":%q,"source":"/orders","type":"order.created","time":"2026-01-02T03:04:05.123Z","datacontenttype":"application/json","data":{"order":%q}}`, id, id)
}

// openQueue opens an embedded JetStream queue in a temporary directory.
func openQueue(t testing.TB) *queue.Queue {
	t.Helper()
	q, err := queue.Open(testContext(t), queue.Config{StoreDir: t.TempDir()}, logr.Discard())
	if err != nil {
		t.Fatalf("queue.Open: %v", err)
	}
	t.Cleanup(func() {
		if err := q.Close(); err != nil {
			t.Errorf("queue.Close: %v", err)
		}
	})
	return q
}

// publish queues a delivery of event id for an endpoint, as fan-out does.
func publish(t testing.TB, q *queue.Queue, namespace, endpoint, id string) {
	t.Helper()
	publishPayload(t, q, namespace, endpoint, id, testEvent(id))
}

func publishPayload(t testing.TB, q *queue.Queue, namespace, endpoint, id string, payload []byte) {
	t.Helper()
	header := queue.Header{}
	header.Set(queue.HeaderWebhookID, queue.WebhookID(namespace, "/orders", id))
	header.Set(queue.HeaderIngestedAt, time.Now().UTC().Format(time.RFC3339Nano))
	header.Set(queue.HeaderSubscriptions, "sub-a,sub-b")
	dedup := queue.DeliveryDedupID(queue.EventDedupID(namespace, "/orders", id), namespace, endpoint)
	if _, _, err := q.PublishDelivery(testContext(t), namespace, endpoint, dedup, payload, header); err != nil {
		t.Fatalf("PublishDelivery: %v", err)
	}
}

// outcomes collects reported outcomes per endpoint.
type outcomes struct {
	mu     sync.Mutex
	byKey  map[string][]Outcome
	notify chan struct{}
}

func newOutcomes() *outcomes {
	return &outcomes{byKey: map[string][]Outcome{}, notify: make(chan struct{}, 1)}
}

func (o *outcomes) Attempted(key string, out Outcome) {
	o.mu.Lock()
	o.byKey[key] = append(o.byKey[key], out)
	o.mu.Unlock()
	select {
	case o.notify <- struct{}{}:
	default:
	}
}

func (o *outcomes) of(key string) []Outcome {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.byKey[key])
}

// waitFor waits until cond holds on the endpoint's outcomes, failing the
// test after testTimeout.
func (o *outcomes) waitFor(t testing.TB, key string, what string, cond func([]Outcome) bool) []Outcome {
	t.Helper()
	return o.waitForWithin(t, key, what, testTimeout, cond)
}

// waitForWithin is waitFor with its own bound, for tests that make many
// attempts (a bound, not a timing assertion: a loaded machine is slow).
func (o *outcomes) waitForWithin(t testing.TB, key string, what string, within time.Duration, cond func([]Outcome) bool) []Outcome {
	t.Helper()
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	for {
		if got := o.of(key); cond(got) {
			return got
		}
		select {
		case <-o.notify:
		case <-time.After(50 * time.Millisecond):
		case <-deadline.C:
			t.Fatalf("%s: timed out waiting for %s; outcomes: %+v", key, what, o.of(key))
		}
	}
}

func countSuccess(os []Outcome) int {
	n := 0
	for _, o := range os {
		if o.Success {
			n++
		}
	}
	return n
}

// newTestManager starts a manager on q whose dialer only reaches loopback.
func newTestManager(t testing.TB, q *queue.Queue, mutate ...func(*Options)) (*Manager, *outcomes, *refusingDialer) {
	t.Helper()
	out := newOutcomes()
	rec := &refusingDialer{}
	opts := Options{
		Queue:        q,
		Reporter:     out,
		Logger:       logr.Discard(),
		Version:      "test",
		AllowedCIDRs: loopbackAllowlist,
		Dial:         rec.Dial,
		Lookup:       (&lookupTable{}).Lookup,
		FetchWait:    500 * time.Millisecond,
		Breaker:      BreakerConfig{MinRequests: 1000, ConnectionFailures: 1000},
		// Tests publish straight into the queue, without the fan-out
		// stage's Wake: the sweep finds those deliveries.
		SweepInterval: 100 * time.Millisecond,
	}
	for _, m := range mutate {
		m(&opts)
	}
	m, err := NewManager(opts)
	if err != nil {
		t.Fatalf("NewManager: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := m.Stop(ctx); err != nil {
			t.Errorf("Stop: %v", err)
		}
	})
	return m, out, rec
}

// newPeakReceiver is a receiver that answers 200 after a short pause and
// records the most requests it had in flight at once.
func newPeakReceiver(t testing.TB) (*receiver, *atomic.Int32) {
	t.Helper()
	var inFlight, peak atomic.Int32
	rc := newReceiver(t, func(_ int, w http.ResponseWriter, _ *http.Request) {
		n := inFlight.Add(1)
		defer inFlight.Add(-1)
		for {
			m := peak.Load()
			if n <= m || peak.CompareAndSwap(m, n) {
				break
			}
		}
		time.Sleep(20 * time.Millisecond) // long enough for the others to arrive
		w.WriteHeader(http.StatusOK)
	})
	return rc, &peak
}

// expectEachOnce checks that deliveries d-0 … d-(n-1) each arrived once.
func expectEachOnce(t testing.TB, rc *receiver, n int) {
	t.Helper()
	seen := map[string]int{}
	for _, r := range rc.received() {
		seen[orderOf(t, r.Body)]++
	}
	for i := range n {
		if id := "d-" + strconv.Itoa(i); seen[id] != 1 {
			t.Errorf("delivery %s arrived %d times", id, seen[id])
		}
	}
}

// deliveryStacks is the stacks of the goroutines in this package's code
// and the queue's, for a test that timed out to say where it waited.
func deliveryStacks() string {
	var buf bytes.Buffer
	_ = pprof.Lookup("goroutine").WriteTo(&buf, 2)
	var keep []string
	for _, g := range strings.Split(buf.String(), "\n\n") {
		if strings.Contains(g, "herald/dispatcher/delivery.") || strings.Contains(g, "herald/dispatcher/queue.") {
			keep = append(keep, g)
		}
	}
	return strings.Join(keep, "\n\n")
}
