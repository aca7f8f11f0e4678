// Package ssrf keeps webhook deliveries away from internal networks. It owns
// the address policy (which resolved IPs a delivery may connect to) and a
// dialer that applies it to the IP actually dialled, after resolution, so
// that a hostname cannot pass the check with one address and connect to
// another (DNS rebinding).
//
// The decision itself is code.dny.dev/ssrf's: every IANA special-purpose
// IPv4 prefix (loopback, RFC 1918, link-local and cloud metadata, CGNAT,
// multicast, "this network", documentation, reserved) and every IPv6 address
// outside global unicast (loopback, unspecified, unique-local, link-local,
// multicast, IPv4-mapped ::ffff:0:0/96, NAT64 64:ff9b::/96) or inside the
// special-purpose global-unicast prefixes (6to4 2002::/16, Teredo, …) is
// refused. An operator allowlist of CIDR prefixes opts ranges back in, and a
// deny list (the cluster's pod and Service ranges, which may be publicly
// routable) refuses ranges the default policy would permit.
package ssrf

import (
	"errors"
	"fmt"
	"net/netip"
	"syscall"

	dnyssrf "code.dny.dev/ssrf"
)

// ErrBlocked is wrapped by every error that refuses a destination.
var ErrBlocked = errors.New("destination address is blocked")

// Class names why an address is, or is not, a permitted destination. It is
// part of error messages and may be shown to users; it never contains the
// URL.
type Class string

// Address classes.
const (
	Public      Class = "public"
	Loopback    Class = "loopback"
	Private     Class = "private"
	LinkLocal   Class = "link-local"
	CGNAT       Class = "cgnat"
	Multicast   Class = "multicast"
	Unspecified Class = "unspecified"
	UniqueLocal Class = "unique-local"
	// IPv4Embedded is an IPv6 form that carries an IPv4 address and could
	// reach it through a translator: IPv4-mapped (::ffff:0:0/96), NAT64
	// (64:ff9b::/96, 64:ff9b:1::/48), 6to4 (2002::/16) and Teredo
	// (2001::/32).
	IPv4Embedded Class = "ipv4-embedded"
	// Reserved covers the remaining special-purpose ranges (documentation,
	// benchmarking, future use, IPv6 outside 2000::/3, zoned addresses).
	Reserved Class = "reserved"
	Invalid  Class = "invalid"
	// ClusterNetwork is an address inside one of the cluster's own ranges
	// (pods, Services) that the operator listed in the guard's deny list.
	// Classify never returns it: only a Guard knows the cluster's ranges.
	ClusterNetwork Class = "cluster-network"
)

var (
	cgnatPrefix     = netip.MustParsePrefix("100.64.0.0/10")
	nat64Prefix     = netip.MustParsePrefix("64:ff9b::/96")
	nat64LocalUse   = netip.MustParsePrefix("64:ff9b:1::/48")
	sixToFourPrefix = netip.MustParsePrefix("2002::/16")
	teredoPrefix    = netip.MustParsePrefix("2001::/32")
	globalUnicast   = netip.MustParsePrefix("2000::/3")
)

// Classify returns the class of an address without applying any allowlist.
// It is Public exactly for the addresses the default policy permits.
func Classify(addr netip.Addr) Class {
	if !addr.IsValid() {
		return Invalid
	}
	if addr.Zone() != "" {
		// Zones only make sense for link-local scopes; such an address is
		// never a webhook receiver.
		if c := Classify(addr.WithZone("")); c != Public {
			return c
		}
		return Reserved
	}
	switch {
	case addr.Is4In6():
		return IPv4Embedded
	case addr.IsUnspecified():
		return Unspecified
	case addr.IsLoopback():
		return Loopback
	case addr.IsLinkLocalUnicast():
		return LinkLocal
	case addr.IsMulticast():
		return Multicast
	case addr.Is4() && addr.IsPrivate():
		return Private
	case addr.Is6() && addr.IsPrivate():
		return UniqueLocal
	case cgnatPrefix.Contains(addr):
		return CGNAT
	case nat64Prefix.Contains(addr), nat64LocalUse.Contains(addr),
		sixToFourPrefix.Contains(addr), teredoPrefix.Contains(addr):
		return IPv4Embedded
	}
	if addr.Is4() {
		for _, p := range dnyssrf.IPv4DeniedPrefixes {
			if p.Contains(addr) {
				return Reserved
			}
		}
		return Public
	}
	if !globalUnicast.Contains(addr) {
		return Reserved
	}
	for _, p := range dnyssrf.IPv6DeniedPrefixes {
		if p.Contains(addr) {
			return Reserved
		}
	}
	return Public
}

