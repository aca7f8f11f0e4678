package delivery

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/herald-dev/herald/dispatcher/delivery/ssrf"
)

func mustClient(t testing.TB, dialer *ssrf.Dialer, cfg ClientConfig) *Client {
	t.Helper()
	if cfg.Timeout == 0 {
		cfg.Timeout = 5 * time.Second
	}
	c, err := NewClient(dialer, cfg)
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	t.Cleanup(c.CloseIdleConnections)
	return c
}

func post(t testing.TB, c *Client, rawURL string) (Response, error) {
	t.Helper()
	req, err := http.NewRequestWithContext(testContext(t), http.MethodPost, rawURL, strings.NewReader(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	return c.Do(req)
}

func TestClientSuccessAndStatus(t *testing.T) {
	rc := newReceiver(t, func(i int, w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Retry-After", "7")
		w.WriteHeader([]int{200, 503}[i%2])
	})
	dialer, rec := testDialer(loopbackAllowlist, nil)
	c := mustClient(t, dialer, ClientConfig{})
	resp, err := post(t, c, rc.URL)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("first: %+v, %v", resp, err)
	}
	resp, err = post(t, c, rc.URL)
	if err != nil || resp.StatusCode != 503 || resp.RetryAfter != "7" {
		t.Fatalf("second: %+v, %v", resp, err)
	}
	for _, a := range rec.addresses() {
		if a != netip.MustParseAddr("127.0.0.1") {
			t.Errorf("dialled %s", a)
		}
	}
}

func TestClientTimeout(t *testing.T) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	rc := newReceiver(t, func(_ int, w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	dialer, _ := testDialer(loopbackAllowlist, nil)
	c := mustClient(t, dialer, ClientConfig{Timeout: 200 * time.Millisecond})
	_, err := post(t, c, rc.URL)
	if got := ClassifyError(err); got != ReasonTimeout {
		t.Fatalf("reason = %q (%v), want %s", got, err, ReasonTimeout)
	}
}

func TestClientSlowReceiver(t *testing.T) {
	t.Run("slow answer within the timeout", func(t *testing.T) {
		rc := newReceiver(t, func(_ int, w http.ResponseWriter, _ *http.Request) {
			time.Sleep(300 * time.Millisecond)
			w.WriteHeader(http.StatusAccepted)
		})
		dialer, _ := testDialer(loopbackAllowlist, nil)
		resp, err := post(t, mustClient(t, dialer, ClientConfig{}), rc.URL)
		if err != nil || resp.StatusCode != http.StatusAccepted {
			t.Fatalf("got %+v, %v", resp, err)
		}
		if resp.Latency < 300*time.Millisecond {
			t.Errorf("latency %s is less than the receiver's delay", resp.Latency)
		}
	})
	t.Run("endless body is cut off, status counts", func(t *testing.T) {
		rc := newReceiver(t, func(_ int, w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusOK)
			chunk := []byte(strings.Repeat("x", 1024))
			for r.Context().Err() == nil {
				if _, err := w.Write(chunk); err != nil {
					return
				}
				w.(http.Flusher).Flush()
				time.Sleep(time.Millisecond)
			}
		})
		dialer, _ := testDialer(loopbackAllowlist, nil)
		resp, err := post(t, mustClient(t, dialer, ClientConfig{Timeout: 2 * time.Second}), rc.URL)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("got %+v, %v", resp, err)
		}
	})
}

func TestClientReadsAtMostTheBodyCap(t *testing.T) {
	written := make(chan int, 1)
	rc := newReceiver(t, func(_ int, w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusOK)
		n := 0
		chunk := make([]byte, 16<<10)
		for n < 64<<20 {
			m, err := w.Write(chunk)
			n += m
			if err != nil {
				break
			}
		}
		written <- n
	})
	dialer, _ := testDialer(loopbackAllowlist, nil)
	resp, err := post(t, mustClient(t, dialer, ClientConfig{}), rc.URL)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("got %+v, %v", resp, err)
	}
	select {
	case n := <-written:
		// Socket buffers absorb some megabytes at most; the receiver was cut
		// off long before its 64 MiB.
		if n >= 64<<20 {
			t.Errorf("receiver wrote its whole %d-byte body", n)
		}
	case <-time.After(testTimeout):
		t.Fatal("receiver never stopped writing")
	}
}

