package netpolicy

import "github.com/mvm-sandbox/mvm/internal/plan"

// PlanNetwork is the network as a plan records it: the one translation
// admission signs and the supervisor checks its config against.
func (c Config) PlanNetwork() plan.Network {
	n := plan.Network{Mode: plan.NetNone, Allow: []string{}, Publish: []plan.Port{}}
	switch c.Mode {
	case Allowlist:
		n.Mode, n.Allow, n.AllowPrivate = plan.NetAllowlist, c.Strings(), c.AllowPrivate
	case Unrestricted:
		n.Mode = plan.NetUnrestricted
	}
	for _, p := range c.Publish {
		n.Publish = append(n.Publish, plan.Port{HostAddr: p.HostAddr, HostPort: p.HostPort, GuestPort: p.GuestPort})
	}
	return n
}
