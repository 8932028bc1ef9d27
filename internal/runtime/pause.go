package runtime

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/mvm-sandbox/mvm/internal/errdefs"
	"github.com/mvm-sandbox/mvm/internal/plan"
	"github.com/mvm-sandbox/mvm/internal/sandbox"
	"github.com/mvm-sandbox/mvm/internal/snapshot"
)

// Pause to disk: the supervisor saves the guest's memory and device state
// into the sandbox's directory (sandbox.SuspendedDir, a snapshot with the
// writable disk hard-linked in, signed and renamed into place), then ends
// the VMM and itself. While SuspendedDir exists and no supervisor runs, the
// sandbox is paused and holds no RAM or CPU; its state survives the host
// rebooting. Resume starts a supervisor that restores from it in place
// (same name and id) and removes it before the guest runs on.

// PauseOptions describe a pause.
type PauseOptions struct {
	// InMemory only stops the vCPUs (QMP stop); the VMM keeps its RAM.
	InMemory bool
	// TTLPaused lets the sandbox's TTL run while it is paused to disk.
	TTLPaused bool
}

// pauseTimeout bounds a pause to disk as the caller waits for it.
const pauseTimeout = 11 * time.Minute

// Pause pauses a running sandbox: to disk (the VMM and supervisor exit),
// or with InMemory only its vCPUs.
func (r *Runtime) Pause(ctx context.Context, nameOrID string, o PauseOptions) (*sandbox.State, error) {
	if o.InMemory {
		if o.TTLPaused {
			return nil, errdefs.Errorf(errdefs.KindInvalidArgument, "the TTL always runs while a sandbox is paused in memory: ttl-paused is for pause to disk")
		}
		return r.Control(ctx, nameOrID, "pause")
	}
	id, dir, err := r.dir(nameOrID)
	if err != nil {
		return nil, err
	}
	st, err := r.state(dir)
	if err != nil {
		return nil, err
	}
	if st.Suspended {
		return st, nil // already paused to disk
	}
	if st.Status != sandbox.Running && st.Status != sandbox.Paused {
		return nil, fmt.Errorf("%w: %s is %s", ErrNotRunning, st.Name, st.Status)
	}
	if st.Transient {
		return nil, errdefs.Errorf(errdefs.KindFailedPrecondition, "%s is transient (it lives as long as the command that started it): it cannot be paused to disk", st.Name)
	}
	if err := r.checkSavable(st, dir); err != nil {
		return nil, err
	}
	if _, err := r.witness(); err != nil { // the supervisor signs with the same key
		return nil, err
	}
	var spec sandbox.Spec
	if err := sandbox.ReadJSON(filepath.Join(dir, sandbox.SpecFile), &spec); err != nil {
		return nil, err
	}
	if spec.TTLPaused != o.TTLPaused {
		spec.TTLPaused = o.TTLPaused
		if err := sandbox.WriteJSON(filepath.Join(dir, sandbox.SpecFile), spec); err != nil {
			return nil, err
		}
	}
	cctx, cancel := context.WithTimeout(ctx, pauseTimeout)
	defer cancel()
	resp, err := sandbox.Control(cctx, dir, sandbox.Request{Op: "suspend"})
	if err != nil {
		return nil, errdefs.New(errdefs.KindTransport, fmt.Errorf("pause %s: %w", st.Name, err))
	}
	if !resp.OK {
		return nil, fmt.Errorf("pause %s: %s", st.Name, resp.Error)
	}
	// The supervisor exits once the state is written; wait for it so that
	// the caller sees a sandbox that holds nothing.
	waitGone(st.SupervisorPID, SupervisorCommand, 10*time.Second)
	waitGone(st.VMMPID, sandbox.VMMTag(id), 5*time.Second)
	return r.state(dir)
}

// suspended reads the pause-to-disk snapshot of the sandbox in dir (nil
// when it has none).
func suspended(dir string) *snapshot.Snapshot {
	sn, err := (&snapshot.Store{Dir: dir}).Get(sandbox.SuspendedDir)
	if err != nil {
		return nil
	}
	return sn
}

