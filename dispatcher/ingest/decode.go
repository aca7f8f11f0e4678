package ingest

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/textproto"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/cloudevents/sdk-go/v2/binding"
	"github.com/cloudevents/sdk-go/v2/binding/format"
	"github.com/cloudevents/sdk-go/v2/event"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/cloudevents/sdk-go/v2/types"

	"github.com/herald-dev/herald/dispatcher/internal/jsonscan"
	"github.com/herald-dev/herald/dispatcher/internal/mediatype"
)

// Decoding uses the CloudEvents Go SDK to build every event: its structured
// JSON format (format.JSON, the same code json.Unmarshal runs on an
// event.Event) and its HTTP binding (cehttp.NewMessage + binding.ToEvent)
// for binary mode. Around it this file adds what the SDK leaves out, each for
// a reason:
//
//   - A strict pre-scan of each JSON object (scanObject, checkJSONAttributes)
//     with encoding/json: the SDK's jsoniter reader reports a wrong type or a
//     missing attribute without naming the attribute, accepts trailing data
//     and duplicate keys, silently converts numeric extensions to int32
//     (1.5 becomes 1) and lower-cases invalid upper-case attribute names.
//     Herald answers 400 naming the attribute instead.
//   - Batches are split here rather than by binding.ToEvents, so a bad event
//     is reported with its index, and every element goes through exactly the
//     same checks as a structured event.
//   - Splitting is cheap in the common case: json.Valid checks a body once,
//     then jsonscan finds the elements and members of that valid JSON
//     without copying. Anything they decline goes to the
//     token-by-token json.Decoder splitters (splitBatch, scanObject), the one
//     source of error messages.
//   - Binary-mode headers are checked before the SDK reads them: it reads
//     only the first value of a repeated header, and panics on a bare "ce-"
//     header name.
//   - Binary-mode data is given the structured representation that stores it
//     losslessly (data for JSON and text, data_base64 otherwise); the SDK
//     would write any non-JSON body as a JSON string, mangling binary data.
//   - What is JSON is decided by mediatype.IsJSON, the rule every stage
//     shares: */json and */*+json, as the CloudEvents JSON format says. The
//     pinned SDK reads and writes the data of only a few exact types as a
//     JSON value and every other "+json" type as a string, so such events
//     are shown to it as application/json, the same representation, and
//     get their own type back (sdkUnmarshal, sdkMarshal).
//   - The stored form must be a fixed point: the canonical JSON, decoded and
//     encoded again, yields the same bytes. The fan-out and delivery stages
//     read only what is stored, so an event whose attributes the SDK would
//     normalise differently on a second pass (some URI forms) is rejected at
//     ingest rather than changing its identity later.

// specVersion is the only CloudEvents version accepted.
const specVersion = event.CloudEventsVersionV1

// Required context attributes, in the order they are checked (specversion
// first: a 0.3 event gets "specversion must be 1.0", not a confusing error
// about another attribute).
var requiredAttributes = []string{"specversion", "id", "source", "type"}

// Optional context attributes of CloudEvents 1.0 (data and data_base64 are
// not attributes and handled separately).
var optionalAttributes = []string{"subject", "datacontenttype", "dataschema", "time"}

// decodedEvent is a valid event together with its canonical structured JSON
// form, the payload stored in the queue.
type decodedEvent struct {
	event   *event.Event
	payload []byte
}

func (d *decodedEvent) id() string     { return d.event.ID() }
func (d *decodedEvent) source() string { return d.event.Source() }

// requestError is a rejection of a request: the HTTP status, a message for
// the client, and optionally the attribute and the batch index concerned.
type requestError struct {
	status  int
	message string
	field   string
	index   int // position in a batch; -1 when not about one batch element
	// retryAfterSeconds is sent as Retry-After when positive.
	retryAfterSeconds int
	// events is how many events the rejected request held, when known (a
	// batch that was split before one element failed), for the metrics.
	events int
}

func (e *requestError) Error() string {
	var b strings.Builder
	if e.index >= 0 {
		fmt.Fprintf(&b, "event %d: ", e.index)
	}
	b.WriteString(e.message)
	return b.String()
}

func badEvent(field, message string, args ...any) *requestError {
	return &requestError{status: http.StatusBadRequest, field: field, index: -1, message: fmt.Sprintf(message, args...)}
}

