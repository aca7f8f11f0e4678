package queue

import (
	"strings"
	"testing"
)

// FuzzIsJetStreamHeader: the allocation-free check says what lower-casing
// the name and comparing its prefix says, for any name.
func FuzzIsJetStreamHeader(f *testing.F) {
	for _, k := range []string{"Nats-Msg-Id", "NATS-EXPECTED-STREAM", "nats-", "nats", "Nat", "Herald-Webhook-Id", "Naţs-x", "naſ-x", "", "İnats-"} {
		f.Add(k)
	}
	f.Fuzz(func(t *testing.T, k string) {
		if got, want := isJetStreamHeader(k), strings.HasPrefix(strings.ToLower(k), natsHeaderPrefix); got != want {
			t.Fatalf("isJetStreamHeader(%q) = %v, want %v", k, got, want)
		}
	})
}

func TestPublicHeaderDropsJetStreamsOwn(t *testing.T) {
	h := publicHeader(map[string][]string{"Nats-Msg-Id": {"x"}, "NATS-Expected-Stream": {"s"}, "Herald-Webhook-Id": {"msg_1"}})
	if len(h) != 1 || h.Get("Herald-Webhook-Id") != "msg_1" {
		t.Errorf("publicHeader = %v, want only Herald-Webhook-Id", h)
	}
}
