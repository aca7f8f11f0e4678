package delivery

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/herald-dev/herald/dispatcher/delivery/ssrf"
)

// MaxResponseBody is how much of a response body is read; the rest is
// discarded with the connection. Herald only needs the status code.
const MaxResponseBody = 64 << 10

// ClientConfig is an endpoint's transport configuration.
type ClientConfig struct {
	// Timeout bounds one attempt: connection, TLS, request and reading the
	// (capped) response body.
	Timeout time.Duration
	// CABundle (PEM) replaces the system roots when non-empty.
	CABundle []byte
	// ClientCert and ClientKey (PEM) are presented when both are set.
	ClientCert, ClientKey []byte
	// MaxIdleConns is how many idle connections to the receiver are kept;
	// the endpoint's maxInFlight is a good value.
	MaxIdleConns int
	// KeepBody is how many bytes of a response body Response.Body keeps
	// (the delivery log's share); 0 keeps none.
	KeepBody int
}

// Client sends the requests of one endpoint. It has its own transport (TLS
// material and connection pool are per endpoint), never uses a proxy, never
// follows redirects, and dials only through the SSRF guard.
//
// It sends through the transport's RoundTrip rather than an http.Client:
// the client's work is following redirects, which Herald never does (a
// 3xx is a failure like any other non-2xx: following it could lead to an
// internal address the receiver chose), cookies and URL credentials,
// which it has none of (the endpoint's URL may not carry credentials), and
// copying every request's headers for the redirects.
type Client struct {
	transport *http.Transport
	timeout   time.Duration
	keepBody  int
}

// Response is what Herald keeps of an answer.
type Response struct {
	StatusCode int
	// RetryAfter is the raw Retry-After header.
	RetryAfter string
	// Latency is the attempt's duration, reading the body included.
	Latency time.Duration
	// Body is the start of the body, ClientConfig.KeepBody bytes at most.
	Body []byte
}

// NewClient returns a client dialling through dialer. Errors describe the
// TLS material without quoting it.
func NewClient(dialer *ssrf.Dialer, cfg ClientConfig) (*Client, error) {
	if dialer == nil {
		return nil, errors.New("delivery client: an SSRF-guarded dialer is required")
	}
	if cfg.Timeout <= 0 {
		return nil, errors.New("delivery client: timeout must be positive")
	}
	tlsConfig := &tls.Config{MinVersion: tls.VersionTLS12}
	if len(cfg.CABundle) > 0 {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(cfg.CABundle) {
			return nil, errors.New("delivery client: CA bundle contains no PEM certificate")
		}
		tlsConfig.RootCAs = pool
	}
	switch {
	case len(cfg.ClientCert) > 0 && len(cfg.ClientKey) > 0:
		cert, err := tls.X509KeyPair(cfg.ClientCert, cfg.ClientKey)
		if err != nil {
			return nil, fmt.Errorf("delivery client: client certificate: %w", err)
		}
		tlsConfig.Certificates = []tls.Certificate{cert}
	case len(cfg.ClientCert) > 0 || len(cfg.ClientKey) > 0:
		return nil, errors.New("delivery client: client certificate and key must be given together")
	}
	idle := max(cfg.MaxIdleConns, 1)
	transport := &http.Transport{
		// Never from the environment: a proxy would dial on Herald's behalf
		// and bypass the guard.
		Proxy:                  nil,
		DialContext:            dialer.DialContext,
		TLSClientConfig:        tlsConfig,
		TLSHandshakeTimeout:    cfg.Timeout,
		ForceAttemptHTTP2:      true,
		MaxIdleConns:           idle,
		MaxIdleConnsPerHost:    idle,
		IdleConnTimeout:        90 * time.Second,
		DisableCompression:     true,
		MaxResponseHeaderBytes: MaxResponseBody,
	}
	return &Client{transport: transport, timeout: cfg.Timeout, keepBody: cfg.KeepBody}, nil
}

// Do sends req within the attempt timeout and reads at most
// MaxResponseBody of the answer. The error of a request that got no answer
// is classified by ClassifyError; its text (safeErrorText) does not include
// the URL or headers.
func (c *Client) Do(req *http.Request) (Response, error) {
	ctx, cancel := context.WithTimeout(req.Context(), c.timeout)
	defer cancel()
	start := time.Now()
	resp, err := c.transport.RoundTrip(req.WithContext(ctx))
	if err != nil {
		return Response{Latency: time.Since(start)}, sendError(err)
	}
	// The status decides the outcome; the body is read (bounded) only so
	// that the connection can be reused, and a slow or endless body ends
	// with the attempt's context. The delivery log keeps the start.
	var kept []byte
	body := io.LimitReader(resp.Body, MaxResponseBody)
	if c.keepBody > 0 {
		kept = readStart(body, c.keepBody)
	}
	_, _ = io.Copy(io.Discard, body)
	_ = resp.Body.Close()
	return Response{
		StatusCode: resp.StatusCode,
		RetryAfter: resp.Header.Get("Retry-After"),
		Latency:    time.Since(start),
		Body:       kept,
	}, nil
}

// bodyBuffers are scratch buffers for readStart; most answers are a few
// bytes, so the kept copy is small while the read buffer is reused.
var bodyBuffers = sync.Pool{New: func() any { b := make([]byte, 0, 4<<10); return &b }}

// readStart reads up to n bytes of r and returns a copy of them, nil for
// an empty body.
func readStart(r io.Reader, n int) []byte {
	bp := bodyBuffers.Get().(*[]byte)
	defer bodyBuffers.Put(bp)
	buf := *bp
	if cap(buf) < n {
		buf = make([]byte, n)
		*bp = buf[:0]
	}
	k, _ := io.ReadFull(r, buf[:n])
	if k == 0 {
		return nil
	}
	return append([]byte(nil), buf[:k]...)
}

// sendError is the error of a request that got no answer. It never
// includes the URL, whose query may carry a token: the transport's errors
// do not, and one that did as a *url.Error (as http.Client's do) has it
// dropped. The cause stays wrapped for ClassifyError.
func sendError(err error) error {
	var urlErr *url.Error
	if errors.As(err, &urlErr) {
		err = urlErr.Err
	}
	return fmt.Errorf("send request: %w", err)
}

// CloseIdleConnections closes the idle connections of the client's
// transport; call it when the client is replaced.
func (c *Client) CloseIdleConnections() { c.transport.CloseIdleConnections() }
