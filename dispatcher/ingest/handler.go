package ingest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/util/cache"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/herald-dev/herald/dispatcher/queue"
	"github.com/herald-dev/herald/dispatcher/router"
)

// EventsPattern is the route the Handler serves.
const EventsPattern = "/v1/namespaces/{namespace}/events"

// Defaults for zero Options fields.
const (
	// DefaultMaxBodyBytes is the largest request body accepted (1 MiB). The
	// embedded queue's default message limit is also 1 MiB.
	DefaultMaxBodyBytes = 1 << 20
	// DefaultMaxBatchEvents is the most events one batch may hold.
	DefaultMaxBatchEvents = 100
	// DefaultMaxConcurrentRequests bounds requests served at once; with the
	// default body limit it bounds the memory bodies take to 64 MiB.
	DefaultMaxConcurrentRequests = 64
	// DefaultPublishTimeout bounds storing the events of one request,
	// retries of transient queue failures included.
	DefaultPublishTimeout = 10 * time.Second
)

// Retry-After values, in seconds.
const (
	retryAfterBusy          = 1 // 429: too many requests in flight
	retryAfterQueue         = 5 // 503: queue full or unreachable
	retryAfterAuthBackend   = 1 // 503: TokenReview/SubjectAccessReview failed
	retryAfterNamespaceLoad = 1 // 503: namespace look-up failed
)

// Publisher stores events durably; *queue.Queue implements it.
type Publisher interface {
	// PublishEvents stores a request's events in order and returns after
	// JetStream acknowledged each, with one result per event; Duplicate
	// reports that an event with its dedup id was already stored.
	PublishEvents(ctx context.Context, namespace string, batch []queue.EventPublish) []queue.PublishResult
	// Connected reports whether the queue can be reached now.
	Connected() bool
}

// FanOut fans events out at ingest when their outcome is already certain;
// *router.Router implements it.
type FanOut interface {
	// FanOutAtIngest returns one outcome per event, in order. An event not
	// FannedOut must be published to the events stream.
	FanOutAtIngest(ctx context.Context, namespace string, events []queue.EventPublish) []router.IngestOutcome
}

// Options configure a Handler.
type Options struct {
	// Queue stores accepted events. Required.
	Queue Publisher
	// FanOut, when set, stores the deliveries of the events it can fan out
	// at once (router.Router.FanOutAtIngest); the other events are stored
	// in the events stream for fan-out. Either way the answer is 202 only
	// once the event is durable.
	FanOut FanOut
	// Namespaces says which namespaces exist. Required.
	Namespaces NamespaceChecker
	// Authenticator and Authorizer check the publisher's bearer token and
	// its permission to create events.herald.dev in the namespace. Both are
	// required unless Insecure is set.
	Authenticator Authenticator
	Authorizer    Authorizer
	// Insecure turns authentication and authorization off: anyone who can
	// reach the handler may publish to any namespace. For local development
	// only; NewHandler logs a warning. Authenticator and Authorizer must be
	// nil then.
	Insecure bool
	// MaxBodyBytes limits the request body; default 1 MiB.
	MaxBodyBytes int64
	// MaxBatchEvents limits the events of one batch; default 100.
	MaxBatchEvents int
	// MaxConcurrentRequests limits the requests served at once; beyond it
	// requests are answered 429 with Retry-After. Default 64.
	MaxConcurrentRequests int
	// PublishTimeout bounds storing one request's events; default 10s.
	PublishTimeout time.Duration
	// BodyReadTimeout bounds reading one request's body, from when the
	// handler starts to; a client that has not sent it all by then is
	// answered 408 and disconnected. Default 10s.
	BodyReadTimeout time.Duration
	// NamespaceRate limits the requests per second each namespace may make
	// (after authorization); beyond it they are answered 429 with
	// Retry-After. Zero, the default, is no rate limit.
	NamespaceRate float64
	// NamespaceBurst is how many requests a namespace may make at once
	// under NamespaceRate; default one second's worth.
	NamespaceBurst int
	// NamespaceMaxConcurrentRequests limits the requests of one namespace
	// served at once, so that one namespace cannot take every request slot;
	// beyond it they are answered 429 with Retry-After. Default half of
	// MaxConcurrentRequests.
	NamespaceMaxConcurrentRequests int
	// Registerer receives the ingest metrics; nil registers none.
	Registerer prometheus.Registerer
	// Log receives the handler's log. Tokens are never logged.
	Log logr.Logger

	// clock drives the namespace rate limits; tests set a fake one.
	clock cache.Clock
}