// quote renders an attribute value for an error message, bounded so a huge
// value does not produce a huge response.
func quote(s string) string {
	const maxLen = 80
	if len(s) > maxLen {
		cut := maxLen
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		return strconv.Quote(s[:cut]) + "…"
	}
	return strconv.Quote(s)
}

// decodeStructured decodes a structured-mode body
// (application/cloudevents+json).
func decodeStructured(body []byte) (*decodedEvent, *requestError) {
	if !utf8.Valid(body) {
		return nil, badEvent("", "body is not valid UTF-8 (JSON must be UTF-8)")
	}
	return decodeJSONEvent(body, json.Valid(body))
}

// decodeBatch decodes a batch body (application/cloudevents-batch+json): a
// JSON array of structured events. It returns all events or, when any is
// invalid, the first error with the element's index. More than maxEvents
// elements is a 413.
func decodeBatch(body []byte, maxEvents int) ([]*decodedEvent, *requestError) {
	if !utf8.Valid(body) {
		return nil, badEvent("", "body is not valid UTF-8 (JSON must be UTF-8)")
	}
	var raws []json.RawMessage
	ok := false
	if json.Valid(body) {
		raws, ok = jsonscan.ArrayElements(body, maxEvents)
	}
	if !ok {
		var rerr *requestError
		if raws, rerr = splitBatch(body, maxEvents); rerr != nil {
			return nil, rerr
		}
	}
	events := make([]*decodedEvent, 0, len(raws))
	for i, raw := range raws {
		// Both splitters return only syntactically valid elements.
		ev, rerr := decodeJSONEvent(raw, true)
		if rerr != nil {
			rerr.index, rerr.events = i, len(raws)
			return nil, rerr
		}
		events = append(events, ev)
	}
	return events, nil
}

// splitBatch splits a batch into its elements token by token, and is the
// authority on what is wrong with a batch that jsonscan.ArrayElements
// declines: its
// errors name the element a syntax error lies in, and a batch over the
// limit is refused without reading past the limit.
func splitBatch(body []byte, maxEvents int) ([]json.RawMessage, *requestError) {
	dec := json.NewDecoder(bytes.NewReader(body))
	tok, err := dec.Token()
	if err != nil {
		return nil, badEvent("", "malformed JSON: %s", jsonErrorText(err))
	}
	if delim, ok := tok.(json.Delim); !ok || delim != '[' {
		return nil, badEvent("", "a batch must be a JSON array of events")
	}
	var raws []json.RawMessage
	for dec.More() {
		if len(raws) == maxEvents {
			return nil, &requestError{
				status:  http.StatusRequestEntityTooLarge,
				index:   -1,
				message: fmt.Sprintf("batch holds more than %d events, the limit; split it into smaller batches", maxEvents),
			}
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			e := badEvent("", "malformed JSON: %s", jsonErrorText(err))
			e.index = len(raws)
			return nil, e
		}
		raws = append(raws, raw)
	}
	if _, err := dec.Token(); err != nil { // the closing ']'
		return nil, badEvent("", "malformed JSON: %s", jsonErrorText(err))
	}
	if err := expectEOF(dec); err != nil {
		return nil, err
	}
	return raws, nil
}

// decodeJSONEvent decodes one event in the structured JSON format. valid
// says raw is known to be syntactically valid JSON.
func decodeJSONEvent(raw []byte, valid bool) (*decodedEvent, *requestError) {
	var attrs map[string]json.RawMessage
	ok := false
	if valid {
		attrs, ok = jsonscan.ObjectMembers(raw)
	}
	if !ok {
		var rerr *requestError
		if attrs, rerr = scanObject(raw); rerr != nil {
			return nil, rerr
		}
	}
	if rerr := checkJSONAttributes(attrs); rerr != nil {
		return nil, rerr
	}
	ev := event.New()
	// raw is one valid JSON object: ObjectMembers or scanObject accepted it.
	// checkJSONAttributes accepted datacontenttype as a string or null.
	var contentType string
	if ct, ok := attrs["datacontenttype"]; ok && !isJSONNull(ct) {
		_ = json.Unmarshal(ct, &contentType)
	}
	if err := sdkUnmarshal(raw, contentType, &ev); err != nil {
		return nil, sdkError(err)
	}
	return finish(&ev, bytes.Trim(raw, jsonWhitespace))
}

