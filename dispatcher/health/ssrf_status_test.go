package health

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/dispatcher/catalog"
	"github.com/herald-dev/herald/dispatcher/delivery"
	"github.com/herald-dev/herald/dispatcher/queue"
)

// This file runs the SSRF table through the real delivery path: a queued
// delivery is fetched by delivery.Manager, signed, sent by its client
// through the SSRF-guarded dialer, and the outcome goes to this package's
// Reporter, which writes WebhookEndpoint status to a real API server. Only
// the resolver and the socket dialer under the guard are the test's own:
// the resolver answers from a table, and the dialer records every address
// the guard lets through and connects only to 127.0.0.0/8 and ::1, refusing
// anything else without touching the network — so even a broken guard
// cannot send a packet off this machine.

// errOffMachine is the test dialer's refusal of a non-loopback address.
var errOffMachine = errors.New("test dialer: destination is not loopback; refused without connecting")

type loopbackOnlyDialer struct {
	mu     sync.Mutex
	dialed []string
}

func (d *loopbackOnlyDialer) Dial(ctx context.Context, network, address string) (net.Conn, error) {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return nil, fmt.Errorf("test dialer: %q is not an IP literal: %w", address, err)
	}
	d.mu.Lock()
	d.dialed = append(d.dialed, ap.Addr().String())
	d.mu.Unlock()
	if a := ap.Addr(); !(a.Is4() && a.IsLoopback()) && a != netip.IPv6Loopback() {
		return nil, errOffMachine
	}
	var nd net.Dialer
	return nd.DialContext(ctx, network, address)
}

// addresses returns the distinct addresses dialled, in the order of their
// first dial (every attempt of a delivery dials anew).
func (d *loopbackOnlyDialer) addresses() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []string
	for _, a := range d.dialed {
		if !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}

// sequenceResolver answers each host from a list of answers, the next one on
// every lookup (the last one repeats): a DNS server the test controls.
type sequenceResolver struct {
	mu      sync.Mutex
	answers map[string][][]netip.Addr
	calls   map[string]int
}

