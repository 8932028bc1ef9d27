package netpolicy

import (
	"bufio"
	"context"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
)

// Reasons a destination is refused after the name check.
const (
	ReasonResolveFailed  = "resolve_failed"
	ReasonBlockedAddress = "blocked_address"
	ReasonRebinding      = "rebinding"
)

// Resolver resolves allowed names on the host and pins what it learns.
//
// The first answer for a name is pinned for the life of the sandbox. Every
// connection resolves again; an answer that moves the name to an address
// outside the pinned set is refused when the new address is a blocked one
// (see Blocked): that is DNS rebinding. Blocked addresses in a first
// answer are dropped, and an answer with nothing else is refused. The
// exceptions are HostAlias (127.0.0.1, admitted only from the operator's
// command line) and, as a test and development hook, loopback addresses
// that the MVM_NET_HOSTS file maps a name to.
type Resolver struct {
	// HostsFile is a hosts-format file read before DNS (MVM_NET_HOSTS).
	HostsFile string
	// Lookup resolves a name with DNS; net.DefaultResolver when nil.
	Lookup func(ctx context.Context, name string) ([]netip.Addr, error)
	// HostAddrs are this host's own addresses (computed when nil).
	HostAddrs []netip.Addr
	// AllowPrivate lets names resolve to private, CGNAT and ULA addresses
	// (the operator's --allow-private). Everything else Blocked refuses
	// stays refused.
	AllowPrivate bool

	once   sync.Once
	own    map[netip.Addr]bool
	mu     sync.Mutex
	pinned map[string]map[netip.Addr]bool
}

// NewResolver returns a resolver that reads MVM_NET_HOSTS.
func NewResolver() *Resolver {
	return &Resolver{HostsFile: os.Getenv(HostsEnv)}
}

const maxPinned = 64

func (r *Resolver) init() {
	r.once.Do(func() {
		r.own = map[netip.Addr]bool{}
		addrs := r.HostAddrs
		if addrs == nil {
			if ifas, err := net.InterfaceAddrs(); err == nil {
				for _, a := range ifas {
					if p, err := netip.ParsePrefix(a.String()); err == nil {
						addrs = append(addrs, p.Addr())
					}
				}
			}
		}
		for _, a := range addrs {
			r.own[a.Unmap()] = true
		}
		r.pinned = map[string]map[netip.Addr]bool{}
	})
}

var metadataAddrs = []netip.Addr{
	netip.MustParseAddr("169.254.169.254"), // AWS, GCP, Azure, OpenStack...
	netip.MustParseAddr("100.100.100.200"), // Alibaba Cloud
	netip.MustParseAddr("168.63.129.16"),   // Azure WireServer
	netip.MustParseAddr("fd00:ec2::254"),   // AWS IPv6
}

// privatePrefixes are the LAN-side ranges refused unless AllowPrivate.
var privatePrefixes = []netip.Prefix{
	netip.MustParsePrefix("10.0.0.0/8"),     // RFC 1918
	netip.MustParsePrefix("172.16.0.0/12"),  // RFC 1918
	netip.MustParsePrefix("192.168.0.0/16"), // RFC 1918
	netip.MustParsePrefix("100.64.0.0/10"),  // CGNAT, RFC 6598 (Tailscale and the like)
	netip.MustParsePrefix("fc00::/7"),       // IPv6 unique local
	netip.MustParsePrefix("fec0::/10"),      // IPv6 site-local (deprecated, still routed by some)
}

// alwaysBlocked are special ranges no name may lead to.
var alwaysBlocked = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("240.0.0.0/4"), // reserved, and 255.255.255.255
}

// Embedded IPv4: an AAAA answer in these prefixes reaches the IPv4
// address in its low 32 bits (NAT64) or in bits 16-48 (6to4).
var (
	nat64Prefix = netip.MustParsePrefix("64:ff9b::/96")
	sixToFour   = netip.MustParsePrefix("2002::/16")
)

