package ingest

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/testr"
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/herald-dev/herald/dispatcher/queue"
)

// The package's tests share one real kube-apiserver (envtest) for the
// authentication, authorization and namespace tests; the handler tests use a
// real embedded JetStream per test.
var (
	testEnv  *envtest.Environment
	testREST *rest.Config
	testKube kubernetes.Interface
)

func TestMain(m *testing.M) {
	os.Exit(runSuite(m))
}

func runSuite(m *testing.M) int {
	flag.Parse()
	// A fuzzing worker process runs only the fuzz target it is handed, never
	// a test that needs the API server; starting one per worker would only
	// slow fuzzing down.
	if f := flag.Lookup("test.fuzzworker"); f != nil && f.Value.String() == "true" {
		return m.Run()
	}
	// No test is skipped for want of binaries: without them the package
	// fails and says how to get them.
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		fmt.Fprintln(os.Stderr, "KUBEBUILDER_ASSETS is not set: run `make test`, which builds etcd and kube-apiserver into bin/k8s and points envtest at them (or set KUBEBUILDER_ASSETS=bin/k8s after `make envtest`)")
		return 1
	}
	testEnv = &envtest.Environment{}
	var err error
	testREST, err = testEnv.Start()
	if err != nil {
		fmt.Fprintf(os.Stderr, "start envtest: %v\n", err)
		return 1
	}
	defer func() {
		if err := testEnv.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "stop envtest: %v\n", err)
		}
	}()
	testKube, err = kubernetes.NewForConfig(testREST)
	if err != nil {
		fmt.Fprintf(os.Stderr, "clientset: %v\n", err)
		return 1
	}
	return m.Run()
}

// testTimeout bounds every test's context.
const testTimeout = 30 * time.Second