func TestClientConnectionReset(t *testing.T) {
	rc := newReceiver(t, func(_ int, w http.ResponseWriter, _ *http.Request) {
		conn, _, err := w.(http.Hijacker).Hijack()
		if err != nil {
			return
		}
		_ = conn.(*net.TCPConn).SetLinger(0) // close with RST
		_ = conn.Close()
	})
	dialer, _ := testDialer(loopbackAllowlist, nil)
	_, err := post(t, mustClient(t, dialer, ClientConfig{}), rc.URL)
	if got := ClassifyError(err); got != ReasonConnectionReset {
		t.Fatalf("reason = %q (%v), want %s", got, err, ReasonConnectionReset)
	}
}

func TestClientConnectionRefused(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	dialer, _ := testDialer(loopbackAllowlist, nil)
	_, err = post(t, mustClient(t, dialer, ClientConfig{}), "http://"+addr+"/")
	if got := ClassifyError(err); got != ReasonConnectionRefused {
		t.Fatalf("reason = %q (%v), want %s", got, err, ReasonConnectionRefused)
	}
}

// TestClientNeverFollowsRedirects: a 3xx is the answer, whether it points
// at an internal address or back at the receiver.
func TestClientNeverFollowsRedirects(t *testing.T) {
	for _, location := range []string{
		"http://169.254.169.254/latest/meta-data/",
		"http://10.0.0.1/admin",
		"/again", // the receiver itself: a followed redirect would be recorded
	} {
		t.Run(location, func(t *testing.T) {
			rc := newReceiver(t, func(_ int, w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, location, http.StatusTemporaryRedirect)
			})
			dialer, rec := testDialer(loopbackAllowlist, nil)
			resp, err := post(t, mustClient(t, dialer, ClientConfig{}), rc.URL)
			if err != nil || resp.StatusCode != http.StatusTemporaryRedirect {
				t.Fatalf("got %+v, %v; want the 307 itself", resp, err)
			}
			if n := rc.count(); n != 1 {
				t.Errorf("receiver got %d requests, want 1", n)
			}
			for _, a := range rec.addresses() {
				if a != netip.MustParseAddr("127.0.0.1") {
					t.Errorf("dialled %s", a)
				}
			}
		})
	}
}

func TestClientDNSFailure(t *testing.T) {
	dialer, rec := testDialer(loopbackAllowlist, nil)
	_, err := post(t, mustClient(t, dialer, ClientConfig{}), "https://nope.test/")
	if got := ClassifyError(err); got != ReasonDNSFailure {
		t.Fatalf("reason = %q (%v), want %s", got, err, ReasonDNSFailure)
	}
	if len(rec.addresses()) != 0 {
		t.Errorf("dialled %v", rec.addresses())
	}
}