// pausedExpiry is when a sandbox paused to disk with its TTL running
// expires (nil: never, or its TTL waits).
func pausedExpiry(spec *sandbox.Spec) *time.Time {
	if spec.TTL <= 0 || !spec.TTLPaused {
		return nil
	}
	t := spec.Created.Add(spec.TTL)
	return &t
}

// Resume continues a paused sandbox: in memory (QMP cont), or from disk,
// where a new supervisor restores the saved state in place (same name and
// id) after verifying it. A failed resume leaves the sandbox paused when
// the saved state was not consumed yet, failed otherwise.
func (r *Runtime) Resume(ctx context.Context, nameOrID string) (*sandbox.State, error) {
	_, dir, err := r.dir(nameOrID)
	if err != nil {
		return nil, err
	}
	st, err := r.state(dir)
	if err != nil {
		return nil, err
	}
	if !st.Suspended {
		return r.Control(ctx, nameOrID, "resume")
	}
	if st.Status != sandbox.Paused {
		return nil, fmt.Errorf("%w: %s is %s: %s", ErrNotRunning, st.Name, st.Status, st.Reason)
	}
	var spec sandbox.Spec
	if err := sandbox.ReadJSON(filepath.Join(dir, sandbox.SpecFile), &spec); err != nil {
		return nil, err
	}
	sp, err := plan.Load(filepath.Join(dir, sandbox.PlanFile))
	if err != nil {
		return nil, fmt.Errorf("admitted plan of %s: %w", st.Name, err)
	}
	sn := suspended(dir)
	if sn == nil {
		return nil, fmt.Errorf("%w: %s has no saved state", ErrNotRunning, st.Name)
	}
	w, err := r.witness()
	if err != nil {
		return nil, err
	}
	what := fmt.Sprintf("the paused state of %s", st.Name)
	if err := sn.Verify(w.signer.Public); err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if err := r.checkMatch(what, sn.Meta.Match, spec, &sp.Payload); err != nil {
		return nil, err
	}
	if !spec.TTLPaused {
		spec.PausedFor += time.Since(sn.Meta.Created)
	}
	spec.VM.Incoming = sn.Path(snapshot.MemoryFile)
	spec.VM.Accel = sn.Meta.Match.Accel
	spec.BootTimeout = max(spec.BootTimeout, BootTimeout())
	if err := sandbox.WriteJSON(filepath.Join(dir, sandbox.SpecFile), spec); err != nil {
		return nil, err
	}
	ns, _, err := r.spawnSupervisor(ctx, dir, spec.BootTimeout, false, nil)
	// The spec boots cold again (a later resume names its own state).
	spec.VM.Incoming = ""
	sandbox.WriteJSON(filepath.Join(dir, sandbox.SpecFile), spec)
	if err != nil {
		now, _ := r.state(dir)
		if now != nil && now.Suspended {
			return nil, fmt.Errorf("%w: resume %s: %v (it is still paused; its saved state is kept)", ErrBoot, st.Name, err)
		}
		return nil, fmt.Errorf("%w: resume %s: %v", ErrBoot, st.Name, err)
	}
	ns.Attachments = readAttachments(dir)
	return ns, nil
}

// suspendedState corrects st for a sandbox paused to disk: no process
// runs, and that is its normal state. It reports whether st was changed.
func suspendedState(dir string, st *sandbox.State) bool {
	if sandbox.ProcessAlive(st.SupervisorPID, SupervisorCommand) {
		return false // running, or resuming
	}
	sn := suspended(dir)
	if sn == nil {
		return false
	}
	st.Status, st.Suspended, st.Reason = sandbox.Paused, true, "paused to disk"
	st.SupervisorPID, st.VMMPID = 0, 0
	var spec sandbox.Spec
	if sandbox.ReadJSON(filepath.Join(dir, sandbox.SpecFile), &spec) == nil {
		if exp := pausedExpiry(&spec); exp != nil {
			st.Expires = exp
			if time.Now().After(*exp) {
				st.Status, st.Reason = sandbox.Stopped, "ttl (expired while paused to disk)"
			}
		} else if spec.TTL > 0 {
			st.Expires = nil // the TTL waits while paused
		}
	}
	return true
}
