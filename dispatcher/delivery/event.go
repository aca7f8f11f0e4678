package delivery

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/herald-dev/herald/dispatcher/internal/jsonscan"
	"github.com/herald-dev/herald/dispatcher/internal/mediatype"
)

// The delivery payload is the CloudEvent in structured JSON form, exactly as
// stored at ingest. It is decoded with encoding/json rather than the
// CloudEvents SDK's event package for two reasons. The SDK refuses valid
// events: it treats only a few exact media types as JSON, so an event with
// datacontenttype "application/vnd.acme+json" and an object as data (which
// the CloudEvents JSON format allows for every "+json" type) fails to decode
// and could never be delivered. And delivery needs the stored bytes passed
// through unchanged — the structured body verbatim, the data member verbatim
// — which a decode/re-encode round trip through the SDK's types would
// normalise (time precision, number formatting of extensions). The tests
// check the requests against the SDK's HTTP binding instead.

// errInvalidEvent is wrapped by every payload decoding error.
var errInvalidEvent = errors.New("invalid CloudEvent payload")

// cloudEvent is the part of a structured-mode CloudEvent delivery needs.
type cloudEvent struct {
	attrs           map[string]json.RawMessage
	id, source, typ string
	dataContentType string
	// data is the raw JSON value of "data"; nil when absent.
	data json.RawMessage
	// dataBase64 is the raw JSON string of "data_base64"; nil when absent.
	dataBase64 json.RawMessage
}

func parseEvent(payload []byte) (*cloudEvent, error) {
	attrs, err := jsonscan.Object(payload)
	if err != nil || attrs == nil {
		return nil, fmt.Errorf("%w: not a JSON object", errInvalidEvent)
	}
	ev := &cloudEvent{attrs: attrs}
	required := []struct {
		name string
		dst  *string
	}{{"id", &ev.id}, {"source", &ev.source}, {"type", &ev.typ}}
	for _, r := range required {
		v, ok, err := stringAttr(attrs, r.name)
		if err != nil {
			return nil, err
		}
		if !ok || v == "" {
			return nil, fmt.Errorf("%w: required attribute %q is missing", errInvalidEvent, r.name)
		}
		*r.dst = v
	}
	if v, ok, err := stringAttr(attrs, "specversion"); err != nil {
		return nil, err
	} else if !ok || v != "1.0" {
		return nil, fmt.Errorf("%w: specversion must be \"1.0\"", errInvalidEvent)
	}
	if ev.dataContentType, _, err = stringAttr(attrs, "datacontenttype"); err != nil {
		return nil, err
	}
	if raw, ok := attrs["data"]; ok && !isJSONNull(raw) {
		ev.data = raw
	}
	if raw, ok := attrs["data_base64"]; ok && !isJSONNull(raw) {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, fmt.Errorf("%w: data_base64 must be a string", errInvalidEvent)
		}
		if _, err := base64.StdEncoding.DecodeString(s); err != nil {
			return nil, fmt.Errorf("%w: data_base64 is not valid base64", errInvalidEvent)
		}
		ev.dataBase64 = raw
	}
	if ev.data != nil && ev.dataBase64 != nil {
		return nil, fmt.Errorf("%w: data and data_base64 are mutually exclusive", errInvalidEvent)
	}
	return ev, nil
}

// stringAttr reads a string attribute; ok is false when it is absent or
// null.
func stringAttr(attrs map[string]json.RawMessage, name string) (string, bool, error) {
	raw, present := attrs[name]
	if !present || isJSONNull(raw) {
		return "", false, nil
	}
	s, err := jsonscan.String(raw)
	if err != nil {
		return "", false, fmt.Errorf("%w: attribute %q must be a string", errInvalidEvent, name)
	}
	return s, true, nil
}

func isJSONNull(raw json.RawMessage) bool {
	return bytes.Equal(bytes.TrimSpace(raw), jsonNull)
}

var jsonNull = []byte("null")

// eventTime is the event's "time" attribute, or zero when it is absent or
// not RFC 3339.
func (e *cloudEvent) eventTime() time.Time {
	s, ok, err := stringAttr(e.attrs, "time")
	if err != nil || !ok {
		return time.Time{}
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}
	}
	return t
}