// unmarshalEvent is format.JSON.Unmarshal for raw known to be exactly one
// valid JSON value with nothing but JSON whitespace around it. That function
// is json.Unmarshal, which on valid input only scans raw twice more (to
// validate it, then to find the end of the value) before handing the value,
// without the whitespace, to the SDK's (*event.Event).UnmarshalJSON; this
// calls the SDK directly with the same bytes.
func unmarshalEvent(raw []byte, ev *event.Event) error {
	return ev.UnmarshalJSON(bytes.Trim(raw, jsonWhitespace))
}

// sdkJSONStandIn is the datacontenttype the SDK is shown in place of a JSON
// media type it does not treat as JSON.
const sdkJSONStandIn = event.ApplicationJSON

// needsJSONStandIn reports whether an event with this datacontenttype is
// shown to the SDK as application/json. Data of every JSON media type
// (mediatype.IsJSON) is a JSON value in the structured form, but the pinned
// SDK (v2.16.2, event.isJSON) reads and writes it as a JSON value only for
// application/json, text/json and the two CloudEvents types, and as a
// string for every other "+json" type (cloudevents/sdk-go#1273): it would
// reject application/vnd.foo+json with an object as data, and store such
// binary-mode data as a string. application/json itself, the common case,
// needs no stand-in; neither does an absent type, which the SDK reads as
// JSON too.
func needsJSONStandIn(contentType string) bool {
	return contentType != "" && mediatype.IsJSON(contentType) && mediaTypeOf(contentType) != event.ApplicationJSON
}

// sdkUnmarshal is unmarshalEvent for an event with the given
// datacontenttype (its value in raw): when the SDK would misread the data
// of that type, it is shown the event with datacontenttype
// application/json, and the event gets its own type back.
func sdkUnmarshal(raw []byte, contentType string, ev *event.Event) error {
	if !needsJSONStandIn(contentType) {
		return unmarshalEvent(raw, ev)
	}
	members, ok := jsonscan.ObjectMembers(raw)
	if !ok {
		if err := json.Unmarshal(raw, &members); err != nil {
			return err
		}
	}
	shown := make(map[string]json.RawMessage, len(members))
	for name, value := range members {
		shown[name] = value
	}
	shown["datacontenttype"] = json.RawMessage(`"` + sdkJSONStandIn + `"`)
	standIn, err := json.Marshal(shown)
	if err != nil {
		return err
	}
	if err := unmarshalEvent(standIn, ev); err != nil {
		return err
	}
	ctx, ok := ev.Context.(*event.EventContextV1)
	if !ok {
		return fmt.Errorf("specversion must be %q", specVersion)
	}
	ctx.DataContentType = &contentType
	return nil
}

// sdkMarshal is json.Marshal(ev), the stored form, with data of every JSON
// media type written as a JSON value: an event the SDK would write with
// its data as a string (see needsJSONStandIn) is written as the same event
// with datacontenttype application/json, whose value is then replaced. The
// SDK writes the context attributes before data and extensions, and a
// string value cannot hold an unescaped quote, so the first
// "datacontenttype":"application/json" is the attribute.
func sdkMarshal(ev *event.Event) ([]byte, error) {
	contentType := ev.DataContentType()
	if ev.DataBase64 || !needsJSONStandIn(contentType) {
		return json.Marshal(ev)
	}
	shown := *ev
	shown.Context = ev.Context.Clone()
	if err := shown.Context.SetDataContentType(sdkJSONStandIn); err != nil {
		return nil, err
	}
	payload, err := json.Marshal(&shown)
	if err != nil {
		return nil, err
	}
	attribute, err := json.Marshal(contentType)
	if err != nil {
		return nil, err
	}
	const standInMember = `"datacontenttype":"` + sdkJSONStandIn + `"`
	i := bytes.Index(payload, []byte(standInMember))
	if i < 0 {
		return nil, errors.New("datacontenttype missing from the SDK's structured form")
	}
	out := make([]byte, 0, len(payload)+len(attribute))
	out = append(out, payload[:i]...)
	out = append(out, `"datacontenttype":`...)
	out = append(out, attribute...)
	out = append(out, payload[i+len(standInMember):]...)
	return out, nil
}

