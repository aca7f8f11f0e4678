package ingest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/cloudevents/sdk-go/v2/binding/format"
	"github.com/cloudevents/sdk-go/v2/event"
)

// The reference decoder below is the structured and batch decoding as it
// was before the fast paths (arrayElements, objectMembers, unmarshalEvent,
// marshalsTo): a json.Decoder splitting the batch, format.JSON.Unmarshal,
// and a second json.Marshal compared byte for byte. The fast paths must not
// change a single result: the same events with the same stored bytes, or
// the same error (status, message, attribute, index).

func referenceDecodeStructured(body []byte) (*decodedEvent, *requestError) {
	if !utf8.Valid(body) {
		return nil, badEvent("", "body is not valid UTF-8 (JSON must be UTF-8)")
	}
	return referenceDecodeJSONEvent(body)
}

func referenceDecodeBatch(body []byte, maxEvents int) ([]*decodedEvent, *requestError) {
	if !utf8.Valid(body) {
		return nil, badEvent("", "body is not valid UTF-8 (JSON must be UTF-8)")
	}
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
	events := make([]*decodedEvent, 0, len(raws))
	for i, raw := range raws {
		ev, rerr := referenceDecodeJSONEvent(raw)
		if rerr != nil {
			rerr.index, rerr.events = i, len(raws)
			return nil, rerr
		}
		events = append(events, ev)
	}
	return events, nil
}

func referenceDecodeJSONEvent(raw []byte) (*decodedEvent, *requestError) {
	attrs, rerr := scanObject(raw)
	if rerr != nil {
		return nil, rerr
	}
	if rerr := checkJSONAttributes(attrs); rerr != nil {
		return nil, rerr
	}
	ev := event.New()
	if err := referenceUnmarshal(raw, attrs, &ev); err != nil {
		return nil, sdkError(err)
	}
	return referenceFinish(&ev)
}

// referenceUnmarshal is format.JSON.Unmarshal, except for the JSON media
// types the SDK reads as strings: those take the same stand-in path as the
// fast decoder (sdkUnmarshal), which is not what the fast paths change.
func referenceUnmarshal(raw []byte, attrs map[string]json.RawMessage, ev *event.Event) error {
	var contentType string
	if ct, ok := attrs["datacontenttype"]; ok {
		_ = json.Unmarshal(ct, &contentType)
	}
	if needsJSONStandIn(contentType) {
		return sdkUnmarshal(raw, contentType, ev)
	}
	return format.JSON.Unmarshal(raw, ev)
}

func referenceFinish(ev *event.Event) (*decodedEvent, *requestError) {
	if rerr := validateEvent(ev); rerr != nil {
		return nil, rerr
	}
	payload, err := sdkMarshal(ev)
	if err != nil {
		return nil, badEvent("", "event cannot be encoded as structured JSON: %s", firstLine(err.Error()))
	}
	if !utf8.Valid(payload) {
		return nil, badEvent("", "event cannot be stored faithfully: its structured JSON form is not valid UTF-8")
	}
	again := event.New()
	var attrs map[string]json.RawMessage
	_ = json.Unmarshal(payload, &attrs)
	if err := referenceUnmarshal(payload, attrs, &again); err != nil {
		return nil, badEvent("", "event cannot be stored faithfully: its structured JSON form does not decode (%s)", firstLine(err.Error()))
	}
	if rerr := validateEvent(&again); rerr != nil {
		rerr.message = "event cannot be stored faithfully: " + rerr.message
		return nil, rerr
	}
	if againPayload, err := sdkMarshal(&again); err != nil || !bytes.Equal(payload, againPayload) {
		field := firstDifference(ev, &again)
		return nil, badEvent(field, "event cannot be stored faithfully: attribute %s changes when its structured JSON form is decoded again", field)
	}
	return &decodedEvent{event: ev, payload: payload}, nil
}

// sameResult fails t unless two decodings gave the same events or the same
// error.
func sameResult(t *testing.T, what string, got []*decodedEvent, gotErr *requestError, want []*decodedEvent, wantErr *requestError) {
	t.Helper()
	if (gotErr == nil) != (wantErr == nil) {
		t.Fatalf("%s: error %v, reference error %v", what, gotErr, wantErr)
	}
	if wantErr != nil {
		if *gotErr != *wantErr {
			t.Fatalf("%s: error %+v, reference error %+v", what, *gotErr, *wantErr)
		}
		return
	}
	if len(got) != len(want) {
		t.Fatalf("%s: %d events, reference %d", what, len(got), len(want))
	}
	for i := range want {
		if !bytes.Equal(got[i].payload, want[i].payload) {
			t.Fatalf("%s: event %d stored as\n %s\nreference\n %s", what, i, got[i].payload, want[i].payload)
		}
		if !reflect.DeepEqual(got[i].event, want[i].event) {
			t.Fatalf("%s: event %d decoded as\n %v\nreference\n %v", what, i, got[i].event, want[i].event)
		}
	}
}