// Handler serves POST /v1/namespaces/{namespace}/events. See the package
// documentation for the contract.
type Handler struct {
	opts     Options
	mux      *http.ServeMux
	inFlight chan struct{}
	limits   *namespaceLimits
	metrics  *metrics
	log      logr.Logger
	audience string // for the 401 message; empty when unknown
}

// AcceptedResponse is the body of a 202 Accepted answer: the events stored,
// in request order.
type AcceptedResponse struct {
	// Namespace is the namespace the events were stored for.
	Namespace string `json:"namespace"`
	// Events lists each event of the request.
	Events []AcceptedEvent `json:"events"`
}

// AcceptedEvent names one stored event.
type AcceptedEvent struct {
	// ID and Source are the event's CloudEvents id and source (source in the
	// form stored).
	ID     string `json:"id"`
	Source string `json:"source"`
	// WebhookID is the webhook-id header its deliveries carry.
	WebhookID string `json:"webhookId"`
	// Duplicate is true when the event had been stored before (same source
	// and id in the namespace); it was not stored again.
	Duplicate bool `json:"duplicate"`
}

// ErrorResponse is the body of every error answer.
type ErrorResponse struct {
	// Error says what is wrong and, where it helps, what to do.
	Error string `json:"error"`
	// Field names the CloudEvents attribute at fault, if one is.
	Field string `json:"field,omitempty"`
	// Index is the position of the faulty event in a batch.
	Index *int `json:"index,omitempty"`
}

// NewHandler returns the ingest handler.
func NewHandler(opts Options) (*Handler, error) {
	if opts.Queue == nil {
		return nil, errors.New("ingest: Options.Queue is required")
	}
	if opts.Namespaces == nil {
		return nil, errors.New("ingest: Options.Namespaces is required")
	}
	if opts.Insecure {
		if opts.Authenticator != nil || opts.Authorizer != nil {
			return nil, errors.New("ingest: Options.Insecure excludes Authenticator and Authorizer")
		}
	} else if opts.Authenticator == nil || opts.Authorizer == nil {
		return nil, errors.New("ingest: Options.Authenticator and Options.Authorizer are required unless Insecure is set")
	}
	if opts.MaxBodyBytes <= 0 {
		opts.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if opts.MaxBatchEvents <= 0 {
		opts.MaxBatchEvents = DefaultMaxBatchEvents
	}
	if opts.MaxConcurrentRequests <= 0 {
		opts.MaxConcurrentRequests = DefaultMaxConcurrentRequests
	}
	if opts.PublishTimeout <= 0 {
		opts.PublishTimeout = DefaultPublishTimeout
	}
	if opts.BodyReadTimeout <= 0 {
		opts.BodyReadTimeout = DefaultBodyReadTimeout
	}
	if opts.NamespaceMaxConcurrentRequests <= 0 {
		opts.NamespaceMaxConcurrentRequests = max(1, opts.MaxConcurrentRequests/2)
	}
	if opts.NamespaceRate < 0 || opts.NamespaceBurst < 0 {
		return nil, errors.New("ingest: Options.NamespaceRate and Options.NamespaceBurst must not be negative")
	}
	if opts.clock == nil {
		opts.clock = realClock{}
	}
	m, err := newMetrics(opts.Registerer)
	if err != nil {
		return nil, err
	}
	h := &Handler{
		opts:     opts,
		mux:      http.NewServeMux(),
		inFlight: make(chan struct{}, opts.MaxConcurrentRequests),
		limits:   newNamespaceLimits(opts.NamespaceRate, opts.NamespaceBurst, opts.NamespaceMaxConcurrentRequests, opts.clock),
		metrics:  m,
		log:      opts.Log,
	}
	if a, ok := opts.Authenticator.(interface{ Audience() string }); ok {
		h.audience = a.Audience()
	}
	h.mux.HandleFunc(EventsPattern, h.serveEvents)
	h.mux.HandleFunc("/", h.serveNotFound)
	if opts.Insecure {
		h.log.Error(nil, "INSECURE MODE: ingest authentication and authorization are DISABLED; anyone who can reach the dispatcher can publish events to any namespace. Use this for local development only, never in a cluster.")
	}
	return h, nil
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.mux.ServeHTTP(w, r)
}

func (h *Handler) serveNotFound(w http.ResponseWriter, r *http.Request) {
	h.fail(w, r, &requestError{
		status:  http.StatusNotFound,
		index:   -1,
		message: fmt.Sprintf("no such endpoint %s: events are published with POST /v1/namespaces/{namespace}/events", quote(r.URL.Path)),
	})
}

func (h *Handler) serveEvents(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		h.fail(w, r, &requestError{
			status:  http.StatusMethodNotAllowed,
			index:   -1,
			message: fmt.Sprintf("method %s is not allowed: events are published with POST", r.Method),
		})
		return
	}
	namespace := r.PathValue("namespace")
	if len(validation.IsDNS1123Label(namespace)) > 0 {
		h.fail(w, r, namespaceNotFound(namespace))
		return
	}

	select {
	case h.inFlight <- struct{}{}:
		defer func() { <-h.inFlight }()
	default:
		h.metrics.throttled("", throttledInFlight)
		h.fail(w, r, &requestError{
			status:            http.StatusTooManyRequests,
			index:             -1,
			message:           "too many ingest requests in flight; retry later",
			retryAfterSeconds: retryAfterBusy,
		})
		return
	}

	ctx := r.Context()
	if rerr := h.authenticateAndAuthorize(ctx, w, r, namespace); rerr != nil {
		h.fail(w, r, rerr)
		return
	}
	exists, err := h.opts.Namespaces.Exists(ctx, namespace)
	if err != nil {
		h.log.Error(err, "Namespace look-up failed", "namespace", namespace)
		h.fail(w, r, &requestError{
			status:            http.StatusServiceUnavailable,
			index:             -1,
			message:           "cannot look the namespace up now; retry later",
			retryAfterSeconds: retryAfterNamespaceLoad,
		})
		return
	}
	if !exists {
		h.fail(w, r, namespaceNotFound(namespace))
		return
	}
	release, reason, wait := h.limits.acquire(namespace)
	if release == nil {
		h.metrics.throttled(namespace, reason)
		h.fail(w, r, &requestError{
			status:            http.StatusTooManyRequests,
			index:             -1,
			message:           fmt.Sprintf("namespace %s is publishing %s; retry later", quote(namespace), throttleMessages[reason]),
			retryAfterSeconds: retryAfterSeconds(wait),
		})
		return
	}
	defer release()

	// From here on the namespace exists and the caller may publish to it,
	// so events are counted under its name.
	mode, events, rerr := h.decodeRequest(w, r)
	if rerr != nil {
		h.metrics.eventsResult(namespace, resultRejected, max(1, rerr.events))
		h.fail(w, r, rerr)
		return
	}
	resp, rerr := h.store(ctx, namespace, events, mode == modeBatch)
	if rerr != nil {
		h.fail(w, r, rerr)
		return
	}
	h.writeJSON(w, http.StatusAccepted, resp)
	h.metrics.request(http.StatusAccepted)
}