// storedForm is sdkMarshal(ev) for an event decoded from decodedFrom (nil
// when it was built otherwise), without the second pass of json.Marshal
// where it can be spared. json.Marshal(ev) is the SDK's MarshalJSON output
// validated and compacted, with <, >, &, U+2028 and U+2029 escaped: when
// that output is the input it was decoded from, and already compact and
// escaped (as a CloudEvents SDK's own output is), it is the stored form as
// it is; otherwise json.Compact and json.HTMLEscape do what json.Marshal
// would, on the bytes already written. Any error, and the data types
// sdkMarshal writes specially, take sdkMarshal itself.
func storedForm(ev *event.Event, decodedFrom []byte) ([]byte, error) {
	if decodedFrom == nil || (!ev.DataBase64 && needsJSONStandIn(ev.DataContentType())) {
		return sdkMarshal(ev)
	}
	written, err := ev.MarshalJSON()
	if err != nil {
		return sdkMarshal(ev)
	}
	if bytes.Equal(written, decodedFrom) && compactAndEscaped(written) {
		return written, nil
	}
	var compact, escaped bytes.Buffer
	if err := json.Compact(&compact, written); err != nil {
		return sdkMarshal(ev)
	}
	escaped.Grow(compact.Len())
	json.HTMLEscape(&escaped, compact.Bytes())
	return escaped.Bytes(), nil
}

// compactAndEscaped reports whether valid JSON b holds no whitespace
// outside its strings and none of the characters json.Marshal escapes (<,
// >, &, U+2028, U+2029): whether json.Marshal would write it unchanged.
func compactAndEscaped(b []byte) bool {
	inString := false
	for i := 0; i < len(b); i++ {
		switch c := b[i]; {
		case c == '<' || c == '>' || c == '&':
			return false
		case c == 0xE2 && i+2 < len(b) && b[i+1] == 0x80 && b[i+2]&^1 == 0xA8:
			return false
		case inString && c == '\\':
			i++ // the escaped character
		case c == '"':
			inString = !inString
		case !inString && strings.IndexByte(jsonWhitespace, c) >= 0:
			return false
		}
	}
	return true
}

// jsonWhitespace is the insignificant whitespace of RFC 8259.
const jsonWhitespace = " \t\r\n"

// scanObject splits a JSON object into its members token by token,
// rejecting anything but exactly one object, and duplicate member names. It
// is the authority on what is wrong with an object that
// jsonscan.ObjectMembers declines.
func scanObject(raw []byte) (map[string]json.RawMessage, *requestError) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	tok, err := dec.Token()
	if err != nil {
		return nil, badEvent("", "malformed JSON: %s", jsonErrorText(err))
	}
	if delim, ok := tok.(json.Delim); !ok || delim != '{' {
		return nil, badEvent("", "a CloudEvent in JSON must be an object")
	}
	attrs := make(map[string]json.RawMessage)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, badEvent("", "malformed JSON: %s", jsonErrorText(err))
		}
		name, ok := tok.(string)
		if !ok { // cannot happen: the decoder only yields strings as keys
			return nil, badEvent("", "malformed JSON object")
		}
		var value json.RawMessage
		if err := dec.Decode(&value); err != nil {
			// No field: the syntax error may lie around the member, not in
			// the attribute's value.
			return nil, badEvent("", "malformed JSON at attribute %s: %s", quote(name), jsonErrorText(err))
		}
		if _, dup := attrs[name]; dup {
			return nil, badEvent(name, "attribute %s appears more than once", quote(name))
		}
		attrs[name] = value
	}
	if _, err := dec.Token(); err != nil { // the closing '}'
		return nil, badEvent("", "malformed JSON: %s", jsonErrorText(err))
	}
	if err := expectEOF(dec); err != nil {
		return nil, err
	}
	return attrs, nil
}

func expectEOF(dec *json.Decoder) *requestError {
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return badEvent("", "malformed JSON: unexpected data after the end of the value")
	}
	return nil
}

// jsonErrorText describes a JSON syntax error without echoing input.
func jsonErrorText(err error) string {
	var syntax *json.SyntaxError
	if errors.As(err, &syntax) {
		return fmt.Sprintf("%s (at byte %d)", syntax.Error(), syntax.Offset)
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return "unexpected end of input"
	}
	return err.Error()
}

