package delivery

import (
	"github.com/herald-dev/herald/dispatcher/deliverylog"
)

// EventContext reads the CloudEvents context attributes of a stored
// delivery payload, leniently (what cannot be read stays empty): the one
// rule the delivery log and Redeliveries share.
func EventContext(payload []byte) deliverylog.Event { return eventContext(payload) }
