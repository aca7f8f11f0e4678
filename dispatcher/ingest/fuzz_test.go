package ingest

import (
	"net/http"
	"testing"
)

// Seeds run in every `go test`; `go test -fuzz=FuzzDecodeStructured` (and
// the others) explores from them.

var structuredSeeds = []string{
	`{"specversion":"1.0","id":"1","source":"/s","type":"t"}`,
	`{"specversion":"1.0","id":"1","source":"https://example.com/a?b=c#d","type":"t","subject":"x","time":"2026-01-02T03:04:05.999999999+01:00","dataschema":"https://example.com/s","datacontenttype":"application/json","data":{"a":[1,"2",null,true]}}`,
	`{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"text/plain","data":"hello \u0000 \ud83d\ude00"}`,
	`{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"application/octet-stream","data_base64":"AP8="}`,
	`{"data":1,"specversion":"1.0","id":"1","source":"/s","type":"t","ext":"v","num":-2147483648,"flag":true}`,
	`{"specversion":"0.3","id":"1","source":"/s","type":"t"}`,
	`{"specversion":"1.0","id":"","source":"/s","type":"t"}`,
	`{"specversion":"1.0","id":"a\u0007","source":"/s","type":"t"}`,
	`{"specversion":"1.0","id":"1","source":":bad","type":"t"}`,
	`{"specversion":"1.0","id":"1","source":"/s","type":"t","Ext":1}`,
	`{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"text/plain","data":{"x":1}}`,
	`{"specversion":"1.0","id":"1","source":"/s","type":"t","data_base64":"!!"}`,
	`{"specversion":"1.0","specversion":"1.0"}`,
	`[]`, `{}`, `null`, ``, `{"specversion":"1.0"`, "\xff",
}

func FuzzDecodeStructured(f *testing.F) {
	for _, seed := range structuredSeeds {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		ev, rerr := decodeStructured(body)
		if rerr != nil {
			if ev != nil {
				t.Fatal("both an event and an error")
			}
			checkRejected(t, rerr)
			return
		}
		checkDecoded(t, ev)
	})
}

func FuzzDecodeBinary(f *testing.F) {
	type seed struct {
		specversion, id, source, typ, contentType, extName, extValue string
		body                                                         []byte
	}
	seeds := []seed{
		{"1.0", "1", "/s", "t", "application/json", "traceparent", "00-1-2-01", []byte(`{"a":1}`)},
		{"1.0", "1", "https://example.com/s", "t", "", "", "", nil},
		{"1.0", "1", "/s", "t", "", "", "", []byte("not json")},
		{"1.0", "1", "/s", "t", "text/plain; charset=utf-8", "", "", []byte("héllo")},
		{"1.0", "1", "/s", "t", "application/octet-stream", "", "", []byte{0, 0xff, 0x80}},
		{"1.0", "1", "/s", "t", "application/json", "", "", []byte("{bad")},
		{"1.0", "1", "/s", "t", "application/vnd.api+json", "", "", []byte(`{"a":1}`)},
		{"0.3", "1", "/s", "t", "", "", "", nil},
		{"1.0", "", "/s", "t", "", "", "", nil},
		{"1.0", "a\tb", "/s", "t", "", "", "", nil},
		{"1.0", "1", "/s", "t", "", "", "x", nil},
		{"1.0", "1", "/s", "t", "", "Bad_Name", "x", nil},
		{"1.0", "1", "/s", "t", "", "time", "yesterday", nil},
		{"1.0", "1", "/s", "t", "a/b; =", "", "", nil},
	}
	for _, s := range seeds {
		f.Add(s.specversion, s.id, s.source, s.typ, s.contentType, s.extName, s.extValue, s.body)
	}
	f.Fuzz(func(t *testing.T, specversion, id, source, typ, contentType, extName, extValue string, body []byte) {
		header := http.Header{}
		set := func(key, value string) {
			if value != "" {
				header[key] = []string{value}
			}
		}
		set("ce-specversion", specversion) // not canonical: decodeBinary canonicalises
		set("Ce-Id", id)
		set("Ce-Source", source)
		set("Ce-Type", typ)
		set("Content-Type", contentType)
		if extName != "" || extValue != "" {
			header["Ce-"+extName] = []string{extValue}
		}
		ev, rerr := decodeBinary(header, body)
		if rerr != nil {
			if ev != nil {
				t.Fatal("both an event and an error")
			}
			checkRejected(t, rerr)
			return
		}
		checkDecoded(t, ev)
		if ev.id() != id || ev.event.SpecVersion() != "1.0" {
			t.Fatalf("decoded id %q specversion %q from headers %v", ev.id(), ev.event.SpecVersion(), header)
		}
	})
}

func FuzzDecodeBatch(f *testing.F) {
	f.Add([]byte(`[]`))
	f.Add([]byte(`[` + structuredSeeds[0] + `,` + structuredSeeds[1] + `]`))
	f.Add([]byte(`[` + structuredSeeds[0] + `,` + structuredSeeds[5] + `]`))
	f.Add([]byte(`[` + structuredSeeds[0] + `,3]`))
	f.Add([]byte(`[` + structuredSeeds[0] + `] []`))
	f.Add([]byte(`[1,2,3,4,5]`))
	f.Add([]byte(`{"specversion":"1.0"}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		const maxEvents = 4
		events, rerr := decodeBatch(body, maxEvents)
		if rerr != nil {
			if events != nil {
				t.Fatal("both events and an error")
			}
			checkRejected(t, rerr)
			return
		}
		if len(events) > maxEvents {
			t.Fatalf("%d events accepted, limit %d", len(events), maxEvents)
		}
		for _, ev := range events {
			checkDecoded(t, ev)
		}
	})
}