// checkJSONAttributes checks the members of a structured event: required
// attributes present as non-empty strings, optional ones strings, extension
// names and value types as CloudEvents 1.0 defines them.
func checkJSONAttributes(attrs map[string]json.RawMessage) *requestError {
	for _, name := range requiredAttributes {
		raw, ok := attrs[name]
		if !ok || isJSONNull(raw) {
			return badEvent(name, "missing required attribute %s", name)
		}
		value, rerr := jsonString(name, raw)
		if rerr != nil {
			return rerr
		}
		if rerr := checkAttributeValue(name, value); rerr != nil {
			return rerr
		}
	}
	names := make([]string, 0, len(attrs))
	for name := range attrs {
		names = append(names, name)
	}
	slices.Sort(names) // report the same attribute first every time
	for _, name := range names {
		raw := attrs[name]
		switch {
		case slices.Contains(requiredAttributes, name):
		case name == "data":
			// Any JSON value; its meaning depends on datacontenttype.
		case name == "data_base64":
			value, rerr := jsonString(name, raw)
			if rerr != nil {
				return rerr
			}
			if _, err := base64.StdEncoding.DecodeString(value); err != nil {
				return badEvent(name, "attribute data_base64 is not valid base64: %v", err)
			}
			if _, both := attrs["data"]; both {
				return badEvent(name, "an event has data or data_base64, not both")
			}
		case slices.Contains(optionalAttributes, name):
			if isJSONNull(raw) {
				continue // null means absent
			}
			value, rerr := jsonString(name, raw)
			if rerr != nil {
				return rerr
			}
			if rerr := checkAttributeValue(name, value); rerr != nil {
				return rerr
			}
		default:
			if rerr := checkExtensionName(name); rerr != nil {
				return rerr
			}
			if rerr := checkJSONExtensionValue(name, raw); rerr != nil {
				return rerr
			}
		}
	}
	return nil
}

func isJSONNull(raw json.RawMessage) bool { return string(raw) == "null" }

func jsonString(name string, raw json.RawMessage) (string, *requestError) {
	if len(raw) == 0 || raw[0] != '"' {
		return "", badEvent(name, "attribute %s must be a JSON string", name)
	}
	s, err := jsonscan.String(raw)
	if err != nil {
		return "", badEvent(name, "attribute %s must be a JSON string", name)
	}
	return s, nil
}

// checkJSONExtensionValue allows the JSON types CloudEvents 1.0 extension
// attributes can have: string, boolean, integer (32-bit), or null (absent).
func checkJSONExtensionValue(name string, raw json.RawMessage) *requestError {
	switch {
	case len(raw) == 0:
		return badEvent(name, "extension attribute %s has no value", quote(name))
	case raw[0] == '"':
		s, rerr := jsonString(name, raw)
		if rerr != nil {
			return rerr
		}
		return checkAttributeValue(name, s)
	case string(raw) == "true", string(raw) == "false", string(raw) == "null":
		return nil
	case raw[0] == '-' || (raw[0] >= '0' && raw[0] <= '9'):
		if _, err := strconv.ParseInt(string(raw), 10, 32); err != nil {
			return badEvent(name, "extension attribute %s must be a string, a boolean or an integer between -2147483648 and 2147483647", quote(name))
		}
		return nil
	default:
		return badEvent(name, "extension attribute %s must be a string, a boolean or an integer, not a JSON object or array", quote(name))
	}
}

// checkExtensionName enforces the CloudEvents 1.0 naming rule: lower-case
// ASCII letters and digits.
func checkExtensionName(name string) *requestError {
	if name == "" {
		return badEvent(name, "attribute names must not be empty")
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') {
			return badEvent(name, "attribute name %s is invalid: CloudEvents attribute names consist of lower-case letters a-z and digits 0-9", quote(name))
		}
	}
	return nil
}

