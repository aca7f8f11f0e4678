package delivery

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
	"github.com/herald-dev/herald/dispatcher/catalog"
	"github.com/herald-dev/herald/dispatcher/queue"
	"github.com/herald-dev/herald/dispatcher/signature"
)

// ErrNoSigningKey means no signing key of the endpoint is valid now.
var ErrNoSigningKey = errors.New("no valid signing key")

// Content types of the payload formats.
const (
	contentTypeJSON       = "application/json"
	contentTypeCloudEvent = "application/cloudevents+json"
)

// Target is everything needed to build the requests of one endpoint: URL,
// payload format, extra headers and signing keys. It is immutable after
// NewTarget except for the signer cache, and safe for concurrent use.
type Target struct {
	url       string
	format    heraldv1.PayloadFormat
	header    http.Header
	userAgent string
	keys      *keyring
}

// Delivery is one queued delivery, as BuildRequest needs it.
type Delivery struct {
	// Namespace of the endpoint; with the event's source and id it derives
	// the webhook-id when WebhookID is empty.
	Namespace string
	// Payload is the CloudEvent in structured JSON form.
	Payload []byte
	// WebhookID is the webhook-id (queue.HeaderWebhookID).
	WebhookID string
	// IngestedAt is the body timestamp of an event without a time.
	IngestedAt time.Time
}

// UserAgent returns the User-Agent of Herald's requests.
func UserAgent(version string) string {
	if version == "" {
		version = "dev"
	}
	return "Herald/" + version
}

// NewTarget prepares the requests of an endpoint. userAgent is the full
// header value (see UserAgent). Errors name the offending field, never a
// header value or key material.
func NewTarget(ep *catalog.Endpoint, userAgent string) (*Target, error) {
	u, err := url.Parse(ep.Spec.URL)
	if err != nil {
		return nil, fmt.Errorf("endpoint %s: spec.url is not a valid URL", ep.Key())
	}
	switch {
	case u.Scheme == "https":
	case u.Scheme == "http" && ep.Spec.AllowInsecureHTTP:
	case u.Scheme == "http":
		return nil, fmt.Errorf("endpoint %s: spec.url uses http without allowInsecureHTTP", ep.Key())
	default:
		return nil, fmt.Errorf("endpoint %s: spec.url scheme must be https or http", ep.Key())
	}
	if u.Hostname() == "" {
		return nil, fmt.Errorf("endpoint %s: spec.url has no host", ep.Key())
	}
	if u.User != nil {
		return nil, fmt.Errorf("endpoint %s: spec.url must not embed credentials; use headers", ep.Key())
	}
	u.Fragment, u.RawFragment = "", ""

	header := http.Header{}
	for _, h := range ep.Spec.Headers {
		if h.Value == nil {
			continue
		}
		if err := addExtraHeader(header, h.Name, *h.Value); err != nil {
			return nil, fmt.Errorf("endpoint %s: spec.headers: %w", ep.Key(), err)
		}
	}
	for name, value := range ep.SecretHeaders {
		if err := addExtraHeader(header, name, value); err != nil {
			return nil, fmt.Errorf("endpoint %s: header from Secret: %w", ep.Key(), err)
		}
	}

	keys, err := newKeyring(ep.Keys)
	if err != nil {
		return nil, fmt.Errorf("endpoint %s: %w", ep.Key(), err)
	}
	return &Target{
		url:       u.String(),
		format:    ep.Spec.GetPayloadFormat(),
		header:    header,
		userAgent: userAgent,
		keys:      keys,
	}, nil
}

// reservedHeaders are set by Herald on every request (or by the transport)
// and cannot be overridden by spec.headers; the API rejects them too, this
// is the data plane's own guarantee.
var reservedHeaders = map[string]bool{
	"host": true, "content-type": true, "content-length": true, "transfer-encoding": true,
	"connection": true, "user-agent": true, "te": true, "trailer": true, "upgrade": true,
	"keep-alive": true, "proxy-connection": true, "proxy-authorization": true,
}

func isReservedHeader(name string) bool {
	lower := strings.ToLower(name)
	return reservedHeaders[lower] || strings.HasPrefix(lower, "webhook-") || strings.HasPrefix(lower, "ce-")
}

func addExtraHeader(h http.Header, name, value string) error {
	if !validHeaderName(name) {
		return fmt.Errorf("header name %q is not a valid HTTP token", name)
	}
	if !validHeaderValue(value) {
		return fmt.Errorf("value of header %q contains control characters", name)
	}
	if isReservedHeader(name) {
		// The API refuses these names; should one get through anyway, Herald's
		// own value wins rather than the endpoint failing as a whole.
		return nil
	}
	h.Set(name, value)
	return nil
}