// referenceSeeds add to structuredSeeds what the fast paths must get right:
// escapes and brackets inside strings, escaped member names, whitespace
// everywhere, characters json.Marshal escapes, data that is not compact.
var referenceSeeds = []string{
	" \t\r\n{ \"specversion\" : \"1.0\" , \"id\" : \"1\" , \"source\" : \"/s\" , \"type\" : \"t\" , \"data\" : [ 1 , { \"a\" : [ ] } , \"]}\\\"\" ] } \n",
	`{"specversion":"1.0","id":"a\"}]{[","source":"/s","type":"t","data":{"k\"}":"v\\","e":{}}}`,
	`{"spec\u0076ersion":"1.0","\u0069d":"1","source":"/s","type":"t"}`,
	`{"specversion":"1.0","id":"1","\u0069d":"2","source":"/s","type":"t"}`,
	`{"specversion":"1.0","id":"<&>","source":"/s?a=1&b=2","type":"t\u2028","subject":"x\u2029"}`,
	`{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"text/plain","data":"<b> & \u2028"}`,
	`{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"application/json","data":{ "a" : "<&>" , "n" : -1.5e+3 , "t" : true , "f" : false , "z" : null }}`,
	`{"specversion":"1.0","id":"1","source":"/s","type":"t","ext":"\ud800","num":0,"neg":-7,"flag":false,"gone":null}`,
	`{"specversion":"1.0","id":"1","source":"/s","type":"t","data":null}`,
	`{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"application/vnd.foo+json","data":{ "x" : [1, "<&>"] }}`,
	`{ "data" : "s" , "datacontenttype" : "Application/Problem+JSON; charset=utf-8", "specversion":"1.0","id":"1","source":"/s","type":"t","ext":1}`,
	`{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"text/vnd.foo+json","data_base64":"eyJ4IjoxfQ=="}`,
	`{"specversion":"1.0","id":"1","source":"/s","type":"t","":1}`,
	`{"specversion":"1.0","id":"1","source":"/s","type":"t"} `,
	`{"specversion":"1.0","id":"1","source":"/s","type":"t"}{}`,
	`{"specversion":"1.0","id":"1","source":"/s","type":"t",}`,
	`{"specversion":"1.0","id":"1","source":"/s","type":"t","dataschema":"HTTP://Example.com/s"}`,
	"\ufeff{}", `"x"`, `1`, `true`, ` `,
}

var referenceBatchSeeds = []string{
	`[]`, ` [ ] `, `[,]`, `[1,]`, `[[]]`, `[{}]`, `[null]`, `["x"]`, `[1 2]`, `[] []`, `[]x`,
	`[{"specversion":"1.0","id":"1","source":"/s","type":"t"},{"specversion":"1.0","id":"2","source":"/s","type":"t"}]`,
	`[{"specversion":"1.0","id":"1","source":"/s","type":"t"},{"specversion":"1.0","id":"2","id":"3","source":"/s","type":"t"}]`,
	`[{"specversion":"1.0","id":"1","source":"/s","type":"t"},{"specversion":"1.0","id":"2","source":"/s","type":"t"]`,
	`[{},{},{},{},{}]`, `[1,2,3,4,5`, `[{},{},{},{},{}`,
}

func FuzzDecodeMatchesReference(f *testing.F) {
	for _, seeds := range [][]string{structuredSeeds, referenceSeeds, referenceBatchSeeds} {
		for _, seed := range seeds {
			f.Add([]byte(seed))
		}
	}
	for _, seed := range referenceSeeds {
		f.Add([]byte("[" + seed + "," + structuredSeeds[1] + "]"))
	}
	f.Add(benchEvent(1))
	f.Fuzz(func(t *testing.T, body []byte) {
		ev, rerr := decodeStructured(body)
		refEv, refErr := referenceDecodeStructured(body)
		sameResult(t, "structured", []*decodedEvent{ev}, rerr, []*decodedEvent{refEv}, refErr)

		const maxEvents = 4
		events, rerr := decodeBatch(body, maxEvents)
		refEvents, refErr := referenceDecodeBatch(body, maxEvents)
		sameResult(t, "batch", events, rerr, refEvents, refErr)
	})
}

