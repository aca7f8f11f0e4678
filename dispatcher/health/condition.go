package health

import (
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
)

// Failure reasons (Outcome.Reason) with a DeliveryHealthy reason of their
// own: they are configuration problems, reported from the first failure.
const (
	ReasonBlockedAddress    = heraldv1.BlockedAddressReason
	ReasonSigningKeyMissing = heraldv1.SigningKeyMissingReason
)

// endpointFacts is everything DeliveryHealthy is derived from.
type endpointFacts struct {
	Generation int64
	Suspended  bool
	// SigningKeyMissing: the catalog has the endpoint without a valid key.
	SigningKeyMissing bool
	State             endpointState
	// Threshold is the number of consecutive failures that make the
	// endpoint unhealthy.
	Threshold int64
}

// deliveryHealthy derives the DeliveryHealthy condition (without
// lastTransitionTime). Messages name reasons, never counts or times, so they
// change only when the verdict does.
func deliveryHealthy(f endpointFacts) metav1.Condition {
	c := metav1.Condition{Type: heraldv1.DeliveryHealthyCondition, ObservedGeneration: f.Generation}
	st := f.State
	lastFailed := !st.LastFailureTime.IsZero() && st.LastFailureTime.After(st.LastSuccessTime) && st.ConsecutiveFailures > 0
	switch {
	case f.Suspended:
		c.Status, c.Reason = metav1.ConditionUnknown, heraldv1.DisabledReason
		c.Message = "Delivery is suspended (spec.suspend); events queue until it is resumed"
	case st.GoneGeneration != 0 && st.GoneGeneration == f.Generation:
		c.Status, c.Reason = metav1.ConditionFalse, heraldv1.EndpointGoneReason
		c.Message = "The receiver answered 410 Gone; delivery is stopped until the endpoint's spec changes"
	case f.SigningKeyMissing || (lastFailed && st.LastFailureReason == ReasonSigningKeyMissing):
		c.Status, c.Reason = metav1.ConditionFalse, heraldv1.SigningKeyMissingReason
		c.Message = "No valid signing key: deliveries cannot be signed; check the endpoint's signing Secret"
	case lastFailed && st.LastFailureReason == ReasonBlockedAddress:
		c.Status, c.Reason = metav1.ConditionFalse, heraldv1.BlockedAddressReason
		c.Message = "The endpoint's host resolves to an address the dispatcher refuses (private, loopback, link-local or similar); allow its CIDR or use a public address"
	case !st.CircuitOpenTime.IsZero() && st.CircuitOpenTime.After(st.LastSuccessTime):
		c.Status, c.Reason = metav1.ConditionFalse, heraldv1.CircuitOpenReason
		c.Message = fmt.Sprintf("Circuit breaker open: too many failed attempts (last: %s); probing with single requests", failureReason(st))
	case st.ConsecutiveFailures >= f.Threshold && lastFailed:
		c.Status, c.Reason = metav1.ConditionFalse, heraldv1.ConsecutiveFailuresReason
		c.Message = fmt.Sprintf("Consecutive delivery attempts failed (last: %s)", failureReason(st))
	case st.LastAttemptTime.IsZero():
		c.Status, c.Reason = metav1.ConditionUnknown, heraldv1.NoTrafficReason
		c.Message = "No delivery attempted yet"
	case lastFailed:
		c.Status, c.Reason = metav1.ConditionTrue, heraldv1.DeliveringReason
		c.Message = fmt.Sprintf("Delivering; the last attempt failed (%s)", failureReason(st))
	default:
		c.Status, c.Reason = metav1.ConditionTrue, heraldv1.DeliveringReason
		c.Message = "Deliveries succeed"
	}
	return c
}

func failureReason(st endpointState) string {
	if st.LastFailureReason == "" {
		return "unknown error"
	}
	return st.LastFailureReason
}

