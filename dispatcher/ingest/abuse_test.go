package ingest

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/herald-dev/herald/dispatcher/queue"
)

// Abuse limits. The deadlines of the HTTP server run on the wall clock, so
// those tests set them short and let the client stall for ever: only the
// server can end the exchange, and the test waits for it to do so (bounded
// by testTimeout, far above the deadlines, never measured). Rate limits run
// on a fake clock.

// connLog records, in order, what the server does with its connections:
// "accept A" and "close A" from beneath the connection limit, and the
// http.ConnState changes ("active A", "idle A", "closed A"), where A is the
// client's address.
type connLog struct {
	mu     sync.Mutex
	events []string
	notify chan string
}

func (l *connLog) add(event string) {
	l.mu.Lock()
	l.events = append(l.events, event)
	l.mu.Unlock()
	l.notify <- event
}

func (l *connLog) snapshot() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.events)
}

func (l *connLog) index(event string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Index(l.events, event)
}

// waitFor waits until event was recorded.
func (l *connLog) waitFor(t *testing.T, event string) {
	t.Helper()
	if l.index(event) >= 0 {
		return
	}
	timeout := time.After(testTimeout)
	for {
		select {
		case e := <-l.notify:
			if e == event {
				return
			}
		case <-timeout:
			t.Fatalf("server did not %q within %s; it did %q", event, testTimeout, l.snapshot())
		}
	}
}

type loggingListener struct {
	net.Listener
	log *connLog
}

func (l loggingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.log.add("accept " + c.RemoteAddr().String())
	return &loggingConn{Conn: c, log: l.log}, nil
}

type loggingConn struct {
	net.Conn
	log  *connLog
	once sync.Once
}

func (c *loggingConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.log.add("close " + c.RemoteAddr().String()) })
	return err
}

// startServer serves h on loopback as the dispatcher does: NewServer behind
// LimitConnections.
func startServer(t *testing.T, h http.Handler, opts ServerOptions) (string, *connLog) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	log := &connLog{notify: make(chan string, 1024)}
	opts.ConnState = func(c net.Conn, state http.ConnState) { log.add(state.String() + " " + c.RemoteAddr().String()) }
	srv := NewServer(h, opts)
	go func() { _ = srv.Serve(LimitConnections(loggingListener{Listener: l, log: log}, opts)) }()
	t.Cleanup(func() { _ = srv.Close() })
	return l.Addr().String(), log
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	// Shorter than the server's readTimeoutBackstop, so no test passes by
	// waiting for that instead of the deadline it tests.
	_ = conn.SetDeadline(time.Now().Add(testTimeout))
	return conn
}

// trickle writes one byte every 10ms until the connection fails or the
// test ends.
func trickle(t *testing.T, conn net.Conn, b byte) {
	done := make(chan struct{})
	t.Cleanup(func() { close(done) })
	go func() {
		ticker := time.NewTicker(10 * time.Millisecond)
		defer ticker.Stop()
		for {
			select {
			case <-done:
				return
			case <-ticker.C:
				if _, err := conn.Write([]byte{b}); err != nil {
					return
				}
			}
		}
	}()
}

func write(t *testing.T, conn net.Conn, s string) {
	t.Helper()
	if _, err := io.WriteString(conn, s); err != nil {
		t.Fatal(err)
	}
}

