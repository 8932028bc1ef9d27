package supervisor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/mvm-sandbox/mvm/internal/agentapi"
	"github.com/mvm-sandbox/mvm/internal/sandbox"
	"github.com/mvm-sandbox/mvm/internal/snapshot"
)

// stateSaver is a VMM that can save and restore its memory and device
// state (QEMU: internal/backend/qemu/snapshot.go; Firecracker:
// internal/backend/firecracker/snapshot.go, which writes a second file,
// snapshot.GuestMemoryFile, beside the state file).
type stateSaver interface {
	SaveState(ctx context.Context, path string) (int64, error)
	CompleteIncoming(ctx context.Context) error
}

// ErrNoSaveState refuses snapshots on a backend without them.
var errNoSaveState = errors.New("this sandbox's backend cannot save its state: snapshots and pause to disk need the qemu or firecracker backend")

// envFile is the runtime's file of the sandbox's default environment.
const envFile = "env.json"

// snapshotOpTimeout bounds one save: stop, migrate, copy the disk, commit.
const snapshotOpTimeout = 10 * time.Minute

// savable checks that the sandbox can be saved: a backend that saves, and
// no state outside the VM and its own disk (a host directory lives in
// virtiofsd, a volume outlives the sandbox).
func (s *supervisor) savable() (stateSaver, error) {
	sv, ok := s.vm.(stateSaver)
	if !ok {
		return nil, errNoSaveState
	}
	if len(s.spec.VM.Shares) > 0 {
		return nil, errors.New("the sandbox has a host directory (-v DIR:PATH): virtiofs state does not travel in a snapshot, so it cannot be snapshotted or paused to disk; pause it in memory instead")
	}
	for _, d := range s.spec.VM.Disks {
		if d.Serial != "" {
			return nil, errors.New("the sandbox has a volume: its disk is shared with later sandboxes and is not captured, so it cannot be snapshotted or paused to disk; pause it in memory instead")
		}
	}
	return sv, nil
}

// upperDisk is the sandbox's own writable disk ("" when it boots from the
// initramfs alone).
func (s *supervisor) upperDisk() string {
	for _, d := range s.spec.VM.Disks {
		if !d.ReadOnly && d.Serial == "" {
			return d.Path
		}
	}
	return ""
}

// match is the machine this supervisor runs, as a restore must rebuild it.
func (s *supervisor) match() (snapshot.Match, error) {
	return MachineMatch(s.spec.Backend, s.vmSpec, s.vm.Accel(), s.spec.Image.Digest, s.spec.Image.OCIDigest, s.spec.Kernel)
}

// saveInto stops the guest (unless paused already), saves its memory and
// device state into dir and captures its writable disk with link (copy for
// a snapshot, hard link for pause to disk, where the VM does not run on),
// all while the guest is stopped. resume says whether to continue the
// guest afterwards; a guest that continues gets a new agent channel if
// the save reset it (channel.go), and an error wrapping errChannelLost
// says that failed. It returns how long the guest was stopped.
func (s *supervisor) saveInto(ctx context.Context, sv stateSaver, dir string, link bool, resume bool) (time.Duration, error) {
	s.mu.Lock()
	wasPaused := s.state.Status == sandbox.Paused
	s.mu.Unlock()
	t0 := time.Now()
	if err := s.vm.Pause(ctx); err != nil {
		return 0, fmt.Errorf("stop the guest: %w", err)
	}
	cont := func() error {
		if resume && !wasPaused {
			cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := s.vm.Resume(cctx); err != nil {
				s.logf("continue after save: %v", err)
				return nil
			}
			return s.reconnectAgent()
		}
		return nil
	}
	s.channelWillReset()
	if _, err := sv.SaveState(ctx, filepath.Join(dir, snapshot.MemoryFile)); err != nil {
		return 0, alsoLost(err, cont())
	}
	if up := s.upperDisk(); up != "" {
		dst := filepath.Join(dir, snapshot.DiskFile)
		var err error
		if link {
			err = os.Link(up, dst)
		} else {
			_, err = snapshot.CopySparse(up, dst)
		}
		if err != nil {
			return 0, alsoLost(fmt.Errorf("capture the disk: %w", err), cont())
		}
	}
	stopped := time.Since(t0)
	if err := cont(); err != nil {
		return 0, err
	}
	return stopped, nil
}