// TestSSRFGuard sends requests to internal destinations through the real
// client. The dialer under the guard connects to loopback only and records
// every destination, so the test can tell the guard refused an address
// (never dialled) from the test dialer refusing it.
func TestSSRFGuard(t *testing.T) {
	rc := newReceiver(t, nil)
	port := rc.Listener.Addr().(*net.TCPAddr).Port
	local := func(host string) string { return "http://" + net.JoinHostPort(host, itoa(port)) + "/hook" }
	lookup := &lookupTable{answers: map[string][][]netip.Addr{
		"localhost":           {{netip.MustParseAddr("127.0.0.1")}},
		"internal.corp.test":  {{netip.MustParseAddr("10.1.2.3")}},
		"metadata.test":       {{netip.MustParseAddr("169.254.169.254")}},
		"private-many.test":   {{netip.MustParseAddr("192.168.1.10"), netip.MustParseAddr("172.16.0.5"), netip.MustParseAddr("fd00::5")}},
		"mixed-local.test":    {{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("127.0.0.1")}},
		"mixed-public.test":   {{netip.MustParseAddr("169.254.169.254"), netip.MustParseAddr("93.184.216.34")}},
		"rebinding.test":      {{netip.MustParseAddr("93.184.216.34")}, {netip.MustParseAddr("10.0.0.1")}},
		"rebinding-loop.test": {{netip.MustParseAddr("127.0.0.1")}, {netip.MustParseAddr("169.254.169.254")}},
	}}
	type attempt struct {
		reason string // "" = delivered (2xx)
		dialed []string
	}
	for _, tc := range []struct {
		name     string
		allow    []netip.Prefix
		url      string
		attempts []attempt
	}{
		{"127.0.0.1 allowed by the allowlist", loopbackAllowlist, local("127.0.0.1"), []attempt{{"", []string{"127.0.0.1"}}}},
		{"127.0.0.1 refused by default", nil, local("127.0.0.1"), []attempt{{ReasonBlockedAddress, nil}}},
		{"localhost refused by default", nil, local("localhost"), []attempt{{ReasonBlockedAddress, nil}}},
		{"[::1] refused by default", nil, "http://[::1]:80/", []attempt{{ReasonBlockedAddress, nil}}},
		{"10.0.0.1", loopbackAllowlist, "http://10.0.0.1/", []attempt{{ReasonBlockedAddress, nil}}},
		{"172.16.0.1", loopbackAllowlist, "https://172.16.0.1/", []attempt{{ReasonBlockedAddress, nil}}},
		{"192.168.0.1", loopbackAllowlist, "http://192.168.0.1:8080/", []attempt{{ReasonBlockedAddress, nil}}},
		{"cloud metadata 169.254.169.254", loopbackAllowlist, "http://169.254.169.254/latest/meta-data/", []attempt{{ReasonBlockedAddress, nil}}},
		{"IPv4-mapped metadata", loopbackAllowlist, "http://[::ffff:169.254.169.254]/", []attempt{{ReasonBlockedAddress, nil}}},
		{"IPv4-mapped loopback", loopbackAllowlist, "http://[::ffff:127.0.0.1]:" + itoa(port) + "/", []attempt{{ReasonBlockedAddress, nil}}},
		{"NAT64 metadata", loopbackAllowlist, "http://[64:ff9b::a9fe:a9fe]/", []attempt{{ReasonBlockedAddress, nil}}},
		{"6to4 metadata", loopbackAllowlist, "http://[2002:a9fe:a9fe::1]/", []attempt{{ReasonBlockedAddress, nil}}},
		{"unique local fc00::1", loopbackAllowlist, "http://[fc00::1]/", []attempt{{ReasonBlockedAddress, nil}}},
		{"link-local fe80::1", loopbackAllowlist, "http://[fe80::1]/", []attempt{{ReasonBlockedAddress, nil}}},
		{"CGNAT", loopbackAllowlist, "http://100.64.1.1/", []attempt{{ReasonBlockedAddress, nil}}},
		{"multicast", loopbackAllowlist, "http://224.0.0.251/", []attempt{{ReasonBlockedAddress, nil}}},
		{"unspecified", loopbackAllowlist, "http://0.0.0.0:" + itoa(port) + "/", []attempt{{ReasonBlockedAddress, nil}}},
		{"hostname resolving to a private address", loopbackAllowlist, "https://internal.corp.test/", []attempt{{ReasonBlockedAddress, nil}}},
		{"hostname resolving to the metadata address", loopbackAllowlist, "http://metadata.test/", []attempt{{ReasonBlockedAddress, nil}}},
		{"hostname resolving to several private addresses", loopbackAllowlist, "http://private-many.test/", []attempt{{ReasonBlockedAddress, nil}}},
		{"mixed private and allowed records: refused as a whole", loopbackAllowlist, local("mixed-local.test"), []attempt{{ReasonBlockedAddress, nil}}},
		{"mixed private and public records: refused as a whole", loopbackAllowlist, "http://mixed-public.test/", []attempt{{ReasonBlockedAddress, nil}}},
		{"DNS rebinding, public then private", loopbackAllowlist, "http://rebinding.test/", []attempt{
			{ReasonOther, []string{"93.184.216.34"}},
			{ReasonBlockedAddress, []string{"93.184.216.34"}},
		}},
		{"DNS rebinding, allowed then metadata", loopbackAllowlist, local("rebinding-loop.test"), []attempt{
			{"", []string{"127.0.0.1"}},
			{ReasonBlockedAddress, []string{"127.0.0.1"}},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dialer, rec := testDialer(tc.allow, lookup.Lookup)
			// No connection reuse: every attempt must dial and be checked.
			c := mustClient(t, dialer, ClientConfig{Timeout: 2 * time.Second})
			c.transport.DisableKeepAlives = true
			for i, want := range tc.attempts {
				resp, err := post(t, c, tc.url)
				got := ""
				switch {
				case err != nil:
					got = ClassifyError(err)
				case resp.StatusCode/100 != 2:
					got = HTTPReason(resp.StatusCode)
				}
				if got != want.reason {
					t.Errorf("attempt %d: reason %q (%v), want %q", i+1, got, err, want.reason)
				}
				if err != nil && errors.Is(err, ssrf.ErrBlocked) && strings.Contains(err.Error(), "hook") {
					t.Errorf("error reveals the URL: %v", err)
				}
				var dialed []string
				for _, a := range rec.addresses() {
					dialed = append(dialed, a.String())
				}
				if !slices.Equal(dialed, want.dialed) {
					t.Errorf("after attempt %d the guard let through %v, want %v", i+1, dialed, want.dialed)
				}
			}
		})
	}
}

