package queue

import (
	"fmt"
	"strings"

	"github.com/herald-dev/herald/dispatcher/internal/fieldhash"
)

// Stream names. They are fixed so that several dispatcher replicas, and a
// dispatcher restarted with a newer version, find the same streams.
const (
	// EventsStream holds ingested CloudEvents, one subject per namespace.
	EventsStream = "HERALD_EVENTS"
	// DeliveriesStream holds one message per event per endpoint after fan-out.
	DeliveriesStream = "HERALD_DELIVERIES"
	// DeadLetterStream holds deliveries that exhausted their retries.
	DeadLetterStream = "HERALD_DEADLETTER"
)

// Subject prefixes of the three streams. A subject is the prefix followed by
// escaped tokens (see SubjectToken): herald.events.<namespace>,
// herald.deliveries.<namespace>.<endpoint>,
// herald.deadletter.<namespace>.<endpoint>.
const (
	eventsPrefix     = "herald.events"
	deliveriesPrefix = "herald.deliveries"
	deadLetterPrefix = "herald.deadletter"
)

// escapeMark starts an escape sequence in a subject token: the mark followed
// by the two lower-case hex digits of one byte. It is not a character a
// Kubernetes name can contain, so escaped names never collide with plain ones.
const escapeMark = '_'

// SubjectToken encodes a name (a Kubernetes namespace or object name) as one
// NATS subject token. Kubernetes names contain only [a-z0-9.-], but a dot
// separates subject tokens, so every byte outside [a-z0-9-] — the dot, and
// anything else for names that did not come from Kubernetes — is written as
// "_" plus two lower-case hex digits ("a.b" becomes "a_2eb").
//
// The encoding is reversible by ParseSubjectToken for every string, and for a
// non-empty name the token is non-empty and contains only [a-z0-9_-]: valid
// in a subject, and also in a JetStream consumer name and a file name. The
// empty name encodes as the empty string, which is not a valid token; the
// queue API rejects empty names before building subjects.
func SubjectToken(name string) string {
	clean := true
	for i := 0; i < len(name); i++ {
		if !isPlainTokenByte(name[i]) {
			clean = false
			break
		}
	}
	if clean {
		return name
	}
	const hexDigits = "0123456789abcdef"
	var b strings.Builder
	b.Grow(len(name) + 8)
	for i := 0; i < len(name); i++ {
		c := name[i]
		if isPlainTokenByte(c) {
			b.WriteByte(c)
			continue
		}
		b.WriteByte(escapeMark)
		b.WriteByte(hexDigits[c>>4])
		b.WriteByte(hexDigits[c&0x0f])
	}
	return b.String()
}

// ParseSubjectToken reverses SubjectToken. It fails on tokens that
// SubjectToken cannot produce, so a subject that did not come from this
// package is reported rather than mis-attributed to some endpoint.
func ParseSubjectToken(token string) (string, error) {
	if strings.IndexByte(token, escapeMark) < 0 {
		for i := 0; i < len(token); i++ {
			if !isPlainTokenByte(token[i]) {
				return "", fmt.Errorf("subject token %q: invalid byte %q at %d", token, token[i], i)
			}
		}
		return token, nil
	}
	out := make([]byte, 0, len(token))
	for i := 0; i < len(token); i++ {
		c := token[i]
		switch {
		case isPlainTokenByte(c):
			out = append(out, c)
		case c == escapeMark:
			if i+2 >= len(token) {
				return "", fmt.Errorf("subject token %q: truncated escape at %d", token, i)
			}
			hi, okHi := lowerHexValue(token[i+1])
			lo, okLo := lowerHexValue(token[i+2])
			if !okHi || !okLo {
				return "", fmt.Errorf("subject token %q: invalid escape %q at %d", token, token[i:i+3], i)
			}
			decoded := hi<<4 | lo
			if isPlainTokenByte(decoded) {
				// SubjectToken never escapes a plain byte; accepting it would
				// give one name two subjects.
				return "", fmt.Errorf("subject token %q: needless escape %q at %d", token, token[i:i+3], i)
			}
			out = append(out, decoded)
			i += 2
		default:
			return "", fmt.Errorf("subject token %q: invalid byte %q at %d", token, c, i)
		}
	}
	return string(out), nil
}

