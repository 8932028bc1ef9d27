package supervisor

import (
	"context"
	"fmt"
)

// refreshIdentity gives a guest that was just restored from a memory
// snapshot its own identity: fresh host entropy mixed into its RNG and a
// forced reseed, the host's clock, a hostname from the sandbox name, a new
// machine-id and, with a NIC, a new MAC (agentapi.Client.Restored,
// internal/guestid). Every restore path calls it once the agent answers
// and before the sandbox is reported ready: until then the guest is an
// exact copy of every other guest restored from the same snapshot.
func (s *supervisor) refreshIdentity(ctx context.Context) error {
	if s.client == nil {
		return fmt.Errorf("refresh the guest's identity: no agent connection")
	}
	nic := s.net != nil && s.net.cfg.HasNIC()
	rep, err := s.client.RefreshIdentity(ctx, s.spec.Name, nic)
	if err != nil {
		return err
	}
	s.events("sandbox.identity_refreshed", s.snapshot(), map[string]any{
		"clock_step_ms": rep.ClockStep.Milliseconds(), "nic": rep.NIC,
	})
	return nil
}
