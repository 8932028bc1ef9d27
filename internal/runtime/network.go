package runtime

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/mvm-sandbox/mvm/internal/netpolicy"
	"github.com/mvm-sandbox/mvm/internal/plan"
	"github.com/mvm-sandbox/mvm/internal/sandbox"
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

// Ports lists a sandbox's published ports.
func (r *Runtime) Ports(nameOrID string) ([]netpolicy.Publish, error) {
	_, dir, err := r.dir(nameOrID)
	if err != nil {
		return nil, err
	}
	return netpolicy.ReadPorts(dir)
}

// Forward publishes a guest port of a running sandbox
// ([ADDR:][HOSTPORT:]GUESTPORT; a missing or 0 host port is chosen by the
// supervisor) and returns the bindings it added.
func (r *Runtime) Forward(ctx context.Context, nameOrID, spec string) ([]netpolicy.Publish, error) {
	if _, err := netpolicy.ParseForward(spec); err != nil {
		return nil, err
	}
	_, dir, err := r.dir(nameOrID)
	if err != nil {
		return nil, err
	}
	before, _ := netpolicy.ReadPorts(dir)
	resp, err := sandbox.Control(ctx, dir, sandbox.Request{Op: "forward", Publish: spec})
	if err != nil {
		return nil, fmt.Errorf("forward on %s: %w", nameOrID, err)
	}
	if !resp.OK {
		return nil, errors.New(resp.Error)
	}
	after, err := netpolicy.ReadPorts(dir)
	if err != nil {
		return nil, err
	}
	old := map[netpolicy.Publish]bool{}
	for _, p := range before {
		old[p] = true
	}
	var added []netpolicy.Publish
	for _, p := range after {
		if !old[p] {
			added = append(added, p)
		}
	}
	return added, nil
}
