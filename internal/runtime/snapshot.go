package runtime

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/mvm-sandbox/mvm/internal/backend"
	"github.com/mvm-sandbox/mvm/internal/backend/qemu"
	"github.com/mvm-sandbox/mvm/internal/errdefs"
	"github.com/mvm-sandbox/mvm/internal/image"
	"github.com/mvm-sandbox/mvm/internal/plan"
	"github.com/mvm-sandbox/mvm/internal/sandbox"
	"github.com/mvm-sandbox/mvm/internal/secret"
	"github.com/mvm-sandbox/mvm/internal/snapshot"
	"github.com/mvm-sandbox/mvm/internal/supervisor"
)

// Snapshots is the snapshot store of this runtime's data directory.
func (r *Runtime) Snapshots() *snapshot.Store { return snapshot.Open(r.Dirs.Data) }

// snapshotTimeout bounds a save as the caller waits for it.
const snapshotTimeout = 11 * time.Minute

// SaveSnapshot saves a running (or in-memory paused) sandbox as snapshot
// tag: memory, device state and writable disk, taken while the guest is
// stopped, so disk and memory agree. The sandbox keeps running. A sandbox
// with a host directory or a volume is refused (their state is outside the
// VM). The save is recorded in the audit chain (snapshot.saved).
func (r *Runtime) SaveSnapshot(ctx context.Context, nameOrID, tag string) (*snapshot.Meta, error) {
	return r.SaveSnapshotIn(ctx, nameOrID, r.Snapshots(), tag)
}

// SaveSnapshotIn is SaveSnapshot into another store (warm starts keep
// their ready snapshots in the cache, out of the user's list).
func (r *Runtime) SaveSnapshotIn(ctx context.Context, nameOrID string, store *snapshot.Store, tag string) (*snapshot.Meta, error) {
	if err := snapshot.ValidateTag(tag); err != nil {
		return nil, err
	}
	_, dir, err := r.dir(nameOrID)
	if err != nil {
		return nil, err
	}
	unlock, err := lockLifecycle(ctx, dir, nameOrID, "snapshot")
	if err != nil {
		return nil, err
	}
	defer unlock()
	st, err := r.state(dir)
	if err != nil {
		return nil, err
	}
	if st.Status != sandbox.Running && !(st.Status == sandbox.Paused && !st.Suspended) {
		return nil, fmt.Errorf("%w: %s is %s; only a running sandbox can be snapshotted", ErrNotRunning, st.Name, st.Status)
	}
	if err := r.checkSavable(st, dir); err != nil {
		return nil, err
	}
	if _, err := store.Get(tag); err == nil {
		return nil, fmt.Errorf("snapshot %q: %w (choose another tag, or remove that snapshot first)", tag, snapshot.ErrExists)
	}
	if _, err := r.witness(); err != nil { // the supervisor signs with the same key
		return nil, err
	}
	meta := snapshot.Meta{Secrets: []string{}}
	if st.Attachments != nil {
		for _, s := range st.Attachments.Secrets {
			meta.Secrets = append(meta.Secrets, s.Name)
		}
	}
	cctx, cancel := context.WithTimeout(ctx, snapshotTimeout)
	defer cancel()
	resp, err := sandbox.Control(cctx, dir, sandbox.Request{Op: "snapshot", Snapshot: &sandbox.SnapshotRequest{
		StoreDir: store.Dir, Tag: tag, Meta: meta,
	}})
	if err != nil {
		// The supervisor may have died (SIGKILL) during the save: its VM
		// went with it. A committed snapshot is whole; an uncommitted one
		// is removed now rather than at the next save.
		waitSupervisorGone(st.SupervisorPID, dir, 5*time.Second)
		if !supervisorAlive(st.SupervisorPID, dir) {
			store.CleanStale()
			if sn, gerr := store.Get(tag); gerr == nil {
				return &sn.Meta, nil
			}
			return nil, errdefs.Errorf(errdefs.KindTransport, "snapshot %s: %v: its supervisor died during the save, so no snapshot was made and its VM ended with it (`mvmctl down %s` removes the sandbox)", st.Name, err, st.Name)
		}
		return nil, errdefs.New(errdefs.KindTransport, fmt.Errorf("snapshot %s: %w", st.Name, err))
	}
	if !resp.OK {
		return nil, fmt.Errorf("snapshot %s: %s", st.Name, resp.Error)
	}
	// The supervisor audited snapshot.saved.
	return resp.Snapshot, nil
}

