package agentapi

import (
	"context"
	"fmt"
	"slices"
	"time"

	pb "github.com/mvm-sandbox/mvm/internal/agentapi/agentpb"
	"github.com/mvm-sandbox/mvm/internal/errdefs"
	"github.com/mvm-sandbox/mvm/internal/guestid"
)

// RestoreReport is what the agent did with a new identity.
type RestoreReport struct {
	// ClockStep is how far the guest's wall clock moved.
	ClockStep time.Duration
	// HostnameFile: /etc/hostname was rewritten too.
	HostnameFile bool
	// NIC: the NIC took the new MAC and its addresses were re-applied.
	NIC bool
}

// Restored hands a restored guest its new identity (see guestid). Call it
// right after a restore, before anything else runs in the guest: until it
// returns, the guest's RNG, clock, hostname and machine-id are the
// snapshot's. The identity is checked here before it is sent, and the
// agent checks it again.
func (c *Client) Restored(ctx context.Context, id guestid.Identity) (*RestoreReport, error) {
	if c.Hello != nil && !slices.Contains(c.Hello.Capabilities, CapRestored) {
		return nil, errdefs.Errorf(errdefs.KindFailedPrecondition,
			"the guest agent (version %.64q) cannot refresh its identity after a restore: rebuild the image or snapshot with this mvmctl", c.Hello.AgentVersion)
	}
	if err := id.Validate(); err != nil {
		return nil, errdefs.Errorf(errdefs.KindInvalidArgument, "guest identity: %v", err)
	}
	resp, err := c.Agent.Restored(ctx, &pb.RestoredRequest{
		Entropy: id.Entropy, UnixNanos: id.UnixNanos, Hostname: id.Hostname,
		MachineId: id.MachineID, Mac: id.MAC,
	})
	if err != nil {
		return nil, fmt.Errorf("refresh the guest's identity: %w", err)
	}
	if id.MAC != nil && !resp.Nic {
		return nil, errdefs.Errorf(errdefs.KindGuest, "refresh the guest's identity: the agent did not take the new MAC")
	}
	return &RestoreReport{
		ClockStep:    time.Duration(resp.ClockStepNanos),
		HostnameFile: resp.HostnameFile,
		NIC:          resp.Nic,
	}, nil
}

// RefreshIdentity makes a fresh identity for the sandbox called name (a
// NIC address too when nic) and hands it to the guest with Restored.
// With resume (the sandbox's own saved state, pause to disk) only the
// RNG, clock and hostname are refreshed: it keeps its machine-id and MAC.
// This is the one call a restore path makes.
func (c *Client) RefreshIdentity(ctx context.Context, name string, nic, resume bool) (*RestoreReport, error) {
	id, err := guestid.New(name, nic)
	if resume {
		id, err = guestid.ForResume(name)
	}
	if err != nil {
		return nil, err
	}
	return c.Restored(ctx, id)
}
