package jsonscan

import (
	"encoding/json"
	"reflect"
	"testing"
)

var seeds = []string{
	`{}`, `[]`, ` { } `, `null`, `1`, `"s"`, `true`, `[1,2]`, `{"a":1}`,
	`{"a":1,"a":2}`, `{"a" : [1, {"b": "}"}], "c\"d": "x\\"}`,
	`{"\u0061":true,"b":null,"c":-1.5e3,"d":{"e":[[],{}]}}`,
	"{\"a\":\t\"\u2028<&>\"\n}", `{"a":1,}`, `{"a"}`, `{`, `[1,`, `{"a":1} x`,
	`{"x":"\ud800"}`, `{"\ud800":1}`, "{\"\xff\":1}",
	`[{"id":"1"}, {"id":"2"} ,{"id":"3"}]`, `[ ]`, `[[1],[2]]`,
}

// TestObjectMatchesEncodingJSON: Object gives what json.Unmarshal into a
// map of raw messages gives, for valid, invalid and duplicate input.
func TestObjectMatchesEncodingJSON(t *testing.T) {
	for _, in := range seeds {
		checkObject(t, []byte(in))
	}
}

func FuzzObject(f *testing.F) {
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(checkObject)
}

// FuzzString: String gives what json.Unmarshal into a string gives.
func FuzzString(f *testing.F) {
	for _, s := range []string{`"plain"`, `""`, `"esc\"aped"`, `"\u00e9t\u00e9"`, `"été"`, "\"\xff\"", "\"tab\there\"", `" spaced "`, ` "lead"`, `"unterminated`, `42`, `null`, `"a"b"`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		got, gotErr := String(in)
		var want string
		wantErr := json.Unmarshal(in, &want)
		if (gotErr != nil) != (wantErr != nil) || got != want {
			t.Fatalf("String(%q) = %q, %v; encoding/json %q, %v", in, got, gotErr, want, wantErr)
		}
	})
}

func checkObject(t *testing.T, in []byte) {
	got, gotErr := Object(in)
	var want map[string]json.RawMessage
	wantErr := json.Unmarshal(in, &want)
	if (gotErr != nil) != (wantErr != nil) {
		t.Fatalf("Object(%q) error %v, encoding/json %v", in, gotErr, wantErr)
	}
	if wantErr == nil && !reflect.DeepEqual(got, want) {
		t.Fatalf("Object(%q) = %q, encoding/json %q", in, got, want)
	}
}

// TestArrayElements: the elements of a valid array, as encoding/json
// splits them; declined for anything else and beyond the limit.
func TestArrayElements(t *testing.T) {
	for _, in := range seeds {
		if !json.Valid([]byte(in)) {
			continue
		}
		got, ok := ArrayElements([]byte(in), 100)
		var want []json.RawMessage
		isArray := json.Unmarshal([]byte(in), &want) == nil && want != nil
		if ok != isArray {
			t.Fatalf("ArrayElements(%q) ok=%v, want %v", in, ok, isArray)
		}
		if ok && !reflect.DeepEqual(got, want) && !(len(got) == 0 && len(want) == 0) {
			t.Fatalf("ArrayElements(%q) = %q, encoding/json %q", in, got, want)
		}
	}
	if _, ok := ArrayElements([]byte(`[1,2,3]`), 2); ok {
		t.Fatal("ArrayElements accepted 3 elements with a limit of 2")
	}
}