func (r *sequenceResolver) Lookup(_ context.Context, host string) ([]netip.Addr, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	answers, ok := r.answers[host]
	if !ok {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	i := min(r.calls[host], len(answers)-1)
	r.calls[host]++
	return answers[i], nil
}

// pathReceiver counts requests per path on one loopback listener.
type pathReceiver struct {
	*httptest.Server
	mu    sync.Mutex
	paths map[string]int
}

func newPathReceiver(t *testing.T, network, address string, handler func(w http.ResponseWriter, r *http.Request) bool) *pathReceiver {
	t.Helper()
	l, err := net.Listen(network, address)
	if err != nil {
		t.Fatalf("listen on %s: %v", address, err)
	}
	pr := &pathReceiver{paths: map[string]int{}}
	pr.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		pr.mu.Lock()
		pr.paths[r.URL.Path]++
		pr.mu.Unlock()
		if handler != nil && handler(w, r) {
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	pr.Listener = l
	pr.Start()
	t.Cleanup(pr.Close)
	return pr
}

func (pr *pathReceiver) count(path string) int {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	return pr.paths[path]
}

func (pr *pathReceiver) port() string {
	return strconv.Itoa(pr.Listener.Addr().(*net.TCPAddr).Port)
}

// Expected results of one pass.
const (
	wantBlocked   = "blocked"   // DeliveryHealthy False, BlockedAddress; nothing dialled
	wantDelivered = "delivered" // the loopback receiver answered 204
	wantDialled   = "dialled"   // the guard let exactly the named addresses through
	wantRedirect  = "redirect"  // the 307 is the answer; its Location is never dialled
)

type ssrfCase struct {
	name string
	url  string
	// allow is the operator allowlist naming this destination.
	allow []netip.Prefix
	// baseAllow is in the allowlist of both passes (the redirecting
	// receiver itself).
	baseAllow []netip.Prefix
	// byDefault and allowed are the expected results without and with
	// allow; the dials list what the guard lets through to the test dialer.
	byDefault, allowed             string
	defaultDials, allowedDials     []string
	defaultReason                  string // lastFailureReason when byDefault is wantDialled
	resolver                       map[string][][]netip.Addr
	path                           string
	receiver                       *pathReceiver
	defaultDialer, allowedDialer   *loopbackOnlyDialer
	defaultEndpoint, allowEndpoint *catalog.Endpoint
}

func prefixes(s ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(s))
	for i, p := range s {
		out[i] = netip.MustParsePrefix(p)
	}
	return out
}

func ips(s ...string) []netip.Addr {
	out := make([]netip.Addr, len(s))
	for i, a := range s {
		out[i] = netip.MustParseAddr(a)
	}
	return out
}

// TestSSRFTableThroughDeliveryAndStatus: every internal destination of the
// table is refused with BlockedAddress in the endpoint's status by default,
// and reached only when the operator allowlist names it.
func TestSSRFTableThroughDeliveryAndStatus(t *testing.T) {
	c := startEnv(t)
	nsDefault, nsAllowed := newNamespace(t, c), newNamespace(t, c)

	q, err := queue.Open(testContext(t), queue.Config{StoreDir: t.TempDir()}, logr.Discard())
	if err != nil {
		t.Fatalf("queue.Open: %v", err)
	}
	t.Cleanup(func() { _ = q.Close() })

	const metadataRedirect = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"
	v4 := newPathReceiver(t, "tcp4", "127.0.0.1:0", func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path == "/redirect" {
			http.Redirect(w, r, metadataRedirect, http.StatusTemporaryRedirect)
			return true
		}
		return false
	})
	v6 := newPathReceiver(t, "tcp6", "[::1]:0", nil)
	const public = "93.184.216.34" // the test dialer refuses it; nothing leaves the machine

	cases := []*ssrfCase{
		{name: "ipv4-loopback", url: "http://127.0.0.1:" + v4.port(), allow: prefixes("127.0.0.1/32"), byDefault: wantBlocked, allowed: wantDelivered, receiver: v4},
		{name: "unspecified", url: "http://0.0.0.0/", allow: prefixes("0.0.0.0/32"), byDefault: wantBlocked, allowed: wantDialled, allowedDials: []string{"0.0.0.0"}},
		{name: "rfc1918-10", url: "http://10.0.0.1/", allow: prefixes("10.0.0.1/32"), byDefault: wantBlocked, allowed: wantDialled, allowedDials: []string{"10.0.0.1"}},
		{name: "rfc1918-172", url: "http://172.16.0.1/", allow: prefixes("172.16.0.1/32"), byDefault: wantBlocked, allowed: wantDialled, allowedDials: []string{"172.16.0.1"}},
		{name: "rfc1918-192", url: "http://192.168.1.1/", allow: prefixes("192.168.1.1/32"), byDefault: wantBlocked, allowed: wantDialled, allowedDials: []string{"192.168.1.1"}},
		{name: "cgnat", url: "http://100.64.0.1/", allow: prefixes("100.64.0.1/32"), byDefault: wantBlocked, allowed: wantDialled, allowedDials: []string{"100.64.0.1"}},
		{name: "cloud-metadata", url: "http://169.254.169.254/latest/meta-data/", allow: prefixes("169.254.169.254/32"), byDefault: wantBlocked, allowed: wantDialled, allowedDials: []string{"169.254.169.254"}},
		{name: "benchmarking", url: "http://198.18.0.1/", allow: prefixes("198.18.0.1/32"), byDefault: wantBlocked, allowed: wantDialled, allowedDials: []string{"198.18.0.1"}},
		{name: "multicast", url: "http://224.0.0.1/", allow: prefixes("224.0.0.1/32"), byDefault: wantBlocked, allowed: wantDialled, allowedDials: []string{"224.0.0.1"}},
		{name: "ipv6-loopback", url: "http://[::1]:" + v6.port(), allow: prefixes("::1/128"), byDefault: wantBlocked, allowed: wantDelivered, receiver: v6},
		{name: "ipv6-link-local", url: "http://[fe80::1]/", allow: prefixes("fe80::1/128"), byDefault: wantBlocked, allowed: wantDialled, allowedDials: []string{"fe80::1"}},
		{name: "unique-local", url: "http://[fc00::1]/", allow: prefixes("fc00::1/128"), byDefault: wantBlocked, allowed: wantDialled, allowedDials: []string{"fc00::1"}},
		{name: "aws-ipv6-metadata", url: "http://[fd00:ec2::254]/latest/meta-data/", allow: prefixes("fd00:ec2::254/128"), byDefault: wantBlocked, allowed: wantDialled, allowedDials: []string{"fd00:ec2::254"}},
		{name: "mapped-loopback", url: "http://[::ffff:127.0.0.1]:" + v4.port(), allow: prefixes("::ffff:127.0.0.1/128"), byDefault: wantBlocked, allowed: wantDialled, allowedDials: []string{"::ffff:127.0.0.1"}},
		{name: "mapped-metadata", url: "http://[::ffff:169.254.169.254]/", allow: prefixes("::ffff:169.254.169.254/128"), byDefault: wantBlocked, allowed: wantDialled, allowedDials: []string{"::ffff:169.254.169.254"}},
		{name: "nat64", url: "http://[64:ff9b::a00:1]/", allow: prefixes("64:ff9b::a00:1/128"), byDefault: wantBlocked, allowed: wantDialled, allowedDials: []string{"64:ff9b::a00:1"}},
		{name: "sixtofour", url: "http://[2002:a00:1::1]/", allow: prefixes("2002:a00:1::1/128"), byDefault: wantBlocked, allowed: wantDialled, allowedDials: []string{"2002:a00:1::1"}},
		// Numeric IPv4 forms are the loopback address they denote.
		{name: "decimal-ipv4", url: "http://2130706433:" + v4.port(), allow: prefixes("127.0.0.1/32"), byDefault: wantBlocked, allowed: wantDelivered, receiver: v4},
		{name: "hex-ipv4", url: "http://0x7f000001:" + v4.port(), allow: prefixes("127.0.0.1/32"), byDefault: wantBlocked, allowed: wantDelivered, receiver: v4},
		{name: "octal-ipv4", url: "http://0177.0.0.1:" + v4.port(), allow: prefixes("127.0.0.1/32"), byDefault: wantBlocked, allowed: wantDelivered, receiver: v4},
		{name: "private-name", url: "http://orders.internal.test/", allow: prefixes("10.20.30.40/32"), byDefault: wantBlocked, allowed: wantDialled, allowedDials: []string{"10.20.30.40"},
			resolver: map[string][][]netip.Addr{"orders.internal.test": {ips("10.20.30.40")}}},
		// Mixed records: a name with any private record is refused as a
		// whole and nothing is dialled; allowlisting the private record
		// lets both be tried (the test dialer refuses them).
		{name: "mixed-name", url: "http://mixed.example.test/", allow: prefixes("10.0.0.2/32"), byDefault: wantBlocked,
			allowed: wantDialled, allowedDials: []string{public, "10.0.0.2"},
			resolver: map[string][][]netip.Addr{"mixed.example.test": {ips(public, "10.0.0.2")}}},
		// DNS rebinding: public on the first lookup, private on the next;
		// the second attempt's address is checked again.
		{name: "dns-rebinding", url: "http://rebind.example.test/", allow: prefixes("10.0.0.3/32"), byDefault: wantBlocked, defaultDials: []string{public},
			allowed: wantDialled, allowedDials: []string{public, "10.0.0.3"},
			resolver: map[string][][]netip.Addr{"rebind.example.test": {ips(public), ips("10.0.0.3")}}},
		// A receiver the operator allows redirects to the metadata address:
		// redirects are never followed, not even to an allowed address.
		{name: "redirect", url: "http://127.0.0.1:" + v4.port(), baseAllow: prefixes("127.0.0.1/32"), allow: prefixes("169.254.169.254/32"),
			byDefault: wantRedirect, allowed: wantRedirect, path: "/redirect", receiver: v4},
	}

	var all []*catalog.Endpoint
	for _, tc := range cases {
		if tc.path == "" {
			tc.path = "/" + tc.name
		}
		tc.url = strings.TrimSuffix(tc.url, "/") + tc.path
		tc.defaultEndpoint = createSSRFEndpoint(t, c, nsDefault, tc.name, tc.url)
		tc.allowEndpoint = createSSRFEndpoint(t, c, nsAllowed, tc.name, tc.url)
		all = append(all, tc.defaultEndpoint, tc.allowEndpoint)
	}

	cat := &fakeEndpoints{}
	cat.set(all...)
	opts := fastOptions()
	opts.Client, opts.Catalog, opts.Queue = c, cat, q
	opts.Log = discardLog()
	rep, err := NewReporter(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- rep.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Reporter.Run: %v", err)
		}
	})

	// One delivery manager per case and pass, so the operator allowlist
	// names exactly one destination and every dial is attributed. They stop
	// together: each Stop waits for its fetch to end.
	var managers []*delivery.Manager
	t.Cleanup(func() {
		var wg sync.WaitGroup
		for _, m := range managers {
			wg.Go(func() {
				stopCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				if err := m.Stop(stopCtx); err != nil {
					t.Errorf("Stop: %v", err)
				}
			})
		}
		wg.Wait()
	})
	startManager := func(tc *ssrfCase, ep *catalog.Endpoint, allow []netip.Prefix) *loopbackOnlyDialer {
		dialer := &loopbackOnlyDialer{}
		resolver := &sequenceResolver{answers: tc.resolver, calls: map[string]int{}}
		m, err := delivery.NewManager(delivery.Options{
			Queue:        q,
			Reporter:     rep,
			Logger:       logr.Discard(),
			Version:      "test",
			AllowedCIDRs: append(slices.Clone(tc.baseAllow), allow...),
			Lookup:       resolver.Lookup,
			Dial:         dialer.Dial,
			FetchWait:    500 * time.Millisecond,
			Breaker:      delivery.BreakerConfig{MinRequests: 1000, ConnectionFailures: 1000},
		})
		if err != nil {
			t.Fatal(err)
		}
		managers = append(managers, m)
		m.Sync([]*catalog.Endpoint{ep})
		publishSSRFDelivery(t, q, ep)
		return dialer
	}
	for _, tc := range cases {
		tc.defaultDialer = startManager(tc, tc.defaultEndpoint, nil)
		tc.allowedDialer = startManager(tc, tc.allowEndpoint, tc.allow)
	}

	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Run("refused by default", func(t *testing.T) {
				checkSSRFPass(t, c, tc, nsDefault, tc.byDefault, tc.defaultDialer, tc.defaultDials, tc.defaultReason)
			})
			t.Run("allowed only when the allowlist names it", func(t *testing.T) {
				checkSSRFPass(t, c, tc, nsAllowed, tc.allowed, tc.allowedDialer, tc.allowedDials, delivery.ReasonOther)
			})
		})
	}
}