func validHeaderName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

func validHeaderValue(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; (c < ' ' && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}

// BuildRequest builds one signed attempt of a delivery: the body in the
// endpoint's payload format, the extra headers, User-Agent, and webhook-id,
// webhook-timestamp (now) and webhook-signature (one signature per valid
// key, over the body as sent). Build a new request for every attempt so
// that the timestamp and signatures are fresh. Errors wrap
// errInvalidEvent for payloads that can never be delivered, or
// ErrNoSigningKey.
func (t *Target) BuildRequest(ctx context.Context, d Delivery, now time.Time) (*http.Request, error) {
	ev, err := parseEvent(d.Payload)
	if err != nil {
		return nil, err
	}
	return t.buildRequest(ctx, ev, d, now)
}

// buildRequest is BuildRequest for a payload already parsed into ev.
func (t *Target) buildRequest(ctx context.Context, ev *cloudEvent, d Delivery, now time.Time) (*http.Request, error) {
	signer, err := t.keys.signer(now)
	if err != nil {
		return nil, err
	}
	webhookID := d.WebhookID
	if webhookID == "" {
		webhookID = queue.WebhookID(d.Namespace, ev.source, ev.id)
	}

	// Content-Type, User-Agent and the three webhook-* headers, and the
	// binary format's ce-* attributes: sized so that the common case is one
	// small map.
	extra := 5
	if t.format == heraldv1.PayloadCloudEventsBinary {
		extra = 12
	}
	header := make(http.Header, len(t.header)+extra)
	for k, v := range t.header {
		header[k] = v
	}
	var body []byte
	switch t.format {
	case heraldv1.PayloadCloudEventsStructured:
		body = d.Payload
		header.Set("Content-Type", contentTypeCloudEvent)
	case heraldv1.PayloadCloudEventsBinary:
		var contentType string
		body, contentType = ev.binaryData()
		if contentType != "" {
			header.Set("Content-Type", contentType)
		}
		ev.binaryHeaders(header.Set)
	default:
		body = ev.standardWebhooksBody(d.IngestedAt)
		header.Set("Content-Type", contentTypeJSON)
	}
	header.Set("User-Agent", t.userAgent)
	signer.SetHeaders(header, webhookID, now, body)

	req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.url, nil)
	if err != nil {
		return nil, fmt.Errorf("build request: %w", err)
	}
	req.Header = header
	req.ContentLength = int64(len(body))
	if len(body) == 0 {
		req.Body = http.NoBody
		req.GetBody = func() (io.ReadCloser, error) { return http.NoBody, nil }
	} else {
		req.Body = io.NopCloser(bytes.NewReader(body))
		req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	}
	return req, nil
}

// keyring turns an endpoint's signing keys into a Signer for the keys
// valid at a given time, rebuilding it when a replaced key expires.
type keyring struct {
	keys []heraldv1.SigningKey

	mu       sync.Mutex
	current  *signature.Signer
	validAt  time.Time // when current was built
	expireAt time.Time // earliest NotAfter among the keys in current; zero: none
}

func newKeyring(keys []heraldv1.SigningKey) (*keyring, error) {
	for i, k := range keys {
		if _, err := signature.ParseKey(k.Secret); err != nil {
			// The error describes the problem, never the key.
			return nil, fmt.Errorf("signing key %d: %w", i, err)
		}
	}
	return &keyring{keys: append([]heraldv1.SigningKey(nil), keys...)}, nil
}

func (r *keyring) signer(now time.Time) (*signature.Signer, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.current != nil && !now.Before(r.validAt) && (r.expireAt.IsZero() || now.Before(r.expireAt)) {
		return r.current, nil
	}
	var secrets []string
	var expireAt time.Time
	for _, k := range r.keys {
		if k.NotAfter != nil {
			if !k.NotAfter.After(now) {
				continue
			}
			if expireAt.IsZero() || k.NotAfter.Before(expireAt) {
				expireAt = *k.NotAfter
			}
		}
		secrets = append(secrets, k.Secret)
	}
	if len(secrets) == 0 {
		return nil, ErrNoSigningKey
	}
	s, err := signature.NewSigner(secrets...)
	if err != nil {
		return nil, fmt.Errorf("build signer: %w", err)
	}
	r.current, r.validAt, r.expireAt = s, now, expireAt
	return s, nil
}
