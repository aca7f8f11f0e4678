package router

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/herald-dev/herald/dispatcher/internal/jsonscan"
	"github.com/herald-dev/herald/dispatcher/internal/mediatype"
)

// Attributes every filter sees, as empty strings when absent (see
// filter.EventVar).
var wellKnownAttributes = []string{"id", "type", "source", "specversion", "subject", "time", "datacontenttype", "dataschema"}

// Event is a CloudEvent as the router sees it: its attributes as strings and
// its data, decoded from JSON only when a filter asks for it.
type Event struct {
	// Attributes holds id, type, source, specversion, subject, time,
	// datacontenttype and dataschema (empty strings when absent) and every
	// extension attribute, as strings. It is the filter's "event" variable.
	Attributes map[string]string

	rawData    json.RawMessage // the "data" member, nil when absent
	dataBase64 string          // the "data_base64" member
	hasBase64  bool

	dataDecoded bool
	data        any
}

// ID, Type and Source are the event's required attributes.
func (e *Event) ID() string     { return e.Attributes["id"] }
func (e *Event) Type() string   { return e.Attributes["type"] }
func (e *Event) Source() string { return e.Attributes["source"] }

// Data is the event data for filters: the "data" member decoded from JSON,
// or "data_base64" decoded and parsed when the content type is JSON, and
// nil otherwise. It is decoded on first use and cached; an Event is not
// safe for concurrent use.
func (e *Event) Data() any {
	if e.dataDecoded {
		return e.data
	}
	e.dataDecoded = true
	switch {
	case e.rawData != nil:
		var v any
		if err := json.Unmarshal(e.rawData, &v); err == nil {
			e.data = v
		}
	case e.hasBase64 && mediatype.IsJSON(e.Attributes["datacontenttype"]):
		raw, err := base64.StdEncoding.DecodeString(e.dataBase64)
		if err != nil {
			return nil
		}
		var v any
		if err := json.Unmarshal(raw, &v); err == nil {
			e.data = v
		}
	}
	return e.data
}

// ParseEvent decodes a CloudEvent in structured JSON form
// (application/cloudevents+json), the form events are stored in. It checks
// the required attributes (specversion 1.x, id, source, type as non-empty
// strings); extension attributes that are numbers or booleans become their
// JSON text, and other non-string values are ignored, because a filter only
// sees strings. The data member is kept raw until Data is called.
func ParseEvent(payload []byte) (*Event, error) {
	members, err := jsonscan.Object(payload)
	if err != nil {
		return nil, fmt.Errorf("decode structured CloudEvent: %w", err)
	}
	if members == nil {
		return nil, errors.New("decode structured CloudEvent: not a JSON object")
	}
	ev := &Event{Attributes: make(map[string]string, len(members)+len(wellKnownAttributes))}
	for _, name := range wellKnownAttributes {
		ev.Attributes[name] = ""
	}
	for name, raw := range members {
		switch name {
		case "data":
			if !bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
				ev.rawData = raw
			}
			continue
		case "data_base64":
			if err := json.Unmarshal(raw, &ev.dataBase64); err != nil {
				return nil, fmt.Errorf("attribute data_base64: must be a string")
			}
			ev.hasBase64 = true
			continue
		}
		value, ok, err := attributeString(raw)
		if err == nil && ok && isRequiredAttribute(name) && bytes.TrimSpace(raw)[0] != '"' {
			err = errors.New("must be a string")
		}
		if err != nil {
			return nil, fmt.Errorf("attribute %q: %w", name, err)
		}
		if ok {
			ev.Attributes[name] = value
		}
	}
	for _, name := range []string{"specversion", "id", "source", "type"} {
		if ev.Attributes[name] == "" {
			// Absent, empty or null.
			return nil, fmt.Errorf("required attribute %q is missing or empty", name)
		}
	}
	if v := ev.Attributes["specversion"]; v != "1.0" && !strings.HasPrefix(v, "1.") {
		return nil, fmt.Errorf("unsupported specversion %q", v)
	}
	return ev, nil
}

func isRequiredAttribute(name string) bool {
	switch name {
	case "specversion", "id", "source", "type":
		return true
	}
	return false
}

// attributeString renders an attribute value as the string a filter sees.
func attributeString(raw json.RawMessage) (string, bool, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return "", false, nil
	}
	switch raw[0] {
	case '"':
		s, err := jsonscan.String(raw)
		if err != nil {
			return "", false, err
		}
		return s, true, nil
	case 't', 'f', '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9':
		// Booleans and numbers are valid extension values; keep their text.
		return string(raw), true, nil
	default:
		// null, objects and arrays are not attribute values.
		return "", false, nil
	}
}