// IsPrivate reports whether a is in a private (RFC 1918), CGNAT or IPv6
// unique-local range, directly or embedded in a NAT64/6to4 address.
func IsPrivate(a netip.Addr) bool {
	a = a.Unmap()
	if v4, ok := embedded4(a); ok {
		return IsPrivate(v4)
	}
	for _, p := range privatePrefixes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func embedded4(a netip.Addr) (netip.Addr, bool) {
	if !a.Is6() || a.Is4In6() {
		return netip.Addr{}, false
	}
	b := a.As16()
	switch {
	case nat64Prefix.Contains(a):
		return netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]}), true
	case sixToFour.Contains(a):
		return netip.AddrFrom4([4]byte{b[2], b[3], b[4], b[5]}), true
	}
	return netip.Addr{}, false
}

// Blocked reports whether a is an address no resolved name may lead to:
// loopback, link-local (which holds 169.254.169.254), cloud metadata,
// multicast, unspecified, broadcast and reserved ranges, an address of
// this host, and, unless AllowPrivate, private, CGNAT and unique-local
// addresses. An IPv4 address embedded in an IPv6 one (mapped, NAT64,
// 6to4) is judged as itself.
func (r *Resolver) Blocked(a netip.Addr) bool {
	r.init()
	a = a.Unmap()
	if v4, ok := embedded4(a); ok && r.Blocked(v4) {
		return true
	}
	if !a.IsValid() || a.IsLoopback() || a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast() ||
		a.IsInterfaceLocalMulticast() || a.IsMulticast() || a.IsUnspecified() {
		return true
	}
	for _, p := range alwaysBlocked {
		if p.Contains(a) {
			return true
		}
	}
	for _, m := range metadataAddrs {
		if a == m {
			return true
		}
	}
	if !r.AllowPrivate && IsPrivate(a) {
		return true
	}
	return r.own[a]
}

// hostsLookup reads name from the hosts file.
func (r *Resolver) hostsLookup(name string) []netip.Addr {
	if r.HostsFile == "" {
		return nil
	}
	f, err := os.Open(r.HostsFile)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []netip.Addr
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line, _, _ := strings.Cut(sc.Text(), "#")
		fs := strings.Fields(line)
		if len(fs) < 2 {
			continue
		}
		a, err := netip.ParseAddr(fs[0])
		if err != nil {
			continue
		}
		for _, n := range fs[1:] {
			if strings.EqualFold(strings.TrimSuffix(n, "."), name) {
				out = append(out, a.Unmap())
			}
		}
	}
	return out
}

func (r *Resolver) lookup(ctx context.Context, name string) (addrs []netip.Addr, trusted bool, err error) {
	if name == HostAlias {
		return []netip.Addr{netip.MustParseAddr("127.0.0.1")}, true, nil
	}
	if a := r.hostsLookup(name); len(a) > 0 {
		return a, true, nil
	}
	if r.Lookup != nil {
		addrs, err = r.Lookup(ctx, name)
	} else {
		addrs, err = net.DefaultResolver.LookupNetIP(ctx, "ip", name)
	}
	for i := range addrs {
		addrs[i] = addrs[i].Unmap()
	}
	return addrs, false, err
}

// Resolve returns the addresses a connection to name may go to, or a
// refusal reason.
func (r *Resolver) Resolve(ctx context.Context, name string) ([]netip.Addr, string) {
	r.init()
	addrs, trusted, err := r.lookup(ctx, name)
	if err != nil || len(addrs) == 0 {
		return nil, ReasonResolveFailed
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	pin, ok := r.pinned[name]
	if !ok {
		var ok []netip.Addr
		for _, a := range addrs {
			// trusted (HostAlias, the MVM_NET_HOSTS hook) covers loopback
			// answers only: a hosts file that maps a name to the LAN or to
			// metadata is judged like DNS.
			if (trusted && a.IsLoopback()) || !r.Blocked(a) {
				ok = append(ok, a)
			}
		}
		if len(ok) == 0 {
			return nil, ReasonBlockedAddress
		}
		addrs = ok // never dial a blocked address, even beside good ones
		pin = map[netip.Addr]bool{}
		for _, a := range addrs {
			pin[a] = true
		}
		r.pinned[name] = pin
		return addrs, ""
	}
	var use []netip.Addr
	for _, a := range addrs {
		if pin[a] {
			use = append(use, a)
			continue
		}
		if r.Blocked(a) {
			return nil, ReasonRebinding
		}
		if len(pin) < maxPinned {
			pin[a] = true
		}
		use = append(use, a)
	}
	return use, ""
}
