// Package ingest owns the dispatcher's publishing endpoint:
//
//	POST /v1/namespaces/{namespace}/events
//
// It accepts CloudEvents 1.0 over HTTP in the three forms the HTTP protocol
// binding defines — structured (application/cloudevents+json), binary (ce-*
// headers, the body is the event's data) and batch
// (application/cloudevents-batch+json) — so the CloudEvents SDK clients work
// against it unchanged. Each event is stored in JetStream (dispatcher/queue)
// in its canonical structured JSON form before the request is answered
// 202 Accepted.
//
// # Request processing
//
// A request passes these steps in order; the first that fails answers, and
// nothing is stored:
//
//  1. route and method: 404 for any other path, 405 (with Allow: POST) for
//     any other method; 404 for a namespace name that cannot exist;
//  2. back-pressure: 429 with Retry-After when MaxConcurrentRequests
//     requests are already being served;
//  3. authentication (bearer token, TokenReview with Herald's audience): 401;
//     429 with Retry-After when the token has no cached decision and the
//     TokenReview budget (ReviewLimit) is spent;
//  4. authorization (SubjectAccessReview for create events.herald.dev in the
//     namespace): 403. It comes before the namespace check, so that only
//     callers allowed to publish there learn whether a namespace exists, as
//     with the Kubernetes API itself;
//  5. the namespace exists: 404;
//  6. the namespace's limits: 429 with Retry-After past
//     NamespaceMaxConcurrentRequests in flight or NamespaceRate. They come
//     after authorization so that no outsider can spend a namespace's
//     budget;
//  7. content type: 415 for anything but the three CloudEvents forms, and for
//     any Content-Encoding;
//  8. body size: 413 over MaxBodyBytes, or over MaxBatchEvents events; 408
//     when the body does not arrive within BodyReadTimeout;
//  9. decoding and validation: 400 naming the attribute (and, in a batch, the
//     index of the event);
//  10. storage: 503 with Retry-After when the queue is full or unreachable,
//     413 when an event exceeds the queue's message size.
//
// NewServer and LimitConnections bound what a connection can hold before a
// request reaches the handler: header and idle deadlines and a maximum of
// connections served at once.
//
// Error bodies are JSON: {"error": "...", "field": "id", "index": 3}; they
// never contain the bearer token.
//
// # Batches
//
// A batch is all or nothing at validation: every event is decoded and
// validated before the first is stored, and one invalid event rejects the
// whole batch with 400 naming its index and attribute. Valid events are then
// stored one after another, in batch order, so subscriptions with ordered
// delivery see them in that order. Storage itself is not transactional: when
// the queue fails part-way (503), the events before the failing one are
// stored; re-sending the whole batch is safe because every event is stored
// under a de-duplication id derived from namespace, source and id, so the
// ones already stored are answered as duplicates and not stored again.
//
// # Idempotency
//
// An event is identified by namespace, source and id. Publishing it again
// within the queue's duplicate window (queue.DefaultDuplicateWindow) is
// answered 202 with "duplicate": true and stores nothing; the first copy is
// the one delivered.
package ingest