var quietLog = log.New(io.Discard, "", 0)

func itoa(i int) string { return big.NewInt(int64(i)).String() }

// testPKI is a CA with a server and a client certificate.
type testPKI struct {
	caPEM                  []byte
	caPool                 *x509.CertPool
	serverCert             tls.Certificate
	clientCertPEM, keyPEM  []byte
	otherClientCertPEM     []byte
	otherClientKeyPEM      []byte
	otherCAPEM             []byte
	caKey                  *ecdsa.PrivateKey
	caCert                 *x509.Certificate
	serial                 int64
	notBefore, notAfterTLS time.Time
}

func newTestPKI(t testing.TB) *testPKI {
	t.Helper()
	p := &testPKI{notBefore: time.Now().Add(-time.Hour), notAfterTLS: time.Now().Add(time.Hour)}
	p.caKey, p.caCert, p.caPEM = p.selfSigned(t, "herald test CA")
	p.caPool = x509.NewCertPool()
	p.caPool.AddCert(p.caCert)
	serverPEM, serverKey := p.issue(t, "receiver", x509.ExtKeyUsageServerAuth, []net.IP{net.ParseIP("127.0.0.1")})
	cert, err := tls.X509KeyPair(serverPEM, serverKey)
	if err != nil {
		t.Fatal(err)
	}
	p.serverCert = cert
	p.clientCertPEM, p.keyPEM = p.issue(t, "herald-dispatcher", x509.ExtKeyUsageClientAuth, nil)
	// A client certificate from another CA: the server must refuse it.
	other := &testPKI{notBefore: p.notBefore, notAfterTLS: p.notAfterTLS}
	other.caKey, other.caCert, other.otherCAPEM = other.selfSigned(t, "other CA")
	p.otherClientCertPEM, p.otherClientKeyPEM = other.issue(t, "intruder", x509.ExtKeyUsageClientAuth, nil)
	return p
}

func (p *testPKI) selfSigned(t testing.TB, cn string) (*ecdsa.PrivateKey, *x509.Certificate, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p.serial++
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(p.serial),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             p.notBefore,
		NotAfter:              p.notAfterTLS,
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return key, cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func (p *testPKI) issue(t testing.TB, cn string, usage x509.ExtKeyUsage, ips []net.IP) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p.serial++
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(p.serial),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    p.notBefore,
		NotAfter:     p.notAfterTLS,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		IPAddresses:  ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.caCert, &key.PublicKey, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
}

// TestClientSpeaksHTTP2ToAReceiverThatOffersIt: over TLS, a receiver
// that offers HTTP/2 gets the request over HTTP/2, and an HTTP/1.1-only one
// over HTTP/1.1, with the answer read either way; requests on one
// connection each time.
func TestClientSpeaksHTTP2ToAReceiverThatOffersIt(t *testing.T) {
	for _, h2 := range []bool{true, false} {
		t.Run(fmt.Sprintf("receiver offers HTTP/2: %v", h2), func(t *testing.T) {
			var protos []int
			var mu sync.Mutex
			srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				protos = append(protos, r.ProtoMajor)
				mu.Unlock()
				w.Header().Set("Retry-After", "3")
				w.WriteHeader(http.StatusServiceUnavailable)
				_, _ = io.WriteString(w, "busy")
			}))
			srv.EnableHTTP2 = h2
			srv.StartTLS()
			t.Cleanup(srv.Close)
			caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
			dialer, rec := testDialer(loopbackAllowlist, nil)
			c := mustClient(t, dialer, ClientConfig{CABundle: caPEM, KeepBody: 16})
			for range 3 {
				resp, err := post(t, c, srv.URL)
				if err != nil || resp.StatusCode != http.StatusServiceUnavailable || resp.RetryAfter != "3" || string(resp.Body) != "busy" {
					t.Fatalf("got %+v, %v", resp, err)
				}
			}
			want := 1
			if h2 {
				want = 2
			}
			mu.Lock()
			defer mu.Unlock()
			for _, p := range protos {
				if p != want {
					t.Errorf("requests arrived over HTTP/%v, want HTTP/%d", protos, want)
					break
				}
			}
			if n := len(rec.addresses()); n != 1 {
				t.Errorf("%d connections dialled for 3 requests, want 1", n)
			}
		})
	}
}