// throttleMessages complete "namespace x is publishing ...".
var throttleMessages = map[string]string{
	throttledNamespaceRate:     "faster than the per-namespace rate limit allows",
	throttledNamespaceInFlight: "too many requests at once",
}

func namespaceNotFound(namespace string) *requestError {
	return &requestError{status: http.StatusNotFound, index: -1, message: fmt.Sprintf("namespace %s not found", quote(namespace))}
}

// authenticateAndAuthorize answers 401 or 403 (or 503 when the API server
// cannot decide) unless the handler is insecure.
func (h *Handler) authenticateAndAuthorize(ctx context.Context, w http.ResponseWriter, r *http.Request, namespace string) *requestError {
	if h.opts.Insecure {
		return nil
	}
	// RFC 6750: a request without credentials gets a bare challenge, one
	// with bad credentials error="invalid_token".
	unauthorized := func(message string, invalidToken bool) *requestError {
		challenge := `Bearer realm="herald"`
		if invalidToken {
			challenge += `, error="invalid_token"`
		}
		w.Header().Set("WWW-Authenticate", challenge)
		return &requestError{status: http.StatusUnauthorized, index: -1, message: message}
	}
	token, err := bearerToken(r)
	if errors.Is(err, errNoBearerToken) {
		message := err.Error()
		if h.audience != "" {
			message = fmt.Sprintf("%s for audience %q", message, h.audience)
		}
		return unauthorized(message, false)
	}
	if err != nil {
		return unauthorized(err.Error(), true)
	}
	user, err := h.opts.Authenticator.AuthenticateToken(ctx, token)
	if err != nil {
		var unauthenticated *UnauthenticatedError
		if errors.As(err, &unauthenticated) {
			h.log.V(1).Info("Rejected bearer token", "namespace", namespace, "reason", unauthenticated.Reason)
			return unauthorized(unauthenticated.Reason, true)
		}
		if errors.Is(err, ErrTokenReviewThrottled) {
			wait := time.Second
			var throttled *TokenReviewThrottledError
			if errors.As(err, &throttled) {
				wait = throttled.RetryAfter
			}
			h.metrics.throttled("", throttledTokenReviewRate)
			return &requestError{
				status:            http.StatusTooManyRequests,
				index:             -1,
				message:           "too many new bearer tokens to verify at once; retry later",
				retryAfterSeconds: retryAfterSeconds(wait),
			}
		}
		h.log.Error(err, "Token authentication failed", "namespace", namespace)
		return &requestError{
			status:            http.StatusServiceUnavailable,
			index:             -1,
			message:           "cannot verify the bearer token now: the Kubernetes API is unavailable; retry later",
			retryAfterSeconds: retryAfterAuthBackend,
		}
	}
	allowed, reason, err := h.opts.Authorizer.AuthorizePublish(ctx, user, namespace)
	if err != nil {
		h.log.Error(err, "Authorization failed", "namespace", namespace, "user", user.Username)
		return &requestError{
			status:            http.StatusServiceUnavailable,
			index:             -1,
			message:           "cannot authorize the request now: the Kubernetes API is unavailable; retry later",
			retryAfterSeconds: retryAfterAuthBackend,
		}
	}
	if !allowed {
		message := fmt.Sprintf("forbidden: user %s may not %s %s.%s in namespace %q; grant it with a Role (apiGroups [%q], resources [%q], verbs [%q]) and a RoleBinding in that namespace",
			quote(user.Username), PublishVerb, PublishResource, PublishGroup, namespace, PublishGroup, PublishResource, PublishVerb)
		if reason != "" {
			message += " (authorizer: " + reason + ")"
		}
		h.log.V(1).Info("Publisher not authorized", "namespace", namespace, "user", user.Username)
		return &requestError{status: http.StatusForbidden, index: -1, message: message}
	}
	return nil
}

