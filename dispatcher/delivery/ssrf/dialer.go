package ssrf

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"
)

// LookupFunc resolves a host name to its addresses.
type LookupFunc func(ctx context.Context, host string) ([]netip.Addr, error)

// DialFunc connects to an IP literal address ("ip:port").
type DialFunc func(ctx context.Context, network, address string) (net.Conn, error)

// LookupError is a failed or empty resolution of a delivery's host name.
type LookupError struct {
	Host string
	Err  error
}

func (e *LookupError) Error() string {
	return fmt.Sprintf("resolve %s: %v", e.Host, e.Err)
}

func (e *LookupError) Unwrap() error { return e.Err }

// errNoAddresses is a resolution that succeeded with no usable address.
var errNoAddresses = errors.New("no addresses")

// Dialer resolves a host itself, checks every resolved IP with its Guard and
// dials only the IP it checked, so no second resolution can swap in another
// address. It is safe for concurrent use.
type Dialer struct {
	guard  *Guard
	lookup LookupFunc
	dial   DialFunc
}

// DialerOptions inject the resolver and the connecting dialer, for tests.
type DialerOptions struct {
	// Lookup resolves host names; defaults to net.DefaultResolver.
	Lookup LookupFunc
	// Dial connects to a checked IP literal; defaults to a net.Dialer whose
	// Control function applies the guard once more at the socket.
	Dial DialFunc
}

// NewDialer returns a Dialer applying g.
func NewDialer(g *Guard, opts DialerOptions) *Dialer {
	d := &Dialer{guard: g, lookup: opts.Lookup, dial: opts.Dial}
	if d.lookup == nil {
		d.lookup = func(ctx context.Context, host string) ([]netip.Addr, error) {
			return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
		}
	}
	if d.dial == nil {
		nd := &net.Dialer{Control: g.Control, KeepAlive: 30 * time.Second}
		d.dial = nd.DialContext
	}
	return d
}

// Guard returns the dialer's guard.
func (d *Dialer) Guard() *Guard { return d.guard }

// DialContext connects to address ("host:port") for network "tcp", "tcp4"
// or "tcp6". Each resolved address is checked and tried in turn; when every
// address is refused the error is a *BlockedError (errors.Is ErrBlocked),
// otherwise the error of the last address that was actually dialled.
func (d *Dialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	switch network {
	case "tcp", "tcp4", "tcp6":
	default:
		return nil, fmt.Errorf("%w: network %s is not permitted", ErrBlocked, network)
	}
	host, portStr, err := net.SplitHostPort(address)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", network, err)
	}
	port, err := net.LookupPort("tcp", portStr)
	if err != nil {
		return nil, fmt.Errorf("dial %s: invalid port: %w", network, err)
	}

	var addrs []netip.Addr
	if ip, err := netip.ParseAddr(host); err == nil {
		addrs = []netip.Addr{ip}
	} else if ip, ok := parseNumericIPv4(host); ok {
		// "2130706433", "0x7f000001", "0177.0.0.1", "127.1": browsers,
		// curl and glibc read these as IPv4 addresses; checked as the
		// address they denote rather than handed to DNS, whose answer for
		// them is anybody's guess.
		addrs = []netip.Addr{ip}
	} else {
		addrs, err = d.lookup(ctx, host)
		if err != nil {
			return nil, &LookupError{Host: host, Err: err}
		}
		if len(addrs) == 0 {
			return nil, &LookupError{Host: host, Err: errNoAddresses}
		}
	}
	addrs = filterFamily(addrs, network)
	if len(addrs) == 0 {
		return nil, &LookupError{Host: host, Err: fmt.Errorf("%w for network %s", errNoAddresses, network)}
	}

	// A name with any record the guard refuses is refused as a whole, even
	// if other records are public: a receiver's DNS that mixes internal
	// addresses in is either misconfigured or probing, and dialling "the
	// other one" would make the outcome depend on record order.
	for _, a := range addrs {
		if err := d.guard.Check(a); err != nil {
			return nil, err
		}
	}

	var lastErr error
	for i, a := range addrs {
		dialCtx, cancel := partialDeadline(ctx, len(addrs)-i)
		conn, err := d.dial(dialCtx, dialNetwork(a), netip.AddrPortFrom(a, uint16(port)).String())
		cancel()
		if err == nil {
			return conn, nil
		}
		lastErr = err
		if ctx.Err() != nil {
			break
		}
	}
	return nil, lastErr
}