// checkSavable refuses what a snapshot cannot hold.
func (r *Runtime) checkSavable(st *sandbox.State, dir string) error {
	if st.Backend != "" && st.Backend != plan.BackendQEMU && st.Backend != plan.BackendFirecracker {
		return errdefs.Errorf(errdefs.KindUnavailable, "%s runs on the %s backend: snapshots and pause to disk need the qemu or firecracker backend", st.Name, st.Backend)
	}
	var spec sandbox.Spec
	if err := sandbox.ReadJSON(filepath.Join(dir, sandbox.SpecFile), &spec); err != nil {
		return err
	}
	if len(spec.VM.Shares) > 0 {
		return errdefs.Errorf(errdefs.KindFailedPrecondition, "%s has a host directory shared into it (a -v mount or a bundle root): virtiofs state does not travel in a snapshot, so it cannot be snapshotted or paused to disk (pause it in memory instead)", st.Name)
	}
	if a := st.Attachments; a != nil {
		if len(a.Mounts) > 0 {
			return errdefs.Errorf(errdefs.KindFailedPrecondition, "%s has a host directory mounted: virtiofs state does not travel in a snapshot, so it cannot be snapshotted or paused to disk (pause it in memory instead)", st.Name)
		}
		if len(a.Volumes) > 0 {
			return errdefs.Errorf(errdefs.KindFailedPrecondition, "%s has a volume attached: a volume outlives the sandbox and is not captured, so it cannot be snapshotted or paused to disk (pause it in memory instead)", st.Name)
		}
	}
	return nil
}

// SnapshotInfo is a stored snapshot as listed.
type SnapshotInfo struct {
	Tag     string
	Meta    snapshot.Meta
	Bytes   int64 // bytes on disk (allocated)
	Invalid string
}

// ListSnapshots lists the stored snapshots, oldest first (without
// verifying their digests: restores do).
func (r *Runtime) ListSnapshots() ([]SnapshotInfo, error) {
	sns, err := r.Snapshots().List()
	if err != nil {
		return nil, err
	}
	out := make([]SnapshotInfo, 0, len(sns))
	for _, sn := range sns {
		in := SnapshotInfo{Tag: filepath.Base(sn.Dir), Meta: sn.Meta, Bytes: duBytes(sn.Dir)}
		if sn.Meta.SchemaVersion == 0 {
			in.Invalid = "unreadable sidecar"
		}
		out = append(out, in)
	}
	return out, nil
}

// duBytes is the disk space the files of dir take.
func duBytes(dir string) int64 {
	var n int64
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if fi, err := e.Info(); err == nil {
			if st, ok := statBlocks(fi); ok {
				n += st
			} else {
				n += fi.Size()
			}
		}
	}
	return n
}

// RemoveSnapshot deletes a snapshot. Sandboxes cloned from it are not
// affected: each has its own disk, and its memory was loaded at restore.
func (r *Runtime) RemoveSnapshot(tag string) error {
	if err := r.Snapshots().Remove(tag); err != nil {
		return err
	}
	_, err := r.Audit("snapshot.removed", tag, map[string]any{"tag": tag})
	return err
}

// openVerified opens snapshot tag and verifies its signature and every
// digest but those in skip (checked while they are copied).
func (r *Runtime) openVerified(tag string, skip ...string) (*snapshot.Snapshot, error) {
	sn, err := r.Snapshots().Get(tag)
	if err != nil {
		return nil, err
	}
	w, err := r.witness()
	if err != nil {
		return nil, err
	}
	if err := sn.Verify(w.signer.Public, skip...); err != nil {
		return nil, err
	}
	return sn, nil
}

// currentMatch is the machine this host would run spec as now, for the
// comparison with a saved state's Match.
func currentMatch(spec sandbox.Spec, p *plan.Plan, accel string) (snapshot.Match, error) {
	vm := spec.VM
	vm.CPUs, vm.MemoryMiB = p.Resources.CPUs, p.Resources.MemoryMiB
	vm.Network = nil
	if p.Network.Mode != "" && p.Network.Mode != plan.NetNone {
		vm.Network = &backend.Network{}
	}
	return supervisor.MachineMatch(spec.Backend, vm, accel, spec.Image.Digest, spec.Image.OCIDigest, spec.Kernel)
}

