package netpolicy

import (
	"net/netip"

	"github.com/mvm-sandbox/mvm/internal/backend"
	"github.com/mvm-sandbox/mvm/internal/guestnet"
)

// VMNetwork is the NIC a sandbox with c gets (nil for none). exe is the
// egress helper QEMU runs for each guest connection on a forward (see
// HelperExe).
func (c Config) VMNetwork(exe string) (*backend.Network, error) {
	if !c.HasNIC() {
		return nil, nil
	}
	n := &backend.Network{Restrict: c.Mode != Unrestricted}
	for _, p := range c.Publish {
		n.HostFwds = append(n.HostFwds, backend.HostFwd{HostAddr: p.HostAddr, HostPort: p.HostPort, GuestPort: p.GuestPort})
	}
	if c.Mode != Allowlist {
		return n, nil
	}
	cmd, err := HelperCmdline(exe, "dns")
	if err != nil {
		return nil, err
	}
	n.GuestFwds = append(n.GuestFwds, backend.GuestFwd{Addr: guestnet.DNSForward, Port: guestnet.DNSPort, Cmd: cmd})
	addrs := c.GuestAddrs()
	for _, r := range c.Allow {
		target := netip.AddrPortFrom(addrs[r.Host], uint16(r.Port)).String()
		cmd, err := HelperCmdline(exe, target)
		if err != nil {
			return nil, err
		}
		n.GuestFwds = append(n.GuestFwds, backend.GuestFwd{Addr: addrs[r.Host].String(), Port: r.Port, Cmd: cmd})
	}
	return n, nil
}

// KernelArg is the kernel command line argument telling the agent how to
// set up the guest's network ("" when there is no NIC).
func (c Config) KernelArg() string {
	if m := c.GuestMode(); m != "" {
		return guestnet.KernelArgKey + "=" + m
	}
	return ""
}