func checkSSRFPass(t *testing.T, c client.Client, tc *ssrfCase, ns, want string, dialer *loopbackOnlyDialer, wantDials []string, dialledReason string) {
	t.Helper()
	var got *heraldv1.WebhookEndpoint
	var last string
	deadline := time.Now().Add(20 * time.Second)
	for {
		got = getEndpoint(t, c, ns, tc.name)
		ok, why := ssrfStatusMatches(got, tc, want, dialer, wantDials, dialledReason)
		if ok {
			break
		}
		last = why
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s\nstatus: %+v\nconditions: %+v\ndialled: %v", tc.url, last, got.Status.Delivery, got.Status.Conditions, dialer.addresses())
		}
		time.Sleep(100 * time.Millisecond)
	}
	healthy := condition(got, heraldv1.DeliveryHealthyCondition)
	if strings.Contains(healthy.Message, tc.url) || strings.Contains(got.Status.Delivery.LastFailureReason, tc.path) {
		t.Errorf("status names the URL: %+v / %q", healthy, got.Status.Delivery.LastFailureReason)
	}
}

func ssrfStatusMatches(ep *heraldv1.WebhookEndpoint, tc *ssrfCase, want string, dialer *loopbackOnlyDialer, wantDials []string, dialledReason string) (bool, string) {
	d := ep.Status.Delivery
	healthy := condition(ep, heraldv1.DeliveryHealthyCondition)
	if d == nil || healthy == nil || d.LastAttemptTime == nil {
		return false, "no delivery status yet"
	}
	dialled := dialer.addresses()
	switch want {
	case wantBlocked:
		if healthy.Status != metav1.ConditionFalse || healthy.Reason != heraldv1.BlockedAddressReason || d.LastFailureReason != delivery.ReasonBlockedAddress {
			return false, fmt.Sprintf("want DeliveryHealthy=False/BlockedAddress, got %s/%s (last failure %q)", healthy.Status, healthy.Reason, d.LastFailureReason)
		}
		if !slices.Equal(dialled, wantDials) {
			return false, fmt.Sprintf("the guard let %v through, want %v", dialled, wantDials)
		}
	case wantDelivered:
		if healthy.Status != metav1.ConditionTrue || healthy.Reason != heraldv1.DeliveringReason || d.Delivered != 1 {
			return false, fmt.Sprintf("want delivered, got %s/%s delivered=%d (last failure %q)", healthy.Status, healthy.Reason, d.Delivered, d.LastFailureReason)
		}
		if tc.receiver.count(tc.path) < 1 {
			return false, "the receiver saw no request"
		}
	case wantDialled:
		if d.LastFailureReason != dialledReason || healthy.Reason == heraldv1.BlockedAddressReason {
			return false, fmt.Sprintf("want last failure %q (the test dialer's refusal), got %q, %s", dialledReason, d.LastFailureReason, healthy.Reason)
		}
		if !slices.Equal(dialled, wantDials) {
			return false, fmt.Sprintf("the guard let %v through, want exactly %v", dialled, wantDials)
		}
	case wantRedirect:
		if d.LastFailureReason != delivery.HTTPReason(http.StatusTemporaryRedirect) {
			return false, fmt.Sprintf("want last failure HTTP 307, got %q", d.LastFailureReason)
		}
		for _, a := range dialled {
			if a != "127.0.0.1" {
				return false, fmt.Sprintf("the redirect was followed to %s", a)
			}
		}
	}
	return true, ""
}

