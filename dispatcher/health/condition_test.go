package health

import (
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	heraldv1 "github.com/herald-dev/herald/api/v1alpha1"
)

func TestDeliveryHealthy(t *testing.T) {
	tests := []struct {
		name       string
		facts      endpointFacts
		outcomes   []Outcome
		wantStatus metav1.ConditionStatus
		wantReason string
	}{
		{"no traffic", endpointFacts{}, nil, metav1.ConditionUnknown, heraldv1.NoTrafficReason},
		{"delivering", endpointFacts{}, []Outcome{success(1)}, metav1.ConditionTrue, heraldv1.DeliveringReason},
		{"one failure is still delivering", endpointFacts{},
			[]Outcome{success(1), failure(2, "HTTP 503")}, metav1.ConditionTrue, heraldv1.DeliveringReason},
		{"consecutive failures at threshold", endpointFacts{},
			[]Outcome{success(1), failure(2, "HTTP 503"), failure(3, "HTTP 503"), failure(4, "HTTP 503")}, metav1.ConditionFalse, heraldv1.ConsecutiveFailuresReason},
		{"recovered after failures", endpointFacts{},
			[]Outcome{failure(2, "HTTP 503"), failure(3, "HTTP 503"), failure(4, "HTTP 503"), success(5)}, metav1.ConditionTrue, heraldv1.DeliveringReason},
		{"circuit open", endpointFacts{},
			[]Outcome{success(1), failure(2, "Timeout"), {Time: at(3), Reason: "Timeout", CircuitOpen: true}}, metav1.ConditionFalse, heraldv1.CircuitOpenReason},
		{"circuit closed by a successful probe", endpointFacts{},
			[]Outcome{{Time: at(3), Reason: "Timeout", CircuitOpen: true}, success(4)}, metav1.ConditionTrue, heraldv1.DeliveringReason},
		{"blocked address from the first failure", endpointFacts{},
			[]Outcome{failure(1, ReasonBlockedAddress)}, metav1.ConditionFalse, heraldv1.BlockedAddressReason},
		{"blocked address fixed", endpointFacts{},
			[]Outcome{failure(1, ReasonBlockedAddress), success(2)}, metav1.ConditionTrue, heraldv1.DeliveringReason},
		{"signing key missing reported by delivery", endpointFacts{},
			[]Outcome{failure(1, ReasonSigningKeyMissing)}, metav1.ConditionFalse, heraldv1.SigningKeyMissingReason},
		{"signing key missing in catalog", endpointFacts{SigningKeyMissing: true},
			nil, metav1.ConditionFalse, heraldv1.SigningKeyMissingReason},
		{"gone for this generation", endpointFacts{Generation: 3},
			[]Outcome{{Time: at(1), Reason: "HTTP 410", Gone: true, GoneGeneration: 3}}, metav1.ConditionFalse, heraldv1.EndpointGoneReason},
		{"gone for an older generation", endpointFacts{Generation: 4},
			[]Outcome{{Time: at(1), Reason: "HTTP 410", Gone: true, GoneGeneration: 3}, success(2)}, metav1.ConditionTrue, heraldv1.DeliveringReason},
		{"suspended wins", endpointFacts{Suspended: true, Generation: 3},
			[]Outcome{{Time: at(1), Reason: "HTTP 410", Gone: true, GoneGeneration: 3}}, metav1.ConditionUnknown, heraldv1.DisabledReason},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := tt.facts
			f.State = fold(tt.outcomes...)
			f.Threshold = 3
			c := deliveryHealthy(f)
			if c.Status != tt.wantStatus || c.Reason != tt.wantReason {
				t.Errorf("DeliveryHealthy = %s/%s (%q), want %s/%s", c.Status, c.Reason, c.Message, tt.wantStatus, tt.wantReason)
			}
			if c.Type != heraldv1.DeliveryHealthyCondition || c.ObservedGeneration != f.Generation || c.Message == "" {
				t.Errorf("condition %+v", c)
			}
		})
	}
}

func TestConditionMessageIsStable(t *testing.T) {
	// More failures of the same kind must not change the condition, or
	// every failure would cost a status write.
	f := endpointFacts{Threshold: 3, State: fold(failure(1, "HTTP 503"), failure(2, "HTTP 503"), failure(3, "HTTP 503"))}
	c1 := deliveryHealthy(f)
	f.State = fold(failure(1, "HTTP 503"), failure(2, "HTTP 503"), failure(3, "HTTP 503"), failure(4, "HTTP 503"), failure(9, "HTTP 503"))
	if c2 := deliveryHealthy(f); c1 != c2 {
		t.Errorf("condition changed with the failure count:\n%+v\n%+v", c1, c2)
	}
}

func TestWithTransitionTime(t *testing.T) {
	old := metav1.NewTime(at(-3600))
	existing := []metav1.Condition{
		{Type: heraldv1.ReadyCondition, Status: metav1.ConditionTrue, LastTransitionTime: metav1.NewTime(at(-7200))},
		{Type: heraldv1.DeliveryHealthyCondition, Status: metav1.ConditionTrue, Reason: heraldv1.DeliveringReason, LastTransitionTime: old},
	}
	now := at(0).Add(300 * time.Millisecond)
	same := withTransitionTime(metav1.Condition{Type: heraldv1.DeliveryHealthyCondition, Status: metav1.ConditionTrue, Reason: "Other"}, existing, now)
	if !same.LastTransitionTime.Equal(&old) {
		t.Errorf("unchanged status moved lastTransitionTime to %v", same.LastTransitionTime)
	}
	changed := withTransitionTime(metav1.Condition{Type: heraldv1.DeliveryHealthyCondition, Status: metav1.ConditionFalse}, existing, now)
	if want := metav1.NewTime(at(0)); !changed.LastTransitionTime.Equal(&want) {
		t.Errorf("changed status has lastTransitionTime %v, want %v", changed.LastTransitionTime, want)
	}
}

func TestEndpointStatusCurrent(t *testing.T) {
	st := fold(success(1), failure(2, "HTTP 500"))
	st.LastAttemptTime = st.LastAttemptTime.Add(700 * time.Millisecond) // sub-second precision is not compared
	delivery := deliveryStatus(st, queueStats{Pending: 4, DeadLettered: 1})
	cond := withTransitionTime(deliveryHealthy(endpointFacts{Threshold: 3, State: st, Generation: 1}), nil, at(10))

	// What the API server returns after the write: times parsed back in
	// local time at second precision.
	ep := &heraldv1.WebhookEndpoint{}
	ep.Status.Delivery = delivery.DeepCopy()
	ep.Status.Delivery.LastAttemptTime = &metav1.Time{Time: at(2).Local()}
	ep.Status.Conditions = []metav1.Condition{{Type: heraldv1.ReadyCondition, Status: metav1.ConditionTrue}, cond}
	if !endpointStatusCurrent(ep, delivery, cond) {
		t.Fatal("status equal to the desired one is reported as changed")
	}
	more := delivery
	more.Pending = 5
	if endpointStatusCurrent(ep, more, cond) {
		t.Error("a changed pending count is not detected")
	}
	other := cond
	other.Message = "different"
	if endpointStatusCurrent(ep, delivery, other) {
		t.Error("a changed condition is not detected")
	}
	if endpointStatusCurrent(&heraldv1.WebhookEndpoint{}, delivery, cond) {
		t.Error("an object without dispatcher status is reported as current")
	}
}