// checkBackend refuses a saved state of another VMM than the one the
// restore would start (its plan's backend): a QEMU migration stream is
// not a Firecracker snapshot, nor the other way round.
func checkBackend(what string, saved snapshot.Match, restoreBackend string) error {
	name := func(b string) string {
		if b == "" {
			return "qemu"
		}
		return b
	}
	if name(saved.Backend) != name(restoreBackend) {
		return fmt.Errorf("%s: %w: it was saved by the %s backend and would be restored by %s; a VMM restores only its own saved state: use a sandbox of the %s backend, or save it again", what, snapshot.ErrMismatch, name(saved.Backend), name(restoreBackend), name(saved.Backend))
	}
	return nil
}

// checkMatch refuses a saved state this host cannot restore exactly.
func (r *Runtime) checkMatch(what string, saved snapshot.Match, spec sandbox.Spec, p *plan.Plan) error {
	restoreBackend := spec.Backend
	if p != nil {
		restoreBackend = p.Backend
	}
	if err := checkBackend(what, saved, restoreBackend); err != nil {
		return err
	}
	spec.Backend = restoreBackend
	k, err := image.FindKernel(r.Dirs)
	if err == nil && k.Digest != spec.Kernel {
		return fmt.Errorf("%s: %w: it was saved with kernel %.19s, this host boots %.19s; save it again", what, snapshot.ErrMismatch, spec.Kernel, k.Digest)
	}
	for _, f := range append([]string{spec.VM.Kernel, spec.VM.Initrd}, diskPaths(spec.VM.Disks, true)...) {
		if f == "" {
			continue
		}
		if _, err := os.Stat(f); err != nil {
			return fmt.Errorf("%s: %w: %s, which it was saved with, is gone from the cache; save it again", what, snapshot.ErrMismatch, f)
		}
	}
	now, err := currentMatch(spec, p, saved.Accel)
	if err != nil {
		return err
	}
	if d := saved.Diff(now); d != "" {
		return fmt.Errorf("%s: %w: it differs from this host in %s (a VMM restores a state only into the same machine); save it again", what, snapshot.ErrMismatch, d)
	}
	if acc := qemu.DetectAccel().Accel; acc != saved.Accel {
		return fmt.Errorf("%s: %w: it was saved under %s and this host runs %s; save it again", what, snapshot.ErrMismatch, saved.Accel, acc)
	}
	return nil
}

func diskPaths(ds []backend.Disk, readOnly bool) []string {
	var out []string
	for _, d := range ds {
		if d.ReadOnly == readOnly {
			out = append(out, d.Path)
		}
	}
	return out
}

