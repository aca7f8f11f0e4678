// Package deliverylog keeps the delivery log: every processed delivery
// attempt of every endpoint, in a JetStream stream bounded by age and
// bytes, and folds it back into delivery.herald.dev/v1alpha1 Deliveries for
// the aggregated API.
//
// One subject per delivery, herald.log.<namespace>.<endpoint>.<webhook-id>
// (tokens escaped as the queue escapes them), holds the delivery's records
// oldest first: one per processed attempt and one per requeue (a
// Redelivery, a ping). The stream keeps the last MaxAttempts records of a
// subject and discards the oldest records when it is full, so a full log
// never refuses a write.
//
// Writes are fire-and-forget core NATS publishes that the stream captures:
// recording never blocks or fails a delivery, and a log that is full,
// missing or unreachable changes nothing in delivery semantics; lost
// records are counted (herald_delivery_log_records_total{result}). Any
// replica serves any query: the log lives in JetStream, not in a replica.
package deliverylog
