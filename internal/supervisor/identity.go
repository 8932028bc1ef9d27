package supervisor

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/mvm-sandbox/mvm/internal/agentapi"
	"github.com/mvm-sandbox/mvm/internal/sandbox"
)

// refreshIdentity gives a guest that was just restored from a memory
// snapshot its own identity: fresh host entropy mixed into its RNG and a
// forced reseed, the host's clock, a hostname from the sandbox name, a new
// machine-id and, with a NIC, a new MAC (agentapi.Client.Restored,
// internal/guestid). Every restore path calls it once the agent answers
// and before the sandbox is reported ready: until then the guest is an
// exact copy of every other guest restored from the same snapshot.
//
// A sandbox resumed from its own saved state (pause to disk) is the same
// machine: its RNG and clock are refreshed, its machine-id and MAC kept.
func (s *supervisor) refreshIdentity(ctx context.Context) error {
	rep, resume, err := s.sendRefresh(ctx)
	if err != nil {
		return err
	}
	s.identityEvent(rep, resume)
	return nil
}

// sendRefresh sends the guest its new identity (refreshIdentity without
// the audit entry).
func (s *supervisor) sendRefresh(ctx context.Context) (*agentapi.RestoreReport, bool, error) {
	_, client := s.agent()
	if client == nil {
		return nil, false, fmt.Errorf("refresh the guest's identity: no agent connection")
	}
	s.mu.Lock()
	name, incoming := s.spec.Name, s.spec.VM.Incoming
	s.mu.Unlock()
	resume := ownSavedState(s.dir, incoming)
	nic := s.net != nil && s.net.cfg.HasNIC() && !resume
	rep, err := client.RefreshIdentity(ctx, name, nic, resume)
	return rep, resume, err
}

// identityEvent audits a refreshed identity.
func (s *supervisor) identityEvent(rep *agentapi.RestoreReport, resume bool) {
	s.events("sandbox.identity_refreshed", s.snapshot(), map[string]any{
		"clock_step_ms": rep.ClockStep.Milliseconds(), "nic": rep.NIC, "resume": resume,
	})
}

// ownSavedState says whether incoming (the saved memory a restore loads)
// is the sandbox's own pause-to-disk state, <dir>/suspended/..., rather
// than a snapshot or a ready snapshot (a clone: another machine).
func ownSavedState(dir, incoming string) bool {
	if incoming == "" {
		return false
	}
	saved := filepath.Dir(incoming)
	if filepath.Base(saved) != sandbox.SuspendedDir {
		return false
	}
	a, errA := os.Stat(filepath.Dir(saved))
	b, errB := os.Stat(dir)
	return errA == nil && errB == nil && os.SameFile(a, b)
}
