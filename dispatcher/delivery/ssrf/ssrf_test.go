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

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		addr string
		want Class
	}{
		{"93.184.216.34", Public},
		{"8.8.8.8", Public},
		{"2606:4700::1111", Public},
		{"127.0.0.1", Loopback},
		{"127.255.255.254", Loopback},
		{"::1", Loopback},
		{"10.0.0.1", Private},
		{"172.16.0.1", Private},
		{"172.31.255.255", Private},
		{"192.168.1.1", Private},
		{"169.254.169.254", LinkLocal},
		{"fe80::1", LinkLocal},
		{"fe80::1%eth0", LinkLocal},
		{"100.64.0.1", CGNAT},
		{"100.127.255.255", CGNAT},
		{"224.0.0.1", Multicast},
		{"239.255.255.250", Multicast},
		{"ff0e::1", Multicast},
		{"0.0.0.0", Unspecified},
		{"::", Unspecified},
		{"fc00::1", UniqueLocal},
		{"fd12:3456::1", UniqueLocal},
		{"::ffff:169.254.169.254", IPv4Embedded},
		{"::ffff:127.0.0.1", IPv4Embedded},
		{"::ffff:8.8.8.8", IPv4Embedded},
		{"64:ff9b::a9fe:a9fe", IPv4Embedded},
		{"64:ff9b:1::1", IPv4Embedded},
		{"2002:a9fe:a9fe::1", IPv4Embedded},
		{"2001:0:4136:e378:8000:63bf:3fff:fdd2", IPv4Embedded}, // Teredo
		{"192.0.2.1", Reserved},
		{"198.18.0.1", Reserved},
		{"240.0.0.1", Reserved},
		{"255.255.255.255", Reserved},
		{"2001:db8::1", Reserved},
		{"::1.2.3.4", Reserved}, // deprecated IPv4-compatible form
		{"2606:4700::1111%eth0", Reserved},
	} {
		addr := netip.MustParseAddr(tc.addr)
		if got := Classify(addr); got != tc.want {
			t.Errorf("Classify(%s) = %s, want %s", tc.addr, got, tc.want)
		}
	}
	if got := Classify(netip.Addr{}); got != Invalid {
		t.Errorf("Classify(zero) = %s, want %s", got, Invalid)
	}
}

func TestGuardDefaultRefusesEveryNonPublicAddress(t *testing.T) {
	g := New(nil)
	for _, tc := range []struct {
		addr    string
		allowed bool
	}{
		{"93.184.216.34", true},
		{"2606:4700::1111", true},
		{"127.0.0.1", false},
		{"::1", false},
		{"10.0.0.1", false},
		{"169.254.169.254", false},
		{"::ffff:169.254.169.254", false},
		{"64:ff9b::a9fe:a9fe", false},
		{"2002:a9fe:a9fe::1", false},
		{"fc00::1", false},
		{"100.64.0.1", false},
		{"224.0.0.1", false},
		{"0.0.0.0", false},
		{"fe80::1%eth0", false},
	} {
		err := g.Check(netip.MustParseAddr(tc.addr))
		if tc.allowed && err != nil {
			t.Errorf("Check(%s) = %v, want allowed", tc.addr, err)
		}
		if !tc.allowed {
			var blocked *BlockedError
			if !errors.As(err, &blocked) || !errors.Is(err, ErrBlocked) {
				t.Errorf("Check(%s) = %v, want a *BlockedError", tc.addr, err)
			}
		}
	}
}

func TestGuardAllowlistOptsIn(t *testing.T) {
	g := New([]netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("fd00:1::/64")})
	for _, tc := range []struct {
		addr    string
		allowed bool
	}{
		{"127.0.0.1", true},
		{"127.1.2.3", true},
		{"fd00:1::5", true},
		{"fd00:2::5", false},
		// Allowing 127.0.0.0/8 does not allow its IPv4-mapped IPv6 form or
		// anything else private.
		{"::ffff:127.0.0.1", false},
		{"::1", false},
		{"10.0.0.1", false},
		{"169.254.169.254", false},
	} {
		err := g.Check(netip.MustParseAddr(tc.addr))
		if (err == nil) != tc.allowed {
			t.Errorf("Check(%s) = %v, want allowed=%v", tc.addr, err, tc.allowed)
		}
	}
}