func TestClientCustomCA(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	}))
	srv.Config.ErrorLog = quietLog // refused handshakes are the point
	srv.StartTLS()
	t.Cleanup(srv.Close)
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	dialer, _ := testDialer(loopbackAllowlist, nil)

	t.Run("the CA bundle verifies the receiver", func(t *testing.T) {
		resp, err := post(t, mustClient(t, dialer, ClientConfig{CABundle: caPEM}), srv.URL)
		if err != nil || resp.StatusCode != http.StatusNoContent {
			t.Fatalf("got %+v, %v", resp, err)
		}
	})
	t.Run("without it the receiver is not trusted", func(t *testing.T) {
		_, err := post(t, mustClient(t, dialer, ClientConfig{}), srv.URL)
		if got := ClassifyError(err); got != ReasonTLSError {
			t.Fatalf("reason = %q (%v), want %s", got, err, ReasonTLSError)
		}
	})
	t.Run("a bundle replaces the system roots", func(t *testing.T) {
		pki := newTestPKI(t)
		_, err := post(t, mustClient(t, dialer, ClientConfig{CABundle: pki.caPEM}), srv.URL)
		if got := ClassifyError(err); got != ReasonTLSError {
			t.Fatalf("reason = %q (%v), want %s", got, err, ReasonTLSError)
		}
	})
	t.Run("a bundle without certificates is refused", func(t *testing.T) {
		if _, err := NewClient(dialer, ClientConfig{Timeout: time.Second, CABundle: []byte("not pem")}); err == nil {
			t.Fatal("NewClient accepted an empty CA bundle")
		}
	})
}

func TestClientCertificate(t *testing.T) {
	pki := newTestPKI(t)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(r.TLS.PeerCertificates) == 0 {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.Header().Set("X-Client", r.TLS.PeerCertificates[0].Subject.CommonName)
		w.WriteHeader(http.StatusOK)
	}))
	srv.Config.ErrorLog = quietLog
	srv.TLS = &tls.Config{
		Certificates: []tls.Certificate{pki.serverCert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pki.caPool,
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	dialer, _ := testDialer(loopbackAllowlist, nil)

	t.Run("presented and accepted", func(t *testing.T) {
		c := mustClient(t, dialer, ClientConfig{CABundle: pki.caPEM, ClientCert: pki.clientCertPEM, ClientKey: pki.keyPEM})
		resp, err := post(t, c, srv.URL)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("got %+v, %v", resp, err)
		}
	})
	t.Run("missing", func(t *testing.T) {
		_, err := post(t, mustClient(t, dialer, ClientConfig{CABundle: pki.caPEM}), srv.URL)
		if got := ClassifyError(err); got != ReasonTLSError {
			t.Fatalf("reason = %q (%v), want %s", got, err, ReasonTLSError)
		}
	})
	t.Run("from another CA", func(t *testing.T) {
		c := mustClient(t, dialer, ClientConfig{CABundle: pki.caPEM, ClientCert: pki.otherClientCertPEM, ClientKey: pki.otherClientKeyPEM})
		_, err := post(t, c, srv.URL)
		if got := ClassifyError(err); got != ReasonTLSError {
			t.Fatalf("reason = %q (%v), want %s", got, err, ReasonTLSError)
		}
	})
	t.Run("key pair mismatch is a configuration error without key material", func(t *testing.T) {
		_, err := NewClient(dialer, ClientConfig{Timeout: time.Second, ClientCert: pki.clientCertPEM, ClientKey: pki.otherClientKeyPEM})
		if err == nil {
			t.Fatal("NewClient accepted a mismatched key pair")
		}
		if strings.Contains(err.Error(), "PRIVATE KEY") {
			t.Errorf("error quotes key material: %v", err)
		}
	})
}

