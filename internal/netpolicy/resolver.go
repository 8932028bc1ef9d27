package netpolicy

import (
	"bufio"
	"context"
	"errors"
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
// (loopback, link-local and metadata, multicast, unspecified, or one of
// this host's own addresses): that is DNS rebinding. A first answer that
// is a blocked address is refused too, except for HostAlias and, as a
// test and development hook, names mapped by the MVM_NET_HOSTS file.
type Resolver struct {
	// HostsFile is a hosts-format file read before DNS (MVM_NET_HOSTS).
	HostsFile string
	// Lookup resolves a name with DNS; net.DefaultResolver when nil.
	Lookup func(ctx context.Context, name string) ([]netip.Addr, error)
	// HostAddrs are this host's own addresses (computed when nil).
	HostAddrs []netip.Addr

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
	netip.MustParseAddr("fd00:ec2::254"),   // AWS IPv6
}

// Blocked reports whether a is an address no resolved name may lead to:
// loopback, link-local (which holds 169.254.169.254), cloud metadata,
// multicast, unspecified, broadcast, 0.0.0.0/8, or an address of this host.
func (r *Resolver) Blocked(a netip.Addr) bool {
	r.init()
	a = a.Unmap()
	if !a.IsValid() || a.IsLoopback() || a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast() ||
		a.IsInterfaceLocalMulticast() || a.IsMulticast() || a.IsUnspecified() {
		return true
	}
	if a.Is4() {
		b := a.As4()
		if b[0] == 0 || a == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
			return true
		}
	}
	for _, m := range metadataAddrs {
		if a == m {
			return true
		}
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
		if !trusted {
			var ok []netip.Addr
			for _, a := range addrs {
				if !r.Blocked(a) {
					ok = append(ok, a)
				}
			}
			if len(ok) == 0 {
				return nil, ReasonBlockedAddress
			}
			addrs = ok // never dial a blocked address, even beside good ones
		}
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

// errRefused is returned by dials refused by the policy.
var errRefused = errors.New("refused by network policy")
