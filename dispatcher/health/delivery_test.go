package health

import (
	"reflect"
	"testing"

	"github.com/herald-dev/herald/dispatcher/delivery"
)

func TestFromDelivery(t *testing.T) {
	tests := []struct {
		name string
		in   delivery.Outcome
		want Outcome
	}{
		{
			name: "success with subscriptions",
			in:   delivery.Outcome{Namespace: "ns", Endpoint: "ep", Generation: 2, Time: at(1), Sent: true, Success: true, StatusCode: 200, Subscriptions: "a,b"},
			want: Outcome{Namespace: "ns", Endpoint: "ep", Time: at(1), Success: true, Subscriptions: []string{"a", "b"}},
		},
		{
			name: "gone carries the generation",
			in:   delivery.Outcome{Namespace: "ns", Endpoint: "ep", Generation: 3, Time: at(1), Sent: true, StatusCode: 410, Reason: "HTTP 410", Gone: true},
			want: Outcome{Namespace: "ns", Endpoint: "ep", Time: at(1), Reason: "HTTP 410", Gone: true, GoneGeneration: 3},
		},
		{
			name: "dead-lettered before an attempt",
			in:   delivery.Outcome{Namespace: "ns", Endpoint: "ep", Time: at(1), Reason: delivery.ReasonMaxAge, DeadLettered: true, Subscriptions: ""},
			want: Outcome{Namespace: "ns", Endpoint: "ep", Time: at(1), NotSent: true, Reason: delivery.ReasonMaxAge, DeadLettered: true},
		},
		{
			name: "circuit open",
			in:   delivery.Outcome{Namespace: "ns", Endpoint: "ep", Time: at(1), Sent: true, Reason: delivery.ReasonTimeout, CircuitOpen: true},
			want: Outcome{Namespace: "ns", Endpoint: "ep", Time: at(1), Reason: delivery.ReasonTimeout, CircuitOpen: true},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := fromDelivery(tt.in); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("fromDelivery = %+v, want %+v", got, tt.want)
			}
		})
	}
	// The reason strings the conditions single out are the delivery stage's.
	if ReasonBlockedAddress != delivery.ReasonBlockedAddress || ReasonSigningKeyMissing != delivery.ReasonSigningKeyMissing {
		t.Error("failure reasons differ between the delivery and health stages")
	}
}