// queueStats are an endpoint's queue counts.
type queueStats struct {
	Pending      int64
	DeadLettered int64
}

// deliveryStatus is status.delivery as the dispatcher writes it. Times are
// truncated to seconds, the API's precision, so that comparing with what
// the API server returns detects real changes only.
func deliveryStatus(st endpointState, stats queueStats) heraldv1.DeliveryStatus {
	return heraldv1.DeliveryStatus{
		LastAttemptTime:     apiTime(st.LastAttemptTime),
		LastSuccessTime:     apiTime(st.LastSuccessTime),
		LastFailureTime:     apiTime(st.LastFailureTime),
		LastFailureReason:   st.LastFailureReason,
		ConsecutiveFailures: st.ConsecutiveFailures,
		Delivered:           st.Delivered,
		Pending:             stats.Pending,
		DeadLettered:        stats.DeadLettered,
		GoneGeneration:      st.GoneGeneration,
	}
}

func apiTime(t time.Time) *metav1.Time {
	if t.IsZero() {
		return nil
	}
	mt := metav1.NewTime(t.UTC().Truncate(time.Second))
	return &mt
}

// withTransitionTime sets c.LastTransitionTime: the existing condition's
// when its status is unchanged, now otherwise.
func withTransitionTime(c metav1.Condition, existing []metav1.Condition, now time.Time) metav1.Condition {
	if old := meta.FindStatusCondition(existing, c.Type); old != nil && old.Status == c.Status && !old.LastTransitionTime.IsZero() {
		c.LastTransitionTime = old.LastTransitionTime
	} else {
		c.LastTransitionTime = metav1.NewTime(now.UTC().Truncate(time.Second))
	}
	return c
}

// endpointStatusCurrent reports whether the object already shows the
// dispatcher's desired fields.
func endpointStatusCurrent(ep *heraldv1.WebhookEndpoint, delivery heraldv1.DeliveryStatus, cond metav1.Condition) bool {
	var current heraldv1.DeliveryStatus
	if ep.Status.Delivery != nil {
		current = *ep.Status.Delivery
	}
	if !equality.Semantic.DeepEqual(current, delivery) {
		return false
	}
	old := meta.FindStatusCondition(ep.Status.Conditions, cond.Type)
	return old != nil && old.Status == cond.Status && old.Reason == cond.Reason && old.Message == cond.Message &&
		old.ObservedGeneration == cond.ObservedGeneration && old.LastTransitionTime.Equal(&cond.LastTransitionTime)
}

// subscriptionStatusCurrent reports whether the object already shows the
// dispatcher's desired counts.
func subscriptionStatusCurrent(sub *heraldv1.Subscription, st subscriptionState) bool {
	return sub.Status.Matched == st.Matched && sub.Status.Delivered == st.Delivered &&
		equality.Semantic.DeepEqual(sub.Status.LastMatchedTime, apiTime(st.LastMatchedTime))
}

// stateFromEndpointStatus turns the counts an object already shows into a
// delta, to seed the KV totals when they were lost (a new NATS store).
func stateFromEndpointStatus(d *heraldv1.DeliveryStatus) endpointState {
	if d == nil {
		return endpointState{}
	}
	return endpointState{
		Delivered:           d.Delivered,
		LastAttemptTime:     timeOf(d.LastAttemptTime),
		LastSuccessTime:     timeOf(d.LastSuccessTime),
		LastFailureTime:     timeOf(d.LastFailureTime),
		LastFailureReason:   d.LastFailureReason,
		ConsecutiveFailures: d.ConsecutiveFailures,
		GoneGeneration:      d.GoneGeneration,
	}
}

func stateFromSubscriptionStatus(s heraldv1.SubscriptionStatus) subscriptionState {
	return subscriptionState{Matched: s.Matched, Delivered: s.Delivered, LastMatchedTime: timeOf(s.LastMatchedTime)}
}

func timeOf(t *metav1.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return t.Time
}