// Content types of the structured and batch modes.
const (
	mediaTypeStructured = "application/cloudevents+json"
	mediaTypeBatch      = "application/cloudevents-batch+json"
)

type requestMode int

const (
	modeStructured requestMode = iota + 1
	modeBinary
	modeBatch
)

// modeOf picks the content mode of a request the way the CloudEvents HTTP
// binding defines it: an event-format Content-Type means structured (or
// batch), otherwise ce-specversion means binary.
func modeOf(r *http.Request) (requestMode, *requestError) {
	unsupported := func(format string, args ...any) (requestMode, *requestError) {
		return 0, &requestError{status: http.StatusUnsupportedMediaType, index: -1, message: fmt.Sprintf(format, args...)}
	}
	const accepted = "send application/cloudevents+json, application/cloudevents-batch+json, or a binary-mode event (ce-* headers)"
	if enc := r.Header.Get("Content-Encoding"); enc != "" && !strings.EqualFold(enc, "identity") {
		return unsupported("Content-Encoding %s is not supported; send the body unencoded", quote(enc))
	}
	binary := r.Header.Get("Ce-Specversion") != ""
	contentType := r.Header.Get("Content-Type")
	if contentType == "" {
		if binary {
			return modeBinary, nil
		}
		return unsupported("missing Content-Type: %s", accepted)
	}
	mediaType, params, err := mime.ParseMediaType(contentType)
	if err != nil {
		return unsupported("Content-Type %s is not a valid media type: %s", quote(contentType), accepted)
	}
	switch {
	case mediaType == mediaTypeStructured || mediaType == mediaTypeBatch:
		if cs, ok := params["charset"]; ok && !strings.EqualFold(cs, "utf-8") {
			return unsupported("charset %s is not supported: CloudEvents JSON is UTF-8", quote(cs))
		}
		if mediaType == mediaTypeBatch {
			return modeBatch, nil
		}
		return modeStructured, nil
	case strings.HasPrefix(mediaType, "application/cloudevents"):
		return unsupported("event format %s is not supported: %s", quote(mediaType), accepted)
	case binary:
		return modeBinary, nil
	}
	for key := range r.Header {
		if strings.HasPrefix(key, ceHeaderPrefix) {
			return 0, badEvent("specversion", "missing required attribute specversion (header ce-specversion) in a binary-mode event")
		}
	}
	return unsupported("Content-Type %s is not a CloudEvents content type and there is no ce-specversion header: %s", quote(contentType), accepted)
}