// checkAttributeValue checks one string-valued context attribute. It is
// shared by the structured and the binary decoders, and re-applied to the
// SDK's event in validateEvent.
func checkAttributeValue(name, value string) *requestError {
	if !utf8.ValidString(value) {
		return badEvent(name, "attribute %s is not valid UTF-8", name)
	}
	switch name {
	case "specversion":
		if value != specVersion {
			return badEvent(name, "attribute specversion must be %q, got %s", specVersion, quote(value))
		}
	case "id", "source", "type":
		if strings.TrimSpace(value) == "" {
			return badEvent(name, "attribute %s must not be empty", name)
		}
		if hasControlCharacter(value) {
			return badEvent(name, "attribute %s must not contain control characters", name)
		}
		if name == "source" && types.ParseURIRef(value) == nil {
			return badEvent(name, "attribute source must be a URI-reference, got %s", quote(value))
		}
	case "subject":
		if strings.TrimSpace(value) == "" {
			return badEvent(name, "attribute subject must not be empty when present")
		}
	case "datacontenttype":
		if _, _, err := mime.ParseMediaType(value); err != nil {
			return badEvent(name, "attribute datacontenttype must be a media type (RFC 2046), got %s", quote(value))
		}
	case "dataschema":
		if u := types.ParseURI(value); u == nil || !u.Validate() {
			return badEvent(name, "attribute dataschema must be an absolute URI, got %s", quote(value))
		}
	case "time":
		if _, err := types.ParseTimestamp(value); err != nil || value == "" {
			return badEvent(name, "attribute time must be an RFC 3339 timestamp, got %s", quote(value))
		}
	}
	return nil
}

func hasControlCharacter(s string) bool {
	return strings.ContainsFunc(s, unicode.IsControl)
}

// ceHeaderPrefix is the canonical prefix of binary-mode attribute headers.
const ceHeaderPrefix = "Ce-"

// decodeBinary decodes a binary-mode request: attributes in ce-* headers,
// datacontenttype in Content-Type, the body is the event's data. header need
// not be canonical.
func decodeBinary(header http.Header, body []byte) (*decodedEvent, *requestError) {
	// Only the CloudEvents headers go to the SDK, canonicalised so that
	// repeated attributes are seen whatever their spelling.
	ceHeader := make(http.Header)
	for key, values := range header {
		canonical := textproto.CanonicalMIMEHeaderKey(key)
		if canonical == "Content-Type" || strings.HasPrefix(canonical, ceHeaderPrefix) {
			ceHeader[canonical] = append(ceHeader[canonical], values...)
		}
	}
	keys := make([]string, 0, len(ceHeader))
	for key := range ceHeader {
		keys = append(keys, key)
	}
	slices.Sort(keys)
	for _, key := range keys {
		values := ceHeader[key]
		if key == "Content-Type" {
			if len(values) > 1 {
				return nil, badEvent("datacontenttype", "header Content-Type appears more than once")
			}
			if strings.TrimSpace(values[0]) == "" {
				delete(ceHeader, key) // empty means absent
			}
			continue
		}
		name := strings.ToLower(key[len(ceHeaderPrefix):])
		if rerr := checkExtensionName(name); rerr != nil {
			rerr.message = fmt.Sprintf("header %s: %s", quote(key), rerr.message)
			return nil, rerr
		}
		if len(values) > 1 {
			return nil, badEvent(name, "header %s appears more than once", key)
		}
		if name == "datacontenttype" {
			return nil, badEvent(name, "in binary mode datacontenttype is the Content-Type header, not %s", key)
		}
		if !slices.Contains(requiredAttributes, name) {
			if rerr := checkAttributeValue(name, values[0]); rerr != nil {
				return nil, rerr
			}
		}
	}
	for _, name := range requiredAttributes {
		value := ceHeader.Get(ceHeaderPrefix + name)
		if value == "" {
			return nil, badEvent(name, "missing required attribute %s (header ce-%s)", name, name)
		}
		if rerr := checkAttributeValue(name, value); rerr != nil {
			return nil, rerr
		}
	}
	if ct := ceHeader.Get("Content-Type"); ct != "" {
		if rerr := checkAttributeValue("datacontenttype", ct); rerr != nil {
			return nil, rerr
		}
		if mediaType, _, _ := mime.ParseMediaType(ct); format.IsFormat(mediaType) {
			return nil, badEvent("datacontenttype", "Content-Type %s is a structured-mode event format, not the media type of binary-mode data", quote(ct))
		}
	}

	msg := cehttp.NewMessage(ceHeader, io.NopCloser(bytes.NewReader(body)))
	ev, err := binding.ToEvent(context.Background(), msg)
	if err != nil {
		return nil, sdkError(err)
	}
	if rerr := setBinaryData(ev); rerr != nil {
		return nil, rerr
	}
	return finish(ev, nil)
}

