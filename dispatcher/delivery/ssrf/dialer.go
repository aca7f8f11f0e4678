package ssrf

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
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

	allowed := make([]netip.Addr, 0, len(addrs))
	var blocked error
	for _, a := range addrs {
		if err := d.guard.Check(a); err != nil {
			if blocked == nil {
				blocked = err
			}
			continue
		}
		allowed = append(allowed, a)
	}
	if len(allowed) == 0 {
		return nil, blocked
	}

	var lastErr error
	for i, a := range allowed {
		dialCtx, cancel := partialDeadline(ctx, len(allowed)-i)
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
