package delivery

import (
	"context"
	"encoding/pem"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"sync/atomic"
	"testing"
	"time"

	"github.com/herald-dev/herald/dispatcher/catalog"
)

// proxyChildEnv marks the child process of TestEnvironmentProxyIsIgnored.
const proxyChildEnv = "HERALD_DELIVERY_PROXY_CHILD"

// TestEnvironmentProxyIsIgnored runs deliveries in a child process whose
// environment names a proxy (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY, in both
// spellings) — set before the process starts, since net/http reads the
// proxy variables once per process. The proxy is a recording listener on
// loopback: a delivery going through it would let the proxy, not the SSRF
// guard, choose the destination. It must see no connection at all, while
// the deliveries reach their receivers directly.
func TestEnvironmentProxyIsIgnored(t *testing.T) {
	if os.Getenv(proxyChildEnv) != "" {
		proxyChild(t)
		return
	}
	proxy, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var proxied atomic.Int64
	go func() {
		for {
			c, err := proxy.Accept()
			if err != nil {
				return
			}
			proxied.Add(1)
			_ = c.Close()
		}
	}()
	t.Cleanup(func() { _ = proxy.Close() })

	proxyURL := "http://" + proxy.Addr().String()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestEnvironmentProxyIsIgnored$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(),
		proxyChildEnv+"=1",
		"HTTP_PROXY="+proxyURL, "http_proxy="+proxyURL,
		"HTTPS_PROXY="+proxyURL, "https_proxy="+proxyURL,
		"ALL_PROXY="+proxyURL, "all_proxy="+proxyURL,
		"NO_PROXY=", "no_proxy=",
		"REQUEST_METHOD=", // CGI mode would make net/http ignore HTTP_PROXY
	)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	if n := proxied.Load(); n != 0 {
		t.Fatalf("the proxy from the environment received %d connections\nchild output:\n%s", n, out)
	}
}

// proxyChild delivers to an http and an https receiver under names that
// the environment's proxy settings apply to, and to a blocked address.
func proxyChild(t *testing.T) {
	// The environment really does name a proxy for these URLs: a client
	// that honoured it would use it.
	for _, u := range []string{"http://receiver.example.com/hook", "https://example.com/hook", "http://10.0.0.1/"} {
		req, _ := http.NewRequest(http.MethodPost, u, nil)
		if p, err := http.ProxyFromEnvironment(req); err != nil || p == nil {
			t.Fatalf("ProxyFromEnvironment(%s) = %v, %v: the child's environment names no proxy", u, p, err)
		}
	}

	plain := newReceiver(t, nil)
	tlsServed := make(chan struct{}, 10)
	tlsSrv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		tlsServed <- struct{}{}
		w.WriteHeader(http.StatusNoContent)
	}))
	tlsSrv.StartTLS()
	t.Cleanup(tlsSrv.Close)

	// httptest's certificate is for example.com; both names resolve to
	// the loopback receivers through the test's resolver.
	lookup := &lookupTable{answers: map[string][][]netip.Addr{
		"receiver.example.com": {{netip.MustParseAddr("127.0.0.1")}},
		"example.com":          {{netip.MustParseAddr("127.0.0.1")}},
	}}
	q := openQueue(t)
	m, out, rec := newTestManager(t, q, func(o *Options) { o.Lookup = lookup.Lookup })

	httpEP := testEndpoint("shop", "plain", "http://receiver.example.com:"+portOf(t, plain.URL)+"/hook")
	httpsEP := testEndpoint("shop", "tls", "https://example.com:"+portOf(t, tlsSrv.URL)+"/hook")
	httpsEP.CABundle = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: tlsSrv.Certificate().Raw})
	blockedEP := testEndpoint("shop", "blocked", "http://10.0.0.1/hook")
	blockedEP.Spec.Retry.MaxAttempts = new(int32(1))
	m.Sync([]*catalog.Endpoint{httpEP, httpsEP, blockedEP})
	publish(t, q, "shop", "plain", "p-1")
	publish(t, q, "shop", "tls", "t-1")
	publish(t, q, "shop", "blocked", "b-1")

	out.waitFor(t, "shop/plain", "a direct delivery", func(os []Outcome) bool { return countSuccess(os) == 1 })
	out.waitFor(t, "shop/tls", "a direct TLS delivery", func(os []Outcome) bool { return countSuccess(os) == 1 })
	got := out.waitFor(t, "shop/blocked", "an outcome", func(os []Outcome) bool { return len(os) == 1 })
	if got[0].Reason != ReasonBlockedAddress {
		t.Errorf("blocked destination: outcome %+v, want %s", got[0], ReasonBlockedAddress)
	}
	if plain.count() != 1 || len(tlsServed) != 1 {
		t.Errorf("receivers got %d plain and %d TLS requests, want 1 each", plain.count(), len(tlsServed))
	}
	for _, a := range rec.addresses() {
		if a != netip.MustParseAddr("127.0.0.1") {
			t.Errorf("dialled %s; only the receivers' address may be dialled", a)
		}
	}
}

func portOf(t *testing.T, rawURL string) string {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil || u.Port() == "" {
		t.Fatalf("port of %s: %v", rawURL, err)
	}
	return u.Port()
}