func testContext(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// openQueue opens a real embedded JetStream queue in a temporary directory.
func openQueue(t testing.TB, mutate ...func(*queue.Config)) *queue.Queue {
	t.Helper()
	cfg := queue.Config{StoreDir: t.TempDir()}
	for _, m := range mutate {
		m(&cfg)
	}
	q, err := queue.Open(testContext(t), cfg, logr.Discard())
	if err != nil {
		t.Fatalf("queue.Open: %v", err)
	}
	t.Cleanup(func() { _ = q.Close() })
	return q
}

// staticNamespaces is a NamespaceChecker for handler tests that do not need
// the API server.
func staticNamespaces(names ...string) NamespaceChecker {
	return NamespaceCheckerFunc(func(_ context.Context, name string) (bool, error) {
		return slices.Contains(names, name), nil
	})
}

// fixture is a Handler behind a loopback httptest server.
type fixture struct {
	q        *queue.Queue
	handler  *Handler
	server   *httptest.Server
	registry *prometheus.Registry
}

// newFixture serves a Handler over a real embedded queue. Without mutations
// it is insecure and knows the namespaces team-a and team-b.
func newFixture(t testing.TB, mutate ...func(*Options)) *fixture {
	t.Helper()
	f := &fixture{q: openQueue(t), registry: prometheus.NewRegistry()}
	opts := Options{
		Queue:      f.q,
		Namespaces: staticNamespaces("team-a", "team-b"),
		Insecure:   true,
		Registerer: f.registry,
		Log:        testr.NewWithInterface(t, testr.Options{}),
	}
	for _, m := range mutate {
		m(&opts)
	}
	h, err := NewHandler(opts)
	if err != nil {
		t.Fatalf("NewHandler: %v", err)
	}
	f.handler = h
	f.server = httptest.NewServer(h)
	t.Cleanup(f.server.Close)
	return f
}

func (f *fixture) url(namespace string) string {
	return f.server.URL + "/v1/namespaces/" + namespace + "/events"
}

// response is an answer of the handler.
type response struct {
	status int
	header http.Header
	body   []byte
}

func (r response) accepted(t testing.TB) AcceptedResponse {
	t.Helper()
	if r.status != http.StatusAccepted {
		t.Fatalf("status %d, want 202; body %s", r.status, r.body)
	}
	var out AcceptedResponse
	if err := json.Unmarshal(r.body, &out); err != nil {
		t.Fatalf("decode 202 body %q: %v", r.body, err)
	}
	return out
}

func (r response) errorBody(t testing.TB) ErrorResponse {
	t.Helper()
	var out ErrorResponse
	if err := json.Unmarshal(r.body, &out); err != nil {
		t.Fatalf("status %d: error body %q is not JSON: %v", r.status, r.body, err)
	}
	if out.Error == "" {
		t.Fatalf("status %d: error body %q has no error message", r.status, r.body)
	}
	return out
}

func do(t testing.TB, method, url string, header http.Header, body []byte) response {
	t.Helper()
	req, err := http.NewRequestWithContext(testContext(t), method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatalf("new request: %v", err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer func() { _ = resp.Body.Close() }()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: data}
}

func post(t testing.TB, url string, header http.Header, body []byte) response {
	t.Helper()
	return do(t, http.MethodPost, url, header, body)
}

func structuredHeader() http.Header {
	return http.Header{"Content-Type": {"application/cloudevents+json"}}
}

func batchHeader() http.Header {
	return http.Header{"Content-Type": {"application/cloudevents-batch+json"}}
}

func binaryHeader(id, source, typ string) http.Header {
	return http.Header{
		"Ce-Specversion": {"1.0"},
		"Ce-Id":          {id},
		"Ce-Source":      {source},
		"Ce-Type":        {typ},
		"Content-Type":   {"application/json"},
	}
}

// eventJSON renders a structured event; attrs override or (with nil
// values) remove the defaults.
func eventJSON(t testing.TB, attrs map[string]any) []byte {
	t.Helper()
	ev := map[string]any{
		"specversion": "1.0",
		"id":          "evt-1",
		"source":      "/orders",
		"type":        "order.created",
		"data":        map[string]any{"order": 42},
	}
	for k, v := range attrs {
		if v == nil {
			delete(ev, k)
			continue
		}
		ev[k] = v
	}
	data, err := json.Marshal(ev)
	if err != nil {
		t.Fatalf("marshal event: %v", err)
	}
	return data
}

func batchJSON(t testing.TB, events ...[]byte) []byte {
	t.Helper()
	raws := make([]json.RawMessage, len(events))
	for i, e := range events {
		raws[i] = e
	}
	data, err := json.Marshal(raws)
	if err != nil {
		t.Fatalf("marshal batch: %v", err)
	}
	return data
}

// eventConsumer is the fan-out consumer tests read stored events through.
func eventConsumer(t testing.TB, q *queue.Queue) *queue.Consumer {
	t.Helper()
	c, err := q.EventConsumer(testContext(t), "ingest-test", queue.ConsumerOptions{FetchWait: 200 * time.Millisecond})
	if err != nil {
		t.Fatalf("EventConsumer: %v", err)
	}
	return c
}

// storedCount is how many events are stored and not yet consumed.
func storedCount(t testing.TB, q *queue.Queue) int {
	t.Helper()
	n, err := eventConsumer(t, q).Pending(testContext(t))
	if err != nil {
		t.Fatalf("Pending: %v", err)
	}
	return int(n)
}

// fetchStored reads exactly n stored events (acknowledging them) and fails
// if they do not arrive within 10s.
func fetchStored(t testing.TB, q *queue.Queue, n int) []*queue.Message {
	t.Helper()
	ctx := testContext(t)
	c := eventConsumer(t, q)
	deadline := time.Now().Add(10 * time.Second)
	var got []*queue.Message
	for len(got) < n {
		if time.Now().After(deadline) {
			t.Fatalf("got %d of %d stored events within 10s", len(got), n)
		}
		msgs, err := c.Fetch(ctx, n-len(got))
		if err != nil {
			t.Fatalf("Fetch: %v", err)
		}
		got = append(got, msgs...)
	}
	for _, m := range got {
		if err := m.Ack(ctx); err != nil {
			t.Fatalf("Ack: %v", err)
		}
	}
	return got
}