func TestControlChecksTheSocketAddress(t *testing.T) {
	g := New(nil)
	if err := g.Control("tcp4", "10.0.0.1:443", nil); !errors.Is(err, ErrBlocked) {
		t.Errorf("Control(10.0.0.1) = %v, want blocked", err)
	}
	if err := g.Control("udp4", "93.184.216.34:53", nil); !errors.Is(err, ErrBlocked) {
		t.Errorf("Control(udp) = %v, want blocked", err)
	}
	if err := g.Control("tcp4", "93.184.216.34:8443", nil); err != nil {
		t.Errorf("Control(public, any port) = %v, want allowed", err)
	}
}

// recordingDialer stands in for the network under the guard: it records
// every address it is asked to dial and connects only to loopback, so a
// broken guard can never make a test reach another host.
type recordingDialer struct {
	mu     sync.Mutex
	dialed []string
}

var errRefusedByTest = errors.New("test dialer refuses non-loopback destinations")

func (r *recordingDialer) Dial(ctx context.Context, network, address string) (net.Conn, error) {
	r.mu.Lock()
	r.dialed = append(r.dialed, address)
	r.mu.Unlock()
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return nil, err
	}
	if a := ap.Addr(); !(a.Is4() && a.IsLoopback()) && a != netip.IPv6Loopback() {
		return nil, errRefusedByTest
	}
	var d net.Dialer
	return d.DialContext(ctx, network, address)
}

func (r *recordingDialer) addresses() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.dialed)
}

// staticLookup resolves from a table; a host may answer differently on
// each lookup (DNS rebinding).
type staticLookup struct {
	mu      sync.Mutex
	answers map[string][][]netip.Addr
	calls   map[string]int
}

func (l *staticLookup) Lookup(_ context.Context, host string) ([]netip.Addr, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	answers, ok := l.answers[host]
	if !ok {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	if l.calls == nil {
		l.calls = map[string]int{}
	}
	i := min(l.calls[host], len(answers)-1)
	l.calls[host]++
	return answers[i], nil
}

func addrs(s ...string) []netip.Addr {
	out := make([]netip.Addr, len(s))
	for i, a := range s {
		out[i] = netip.MustParseAddr(a)
	}
	return out
}

func TestDialerChecksResolvedAddresses(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ln.Close() }()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.Close()
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port

	lookup := &staticLookup{answers: map[string][][]netip.Addr{
		"private.test":  {addrs("10.1.2.3", "192.168.0.10")},
		"loopback.test": {addrs("127.0.0.1")},
		"mixed.test":    {addrs("10.0.0.1", "127.0.0.1")},
		"mixed-pub.test": {
			addrs("169.254.169.254", "93.184.216.34"),
		},
		"rebind.test": {addrs("93.184.216.34"), addrs("10.0.0.1")},
		"empty.test":  {{}},
	}}
	for _, tc := range []struct {
		name      string
		allow     []netip.Prefix
		address   string
		wantErr   error // nil: connected
		wantDials []string
	}{
		{"loopback allowlisted", loopbackOnly, "loopback.test", nil, []string{"127.0.0.1"}},
		{"loopback not allowlisted", nil, "loopback.test", ErrBlocked, nil},
		{"private records", loopbackOnly, "private.test", ErrBlocked, nil},
		{"private and allowed records: refused as a whole", loopbackOnly, "mixed.test", ErrBlocked, nil},
		{"metadata and public records: refused as a whole, nothing dialled", loopbackOnly, "mixed-pub.test", ErrBlocked, nil},
		{"ip literal", nil, "10.0.0.1", ErrBlocked, nil},
		{"unknown host", nil, "nope.test", &LookupError{}, nil},
		{"no addresses", nil, "empty.test", &LookupError{}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := &recordingDialer{}
			d := NewDialer(New(tc.allow), DialerOptions{Lookup: lookup.Lookup, Dial: rec.Dial})
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(tc.address, itoa(port)))
			if conn != nil {
				_ = conn.Close()
			}
			switch want := tc.wantErr.(type) {
			case nil:
				if err != nil {
					t.Fatalf("DialContext: %v", err)
				}
			case *LookupError:
				var le *LookupError
				if !errors.As(err, &le) {
					t.Fatalf("DialContext error = %v, want a *LookupError", err)
				}
			default:
				if !errors.Is(err, want) {
					t.Fatalf("DialContext error = %v, want %v", err, want)
				}
			}
			var got []string
			for _, a := range rec.addresses() {
				got = append(got, netip.MustParseAddrPort(a).Addr().String())
			}
			if !slices.Equal(got, tc.wantDials) {
				t.Errorf("dialled %v, want %v", got, tc.wantDials)
			}
		})
	}

	t.Run("DNS rebinding: each dial checks the address it connects to", func(t *testing.T) {
		rec := &recordingDialer{}
		d := NewDialer(New(loopbackOnly), DialerOptions{Lookup: lookup.Lookup, Dial: rec.Dial})
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := d.DialContext(ctx, "tcp", "rebind.test:443"); !errors.Is(err, errRefusedByTest) {
			t.Fatalf("first dial: %v, want the public address to reach the (refusing) test dialer", err)
		}
		if _, err := d.DialContext(ctx, "tcp", "rebind.test:443"); !errors.Is(err, ErrBlocked) {
			t.Fatalf("second dial: %v, want blocked", err)
		}
		if got := rec.addresses(); !slices.Equal(got, []string{"93.184.216.34:443"}) {
			t.Errorf("dialled %v, want only the public address", got)
		}
	})
}