// BlockedError refuses one destination address.
type BlockedError struct {
	Addr  netip.Addr
	Class Class
}

func (e *BlockedError) Error() string {
	return fmt.Sprintf("destination %s is blocked (%s address; an operator can allow its range)", e.Addr, e.Class)
}

// Unwrap makes errors.Is(err, ErrBlocked) true.
func (e *BlockedError) Unwrap() error { return ErrBlocked }

// Guard decides which addresses may be dialled. It is safe for concurrent
// use and immutable after New.
type Guard struct {
	policy *dnyssrf.Guardian
	allow  []netip.Prefix
	deny   []netip.Prefix
}

// Option configures a Guard.
type Option func(*Guard)

// WithDenied refuses every address inside one of prefixes, even a public
// one and even one inside an allowed prefix: for the cluster's pod and
// Service ranges, which some clusters take from publicly routable space, so
// that an endpoint URL cannot reach the cluster's own pods and Services.
// An IPv4 prefix also refuses its IPv4-mapped IPv6 form (which the default
// policy refuses anyway).
func WithDenied(prefixes ...netip.Prefix) Option {
	return func(g *Guard) {
		for _, p := range prefixes {
			g.deny = append(g.deny, p.Masked())
		}
	}
}

// New returns a Guard refusing every non-public address except those inside
// one of the allowed prefixes, and every address of a WithDenied prefix.
// Ports are not restricted: receivers often listen on ports other than 80
// and 443, and the address policy is what keeps deliveries off internal
// networks.
func New(allow []netip.Prefix, opts ...Option) *Guard {
	var v4, v6 []netip.Prefix
	for _, p := range allow {
		p = p.Masked()
		if p.Addr().Is4() {
			v4 = append(v4, p)
		} else {
			v6 = append(v6, p)
		}
	}
	g := &Guard{
		policy: dnyssrf.New(
			dnyssrf.WithAnyPort(),
			dnyssrf.WithAllowedV4Prefixes(v4...),
			dnyssrf.WithAllowedV6Prefixes(v6...),
		),
		allow: append([]netip.Prefix(nil), allow...),
	}
	for _, opt := range opts {
		opt(g)
	}
	return g
}

// Allowlist returns the allowed prefixes.
func (g *Guard) Allowlist() []netip.Prefix { return append([]netip.Prefix(nil), g.allow...) }

// Denylist returns the prefixes refused on top of the default policy.
func (g *Guard) Denylist() []netip.Prefix { return append([]netip.Prefix(nil), g.deny...) }

// Check returns nil when addr may be dialled and a *BlockedError otherwise.
// The deny list is checked first, so it wins over the allowlist.
func (g *Guard) Check(addr netip.Addr) error {
	if addr.Zone() != "" {
		return &BlockedError{Addr: addr, Class: Classify(addr)}
	}
	for _, p := range g.deny {
		if p.Contains(addr) || (addr.Is4In6() && p.Contains(addr.Unmap())) {
			return &BlockedError{Addr: addr, Class: ClusterNetwork}
		}
	}
	if err := g.policy.SafeAddr(addr); err != nil {
		return &BlockedError{Addr: addr, Class: Classify(addr)}
	}
	return nil
}

// Control is a net.Dialer Control function applying the guard to the socket
// about to connect: the last line of defence, after Dialer's own check.
func (g *Guard) Control(network, address string, _ syscall.RawConn) error {
	switch network {
	case "tcp4", "tcp6":
	default:
		return fmt.Errorf("%w: network %s is not permitted", ErrBlocked, network)
	}
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: cannot parse dial address: %v", ErrBlocked, err)
	}
	return g.Check(ap.Addr())
}
