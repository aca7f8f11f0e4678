package ssrf

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"
)

// failingLookup records every host it is asked for and resolves nothing: a
// numeric host form must never reach DNS, where the answer (or a search
// domain) could differ from the address browsers, curl and glibc's
// inet_aton read in it.
type failingLookup struct {
	mu    sync.Mutex
	hosts []string
}

func (l *failingLookup) Lookup(_ context.Context, host string) ([]netip.Addr, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.hosts = append(l.hosts, host)
	return nil, &net.DNSError{Err: "lookup refused by test", Name: host, IsNotFound: true}
}

func (l *failingLookup) calls() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.hosts)
}

// TestDialerReadsNumericIPv4Forms: the decimal, hexadecimal, octal and
// shortened IPv4 forms that inet_aton and the WHATWG URL standard accept are
// the addresses they denote, checked by the guard like any literal, and
// never sent to DNS.
func TestDialerReadsNumericIPv4Forms(t *testing.T) {
	for _, tc := range []struct {
		host string
		want string
	}{
		{"2130706433", "127.0.0.1"},
		{"0x7f000001", "127.0.0.1"},
		{"0X7F000001", "127.0.0.1"},
		{"0177.0.0.1", "127.0.0.1"},
		{"0177.0000.0.01", "127.0.0.1"},
		{"127.1", "127.0.0.1"},
		{"127.0.1", "127.0.0.1"},
		{"0x7f.1", "127.0.0.1"},
		{"127.0.0.1.", "127.0.0.1"},
		{"017700000001", "127.0.0.1"},
		{"0xa9fea9fe", "169.254.169.254"},
		{"2852039166", "169.254.169.254"},
		{"0251.0376.0251.0376", "169.254.169.254"},
		{"10.1", "10.0.0.1"},
		{"0", "0.0.0.0"},
		{"0x", "0.0.0.0"},
	} {
		t.Run(tc.host, func(t *testing.T) {
			want := netip.MustParseAddr(tc.want)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()

			// Default policy: refused as the address it denotes.
			lookup, rec := &failingLookup{}, &recordingDialer{}
			d := NewDialer(New(nil), DialerOptions{Lookup: lookup.Lookup, Dial: rec.Dial})
			_, err := d.DialContext(ctx, "tcp", net.JoinHostPort(tc.host, "443"))
			var blocked *BlockedError
			if !errors.As(err, &blocked) || blocked.Addr != want {
				t.Fatalf("DialContext(%s) = %v, want a *BlockedError for %s", tc.host, err, want)
			}
			if got := lookup.calls(); len(got) != 0 {
				t.Errorf("%s was sent to DNS: %v", tc.host, got)
			}
			if got := rec.addresses(); len(got) != 0 {
				t.Errorf("the guard let %v through", got)
			}

			// Allowlisting exactly that address lets the dialer connect to
			// it, and to nothing else (the test dialer refuses anything but
			// loopback without touching the network).
			lookup, rec = &failingLookup{}, &recordingDialer{}
			d = NewDialer(New([]netip.Prefix{netip.PrefixFrom(want, 32)}), DialerOptions{Lookup: lookup.Lookup, Dial: rec.Dial})
			conn, _ := d.DialContext(ctx, "tcp", net.JoinHostPort(tc.host, "1"))
			if conn != nil {
				_ = conn.Close()
			}
			if got, wantDial := rec.addresses(), []string{netip.AddrPortFrom(want, 1).String()}; !slices.Equal(got, wantDial) {
				t.Errorf("allowlisted %s: dialled %v, want %v", want, got, wantDial)
			}
			if got := lookup.calls(); len(got) != 0 {
				t.Errorf("%s was sent to DNS: %v", tc.host, got)
			}
		})
	}
}

// TestDialerResolvesNamesThatOnlyLookNumeric: host names are not mistaken
// for addresses; they go to the resolver (and its answers to the guard).
func TestDialerResolvesNamesThatOnlyLookNumeric(t *testing.T) {
	for _, host := range []string{
		"1.2.3.4.5",      // five parts: not an address
		"256.0.0.1",      // a part too large for its position
		"1.2.3.256",      // last part too large for a dotted quad
		"4294967296",     // 2^32
		"0x1g",           // not hexadecimal
		"09.0.0.1",       // not octal
		"123.example",    // a name with a numeric label
		"example.123abc", // a name ending in a label that is not a number
		"1..1",           // empty part
		".1",             // empty part
		"1.2.3.4..",      // two trailing dots
	} {
		t.Run(host, func(t *testing.T) {
			lookup, rec := &failingLookup{}, &recordingDialer{}
			d := NewDialer(New(nil), DialerOptions{Lookup: lookup.Lookup, Dial: rec.Dial})
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, err := d.DialContext(ctx, "tcp", net.JoinHostPort(host, "443"))
			var lookupErr *LookupError
			if !errors.As(err, &lookupErr) {
				t.Fatalf("DialContext(%s) = %v, want a *LookupError (the name was resolved)", host, err)
			}
			if got := lookup.calls(); !slices.Equal(got, []string{host}) {
				t.Errorf("resolver asked for %v, want [%s]", got, host)
			}
			if got := rec.addresses(); len(got) != 0 {
				t.Errorf("dialled %v", got)
			}
		})
	}
}

// FuzzNumericIPv4 checks the numeric-form reader against its definition:
// whatever it accepts is an IPv4 address that re-reads to itself in dotted
// form, every dotted quad netip accepts reads the same, and nothing it
// accepts contains a character outside the numeric alphabet.
func FuzzNumericIPv4(f *testing.F) {
	for _, s := range []string{
		"2130706433", "0x7f000001", "0177.0.0.1", "127.1", "127.0.0.1.", "1.2.3.4", "0x", "0",
		"4294967295", "4294967296", "1.2.3.4.5", "0xffffffffffffffffff", "00000000000000000000000001",
		"1..1", "", ".", "example.com", "1e3", "+1", "-1", "0x7f.0x0.0x0.0x1",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		addr, ok := parseNumericIPv4(s)
		if std, err := netip.ParseAddr(s); err == nil && std.Is4() {
			if !ok || addr != std {
				t.Fatalf("%q: read as %v (ok=%v), netip reads %v", s, addr, ok, std)
			}
		}
		if !ok {
			return
		}
		if !addr.Is4() {
			t.Fatalf("%q: read as non-IPv4 %v", s, addr)
		}
		for _, c := range []byte(s) {
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F' || c == 'x' || c == 'X' || c == '.') {
				t.Fatalf("%q: accepted with character %q", s, c)
			}
		}
		if again, ok := parseNumericIPv4(addr.String()); !ok || again != addr {
			t.Fatalf("%q: %v does not re-read to itself (%v, %v)", s, addr, again, ok)
		}
	})
}