var loopbackOnly = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}

func itoa(i int) string {
	return netip.AddrPortFrom(netip.IPv4Unspecified(), uint16(i)).String()[len("0.0.0.0:"):]
}

// FuzzClassifyAddress checks that Classify and the guard agree: an address
// is permitted by the default policy exactly when it is classified Public,
// and allowlisting an address's own prefix permits it (zones excepted).
func FuzzClassifyAddress(f *testing.F) {
	for _, s := range []string{
		"127.0.0.1", "10.0.0.1", "169.254.169.254", "::ffff:169.254.169.254", "fc00::1",
		"64:ff9b::a9fe:a9fe", "2002:a9fe:a9fe::1", "93.184.216.34", "2606:4700::1111",
		"100.64.0.1", "224.0.0.1", "0.0.0.0", "::", "fe80::1%eth0", "2001:db8::1", "::1.2.3.4",
		"255.255.255.255", "2001::1",
	} {
		f.Add(s)
	}
	def := New(nil)
	f.Fuzz(func(t *testing.T, s string) {
		addr, err := netip.ParseAddr(s)
		if err != nil {
			return
		}
		class := Classify(addr)
		err = def.Check(addr)
		if (err == nil) != (class == Public) {
			t.Fatalf("address %s: class %s but Check = %v", addr, class, err)
		}
		if err != nil {
			var blocked *BlockedError
			if !errors.As(err, &blocked) || blocked.Class != class {
				t.Fatalf("address %s: Check error %v does not carry class %s", addr, err, class)
			}
		}
		if addr.Zone() != "" {
			return
		}
		own := netip.PrefixFrom(addr, addr.BitLen())
		if err := New([]netip.Prefix{own}).Check(addr); err != nil {
			t.Fatalf("address %s: allowlisting %s did not permit it: %v", addr, own, err)
		}
	})
}

// TestGuardDeniesClusterCIDRs: the cluster's pod and Service ranges
// (WithDenied, the dispatcher's --cluster-cidrs) are refused even when they
// are public and even inside the allowlist; other addresses are unchanged.
func TestGuardDeniesClusterCIDRs(t *testing.T) {
	podCIDR := netip.MustParsePrefix("93.184.0.0/16")      // publicly routable
	serviceCIDR := netip.MustParsePrefix("2a00:1450::/32") // publicly routable
	allow := []netip.Prefix{netip.MustParsePrefix("93.0.0.0/8"), netip.MustParsePrefix("127.0.0.0/8")}
	g := New(allow, WithDenied(podCIDR, serviceCIDR))
	for _, tc := range []struct {
		addr string
		want Class // "" = permitted
	}{
		{"93.184.216.34", ClusterNetwork},
		{"93.184.0.1", ClusterNetwork},
		{"::ffff:93.184.216.34", ClusterNetwork},
		{"2a00:1450:4001::1", ClusterNetwork},
		{"93.185.0.1", ""},      // allowlisted, outside the pod range
		{"127.0.0.1", ""},       // allowlisted
		{"2606:4700::1111", ""}, // public
		{"169.254.169.254", LinkLocal},
	} {
		err := g.Check(netip.MustParseAddr(tc.addr))
		var blocked *BlockedError
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: refused: %v", tc.addr, err)
		case tc.want != "" && (!errors.As(err, &blocked) || blocked.Class != tc.want):
			t.Errorf("%s: got %v, want refused as %s", tc.addr, err, tc.want)
		}
	}
	// Without the deny list the same pod address is an ordinary public one.
	if err := New(nil).Check(netip.MustParseAddr("93.184.216.34")); err != nil {
		t.Errorf("default policy: %v", err)
	}
	if got := g.Denylist(); len(got) != 2 || got[0] != podCIDR || got[1] != serviceCIDR {
		t.Errorf("Denylist() = %v", got)
	}
}
