// Package jsonscan finds the elements of a JSON array and the members of
// a JSON object in one pass and without copying, in input that json.Valid
// has accepted. It exists because encoding/json offers this only through a
// json.Decoder, which reads every value twice (to find its end, then to
// decode it) and copies it, or through json.Unmarshal into a map of
// json.RawMessage, which validates the input again and copies every
// member; in the dispatcher that was a good part of the cost of decoding
// and routing an event.
//
// Because the input is valid JSON, the scanner only needs to find where
// values end. It declines (returns false for) whatever is not a plain
// success — not an array or object, too many elements, a duplicate member
// name — so that callers fall back to encoding/json, which then decides
// and reports what is wrong. Member names are decoded with json.Unmarshal,
// exactly as encoding/json decodes map keys. The results alias the input.
package jsonscan

import (
	"encoding/json"
	"unicode/utf8"
)

// String decodes raw as json.Unmarshal into a string does, with the same
// result and error for any input. A string literal of printable ASCII
// without escapes, which is nearly every CloudEvents attribute, is copied
// once instead of going through encoding/json's reflection and its
// allocations; anything else is left to encoding/json.
func String(raw []byte) (string, error) {
	if n := len(raw); n >= 2 && raw[0] == '"' && raw[n-1] == '"' && plainASCII(raw[1:n-1]) {
		return string(raw[1 : n-1]), nil
	}
	var s string
	err := json.Unmarshal(raw, &s)
	return s, err
}

// plainASCII reports whether b holds only bytes a JSON string literal
// represents as themselves: printable ASCII other than '"' and '\'.
func plainASCII(b []byte) bool {
	for _, c := range b {
		if c < 0x20 || c == '"' || c == '\\' || c >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// ArrayElements returns the elements of body, which must be valid JSON,
// when it is an array of at most maxElements elements.
func ArrayElements(body []byte, maxElements int) ([]json.RawMessage, bool) {
	i := skipJSONWhitespace(body, 0)
	if i == len(body) || body[i] != '[' {
		return nil, false
	}
	i = skipJSONWhitespace(body, i+1)
	var elements []json.RawMessage
	if body[i] == ']' {
		return elements, true
	}
	for {
		if len(elements) == maxElements {
			return nil, false
		}
		end := endOfValue(body, i)
		elements = append(elements, body[i:end])
		i = skipJSONWhitespace(body, end)
		if body[i] == ']' {
			return elements, true
		}
		i = skipJSONWhitespace(body, i+1) // after the ','
	}
}

// ObjectMembers returns the members of raw, which must be valid JSON, when
// it is an object without duplicate member names.
func ObjectMembers(raw []byte) (map[string]json.RawMessage, bool) {
	i := skipJSONWhitespace(raw, 0)
	if i == len(raw) || raw[i] != '{' {
		return nil, false
	}
	i = skipJSONWhitespace(raw, i+1)
	attrs := make(map[string]json.RawMessage)
	if raw[i] == '}' {
		return attrs, true
	}
	for {
		nameEnd := endOfString(raw, i)
		name, err := String(raw[i:nameEnd]) // decoded as json.Decoder.Token decodes it
		if err != nil {
			return nil, false
		}
		i = skipJSONWhitespace(raw, nameEnd)
		i = skipJSONWhitespace(raw, i+1) // after the ':'
		end := endOfValue(raw, i)
		if _, dup := attrs[name]; dup {
			return nil, false
		}
		attrs[name] = raw[i:end]
		i = skipJSONWhitespace(raw, end)
		if raw[i] == '}' {
			return attrs, true
		}
		i = skipJSONWhitespace(raw, i+1) // after the ','
	}
}

// skipJSONWhitespace returns the index of the first byte at or after i that
// is not JSON whitespace.
func skipJSONWhitespace(data []byte, i int) int {
	for i < len(data) && isJSONWhitespace(data[i]) {
		i++
	}
	return i
}

func isJSONWhitespace(c byte) bool { return c == ' ' || c == '\t' || c == '\r' || c == '\n' }

// endOfValue returns the index just after the JSON value that starts at
// data[i], in valid JSON.
func endOfValue(data []byte, i int) int {
	switch data[i] {
	case '"':
		return endOfString(data, i)
	case '{', '[':
		depth := 0
		for ; i < len(data); i++ {
			switch data[i] {
			case '"':
				i = endOfString(data, i) - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
		}
		return i
	default: // a number, true, false or null: ends where the next token or whitespace starts
		for i < len(data) && !isJSONWhitespace(data[i]) && data[i] != ',' && data[i] != '}' && data[i] != ']' {
			i++
		}
		return i
	}
}

// endOfString returns the index just after the JSON string that starts at
// data[i], in valid JSON.
func endOfString(data []byte, i int) int {
	for i++; i < len(data); i++ {
		switch data[i] {
		case '\\':
			i++ // the escaped character cannot end the string
		case '"':
			return i + 1
		}
	}
	return i
}

// Object returns the members of a JSON object as json.Unmarshal into a
// map[string]json.RawMessage does, with the same result and error for any
// input, but in one pass and without copying when data is a valid object
// without duplicate member names.
func Object(data []byte) (map[string]json.RawMessage, error) {
	if json.Valid(data) {
		if members, ok := ObjectMembers(data); ok {
			return members, nil
		}
	}
	var members map[string]json.RawMessage
	if err := json.Unmarshal(data, &members); err != nil {
		return nil, err
	}
	return members, nil
}
