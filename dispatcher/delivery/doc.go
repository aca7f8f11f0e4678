// Package delivery is the dispatcher's delivery stage: it consumes each
// Ready WebhookEndpoint's deliveries from the queue, turns every delivery
// into a signed HTTP request in the endpoint's payload format, sends it
// through an SSRF-guarded client, and acknowledges, retries (capped
// exponential backoff with full jitter, Retry-After honoured within bounds)
// or dead-letters it.
//
// Pacing is per endpoint: every endpoint has its own consumer, goroutines,
// circuit breaker, in-flight limit and token bucket, so a failing or slow
// receiver never delays a healthy one. With several dispatcher replicas
// (Options.Owners), one replica at a time delivers to an endpoint, so these
// limits are the endpoint's and not a replica's (see ownership). Outcomes
// of attempts go to a Reporter (the health stage) and to Prometheus
// metrics.
//
// The entry point is Manager: NewManager, then Sync with the catalog's
// endpoints whenever they change, and Stop on shutdown.
package delivery
