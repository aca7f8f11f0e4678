package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/herald-dev/herald/dispatcher/signature"
)

// Delivery is one request a Receiver accepted.
type Delivery struct {
	WebhookID string
	Body      []byte
	Header    http.Header
	At        time.Time
}

// Receiver is a webhook receiver on loopback that verifies every request's
// Standard Webhooks signature with Herald's signature package, the way a
// user's receiver would, and records what it accepted.
type Receiver struct {
	URL string

	srv      *http.Server
	mu       sync.Mutex
	verifier *signature.Verifier
	byID     map[string][]Delivery
	order    []string
	rejected int
}

// StartReceiver listens on addr ("127.0.0.1:0" for any port).
func StartReceiver(addr string) (*Receiver, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("receiver listen on %s: %w", addr, err)
	}
	r := &Receiver{URL: "http://" + l.Addr().String() + "/webhooks", byID: map[string][]Delivery{}}
	r.srv = &http.Server{Handler: r, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = r.srv.Serve(l) }()
	return r, nil
}

// SetSecrets sets the keys ("whsec_…" or "whpk_…") signatures are checked
// with; until then every request is refused.
func (r *Receiver) SetSecrets(keys ...string) error {
	v, err := signature.NewVerifier(keys)
	if err != nil {
		return err
	}
	r.mu.Lock()
	r.verifier = v
	r.mu.Unlock()
	return nil
}

// ServeHTTP verifies and records a delivery.
func (r *Receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	r.mu.Lock()
	v := r.verifier
	r.mu.Unlock()
	if v == nil {
		r.reject(w, http.StatusServiceUnavailable, "receiver has no signing secret yet")
		return
	}
	body, err := v.VerifyRequest(req)
	if err != nil {
		r.reject(w, http.StatusUnauthorized, "signature: "+err.Error())
		return
	}
	id := req.Header.Get(signature.HeaderID)
	r.mu.Lock()
	if _, seen := r.byID[id]; !seen {
		r.order = append(r.order, id)
	}
	r.byID[id] = append(r.byID[id], Delivery{WebhookID: id, Body: body, Header: req.Header.Clone(), At: time.Now()})
	r.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

func (r *Receiver) reject(w http.ResponseWriter, code int, msg string) {
	r.mu.Lock()
	r.rejected++
	r.mu.Unlock()
	http.Error(w, msg, code)
}

// Unique returns how many distinct webhook-ids were received.
func (r *Receiver) Unique() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.byID)
}

// Stats returns distinct ids, total verified requests and rejected requests.
func (r *Receiver) Stats() (unique, total, rejected int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, d := range r.byID {
		total += len(d)
	}
	return len(r.byID), total, r.rejected
}

// Deliveries returns the first delivery of each webhook-id in arrival order.
func (r *Receiver) Deliveries() []Delivery {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Delivery, 0, len(r.order))
	for _, id := range r.order {
		out = append(out, r.byID[id][0])
	}
	return out
}

// Close stops the receiver.
func (r *Receiver) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := r.srv.Shutdown(ctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		_ = r.srv.Close()
	}
}

func httpGet(ctx context.Context, url string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	return http.DefaultClient.Do(req)
}