// upFromSnapshot starts a new sandbox (own id, name and disk copy) from
// snapshot o.FromSnapshot. Its plan is the snapshot's, re-admitted for the
// new sandbox through the same admission as any boot.
func (r *Runtime) upFromSnapshot(ctx context.Context, o UpOptions) (*Sandbox, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	if o.Image != "" || len(o.Mounts) > 0 || len(o.Secrets) > 0 || o.CPUs != 0 || o.MemoryMiB != 0 || o.DiskMiB != 0 || len(o.Env) > 0 || o.Network.Mode != "" && o.Network.HasNIC() {
		return nil, errdefs.Errorf(errdefs.KindInvalidArgument, "a sandbox started from a snapshot runs the snapshot's image, resources, environment, network and secrets; give only a name, a TTL and a run profile")
	}
	tag := o.FromSnapshot
	sn, err := r.openVerified(tag, snapshot.DiskFile)
	if err != nil {
		return nil, err
	}
	var spec sandbox.Spec
	if err := sandbox.ReadJSON(sn.Path(snapshot.SpecFile), &spec); err != nil {
		return nil, fmt.Errorf("snapshot %q: %w", tag, err)
	}
	sp, err := plan.Load(sn.Path(snapshot.PlanFile))
	if err != nil {
		return nil, fmt.Errorf("snapshot %q: %w", tag, err)
	}
	src := &sp.Payload
	what := fmt.Sprintf("snapshot %q", tag)
	if err := r.checkMatch(what, sn.Meta.Match, spec, src); err != nil {
		return nil, err
	}
	if o.RunProfile != "" && o.RunProfile != string(src.RunProfile) {
		return nil, fmt.Errorf("%w: snapshot %q was saved under run profile %q; a clone runs under the profile its memory was made under", ErrPolicy, tag, src.RunProfile)
	}
	// Secrets: the values are in the saved memory; the store must still
	// hold them (exec redacts them from output).
	att := &sandbox.Attachments{Mounts: []plan.Mount{}, Volumes: []plan.VolumeMount{}, Secrets: []secret.Ref{}}
	for _, s := range src.Secrets {
		ref := secret.Ref{Name: s.Name}
		if p, ok := strings.CutPrefix(s.Target, "file:"); ok {
			ref.Path = p
		} else {
			ref.Env = strings.TrimPrefix(s.Target, "env:")
		}
		if err := r.Secrets().Check(s.Name); err != nil {
			return nil, fmt.Errorf("%w: snapshot %q holds secret %q, which is no longer stored: %v", ErrAttach, tag, s.Name, err)
		}
		att.Secrets = append(att.Secrets, ref)
	}
	id := sandbox.NewID()
	name := o.Name
	if name == "" {
		prefix := "sb"
		if o.Transient {
			prefix = "run"
		}
		name = prefix + "-" + id
	}
	network := src.Network
	network.Publish = nil // host ports belong to the source; publish anew with `port`
	in := plan.Input{
		WorkloadIRSHA256: src.WorkloadIRSHA256,
		SandboxID:        id, SandboxName: name,
		ImageDigest: src.ImageDigest, KernelDigest: src.KernelDigest, OCIDigest: src.OCIDigest,
		ImageProfile: src.ImageProfile, Backend: src.Backend,
		Resources:  src.Resources,
		RunProfile: src.RunProfile,
		Network:    network,
		Secrets:    src.Secrets,
		EnvKeys:    src.EnvKeys,
		// The console flag is part of the saved guest (the agent read it
		// at boot): the clone gets no more than the source had.
		Console: src.Console,
	}
	dir, cleanup, err := r.newSandboxDir(name, id)
	if err != nil {
		return nil, err
	}
	adm, err := r.admit(ctx, in, dir)
	if err != nil {
		cleanup()
		return nil, err
	}
	disks := append([]backend.Disk(nil), spec.VM.Disks...)
	for i, d := range disks {
		if !d.ReadOnly && d.Serial == "" {
			upper := filepath.Join(dir, sandbox.UpperDisk)
			if err := sn.CopyVerified(snapshot.DiskFile, upper); err != nil {
				cleanup()
				return nil, err
			}
			disks[i].Path = upper
		}
	}
	env := map[string]string{}
	sandbox.ReadJSON(sn.Path(snapshot.EnvFile), &env)
	newSpec := sandbox.Spec{
		ID: id, Name: name, Transient: o.Transient,
		VM: backend.Spec{
			Kernel: spec.VM.Kernel, Initrd: spec.VM.Initrd, Cmdline: spec.VM.Cmdline,
			CPUs: src.Resources.CPUs, MemoryMiB: src.Resources.MemoryMiB, Disks: disks,
			Accel: sn.Meta.Match.Accel, Incoming: sn.Path(snapshot.MemoryFile),
		},
		BootTimeout: o.BootTimeout, TTL: o.TTL,
		Image: spec.Image, Kernel: spec.Kernel,
		RunProfile: string(adm.Plan.RunProfile), Backend: adm.Plan.Backend,
		Network: string(network.Mode), Env: spec.Env,
		PlanHash: adm.Hash, Created: time.Now().UTC(), FromSnapshot: tag,
	}
	if newSpec.BootTimeout == 0 {
		newSpec.BootTimeout = BootTimeout()
	}
	if err := sandbox.WriteJSON(filepath.Join(dir, sandbox.SpecFile), newSpec); err != nil {
		cleanup()
		return nil, err
	}
	if !att.Empty() {
		if err := sandbox.WriteJSON(filepath.Join(dir, sandbox.AttachmentsFile), att); err != nil {
			cleanup()
			return nil, err
		}
	}
	if len(env) > 0 {
		if err := sandbox.WriteJSON(filepath.Join(dir, envFile), env); err != nil {
			cleanup()
			return nil, err
		}
	}
	if o.Progress != nil {
		o.Progress(fmt.Sprintf("restoring %s from snapshot %s", name, tag))
	}
	st, hold, err := r.spawnSupervisor(ctx, dir, newSpec.BootTimeout, o.Transient, nil)
	if err != nil {
		cleanup()
		return nil, fmt.Errorf("%w: %s: restore from snapshot %q: %v", ErrBoot, name, tag, err)
	}
	sb := &Sandbox{ID: id, Name: name, Dir: dir, State: st, Plan: adm.Plan}
	if hold != nil {
		sb.Hold = hold
	}
	// The supervisor audited snapshot.restored.
	st.Attachments = att
	return sb, nil
}

// statBlocks is the space a file takes on disk.
func statBlocks(fi os.FileInfo) (int64, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, false
	}
	return st.Blocks * 512, true
}