// TestMarshalsTo covers both ways marshalsTo decides, as finish uses it on
// an event decoded from its stored form: the SDK writes the stored form
// itself, or only json.Marshal's escaping of <, >, &, U+2028 and U+2029 in
// strings the SDK writes makes it; and an event that does not marshal to
// the stored form.
func TestMarshalsTo(t *testing.T) {
	tests := []struct {
		name     string
		event    string
		sdkAlone bool // MarshalJSON alone writes the stored form
	}{
		{"plain", `{"specversion":"1.0","id":"1","source":"/s","type":"t","data":{"a":[1,2]}}`, true},
		{"escaped data", `{"specversion":"1.0","id":"1","source":"/s","type":"t","data":{"a":"<&>"}}`, true},
		{"HTML characters in an attribute", `{"specversion":"1.0","id":"<&>","source":"/s","type":"t"}`, false},
		{"line separator in an extension", `{"specversion":"1.0","id":"1","source":"/s","type":"t","ext":"a` + "\u2028" + `"}`, false},
		{"text data with HTML characters", `{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"text/plain","data":"<b>"}`, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			decoded, rerr := decodeStructured([]byte(tc.event))
			if rerr != nil {
				t.Fatal(rerr)
			}
			payload := decoded.payload
			ev := event.New()
			if err := json.Unmarshal(payload, &ev); err != nil {
				t.Fatal(err)
			}
			written, err := ev.MarshalJSON()
			if err != nil {
				t.Fatal(err)
			}
			if got := bytes.Equal(written, payload); got != tc.sdkAlone {
				t.Fatalf("MarshalJSON wrote the stored form: %v, want %v (%s / %s)", got, tc.sdkAlone, written, payload)
			}
			if !marshalsTo(&ev, payload) {
				t.Errorf("event does not marshal to its own stored form %s", payload)
			}
			changed := bytes.Replace(payload, []byte(`"1.0"`), []byte(`"1.1"`), 1)
			if marshalsTo(&ev, changed) {
				t.Errorf("event marshals to another stored form %s", changed)
			}
		})
	}
}

// TestDecodedEventsDoNotAliasTheBody: batch elements are now sub-slices of
// the request body rather than copies, yet nothing decoded may refer to the
// body, whose buffer the handler could reuse.
func TestDecodedEventsDoNotAliasTheBody(t *testing.T) {
	body := []byte(`[` + structuredSeeds[1] + `,` + structuredSeeds[3] + `]`)
	events, rerr := decodeBatch(body, 10)
	if rerr != nil {
		t.Fatal(rerr)
	}
	var before []string
	for _, ev := range events {
		before = append(before, fmt.Sprintf("%s %v", ev.payload, ev.event))
	}
	copy(body, strings.Repeat("#", len(body)))
	for i, ev := range events {
		if after := fmt.Sprintf("%s %v", ev.payload, ev.event); after != before[i] {
			t.Errorf("event %d changed with the body:\n %s\n %s", i, before[i], after)
		}
	}
}

// TestStoredFormIsJSONMarshal: the stored form, whichever way storedForm
// takes, is json.Marshal's (sdkMarshal's) bytes for the event, for inputs
// in the SDK's canonical form and for inputs that differ from it only in
// what json.Marshal rewrites: whitespace and the characters it escapes.
func TestStoredFormIsJSONMarshal(t *testing.T) {
	for name, in := range map[string]string{
		"canonical":                    `{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"application/json","data":{"a":"x y","b":[1,2]}}`,
		"whitespace between members":   `{"specversion":"1.0", "id":"1","source":"/s","type":"t","data":{"a" : [1, 2]}}`,
		"whitespace in data only":      `{"specversion":"1.0","id":"1","source":"/s","type":"t","data":{"a":[1, 2]}}`,
		"HTML characters in data":      `{"specversion":"1.0","id":"1","source":"/s","type":"t","data":{"a":"<b>&"}}`,
		"HTML characters in attribute": `{"specversion":"1.0","id":"<&>","source":"/s","type":"t"}`,
		"line separator in data":       `{"specversion":"1.0","id":"1","source":"/s","type":"t","data":{"a":"` + "\u2028\u2029" + `"}}`,
		"escapes at a string's end":    `{"specversion":"1.0","id":"1","source":"/s","type":"t","data":{"a\\":"\\\\","b":"\" x"}}`,
		"text data":                    `{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"text/plain","data":"a <b> c"}`,
		"base64 data":                  `{"specversion":"1.0","id":"1","source":"/s","type":"t","data_base64":"AP8="}`,
		"a +json type (stand-in)":      `{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"application/vnd.x+json","data":{"a":1}}`,
	} {
		t.Run(name, func(t *testing.T) {
			decoded, rerr := decodeStructured([]byte(in))
			if rerr != nil {
				t.Fatal(rerr)
			}
			want, err := sdkMarshal(decoded.event)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(decoded.payload, want) {
				t.Errorf("stored form\n %s\nwant json.Marshal's\n %s", decoded.payload, want)
			}
			again, rerr := decodeStructured(decoded.payload)
			if rerr != nil || !bytes.Equal(again.payload, decoded.payload) {
				t.Errorf("stored form is not a fixed point: %s, %v", again.payload, rerr)
			}
		})
	}
}

func TestCompactAndEscaped(t *testing.T) {
	for in, want := range map[string]bool{
		`{"a":"x y","b":[1,2]}`:    true,
		`{"a":"\" x"}`:             true,
		`{"a\\":"\\","b":1}`:       true,
		`{"a": 1}`:                 false,
		`{"a":[1,2] }`:             false,
		"{\"a\":\"\u2028\"}":       false,
		"{\"a\":\"\u2029\"}":       false,
		`{"a":"<"}`:                false,
		`{"a":"&"}`:                false,
		`{"a":"\u003c"}`:           true,
		"{\"a\":\"\u2027\u202a\"}": true,
	} {
		if got := compactAndEscaped([]byte(in)); got != want {
			t.Errorf("compactAndEscaped(%s) = %v, want %v", in, got, want)
		}
	}
}