// saveOp is one save in progress: the save lock is held, the state is
// written into p.Dir under a deadline, and end aborts it unless commit
// put it under its tag.
type saveOp struct {
	s         *supervisor
	sv        stateSaver
	match     snapshot.Match
	p         *snapshot.Pending
	ctx       context.Context
	cancel    context.CancelFunc
	committed bool
}

// beginSave checks that the sandbox can be saved (a host key to sign
// with, a backend that saves, nothing outside the VM), takes the save
// lock and starts writing tag in store. what names the operation in
// errors. The caller must call end.
func (s *supervisor) beginSave(what string, store *snapshot.Store, tag string) (*saveOp, error) {
	if s.signer == nil {
		return nil, fmt.Errorf("%s: the supervisor has no host key to sign the saved state with", what)
	}
	sv, err := s.savable()
	if err != nil {
		return nil, err
	}
	s.opMu.Lock()
	if s.suspending {
		s.opMu.Unlock()
		return nil, fmt.Errorf("%s: %w", what, errSuspending)
	}
	op := &saveOp{s: s, sv: sv}
	if op.match, err = s.match(); err == nil {
		op.p, err = store.Begin(tag)
	}
	if err != nil {
		s.opMu.Unlock()
		return nil, err
	}
	op.ctx, op.cancel = context.WithTimeout(context.Background(), snapshotOpTimeout)
	return op, nil
}

// commit signs the saved state and puts it under its tag (the commit
// point: before it nothing is visible under the tag, after it all is).
func (op *saveOp) commit(meta snapshot.Meta) (*snapshot.Meta, error) {
	meta.Match = op.match
	out, err := op.p.Commit(meta, op.s.signer)
	op.committed = err == nil
	return out, err
}

// end removes an uncommitted save and releases the save lock.
func (op *saveOp) end() {
	if !op.committed {
		op.p.Abort()
	}
	op.cancel()
	op.s.opMu.Unlock()
}

// saveSnapshot saves the running sandbox as a snapshot (it keeps running).
func (s *supervisor) saveSnapshot(req *sandbox.SnapshotRequest) (*snapshot.Meta, error) {
	if req == nil {
		return nil, errors.New("snapshot: no snapshot named")
	}
	op, err := s.beginSave("snapshot", &snapshot.Store{Dir: req.StoreDir}, req.Tag)
	if err != nil {
		return nil, err
	}
	defer op.end()
	stopped, err := s.saveInto(op.ctx, op.sv, op.p.Dir, false, true)
	if err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", req.Tag, err)
	}
	for _, f := range []struct{ from, to string }{
		{filepath.Join(s.dir, sandbox.PlanFile), snapshot.PlanFile},
		{filepath.Join(s.dir, sandbox.SpecFile), snapshot.SpecFile},
		{filepath.Join(s.dir, envFile), snapshot.EnvFile},
	} {
		if _, err := os.Stat(f.from); errors.Is(err, os.ErrNotExist) && f.to == snapshot.EnvFile {
			continue
		}
		if _, err := snapshot.CopySparse(f.from, filepath.Join(op.p.Dir, f.to)); err != nil {
			return nil, fmt.Errorf("snapshot %s: %w", req.Tag, err)
		}
	}
	meta := req.Meta
	meta.Created = time.Now().UTC()
	meta.SourceID, meta.SourceName, meta.ImageName = s.spec.ID, s.spec.Name, s.spec.Image.Name
	meta.SaveMS = stopped.Milliseconds()
	killPoint("snapshot.saved")
	out, err := op.commit(meta)
	if err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", req.Tag, err)
	}
	s.events("snapshot.saved", s.snapshot(), map[string]any{"tag": req.Tag, "save_ms": meta.SaveMS, "bytes": out.Size()})
	return out, nil
}

// suspend saves the sandbox into its directory (SuspendedDir) for pause to
// disk. On success the guest stays stopped and the caller ends the VMM.
// A supervisor killed before the commit takes its VM along (the sandbox
// is failed, and the runtime removes the uncommitted directory); after
// it, the sandbox is paused (runtime.suspendedState).
func (s *supervisor) suspend() (*snapshot.Meta, error) {
	op, err := s.beginSave("pause", &snapshot.Store{Dir: s.dir}, sandbox.SuspendedDir)
	if err != nil {
		return nil, err
	}
	defer op.end()
	stopped, err := s.saveInto(op.ctx, op.sv, op.p.Dir, true, false)
	// resumeGuest continues a guest whose pause to disk failed, with a new
	// agent channel if the save reset it.
	resumeGuest := func() error {
		cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if s.state.Status != sandbox.Paused {
			if s.vm.Resume(cctx) == nil {
				return s.reconnectAgent()
			}
		}
		return nil
	}
	if err != nil {
		return nil, fmt.Errorf("pause to disk: %w", alsoLost(err, resumeGuest()))
	}
	killPoint("pause.saved")
	out, err := op.commit(snapshot.Meta{
		Created:  time.Now().UTC(),
		SourceID: s.spec.ID, SourceName: s.spec.Name, ImageName: s.spec.Image.Name,
		SaveMS: stopped.Milliseconds(),
	})
	if err != nil {
		return nil, fmt.Errorf("pause to disk: %w", alsoLost(err, resumeGuest()))
	}
	s.suspending = true // under the save lock, until the supervisor exits
	killPoint("pause.committed")
	return out, nil
}