// createSSRFEndpoint creates a WebhookEndpoint with the manager's Ready
// condition, and returns the catalog's view of it.
func createSSRFEndpoint(t *testing.T, c client.Client, ns, name, url string) *catalog.Endpoint {
	t.Helper()
	maxAttempts := int32(2)
	spec := heraldv1.WebhookEndpointSpec{
		URL:               url,
		AllowInsecureHTTP: true,
		Timeout:           &metav1.Duration{Duration: 2 * time.Second},
		Retry: &heraldv1.RetrySpec{
			MaxAttempts:    &maxAttempts,
			InitialBackoff: &metav1.Duration{Duration: 100 * time.Millisecond},
			MaxBackoff:     &metav1.Duration{Duration: 200 * time.Millisecond},
		},
	}
	ep := &heraldv1.WebhookEndpoint{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: spec}
	if err := c.Create(testContext(t), ep); err != nil {
		t.Fatalf("create endpoint with url %s: %v", url, err)
	}
	managerApplyReady(t, c, "WebhookEndpoint", ns, name, ep.Generation, "Signing keys and delivery settings are ready")
	return &catalog.Endpoint{
		Namespace:  ns,
		Name:       name,
		Generation: ep.Generation,
		Spec:       *spec.DeepCopy(),
		Keys:       []heraldv1.SigningKey{{Secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", Since: time.Now().Add(-time.Hour)}},
	}
}

// publishSSRFDelivery queues one delivery for ep, as fan-out does.
func publishSSRFDelivery(t *testing.T, q *queue.Queue, ep *catalog.Endpoint) {
	t.Helper()
	id := "evt-" + ep.Name
	payload := fmt.Appendf(nil, `{"specversion":"1.0","id":%q,"source":"/ssrf","type":"probe.sent","data":{}}`, id)
	header := queue.Header{}
	header.Set(queue.HeaderWebhookID, queue.WebhookID(ep.Namespace, "/ssrf", id))
	header.Set(queue.HeaderIngestedAt, time.Now().UTC().Format(time.RFC3339Nano))
	dedup := queue.DeliveryDedupID(queue.EventDedupID(ep.Namespace, "/ssrf", id), ep.Namespace, ep.Name)
	if _, _, err := q.PublishDelivery(testContext(t), ep.Namespace, ep.Name, dedup, payload, header); err != nil {
		t.Fatalf("PublishDelivery: %v", err)
	}
}