func dialNetwork(a netip.Addr) string {
	if a.Is4() {
		return "tcp4"
	}
	return "tcp6"
}

func filterFamily(addrs []netip.Addr, network string) []netip.Addr {
	if network == "tcp" {
		return addrs
	}
	out := addrs[:0:0]
	for _, a := range addrs {
		if (network == "tcp4") == a.Is4() {
			out = append(out, a)
		}
	}
	return out
}

// partialDeadline gives one of the remaining addresses its share of the
// time left, as net.Dialer does, so one black-holed address does not eat
// the whole attempt.
func partialDeadline(ctx context.Context, remaining int) (context.Context, context.CancelFunc) {
	deadline, ok := ctx.Deadline()
	if !ok || remaining <= 1 {
		return context.WithCancel(ctx)
	}
	share := time.Until(deadline) / time.Duration(remaining)
	const minShare = 2 * time.Second
	if share < minShare {
		share = min(minShare, time.Until(deadline))
	}
	return context.WithTimeout(ctx, share)
}

// parseNumericIPv4 reads the IPv4 forms inet_aton(3) and the WHATWG URL
// standard accept besides the dotted quad: one to four parts, each decimal,
// octal (leading 0) or hexadecimal (leading 0x), the last part filling the
// remaining bytes ("127.1" is 127.0.0.1, "2130706433" and "0x7f000001" are
// 127.0.0.1, "0177.0.0.1" is 127.0.0.1), with one optional trailing dot. It
// reports false for anything else, which is then a host name.
func parseNumericIPv4(host string) (netip.Addr, bool) {
	host = strings.TrimSuffix(host, ".")
	if host == "" {
		return netip.Addr{}, false
	}
	parts := strings.Split(host, ".")
	if len(parts) > 4 {
		return netip.Addr{}, false
	}
	var value uint64
	for i, p := range parts {
		n, ok := parseNumericPart(p)
		if !ok {
			return netip.Addr{}, false
		}
		if i < len(parts)-1 {
			if n > 0xff {
				return netip.Addr{}, false
			}
			value |= n << (8 * (3 - i))
			continue
		}
		// The last part fills the bytes the others left.
		if n >= 1<<(8*(4-i)) {
			return netip.Addr{}, false
		}
		value |= n
	}
	return netip.AddrFrom4([4]byte{byte(value >> 24), byte(value >> 16), byte(value >> 8), byte(value)}), true
}

// parseNumericPart reads one part of a numeric IPv4 form; values above
// 2^32 are refused without overflowing.
func parseNumericPart(p string) (uint64, bool) {
	base := uint64(10)
	switch {
	case len(p) >= 2 && p[0] == '0' && (p[1] == 'x' || p[1] == 'X'):
		base, p = 16, p[2:]
		if p == "" {
			return 0, true // "0x" is 0, as in the WHATWG URL standard
		}
	case len(p) >= 2 && p[0] == '0':
		base, p = 8, p[1:]
	case p == "":
		return 0, false
	}
	var n uint64
	for i := 0; i < len(p); i++ {
		var d uint64
		switch c := p[i]; {
		case '0' <= c && c <= '9':
			d = uint64(c - '0')
		case 'a' <= c && c <= 'f':
			d = uint64(c-'a') + 10
		case 'A' <= c && c <= 'F':
			d = uint64(c-'A') + 10
		default:
			return 0, false
		}
		if d >= base {
			return 0, false
		}
		n = n*base + d
		if n > 0xffffffff {
			return 0, false
		}
	}
	return n, true
}
