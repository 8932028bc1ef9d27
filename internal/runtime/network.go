package runtime

import (
	"time"

	"github.com/mvm-sandbox/mvm/internal/netpolicy"
	"github.com/mvm-sandbox/mvm/internal/plan"
)

// network is the network policy an Up asks for; with no allowlist there
// is no network device at all.
func (o UpOptions) network() plan.Network { return o.PlanNetwork() }

// PlanNetwork is the network policy as a plan records it (for dry runs).
func (o UpOptions) PlanNetwork() plan.Network {
	switch o.Network.Mode {
	case netpolicy.Allowlist:
		return plan.Network{Mode: plan.NetAllowlist, Allow: o.Network.Strings()}
	case netpolicy.Unrestricted:
		return plan.Network{Mode: plan.NetUnrestricted}
	}
	return plan.Network{Mode: plan.NetNone}
}

func nowUTC() time.Time { return time.Now().UTC() }