// setBinaryData chooses how the body of a binary-mode request is stored in
// structured JSON: as JSON for a JSON media type (or none, which CloudEvents
// reads as JSON), as a string for text, as data_base64 otherwise.
func setBinaryData(ev *event.Event) *requestError {
	data := ev.Data()
	if len(data) == 0 {
		return nil
	}
	mediaType := mediaTypeOf(ev.DataContentType())
	switch {
	case mediatype.IsJSON(mediaType):
		trimmed := bytes.Trim(data, " \t\r\n")
		if utf8.Valid(trimmed) && json.Valid(trimmed) {
			ev.DataEncoded = trimmed
			return nil
		}
		if mediaType == "" {
			// No Content-Type: arbitrary bytes are legitimate data; keep
			// them exactly.
			ev.DataBase64 = true
			return nil
		}
		return badEvent("data", "body is not valid JSON, as Content-Type %s says", quote(mediaType))
	case isTextMediaType(mediaType) && utf8.Valid(data):
		return nil
	default:
		ev.DataBase64 = true
		return nil
	}
}

// mediaTypeOf is a datacontenttype without parameters, lower-cased, as the
// SDK's JSON writer reads it.
func mediaTypeOf(contentType string) string {
	if i := strings.IndexByte(contentType, ';'); i >= 0 {
		contentType = contentType[:i]
	}
	return strings.ToLower(strings.TrimSpace(contentType))
}

// isTextMediaType reports whether non-JSON data of this media type is text,
// stored as a JSON string (JSON types are decided before, by
// mediatype.IsJSON).
func isTextMediaType(mediaType string) bool {
	switch {
	case strings.HasPrefix(mediaType, "text/"),
		strings.HasSuffix(mediaType, "+xml"), strings.HasSuffix(mediaType, "+yaml"),
		mediaType == "application/xml", mediaType == "application/yaml", mediaType == "application/x-yaml",
		mediaType == "application/x-www-form-urlencoded":
		return true
	}
	return false
}

// sdkError turns an error of the SDK's decoder into a 400, naming the
// attribute when the SDK says which.
func sdkError(err error) *requestError {
	var verr event.ValidationError
	if errors.As(err, &verr) {
		return validationError(verr)
	}
	return badEvent("", "malformed CloudEvent: %s", firstLine(err.Error()))
}

func validationError(verr event.ValidationError) *requestError {
	fields := make([]string, 0, len(verr))
	for field := range verr {
		fields = append(fields, field)
	}
	slices.Sort(fields)
	if len(fields) == 0 {
		return badEvent("", "invalid CloudEvent")
	}
	field := fields[0]
	return badEvent(field, "attribute %s is invalid: %s", field, firstLine(verr[field].Error()))
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	const maxLen = 300
	if len(s) > maxLen {
		s = s[:maxLen] + "…"
	}
	return s
}

// validateEvent checks an event built by the SDK against CloudEvents 1.0 and
// Herald's own rules.
func validateEvent(ev *event.Event) *requestError {
	if ev.Context == nil {
		return badEvent("specversion", "missing required attribute specversion")
	}
	if v := ev.SpecVersion(); v != specVersion {
		return badEvent("specversion", "attribute specversion must be %q, got %s", specVersion, quote(v))
	}
	// In the order of requiredAttributes and optionalAttributes; the
	// optional ones only when set. specversion is checked above, and the
	// SDK has parsed time.
	attributes := [...]struct {
		name, value string
		required    bool
	}{
		{"id", ev.ID(), true},
		{"source", ev.Source(), true},
		{"type", ev.Type(), true},
		{"subject", ev.Subject(), false},
		{"datacontenttype", ev.DataContentType(), false},
		{"dataschema", ev.DataSchema(), false},
	}
	for _, a := range attributes {
		if a.required || a.value != "" {
			if rerr := checkAttributeValue(a.name, a.value); rerr != nil {
				return rerr
			}
		}
	}
	if err := ev.Validate(); err != nil {
		var verr event.ValidationError
		if errors.As(err, &verr) {
			return validationError(verr)
		}
		return badEvent("", "invalid CloudEvent: %s", firstLine(err.Error()))
	}
	for name, value := range ev.Extensions() {
		if rerr := checkExtensionName(name); rerr != nil {
			return rerr
		}
		if s, ok := value.(string); ok {
			if rerr := checkAttributeValue(name, s); rerr != nil {
				return rerr
			}
		}
	}
	return nil
}

