package health

import (
	"strings"

	"github.com/herald-dev/herald/dispatcher/delivery"
)

// The delivery stage reports every processed delivery to a
// delivery.Reporter; the Reporter is one.
var _ delivery.Reporter = (*Reporter)(nil)

// Attempted records a delivery outcome (delivery.Reporter). Like Record, it
// only updates memory and never blocks.
func (r *Reporter) Attempted(_ string, o delivery.Outcome) {
	r.Record(fromDelivery(o))
}

func fromDelivery(o delivery.Outcome) Outcome {
	out := Outcome{
		Namespace:    o.Namespace,
		Endpoint:     o.Endpoint,
		Time:         o.Time,
		Success:      o.Success,
		NotSent:      !o.Sent,
		Reason:       o.Reason,
		Gone:         o.Gone,
		CircuitOpen:  o.CircuitOpen,
		DeadLettered: o.DeadLettered,
	}
	if o.Gone {
		out.GoneGeneration = o.Generation
	}
	for _, s := range strings.Split(o.Subscriptions, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out.Subscriptions = append(out.Subscriptions, s)
		}
	}
	return out
}