func isPlainTokenByte(c byte) bool {
	return ('a' <= c && c <= 'z') || ('0' <= c && c <= '9') || c == '-'
}

func lowerHexValue(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}

// EventSubject is the subject an event published in namespace is stored
// under.
func EventSubject(namespace string) string {
	return eventsPrefix + "." + SubjectToken(namespace)
}

// DeliverySubject is the subject of the deliveries pending for one endpoint.
func DeliverySubject(namespace, endpoint string) string {
	return deliveriesPrefix + "." + SubjectToken(namespace) + "." + SubjectToken(endpoint)
}

// DeadLetterSubject is the subject of the dead-lettered deliveries of one
// endpoint.
func DeadLetterSubject(namespace, endpoint string) string {
	return deadLetterPrefix + "." + SubjectToken(namespace) + "." + SubjectToken(endpoint)
}

// parseSubject splits a subject of one of the three streams into the
// decoded namespace and endpoint (empty for events).
func parseSubject(subject string) (namespace, endpoint string, err error) {
	tokens := strings.Split(subject, ".")
	var nsToken, epToken string
	switch {
	case len(tokens) == 3 && tokens[0]+"."+tokens[1] == eventsPrefix:
		nsToken = tokens[2]
	case len(tokens) == 4 && (tokens[0]+"."+tokens[1] == deliveriesPrefix || tokens[0]+"."+tokens[1] == deadLetterPrefix):
		nsToken, epToken = tokens[2], tokens[3]
	default:
		return "", "", fmt.Errorf("subject %q is not a Herald queue subject", subject)
	}
	if namespace, err = ParseSubjectToken(nsToken); err != nil {
		return "", "", err
	}
	if epToken != "" {
		if endpoint, err = ParseSubjectToken(epToken); err != nil {
			return "", "", err
		}
	}
	return namespace, endpoint, nil
}

// EventDedupID is the de-duplication id to publish an ingested CloudEvent
// with: two events with the same namespace, source and id are the same event
// (CloudEvents 1.0: source+id is unique per producer), and JetStream stores
// it once within the duplicate window. The namespace is part of the key
// because the window is per stream, not per subject, and namespaces are
// isolated from each other. Source and id are arbitrary strings, so the id is
// a hash (hex SHA-256) of the length-prefixed fields: fixed length and free
// of ambiguity ("a|b"+"c" never equals "a"+"b|c").
func EventDedupID(namespace, source, id string) string {
	return fieldhash.Hex("herald-event/v1", namespace, source, id)
}

// DeliveryDedupID is the de-duplication id to publish the delivery of one
// event to one endpoint with. eventKey identifies the event (the router
// passes the event's dedup id). Re-running fan-out after a crash publishes
// the same ids, so an endpoint gets each event once however often fan-out
// restarts within the duplicate window; two Subscriptions matching the same
// event for the same endpoint also collapse into one delivery.
func DeliveryDedupID(eventKey, namespace, endpoint string) string {
	return fieldhash.Hex("herald-delivery/v1", eventKey, namespace, endpoint)
}

// RequeueDedupID is the de-duplication id of a delivery queued again by
// one requeue operation (a Redelivery, by its UID): retrying the requeue
// within the duplicate window queues it once.
func RequeueDedupID(operation, webhookID string) string {
	return fieldhash.Hex("herald-requeue/v1", operation, webhookID)
}

// validateName rejects names that cannot be encoded as a subject token.
func validateName(kind, name string) error {
	if name == "" {
		return fmt.Errorf("%s name must not be empty", kind)
	}
	return nil
}

// deliveryConsumerName is the durable consumer name for one endpoint. Tokens
// never contain "__" (an escape mark is always followed by two hex digits), so
// the separator keeps distinct endpoints distinct. Names too long for a
// consumer (JetStream allows 255 bytes, and the name is also a directory name
// in the file store) fall back to a hash that stays unique.
func deliveryConsumerName(namespace, endpoint string) string {
	name := "deliveries__" + SubjectToken(namespace) + "__" + SubjectToken(endpoint)
	if len(name) <= maxConsumerNameLen {
		return name
	}
	return "deliveries__h_" + fieldhash.Hex("herald-consumer/v1", namespace, endpoint)[:40]
}

const maxConsumerNameLen = 200