// decodeRequest reads and decodes the events of a request.
func (h *Handler) decodeRequest(w http.ResponseWriter, r *http.Request) (requestMode, []*decodedEvent, *requestError) {
	mode, rerr := modeOf(r)
	if rerr != nil {
		return mode, nil, rerr
	}
	body, rerr := h.readBody(w, r)
	if rerr != nil {
		return mode, nil, rerr
	}
	var events []*decodedEvent
	switch mode {
	case modeBatch:
		events, rerr = decodeBatch(body, h.opts.MaxBatchEvents)
	case modeBinary:
		var ev *decodedEvent
		if ev, rerr = decodeBinary(r.Header, body); rerr == nil {
			events = []*decodedEvent{ev}
		}
	default:
		var ev *decodedEvent
		if ev, rerr = decodeStructured(body); rerr == nil {
			events = []*decodedEvent{ev}
		}
	}
	return mode, events, rerr
}

func (h *Handler) tooLarge() *requestError {
	return &requestError{
		status:  http.StatusRequestEntityTooLarge,
		index:   -1,
		message: fmt.Sprintf("request body exceeds the limit of %d bytes (%s); send smaller events or batches", h.opts.MaxBodyBytes, byteSize(h.opts.MaxBodyBytes)),
	}
}

// readBody reads the body within BodyReadTimeout, so a client that stalls
// holds its request slot no longer.
func (h *Handler) readBody(w http.ResponseWriter, r *http.Request) ([]byte, *requestError) {
	if r.ContentLength > h.opts.MaxBodyBytes {
		return nil, h.tooLarge()
	}
	rc := http.NewResponseController(w)
	// Servers that cannot set deadlines (httptest.ResponseRecorder) rely
	// on their own.
	deadlineSet := rc.SetReadDeadline(time.Now().Add(h.opts.BodyReadTimeout)) == nil
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, h.opts.MaxBodyBytes))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return nil, h.tooLarge()
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			w.Header().Set("Connection", "close")
			return nil, &requestError{
				status:  http.StatusRequestTimeout,
				index:   -1,
				message: fmt.Sprintf("the request body did not arrive within %s", h.opts.BodyReadTimeout),
			}
		}
		return nil, &requestError{status: http.StatusBadRequest, index: -1, message: fmt.Sprintf("reading the request body failed: %v", err)}
	}
	if deadlineSet {
		// The body is in; storing it may take longer than what is left,
		// and the server's background read must not see a deadline as the
		// client going away.
		_ = rc.SetReadDeadline(time.Time{})
	}
	return body, nil
}

func byteSize(n int64) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d B", n)
}

// store publishes the events one after another, in request order, and
// returns once JetStream acknowledged the last.
func (h *Handler) store(ctx context.Context, namespace string, events []*decodedEvent, batch bool) (*AcceptedResponse, *requestError) {
	resp := &AcceptedResponse{Namespace: namespace, Events: make([]AcceptedEvent, 0, len(events))}
	if !h.opts.Queue.Connected() {
		h.metrics.eventsResult(namespace, resultRejected, len(events))
		return nil, &requestError{
			status:            http.StatusServiceUnavailable,
			index:             -1,
			message:           "the event queue is not reachable; retry later",
			retryAfterSeconds: retryAfterQueue,
		}
	}
	// A publish that has begun is finished even if the client goes away:
	// stopping half-way would only leave the outcome unknown.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), h.opts.PublishTimeout)
	defer cancel()
	batchMsgs := make([]queue.EventPublish, len(events))
	webhookIDs := make([]string, len(events))
	// The SDK builds an event's source string from its parsed URI on every
	// call: once per event here.
	sources := make([]string, len(events))
	ingestedAt := time.Now().UTC().Format(time.RFC3339Nano)
	for i, ev := range events {
		sources[i] = ev.source()
		eventKey := queue.EventDedupID(namespace, sources[i], ev.id())
		webhookIDs[i] = queue.WebhookID(namespace, sources[i], ev.id())
		header := queue.Header{}
		header.Set(queue.HeaderWebhookID, webhookIDs[i])
		header.Set(queue.HeaderEventKey, eventKey)
		header.Set(queue.HeaderIngestedAt, ingestedAt)
		batchMsgs[i] = queue.EventPublish{DedupID: eventKey, Payload: ev.payload, Header: header}
	}
	results := h.publish(ctx, namespace, batchMsgs)
	var firstErr *requestError
	for i, res := range results {
		switch {
		case res.Err != nil:
			h.metrics.eventsResult(namespace, resultRejected, 1)
			if firstErr == nil {
				firstErr = h.publishError(res.Err, namespace, i, batch)
			}
		case res.Duplicate:
			h.metrics.eventsResult(namespace, resultDuplicate, 1)
		default:
			h.metrics.eventsResult(namespace, resultAccepted, 1)
		}
		if firstErr == nil {
			resp.Events = append(resp.Events, AcceptedEvent{ID: events[i].id(), Source: sources[i], WebhookID: webhookIDs[i], Duplicate: res.Duplicate})
		}
	}
	if firstErr != nil {
		return nil, firstErr
	}
	return resp, nil
}

