package supervisor

import (
	"crypto/ed25519"
	"fmt"
	"os"
	"path/filepath"
	"reflect"

	"github.com/mvm-sandbox/mvm/internal/evidence"
	"github.com/mvm-sandbox/mvm/internal/netpolicy"
	"github.com/mvm-sandbox/mvm/internal/plan"
	"github.com/mvm-sandbox/mvm/internal/sandbox"
)

// Options configure a supervisor.
type Options struct {
	// Events receives lifecycle events for evidence; nil drops them.
	Events Events
	// TrustedKey, when set, is the host key the admitted plan must be
	// signed by (it always must match the hash the spec names).
	TrustedKey ed25519.PublicKey
	// RequireKey refuses to boot without a TrustedKey.
	RequireKey bool
	// Signer signs snapshots and pause-to-disk state; without it both are
	// refused.
	Signer *evidence.Signer
}

// loadPlan reads the plan the sandbox was admitted with: the one whose
// hash the spec names, signed by the trusted key. The supervisor boots
// from it (resources, backend, network, published ports, console), not
// from what the spec or a file beside it says.
func (s *supervisor) loadPlan(trusted ed25519.PublicKey, require bool) (*plan.Plan, error) {
	if require && trusted == nil {
		return nil, fmt.Errorf("admitted plan: no host public key to verify it with")
	}
	sp, err := plan.Load(filepath.Join(s.dir, sandbox.PlanFile))
	if err != nil {
		return nil, fmt.Errorf("admitted plan: %w", err)
	}
	h, err := sp.Hash()
	if err != nil {
		return nil, err
	}
	if s.spec.PlanHash == "" || h != s.spec.PlanHash {
		return nil, fmt.Errorf("admitted plan: %s has hash %.16s…, the sandbox was admitted with %.16s…; refusing to boot", sandbox.PlanFile, h, s.spec.PlanHash)
	}
	if trusted != nil {
		if err := plan.Verify(sp, trusted); err != nil {
			return nil, fmt.Errorf("admitted plan: %w", err)
		}
	}
	p := &sp.Payload
	if p.SchemaVersion != plan.SchemaVersion {
		return nil, fmt.Errorf("admitted plan: schema version %d; recreate the sandbox", p.SchemaVersion)
	}
	if p.Sandbox.ID != s.spec.ID {
		return nil, fmt.Errorf("admitted plan is for sandbox %s, not %s", p.Sandbox.ID, s.spec.ID)
	}
	return p, nil
}

// planNetwork is the network the plan admitted, as the proxy and the VMM
// take it. The runtime stores the config it admitted (network.json, which
// also says who asked for each entry); it must translate to exactly the
// plan's network, or the sandbox does not boot. Without the file the
// config is rebuilt from the plan.
func (s *supervisor) planNetwork(p *plan.Plan) (netpolicy.Config, error) {
	if _, err := os.Stat(filepath.Join(s.dir, netpolicy.ConfigFile)); err == nil {
		cfg, err := netpolicy.ReadConfig(s.dir)
		if err != nil {
			return cfg, fmt.Errorf("network policy: %w", err)
		}
		if !reflect.DeepEqual(cfg.PlanNetwork(), p.Network) {
			return cfg, fmt.Errorf("network policy: %s is not the network the plan admitted; refusing to boot", netpolicy.ConfigFile)
		}
		return cfg, nil
	}
	cfg := netpolicy.Config{Mode: netpolicy.None, AllowPrivate: p.Network.AllowPrivate}
	switch p.Network.Mode {
	case plan.NetNone, "":
	case plan.NetAllowlist:
		cfg.Mode = netpolicy.Allowlist
		for _, a := range p.Network.Allow {
			r, err := netpolicy.ParseAllow(a)
			if err != nil {
				return cfg, fmt.Errorf("admitted plan: allow %q: %w", a, err)
			}
			cfg.Allow = append(cfg.Allow, r)
		}
	case plan.NetUnrestricted:
		cfg.Mode = netpolicy.Unrestricted
	default:
		return cfg, fmt.Errorf("admitted plan: network mode %q", p.Network.Mode)
	}
	for _, port := range p.Network.Publish {
		cfg.Publish = append(cfg.Publish, netpolicy.Publish{HostAddr: port.HostAddr, HostPort: port.HostPort, GuestPort: port.GuestPort})
	}
	if !reflect.DeepEqual(cfg.PlanNetwork(), p.Network) {
		return cfg, fmt.Errorf("admitted plan: network does not round-trip")
	}
	return cfg, cfg.Validate()
}