// finish validates a decoded event and computes its stored form, checking
// that the stored form decodes to itself. decodedFrom is the structured JSON
// (without surrounding whitespace) that sdkUnmarshal decoded ev from, with
// ev's datacontenttype, or nil when ev was built otherwise.
//
// When the stored form is exactly decodedFrom, as it is for every event a
// CloudEvents SDK wrote in its own canonical form, the check is already
// done: decoding the stored form is the decoding that produced ev, and ev
// encodes to the stored form. Only other inputs are decoded again.
func finish(ev *event.Event, decodedFrom []byte) (*decodedEvent, *requestError) {
	if rerr := validateEvent(ev); rerr != nil {
		return nil, rerr
	}
	payload, err := storedForm(ev, decodedFrom)
	if err != nil {
		return nil, badEvent("", "event cannot be encoded as structured JSON: %s", firstLine(err.Error()))
	}
	if !utf8.Valid(payload) {
		return nil, badEvent("", "event cannot be stored faithfully: its structured JSON form is not valid UTF-8")
	}
	if decodedFrom != nil && bytes.Equal(payload, decodedFrom) {
		return &decodedEvent{event: ev, payload: payload}, nil
	}
	again := event.New()
	// payload is valid JSON without surrounding whitespace: json.Marshal
	// compacts, and so validates, what MarshalJSON wrote.
	if err := sdkUnmarshal(payload, ev.DataContentType(), &again); err != nil {
		return nil, badEvent("", "event cannot be stored faithfully: its structured JSON form does not decode (%s)", firstLine(err.Error()))
	}
	if rerr := validateEvent(&again); rerr != nil {
		rerr.message = "event cannot be stored faithfully: " + rerr.message
		return nil, rerr
	}
	if !marshalsTo(&again, payload) {
		field := firstDifference(ev, &again)
		return nil, badEvent(field, "event cannot be stored faithfully: attribute %s changes when its structured JSON form is decoded again", field)
	}
	return &decodedEvent{event: ev, payload: payload}, nil
}

// marshalsTo reports whether json.Marshal(ev) yields exactly payload, itself
// an output of json.Marshal. json.Marshal of an event is the SDK's
// MarshalJSON output compacted, with <, >, &, U+2028 and U+2029 escaped.
// That rewriting is idempotent, so when MarshalJSON already wrote payload,
// json.Marshal would return payload unchanged: the common case skips a
// second validating pass and a copy. Otherwise (a string the SDK writes
// holds a character json.Marshal escapes) the full comparison decides.
func marshalsTo(ev *event.Event, payload []byte) bool {
	if !ev.DataBase64 && needsJSONStandIn(ev.DataContentType()) {
		again, err := sdkMarshal(ev)
		return err == nil && bytes.Equal(again, payload)
	}
	if written, err := ev.MarshalJSON(); err == nil && bytes.Equal(written, payload) {
		return true
	}
	again, err := json.Marshal(ev)
	return err == nil && bytes.Equal(again, payload)
}

// firstDifference names the first attribute in which two events differ, for
// the error message of finish.
func firstDifference(a, b *event.Event) string {
	pairs := []struct {
		name string
		x, y string
	}{
		{"specversion", a.SpecVersion(), b.SpecVersion()},
		{"id", a.ID(), b.ID()},
		{"source", a.Source(), b.Source()},
		{"type", a.Type(), b.Type()},
		{"subject", a.Subject(), b.Subject()},
		{"datacontenttype", a.DataContentType(), b.DataContentType()},
		{"dataschema", a.DataSchema(), b.DataSchema()},
		{"time", a.Time().String(), b.Time().String()},
		{"data", string(a.Data()), string(b.Data())},
	}
	for _, p := range pairs {
		if p.x != p.y {
			return p.name
		}
	}
	ea, eb := a.Extensions(), b.Extensions()
	names := make([]string, 0, len(ea)+len(eb))
	for name := range ea {
		names = append(names, name)
	}
	for name := range eb {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		if fmt.Sprint(ea[name]) != fmt.Sprint(eb[name]) {
			return name
		}
	}
	return "data"
}
