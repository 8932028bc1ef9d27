package runtime

import (
	"context"
	"fmt"
	"os"
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
	if o.InMemory && o.TTLPaused {
		return nil, errdefs.Errorf(errdefs.KindInvalidArgument, "the TTL always runs while a sandbox is paused in memory: ttl-paused is for pause to disk")
	}
	id, dir, err := r.dir(nameOrID)
	if err != nil {
		return nil, err
	}
	unlock, err := lockLifecycle(ctx, dir, nameOrID, "pause")
	if err != nil {
		return nil, err
	}
	defer unlock()
	if o.InMemory {
		return r.Control(ctx, nameOrID, "pause")
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
		// The supervisor may have died (SIGKILL) during the pause: what
		// it left is the sandbox's state now, committed or not.
		waitSupervisorGone(st.SupervisorPID, dir, 5*time.Second)
		if now, serr := r.state(dir); serr == nil && !supervisorAlive(st.SupervisorPID, dir) {
			if now.Suspended {
				return now, nil // it died after the commit: paused
			}
			return nil, errdefs.Errorf(errdefs.KindTransport, "pause %s: %v: %s is %s (%s); `mvmctl down %s` removes it", st.Name, err, st.Name, now.Status, now.Reason, st.Name)
		}
		return nil, errdefs.New(errdefs.KindTransport, fmt.Errorf("pause %s: %w", st.Name, err))
	}
	if !resp.OK {
		return nil, fmt.Errorf("pause %s: %s", st.Name, resp.Error)
	}
	// The supervisor exits once the state is written; wait for it so that
	// the caller sees a sandbox that holds nothing.
	waitSupervisorGone(st.SupervisorPID, dir, 10*time.Second)
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
// id) after verifying it. A resume that fails, or whose CLI or supervisor
// is killed, before the resumed sandbox is ready leaves it paused with its
// saved state intact.
func (r *Runtime) Resume(ctx context.Context, nameOrID string) (*sandbox.State, error) {
	_, dir, err := r.dir(nameOrID)
	if err != nil {
		return nil, err
	}
	// One lifecycle operation at a time: a second resume waits, then
	// finds it running (and continuing a running guest changes nothing).
	unlock, err := lockLifecycle(ctx, dir, nameOrID, "resume")
	if err != nil {
		return nil, err
	}
	defer unlock()
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
	_, hasDisk := sn.Meta.File(snapshot.DiskFile)
	var skip []string
	if hasDisk {
		skip = append(skip, snapshot.DiskFile) // verified while copied, below
	}
	if err := sn.Verify(w.signer.Public, skip...); err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if err := r.checkMatch(what, sn.Meta.Match, spec, &sp.Payload); err != nil {
		return nil, err
	}
	if hasDisk {
		// The resumed VMM writes to its own copy of the saved disk, so the
		// saved state stays whole until the resumed sandbox commits
		// (supervisor.commitResume): a resume killed at any instant leaves
		// the sandbox paused and resumable (docs/snapshots.md, "Faults").
		if err := resumeDisk(sn, filepath.Join(dir, sandbox.UpperDisk)); err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
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
		if raw, rerr := sandbox.ReadState(dir); rerr == nil { // it was killed: let it go
			waitSupervisorGone(raw.SupervisorPID, dir, 5*time.Second)
		}
		now, _ := r.state(dir)
		if now != nil && now.Suspended {
			return nil, fmt.Errorf("%w: resume %s: %v (it is still paused; its saved state is kept)", ErrBoot, st.Name, err)
		}
		return nil, fmt.Errorf("%w: resume %s: %v", ErrBoot, st.Name, err)
	}
	ns.Attachments = readAttachments(dir)
	return ns, nil
}

// resumeDisk puts a verified copy of the saved disk of sn at dst (the
// sandbox's upper disk, until now a hard link of the saved one). The copy
// is written under a temporary name (removed by snapshot.Store.CleanStale
// if this process dies) and renamed into place.
func resumeDisk(sn *snapshot.Snapshot, dst string) error {
	tmp := filepath.Join(filepath.Dir(dst), fmt.Sprintf(".tmp-%d-resume-%s", os.Getpid(), filepath.Base(dst)))
	os.Remove(tmp)
	if err := sn.CopyVerifiedUnsynced(snapshot.DiskFile, tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, dst); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// reconcileDead settles a sandbox whose supervisor is not running
// (st.SupervisorPID dead): a supervisor killed while it paused to disk,
// before the commit, took its VM along, so the sandbox is failed, and its
// state file says so from now on; whatever a dead writer left half-written
// in the sandbox directory (an uncommitted pause, a resume's disk copy, a
// saved state being removed) is removed.
func reconcileDead(dir string, st *sandbox.State) {
	if pending, _ := filepath.Glob(filepath.Join(dir, ".tmp-*-"+sandbox.SuspendedDir)); len(pending) > 0 && sandbox.Active(st.Status) {
		if raw, err := sandbox.ReadState(dir); err == nil {
			raw.Status = sandbox.Failed
			raw.Reason = fmt.Sprintf("supervisor (pid %d) died while pausing to disk, before the paused state was complete; the VM ended with it (down removes the sandbox)", st.SupervisorPID)
			if sandbox.WriteJSON(filepath.Join(dir, sandbox.StateFile), raw) == nil {
				st.Status, st.Reason = raw.Status, raw.Reason
			}
		}
	}
	(&snapshot.Store{Dir: dir}).CleanStale()
}

// suspendedState corrects st for a sandbox paused to disk: no process
// runs, and that is its normal state. It reports whether st was changed.
func suspendedState(dir string, st *sandbox.State) bool {
	if supervisorAlive(st.SupervisorPID, dir) {
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
