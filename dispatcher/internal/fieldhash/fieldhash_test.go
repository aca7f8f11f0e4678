package fieldhash

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"strings"
	"testing"
)

// reference is the streaming form the queue and ingest used before: the
// ids it made are stored, so Hex must give the same.
func reference(domain string, fields ...string) string {
	h := sha256.New()
	var length [8]byte
	for _, f := range append([]string{domain}, fields...) {
		binary.BigEndian.PutUint64(length[:], uint64(len(f)))
		h.Write(length[:])
		h.Write([]byte(f))
	}
	return hex.EncodeToString(h.Sum(nil))
}

func TestHexIsTheLengthPrefixedSHA256(t *testing.T) {
	long := strings.Repeat("x", 300) // beyond the stack buffer
	for _, c := range [][]string{
		{"herald-event/v1", "shop", "/orders", "o-1"},
		{"herald-event/v1", "", "", ""},
		{"d"},
		{"herald-delivery/v1", long, "ns", "ep"},
	} {
		if got, want := Hex(c[0], c[1:]...), reference(c[0], c[1:]...); got != want {
			t.Errorf("Hex(%q) = %s, want %s", c, got, want)
		}
	}
	// Length prefixes keep lists that concatenate alike apart.
	if Hex("d", "ab", "c") == Hex("d", "a", "bc") {
		t.Error("two field lists with the same concatenation hash alike")
	}
	// An id stored by an earlier version, so that a change of the scheme
	// (and of the reference with it) cannot pass unnoticed.
	const stored = "bd8d4620e7ac44822e6213389082376f199886878332befb719b8f9fbc9dfc9b"
	if got := Hex("herald-event/v1", "shop", "/orders", "o-1"); got != stored {
		t.Errorf("Hex = %s, want the stored %s", got, stored)
	}
}

func FuzzHex(f *testing.F) {
	f.Add("herald-event/v1", "shop", "/orders", "o-1")
	f.Fuzz(func(t *testing.T, domain, a, b, c string) {
		if got, want := Hex(domain, a, b, c), reference(domain, a, b, c); got != want {
			t.Fatalf("Hex = %s, want %s", got, want)
		}
	})
}

func TestHexAllocatesOnlyItsResult(t *testing.T) {
	allocs := testing.AllocsPerRun(100, func() { _ = Hex("herald-event/v1", "shop", "/orders", "o-1") })
	if allocs > 1 {
		t.Errorf("Hex allocates %.0f times, want only the returned string", allocs)
	}
}

func BenchmarkHex(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		_ = Hex("herald-delivery/v1", "3f1c9a52d6e1c0ffee", "shop", "orders")
	}
}