// publish stores a request's events and returns one result per event: the
// events fanned out at ingest (Options.FanOut) are stored as their
// deliveries; the others in one pipelined publish to the events stream, in
// order, each acknowledged by JetStream before the answer.
func (h *Handler) publish(ctx context.Context, namespace string, events []queue.EventPublish) []queue.PublishResult {
	if h.opts.FanOut == nil {
		return h.opts.Queue.PublishEvents(ctx, namespace, events)
	}
	outcomes := h.opts.FanOut.FanOutAtIngest(ctx, namespace, events)
	results := make([]queue.PublishResult, len(events))
	var rest []queue.EventPublish
	var restAt []int
	for i, o := range outcomes {
		if o.FannedOut {
			results[i].Duplicate = o.Duplicate
			continue
		}
		rest = append(rest, events[i])
		restAt = append(restAt, i)
	}
	if len(rest) == 0 {
		return results
	}
	for j, res := range h.opts.Queue.PublishEvents(ctx, namespace, rest) {
		results[restAt[j]] = res
	}
	return results
}

func (h *Handler) publishError(err error, namespace string, index int, batch bool) *requestError {
	rerr := &requestError{index: -1}
	if batch {
		rerr.index = index
	}
	switch {
	case errors.Is(err, queue.ErrQueueFull):
		rerr.status, rerr.retryAfterSeconds = http.StatusServiceUnavailable, retryAfterQueue
		rerr.message = "the event queue is full; retry later"
		h.log.Info("Event queue full, rejecting event", "namespace", namespace)
	case errors.Is(err, queue.ErrMessageTooLarge):
		rerr.status = http.StatusRequestEntityTooLarge
		rerr.message = "the event is too large for the queue; send a smaller event"
	case errors.Is(err, queue.ErrClosed), errors.Is(err, context.DeadlineExceeded):
		rerr.status, rerr.retryAfterSeconds = http.StatusServiceUnavailable, retryAfterQueue
		rerr.message = "the event queue is not available; retry later"
		h.log.Error(err, "Storing event failed", "namespace", namespace)
	default:
		rerr.status = http.StatusInternalServerError
		rerr.message = "storing the event failed"
		h.log.Error(err, "Storing event failed", "namespace", namespace)
	}
	if batch && index > 0 {
		rerr.message += fmt.Sprintf("; events 0 to %d of the batch were stored (later ones may have been too), and re-sending the whole batch is safe (stored events are answered as duplicates)", index-1)
	}
	return rerr
}

// fail writes an error answer.
func (h *Handler) fail(w http.ResponseWriter, r *http.Request, rerr *requestError) {
	if rerr.retryAfterSeconds > 0 {
		w.Header().Set("Retry-After", fmt.Sprint(rerr.retryAfterSeconds))
	}
	body := ErrorResponse{Error: rerr.Error(), Field: rerr.field}
	if rerr.index >= 0 {
		index := rerr.index
		body.Index = &index
	}
	h.writeJSON(w, rerr.status, body)
	h.metrics.request(rerr.status)
	if rerr.status != http.StatusUnauthorized && rerr.status != http.StatusForbidden { // logged where decided
		h.log.V(1).Info("Rejected ingest request", "method", r.Method, "path", r.URL.Path, "status", rerr.status, "reason", rerr.Error())
	}
}

func (h *Handler) writeJSON(w http.ResponseWriter, status int, body any) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)                 // messages quote "<token>"; this is not HTML
	if err := enc.Encode(body); err != nil { // cannot happen for these types
		h.log.Error(err, "Encoding response failed")
		status = http.StatusInternalServerError
		buf.Reset()
		buf.WriteString(`{"error":"internal error"}` + "\n")
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}