func readResponse(t *testing.T, br *bufio.Reader) (*http.Response, []byte) {
	t.Helper()
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

// expectClosedByServer reads from a connection the server has closed.
func expectClosedByServer(t *testing.T, br *bufio.Reader) {
	t.Helper()
	if _, err := br.ReadByte(); err == nil {
		t.Fatal("connection still delivers data after the server closed it")
	}
}

// routesOnly is a Handler for tests that never get past routing.
func routesOnly(t *testing.T) *Handler {
	t.Helper()
	h, err := NewHandler(Options{Queue: &blockingQueue{}, Namespaces: staticNamespaces(), Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

const getNothing = "GET /nothing HTTP/1.1\r\nHost: ingest\r\n\r\n"

// TestSlowHeadersAreCutOff: a client sending its headers byte by byte
// (slowloris) is disconnected once ReadHeaderTimeout passes, without its
// request reaching the handler.
func TestSlowHeadersAreCutOff(t *testing.T) {
	var requests atomic.Int64
	addr, log := startServer(t, http.HandlerFunc(func(http.ResponseWriter, *http.Request) { requests.Add(1) }),
		ServerOptions{ReadHeaderTimeout: 100 * time.Millisecond})
	conn := dial(t, addr)
	write(t, conn, "POST /v1/namespaces/team-a/events HTTP/1.1\r\nHost: ingest\r\nX-Slow: ")
	trickle(t, conn, 'a') // the header never ends

	log.waitFor(t, "closed "+conn.LocalAddr().String())
	expectClosedByServer(t, bufio.NewReader(conn))
	if n := requests.Load(); n != 0 {
		t.Errorf("handler ran %d times for a request whose headers never ended", n)
	}
}

// TestSlowBodyIsCutOff: a client that stalls sending its body is answered
// 408 after BodyReadTimeout and disconnected, and its request slot (the
// only one) serves the next request.
func TestSlowBodyIsCutOff(t *testing.T) {
	bq := &blockingQueue{entered: make(chan struct{}, 8), release: make(chan struct{})}
	close(bq.release)
	h, err := NewHandler(Options{Queue: bq, Namespaces: staticNamespaces("team-a"), Insecure: true,
		MaxConcurrentRequests: 1, BodyReadTimeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	addr, log := startServer(t, h, ServerOptions{})
	conn := dial(t, addr)
	write(t, conn, "POST /v1/namespaces/team-a/events HTTP/1.1\r\nHost: ingest\r\n"+
		"Content-Type: application/cloudevents+json\r\nContent-Length: 100000\r\n\r\n{")
	trickle(t, conn, ' ')

	br := bufio.NewReader(conn)
	resp, body := readResponse(t, br)
	if resp.StatusCode != http.StatusRequestTimeout || !resp.Close {
		t.Fatalf("status %d (close %v), want 408 closing the connection; body %s", resp.StatusCode, resp.Close, body)
	}
	if !strings.Contains(string(body), "did not arrive within 100ms") {
		t.Errorf("body %s does not say why", body)
	}
	log.waitFor(t, "closed "+conn.LocalAddr().String())
	expectClosedByServer(t, br)

	post(t, "http://"+addr+"/v1/namespaces/team-a/events", structuredHeader(), eventJSON(t, nil)).accepted(t)
}

// TestIdleConnectionIsClosed: a keep-alive connection that sends no next
// request is closed after IdleTimeout.
func TestIdleConnectionIsClosed(t *testing.T) {
	addr, log := startServer(t, routesOnly(t), ServerOptions{IdleTimeout: 100 * time.Millisecond})
	conn := dial(t, addr)
	write(t, conn, getNothing)
	br := bufio.NewReader(conn)
	if resp, body := readResponse(t, br); resp.StatusCode != http.StatusNotFound || resp.Close {
		t.Fatalf("status %d (close %v), want 404 keeping the connection; body %s", resp.StatusCode, resp.Close, body)
	}
	client := conn.LocalAddr().String()
	log.waitFor(t, "idle "+client)
	log.waitFor(t, "closed "+client)
	expectClosedByServer(t, br)
}

// TestConnectionLimit: with MaxConnections 2 held open, a third connection
// is not accepted, let alone served, until one of them closes.
func TestConnectionLimit(t *testing.T) {
	const maxConnections = 2
	addr, log := startServer(t, routesOnly(t), ServerOptions{MaxConnections: maxConnections})
	held := make([]net.Conn, maxConnections)
	for i := range held {
		held[i] = dial(t, addr)
		log.waitFor(t, "accept "+held[i].LocalAddr().String())
	}
	extra := dial(t, addr) // the kernel completes the handshake; the server has not accepted it
	write(t, extra, getNothing)

	// The server is serving meanwhile: a held connection is answered.
	write(t, held[1], getNothing)
	if resp, _ := readResponse(t, bufio.NewReader(held[1])); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("held connection: status %d, want 404", resp.StatusCode)
	}
	extraAccepted := "accept " + extra.LocalAddr().String()
	if log.index(extraAccepted) >= 0 {
		t.Fatalf("connection %d accepted while %d were held", maxConnections+1, maxConnections)
	}

	if err := held[0].Close(); err != nil {
		t.Fatal(err)
	}
	if resp, _ := readResponse(t, bufio.NewReader(extra)); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("third connection: status %d, want 404", resp.StatusCode)
	}
	firstClosed := log.index("close " + held[0].LocalAddr().String())
	if accepted := log.index(extraAccepted); firstClosed < 0 || accepted < firstClosed {
		t.Fatalf("third connection accepted at event %d, before the server closed a held one (event %d): %q", accepted, firstClosed, log.snapshot())
	}
}

// TestNamespaceRateLimit: at 0.5 requests/s with a burst of 2, a
// namespace's third request at once is answered 429 with Retry-After 2,
// while another namespace is accepted; 2s later the first may publish
// again.
func TestNamespaceRateLimit(t *testing.T) {
	clock := clocktesting.NewFakeClock(time.Now())
	f := newFixture(t, func(o *Options) {
		o.NamespaceRate, o.NamespaceBurst, o.clock = 0.5, 2, clock
	})
	for i := range 2 {
		post(t, f.url("team-a"), structuredHeader(), eventJSON(t, map[string]any{"id": fmt.Sprint("a", i)})).accepted(t)
	}
	r := post(t, f.url("team-a"), structuredHeader(), eventJSON(t, map[string]any{"id": "a2"}))
	if r.status != http.StatusTooManyRequests || r.header.Get("Retry-After") != "2" {
		t.Fatalf("third request: status %d Retry-After %q, want 429 with Retry-After 2; body %s", r.status, r.header.Get("Retry-After"), r.body)
	}
	if e := r.errorBody(t); !strings.Contains(e.Error, `namespace "team-a"`) {
		t.Errorf("429 error %q does not name the namespace", e.Error)
	}
	for i := range 2 {
		post(t, f.url("team-b"), structuredHeader(), eventJSON(t, map[string]any{"id": fmt.Sprint("b", i)})).accepted(t)
	}
	clock.Step(2 * time.Second)
	post(t, f.url("team-a"), structuredHeader(), eventJSON(t, map[string]any{"id": "a2"})).accepted(t)

	expectThrottled(t, f.registry, map[string]float64{`{namespace="team-a",reason="namespace_rate"}`: 1})
	if n := storedCount(t, f.q); n != 5 {
		t.Errorf("%d events stored, want the 5 accepted", n)
	}
}

func expectThrottled(t *testing.T, registry *prometheus.Registry, want map[string]float64) {
	t.Helper()
	got := map[string]float64{}
	for series, v := range gatherCounters(t, registry) {
		if labels, ok := strings.CutPrefix(series, "herald_ingest_throttled_total"); ok {
			got[labels] = v
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("herald_ingest_throttled_total: got %v, want %v", got, want)
	}
}

// namespaceBlockingQueue blocks the publishes of one namespace until
// released and stores the others at once.
type namespaceBlockingQueue struct {
	blockingQueue
	namespace string
}

func (q *namespaceBlockingQueue) PublishEvents(ctx context.Context, namespace string, batch []queue.EventPublish) []queue.PublishResult {
	if namespace == q.namespace {
		return q.blockingQueue.PublishEvents(ctx, namespace, batch)
	}
	return make([]queue.PublishResult, len(batch))
}

// TestNamespaceConcurrencyLimit: with NamespaceMaxConcurrentRequests 1, a
// namespace's second request in flight is answered 429 with Retry-After 1
// while another namespace is still accepted.
func TestNamespaceConcurrencyLimit(t *testing.T) {
	nq := &namespaceBlockingQueue{
		blockingQueue: blockingQueue{entered: make(chan struct{}, 1), release: make(chan struct{})},
		namespace:     "team-a",
	}
	registry := prometheus.NewRegistry()
	h, err := NewHandler(Options{Queue: nq, Namespaces: staticNamespaces("team-a", "team-b"), Insecure: true,
		MaxConcurrentRequests: 4, NamespaceMaxConcurrentRequests: 1, Registerer: registry})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	url := func(namespace string) string { return srv.URL + "/v1/namespaces/" + namespace + "/events" }

	var wg sync.WaitGroup
	var first response
	wg.Go(func() { first = post(t, url("team-a"), structuredHeader(), eventJSON(t, nil)) })
	select {
	case <-nq.entered:
	case <-time.After(testTimeout):
		t.Fatal("first request did not reach the queue")
	}
	r := post(t, url("team-a"), structuredHeader(), eventJSON(t, map[string]any{"id": "second"}))
	if r.status != http.StatusTooManyRequests || r.header.Get("Retry-After") != "1" {
		t.Errorf("second request of team-a: status %d Retry-After %q, want 429 with Retry-After 1; body %s", r.status, r.header.Get("Retry-After"), r.body)
	}
	post(t, url("team-b"), structuredHeader(), eventJSON(t, nil)).accepted(t)
	close(nq.release)
	wg.Wait()
	first.accepted(t)
	expectThrottled(t, registry, map[string]float64{`{namespace="team-a",reason="namespace_in_flight"}`: 1})
}

func TestNamespaceLimitDefaults(t *testing.T) {
	h := routesOnly(t)
	if h.limits.rate != DefaultNamespaceRate || h.limits.maxInFlight != 32 {
		t.Errorf("default namespace limits: rate %v, %d in flight; want none and 32", h.limits.rate, h.limits.maxInFlight)
	}
}

// fakeTokenReviewAPI is an API server on loopback that rejects every token
// and counts the TokenReviews.
func fakeTokenReviewAPI(t *testing.T) (kubernetes.Interface, *atomic.Int64) {
	t.Helper()
	var reviews atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/apis/authentication.k8s.io/v1/tokenreviews" {
			http.Error(w, "unexpected request", http.StatusNotFound)
			return
		}
		reviews.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(authenticationv1.TokenReview{
			TypeMeta: metav1.TypeMeta{APIVersion: "authentication.k8s.io/v1", Kind: "TokenReview"},
			Status:   authenticationv1.TokenReviewStatus{Error: "invalid bearer token"},
		})
	}))
	t.Cleanup(srv.Close)
	client, err := kubernetes.NewForConfig(&rest.Config{Host: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	return client, &reviews
}

func secureFixture(t *testing.T, api kubernetes.Interface, authn *TokenReviewAuthenticator) *fixture {
	return newFixture(t, func(o *Options) {
		o.Insecure = false
		o.Authenticator = authn
		o.Authorizer = NewSubjectAccessReviewAuthorizer(api, CacheOptions{})
		o.MaxConcurrentRequests = 128
	})
}

// TestBadTokenFloodMakesOneTokenReview: 100 concurrent requests with one
// bad token make exactly one TokenReview; the rejection is remembered for
// DefaultTokenDenyTTL (10s), under a hash of the token.
func TestBadTokenFloodMakesOneTokenReview(t *testing.T) {
	api, reviews := fakeTokenReviewAPI(t)
	clock := clocktesting.NewFakeClock(time.Now())
	authn := newTokenReviewAuthenticator(api, "", CacheOptions{}, ReviewLimit{}, clock)
	f := secureFixture(t, api, authn)
	const badToken = "made-up-token"

	statuses := make([]int, 100)
	var wg sync.WaitGroup
	for i := range statuses {
		wg.Go(func() { statuses[i] = post(t, f.url("team-a"), bearer(badToken), eventJSON(t, nil)).status })
	}
	wg.Wait()
	for i, status := range statuses {
		if status != http.StatusUnauthorized {
			t.Fatalf("request %d: status %d, want 401", i, status)
		}
	}
	if n := reviews.Load(); n != 1 {
		t.Fatalf("100 requests with one bad token made %d TokenReviews, want 1", n)
	}
	for _, key := range authn.cache.lru.Keys() {
		if strings.Contains(fmt.Sprint(key), badToken) {
			t.Errorf("cache key %v holds the token", key)
		}
	}

	clock.Step(DefaultTokenDenyTTL - time.Second)
	post(t, f.url("team-a"), bearer(badToken), eventJSON(t, nil))
	if n := reviews.Load(); n != 1 {
		t.Fatalf("9s later: %d TokenReviews, want still 1", n)
	}
	clock.Step(2 * time.Second)
	post(t, f.url("team-a"), bearer(badToken), eventJSON(t, nil))
	if n := reviews.Load(); n != 2 {
		t.Fatalf("11s later: %d TokenReviews, want 2", n)
	}
}

// TestTokenReviewRateIsBounded: at 1 TokenReview/s with a burst of 3, ten
// different made-up tokens make 3 TokenReviews (401) and 7 answers of 429
// with Retry-After 1 that never reach the API server; tokens already
// reviewed are still answered from the cache, and a second later one more
// review is possible.
func TestTokenReviewRateIsBounded(t *testing.T) {
	api, reviews := fakeTokenReviewAPI(t)
	clock := clocktesting.NewFakeClock(time.Now())
	f := secureFixture(t, api, newTokenReviewAuthenticator(api, "", CacheOptions{}, ReviewLimit{Rate: 1, Burst: 3}, clock))
	token := func(i int) string { return fmt.Sprintf("made-up-token-%d", i) }
	expect := func(i, status int) {
		t.Helper()
		r := post(t, f.url("team-a"), bearer(token(i)), eventJSON(t, nil))
		if r.status != status {
			t.Fatalf("token %d: status %d, want %d; body %s", i, r.status, status, r.body)
		}
		if status == http.StatusTooManyRequests && r.header.Get("Retry-After") != "1" {
			t.Fatalf("token %d: Retry-After %q, want 1", i, r.header.Get("Retry-After"))
		}
	}
	for i := range 10 {
		if i < 3 {
			expect(i, http.StatusUnauthorized)
		} else {
			expect(i, http.StatusTooManyRequests)
		}
	}
	if n := reviews.Load(); n != 3 {
		t.Fatalf("%d TokenReviews, want 3", n)
	}
	expect(0, http.StatusUnauthorized) // cached
	clock.Step(time.Second)
	expect(10, http.StatusUnauthorized)
	expect(11, http.StatusTooManyRequests)
	if n := reviews.Load(); n != 4 {
		t.Fatalf("%d TokenReviews, want 4", n)
	}
	expectThrottled(t, f.registry, map[string]float64{`{namespace="",reason="token_review_rate"}`: 8})
}