// standardWebhooksBody is {"type":…,"timestamp":…,"data":…}: the event's
// data member verbatim (a base64 string for binary data, null when the
// event has none) and its time in RFC 3339, UTC. Events without a time get
// the ingest time, so the body is the same on every attempt.
func (e *cloudEvent) standardWebhooksBody(fallbackTime time.Time) []byte {
	ts := e.eventTime()
	if ts.IsZero() {
		ts = fallbackTime
	}
	data := []byte("null")
	switch {
	case e.data != nil:
		data = e.data
	case e.dataBase64 != nil:
		data = e.dataBase64
	}
	typ, _ := json.Marshal(e.typ)
	b := make([]byte, 0, len(data)+len(typ)+64)
	b = append(b, `{"type":`...)
	b = append(b, typ...)
	b = append(b, `,"timestamp":"`...)
	b = ts.UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","data":`...)
	b = append(b, data...)
	b = append(b, '}')
	return b
}

// binaryData is the body and content type of the CloudEvents HTTP binary
// mode: the decoded data, with datacontenttype as Content-Type (JSON when a
// data member has no content type, as the JSON format implies).
func (e *cloudEvent) binaryData() (body []byte, contentType string) {
	switch {
	case e.dataBase64 != nil:
		var s string
		_ = json.Unmarshal(e.dataBase64, &s) // checked by parseEvent
		body, _ = base64.StdEncoding.DecodeString(s)
		contentType = e.dataContentType
		if contentType == "" {
			contentType = "application/octet-stream"
		}
		return body, contentType
	case e.data != nil:
		contentType = e.dataContentType
		if !mediatype.IsJSON(contentType) {
			// Non-JSON data is carried in the JSON format as a string.
			var s string
			if err := json.Unmarshal(e.data, &s); err == nil {
				return []byte(s), contentType
			}
		}
		if contentType == "" {
			contentType = "application/json"
		}
		return e.data, contentType
	}
	return nil, e.dataContentType
}

// binaryHeaders returns the ce-* headers of the binary mode: every context
// attribute and extension except data and datacontenttype (Content-Type).
// String values are percent-encoded as the HTTP binding requires; numbers
// and booleans are written as in JSON; other values cannot be attributes and
// are skipped.
func (e *cloudEvent) binaryHeaders(set func(name, value string)) {
	for name, raw := range e.attrs {
		switch name {
		case "data", "data_base64", "datacontenttype":
			continue
		}
		if !validAttributeName(name) {
			continue
		}
		value, ok := headerValue(raw)
		if !ok {
			continue
		}
		set("ce-"+name, value)
	}
}

func validAttributeName(name string) bool {
	if name == "" || len(name) > 64 {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9') {
			return false
		}
	}
	return true
}

func headerValue(raw json.RawMessage) (string, bool) {
	trimmed := strings.TrimSpace(string(raw))
	if trimmed == "" {
		return "", false
	}
	switch trimmed[0] {
	case '"':
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return "", false
		}
		return percentEncode(s), true
	case 't', 'f':
		if trimmed == "true" || trimmed == "false" {
			return trimmed, true
		}
	case '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9':
		if json.Valid([]byte(trimmed)) {
			return trimmed, true
		}
	}
	return "", false
}

// percentEncode encodes a string attribute for an HTTP header as the
// CloudEvents HTTP binding (1.0.2, 3.1.3.2) requires: space, double quote,
// percent and every byte outside printable ASCII become %XX (UTF-8 bytes).
func percentEncode(s string) string {
	needs := false
	for i := 0; i < len(s); i++ {
		if mustPercentEncode(s[i]) {
			needs = true
			break
		}
	}
	if !needs {
		return s
	}
	const hexDigits = "0123456789ABCDEF"
	var b strings.Builder
	b.Grow(len(s) + 16)
	for i := 0; i < len(s); i++ {
		c := s[i]
		if mustPercentEncode(c) {
			b.WriteByte('%')
			b.WriteByte(hexDigits[c>>4])
			b.WriteByte(hexDigits[c&0x0f])
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

func mustPercentEncode(c byte) bool {
	return c <= ' ' || c >= 0x7f || c == '"' || c == '%'
}
