package deliverylog

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"strconv"
	"time"
)

// errInvalidPayload is the encoding error of an entry whose Payload is not
// valid JSON.
var errInvalidPayload = errors.New("payload is not valid JSON")

// encode returns exactly json.Marshal(e)'s bytes, written member by member.
//
// Every delivery writes a record, and encoding/json spent most of a
// record's cost on reflection over Entry's fields and on validating and
// compacting Payload byte by byte, to copy bytes that are Herald's compact
// stored form, which the worker validated when it parsed them. Entry is
// one fixed struct, so this writes its members directly; anything with an
// unusual encoding (a string that needs escaping, a time outside RFC 3339)
// is still handed to encoding/json or the time package, and
// TestEncodeIsJSONMarshal and FuzzEncode hold the bytes equal to
// json.Marshal's.
//
// Payload is appended as it is. That is safe only for valid JSON, or a
// crafted payload could add members to the record, so a Payload the caller
// did not check (PayloadValid) is checked here.
func (e *Entry) encode() ([]byte, error) {
	if len(e.Payload) > 0 && !e.PayloadValid && !json.Valid(e.Payload) {
		return nil, errInvalidPayload
	}
	// The members other than the payload and the response take about 300
	// bytes.
	b := make([]byte, 0, 320+base64.StdEncoding.EncodedLen(len(e.Response))+len(e.Payload))
	var err error
	b = append(b, `{"ev":{`...)
	first := true
	member := func(name string) {
		if !first {
			b = append(b, ',')
		}
		first = false
		b = append(b, '"')
		b = append(b, name...)
		b = append(b, `":`...)
	}
	str := func(name, v string) {
		if v != "" {
			member(name)
			b = appendString(b, v)
		}
	}
	stamp := func(name string, t time.Time, always bool) {
		if err == nil && (always || !t.IsZero()) {
			member(name)
			b, err = appendTime(b, t)
		}
	}
	integer := func(name string, v int64) {
		if v != 0 {
			member(name)
			b = strconv.AppendInt(b, v, 10)
		}
	}
	str("id", e.Event.ID)
	str("source", e.Event.Source)
	str("type", e.Event.Type)
	str("subject", e.Event.Subject)
	stamp("time", e.Event.Time, false)
	b = append(b, '}')
	first = false // "ev" is always written
	stamp("in", e.IngestedAt, false)
	if e.Requeued {
		member("rq")
		b = append(b, "true"...)
	}
	integer("n", int64(e.Attempt))
	stamp("t", e.Time, true)
	integer("d", int64(e.Duration))
	integer("c", int64(e.StatusCode))
	str("e", e.Error)
	if len(e.Response) > 0 {
		member("r")
		b = append(b, '"')
		b = base64.StdEncoding.AppendEncode(b, e.Response)
		b = append(b, '"')
	}
	member("p")
	b = appendString(b, string(e.Phase))
	stamp("x", e.NextAttempt, false)
	str("dl", e.DeadLetterReason)
	if len(e.Payload) > 0 {
		member("pl")
		b = append(b, e.Payload...)
	}
	if err != nil {
		return nil, err
	}
	return append(b, '}'), nil
}

// appendString appends s as encoding/json writes a string. A string of
// printable ASCII that encoding/json writes as it is (no quote, backslash,
// or the <, > and & it escapes) is copied; any other is left to
// encoding/json, which also replaces invalid UTF-8.
func appendString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			quoted, _ := json.Marshal(s) // a string always encodes
			return append(b, quoted...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// appendTime appends t as time.Time.MarshalJSON writes it; like it, it
// fails for a time RFC 3339 cannot hold (a year outside 0–9999).
func appendTime(b []byte, t time.Time) ([]byte, error) {
	b = append(b, '"')
	b, err := t.AppendText(b)
	if err != nil {
		return nil, err
	}
	return append(b, '"'), nil
}