// errSuspending refuses what reaches a supervisor whose sandbox has been
// paused to disk and whose VM is ending.
var errSuspending = errors.New("the sandbox is being paused to disk (its VM is ending); once it is paused, `mvmctl resume` continues it")

// restore loads the saved state the VMM was started with and continues
// the guest. The saved state is not touched: a resume from disk gave the
// VMM its own copy of the saved disk (runtime.Resume), and commitResume
// removes the saved state once the resumed sandbox is ready. Its agent is
// still in the session it had when it was saved; boot resets it
// (agentapi.HostReset).
func (s *supervisor) restore(ctx context.Context) error {
	sv, ok := s.vm.(stateSaver)
	if !ok {
		return errNoSaveState
	}
	if err := sv.CompleteIncoming(ctx); err != nil {
		return err
	}
	s.state.Boot.RestoreMS = time.Since(s.bootStart).Milliseconds()
	if err := s.vm.Resume(ctx); err != nil {
		return fmt.Errorf("restore: continue the guest: %w", err)
	}
	return nil
}

// resumesOwn reports whether the VMM was started from the sandbox's own
// pause-to-disk state (a resume, not a clone or a warm start).
func (s *supervisor) resumesOwn() bool {
	in := s.spec.VM.Incoming
	return in != "" && filepath.Dir(in) == filepath.Join(s.dir, sandbox.SuspendedDir)
}

// commitResume is the commit point of a resume from disk: it removes the
// saved state the sandbox was resumed from. Until then a killed
// supervisor leaves the sandbox paused with its saved state intact (the
// resumed guest wrote to a copy of the saved disk); from then on the
// sandbox is running. The directory is renamed out of sight (".rm-",
// removed by snapshot.Store.CleanStale if this process dies first), then
// removed.
func commitResume(dir string) error {
	src := filepath.Join(dir, sandbox.SuspendedDir)
	gone := filepath.Join(dir, ".rm-"+sandbox.NewID()+"-"+sandbox.SuspendedDir)
	if err := os.Rename(src, gone); err != nil {
		return fmt.Errorf("resume: remove the saved state: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	go os.RemoveAll(gone)
	return nil
}

// resetAgentWait is how long a restored guest gets to answer a short
// reset burst before the long one is sent.
var resetAgentWait = 2 * time.Second

// resetAgent ends the channel session a restored guest was saved in and
// runs a new handshake (agentapi.HostReset): a short burst first, the long
// one if the guest was saved in the middle of a frame.
func resetAgent(ctx context.Context, conn net.Conn) error {
	if err := agentapi.HostReset(ctx, conn, agentapi.ResetBurst); err != nil {
		return err
	}
	hctx, cancel := context.WithTimeout(ctx, resetAgentWait)
	err := agentapi.HostHandshake(hctx, conn)
	cancel()
	if err == nil || ctx.Err() != nil || !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	if err := agentapi.HostReset(ctx, conn, agentapi.MaxResetBurst); err != nil {
		return err
	}
	return agentapi.HostHandshake(ctx, conn)
}

// auditRestore records a restore in the audit chain: here, not in the
// caller, so that it is recorded even when the caller is gone (a killed
// CLI does not stop a restore).
func (s *supervisor) auditRestore() {
	in := s.spec.VM.Incoming
	if in == "" {
		return
	}
	fields := map[string]any{"restore_ms": s.state.Boot.RestoreMS}
	if s.resumesOwn() {
		fields["from"] = "disk"
		s.events("sandbox.resumed", s.snapshot(), fields)
		return
	}
	tag := s.spec.FromSnapshot
	if tag == "" {
		tag = s.spec.Start.Snapshot
	}
	fields["tag"] = tag
	s.events("snapshot.restored", s.snapshot(), fields)
}