func TestClassifyErrorIsStable(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{&url.Error{Op: "Post", URL: "https://x/?token=secret", Err: context.DeadlineExceeded}, ReasonTimeout},
		{&ssrf.BlockedError{Addr: netip.MustParseAddr("10.0.0.1"), Class: ssrf.Private}, ReasonBlockedAddress},
		{&net.DNSError{Err: "no such host", Name: "x"}, ReasonDNSFailure},
		{&ssrf.LookupError{Host: "x", Err: errors.New("boom")}, ReasonDNSFailure},
		{x509.UnknownAuthorityError{}, ReasonTLSError},
		{errors.New("something odd"), ReasonOther},
	} {
		if got := ClassifyError(tc.err); got != tc.want {
			t.Errorf("ClassifyError(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
	if txt := safeErrorText(&url.Error{Op: "Post", URL: "https://x/?token=secret", Err: context.DeadlineExceeded}); strings.Contains(txt, "secret") {
		t.Errorf("safeErrorText reveals the URL: %s", txt)
	}
}

// BenchmarkAttempt is one full attempt — build, sign, POST to a loopback
// receiver over a kept-alive connection, read the answer.
func BenchmarkAttempt(b *testing.B) {
	rc := newReceiver(b, nil)
	dialer, _ := testDialer(loopbackAllowlist, nil)
	c := mustClient(b, dialer, ClientConfig{MaxIdleConns: 4})
	target := mustTarget(b, testEndpoint("shop", "orders", rc.URL))
	d := Delivery{Namespace: "shop", Payload: testEvent("o-1"), WebhookID: "msg_bench"}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		req, err := target.BuildRequest(ctx, d, time.Now())
		if err != nil {
			b.Fatal(err)
		}
		resp, err := c.Do(req)
		if err != nil || resp.StatusCode != http.StatusNoContent {
			b.Fatalf("%+v, %v", resp, err)
		}
	}
}

// TestSSRFGuardRefusesClusterCIDRs delivers to an address of a publicly
// routable pod range through the SSRF dialer over the recording, refusing
// test dialer: without the cluster's ranges it is dialled (and refused by
// the test dialer, never sent); with them (--cluster-cidrs) the guard
// refuses it as BlockedAddress before any dial, even when the allowlist
// covers it, for an IP literal and for a host name resolving to it.
func TestSSRFGuardRefusesClusterCIDRs(t *testing.T) {
	podCIDR := netip.MustParsePrefix("93.184.0.0/16") // publicly routable
	podIP := "93.184.216.34"
	lookup := &lookupTable{answers: map[string][][]netip.Addr{
		"pod.receiver.test": {{netip.MustParseAddr(podIP)}},
	}}
	for _, tc := range []struct {
		name       string
		allow      []netip.Prefix
		cluster    []netip.Prefix
		url        string
		wantReason string
		wantDialed []string
	}{
		{"without --cluster-cidrs the pod address is public", nil, nil, "http://" + podIP + "/hook", ReasonOther, []string{podIP}},
		{"pod address literal", nil, []netip.Prefix{podCIDR}, "http://" + podIP + "/hook", ReasonBlockedAddress, nil},
		{"host name resolving to a pod address", nil, []netip.Prefix{podCIDR}, "https://pod.receiver.test/hook", ReasonBlockedAddress, nil},
		{"pod address inside the allowlist", []netip.Prefix{netip.MustParsePrefix("93.0.0.0/8")}, []netip.Prefix{podCIDR},
			"http://" + podIP + "/hook", ReasonBlockedAddress, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := &refusingDialer{}
			dialer := ssrf.NewDialer(ssrf.New(tc.allow, ssrf.WithDenied(tc.cluster...)),
				ssrf.DialerOptions{Lookup: lookup.Lookup, Dial: rec.Dial})
			c := mustClient(t, dialer, ClientConfig{Timeout: 2 * time.Second})
			_, err := post(t, c, tc.url)
			if err == nil {
				t.Fatal("delivered")
			}
			if got := ClassifyError(err); got != tc.wantReason {
				t.Errorf("reason %q (%v), want %q", got, err, tc.wantReason)
			}
			var dialed []string
			for _, a := range rec.addresses() {
				dialed = append(dialed, a.String())
			}
			if !slices.Equal(dialed, tc.wantDialed) {
				t.Errorf("dialled %v, want %v", dialed, tc.wantDialed)
			}
		})
	}
}
