// Package guestnet holds the guest's network addressing, shared by the
// host (netpolicy, the QEMU backend) and the guest agent. It imports
// nothing, so the agent can use it without pulling in host code.
//
// The addresses are QEMU user networking's (slirp's) defaults; mvm adds
// the DNS forward and the synthetic addresses of allowed names.
package guestnet

// Guest addressing on the user network.
const (
	// GuestIP is the guest's address on eth0; the mask is /24.
	GuestIP   = "10.0.2.15"
	GuestMask = "255.255.255.0"
	// Gateway is slirp's host side. With restrict=on it reaches nothing.
	Gateway = "10.0.2.2"
	// SlirpDNS is slirp's own resolver (used only in unrestricted mode).
	SlirpDNS = "10.0.2.3"
	// DNSForward is the TCP forward on which the host answers DNS for
	// allowed names (allowlist mode).
	DNSForward = "10.0.2.100"
	DNSPort    = 53
	// FirstSynthetic and LastSynthetic bound the last octet of the
	// synthetic addresses of allowed names (10.0.2.101, .102, ...).
	FirstSynthetic = 101
	LastSynthetic  = 254
	// NIC is the guest's network interface.
	NIC = "eth0"
)

// SyntheticPrefix is the first three octets of every guest address above.
var SyntheticPrefix = [3]byte{10, 0, 2}

// The kernel command line argument KernelArgKey=MODE tells the agent how
// to set up the network.
const (
	KernelArgKey = "mvm.net"
	// ModeAllowlist: eth0, no default route, a DNS stub relaying to
	// DNSForward.
	ModeAllowlist = "allowlist"
	// ModeUnrestricted: eth0, default route via Gateway, resolver SlirpDNS.
	ModeUnrestricted = "unrestricted"
	// ModeInbound: eth0 for published ports only.
	ModeInbound = "inbound"
)
