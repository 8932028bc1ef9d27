package runtime

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/mvm-sandbox/mvm/internal/backend"
	"github.com/mvm-sandbox/mvm/internal/backend/qemu"
	"github.com/mvm-sandbox/mvm/internal/errdefs"
	"github.com/mvm-sandbox/mvm/internal/image"
	"github.com/mvm-sandbox/mvm/internal/netpolicy"
	"github.com/mvm-sandbox/mvm/internal/plan"
	"github.com/mvm-sandbox/mvm/internal/sandbox"
	"github.com/mvm-sandbox/mvm/internal/secret"
	"github.com/mvm-sandbox/mvm/internal/supervisor"
	"github.com/mvm-sandbox/mvm/internal/volume"
)

// UpOptions describe a sandbox to boot.
type UpOptions struct {
	Name  string // "" generates one
	Image string // "" is the built-in minimal image; a template, a build dir or a digest
	// CPUs, MemoryMiB and DiskMiB of 0 take the image's manifest values,
	// then 1 CPU, 512 MiB and DefaultDiskMiB.
	CPUs      int
	MemoryMiB int
	DiskMiB   int
	Env       map[string]string
	TTL       time.Duration
	// Transient sandboxes are removed when they stop, and when the hold
	// connection returned by Up closes.
	Transient   bool
	BootTimeout time.Duration
	// RunProfile is the run profile (restrictive, standard, dev,
	// permissive; "" is standard). The image profile (dev, sealed) comes
	// from the image.
	RunProfile string
	// RequireDigest refuses an OCI image reference that is a tag (always
	// so under the restrictive run profile); Platform selects the image of
	// a multi-platform reference ("" = linux/amd64).
	RequireDigest bool
	Platform      string
	// Refresh resolves the OCI reference of an image built on the fly (a
	// build directory's image = REF, a declaration's mvm.oci_image(REF))
	// on its registry again instead of using its pin, and moves the pin
	// (Sandbox.Repinned says when it moved). It applies only to a build
	// directory or a declaration; a build on a template is unchanged.
	Refresh bool
	// Progress, when set, receives short human-readable phase messages.
	Progress func(string)
	// BuildProgress, when set, receives image build events.
	BuildProgress func(image.Event)
	// Workload is set when the sandbox boots a declared workload
	// (UpWorkload): its IR hash goes into the plan, receipts and audit.
	Workload *WorkloadInfo
	// Network is the sandbox's network (zero: none, no NIC); see
	// netpolicy.Build. Its Origin says who asked (netpolicy.OriginCLI for
	// the operator's flags, netpolicy.OriginMCP for a model): only the
	// operator may allow the host's loopback or private addresses.
	Network netpolicy.Config
	// AllowManifestNetwork is the operator's consent to the egress the
	// image's manifest asks for; without it such a manifest is refused
	// unless Network already allows every entry it asks for.
	AllowManifestNetwork bool
	// Notice, when set, receives what the caller must show before the
	// sandbox boots (the egress a manifest asks for), whatever the output
	// format.
	Notice func(string)
	// NoBuildDir makes Image a template, image name or digest only, never
	// a host directory to build: a name an MCP client chose must not make
	// the host read its own files into an image.
	NoBuildDir bool
	// Mounts are host directories and volumes (-v); see docs/volumes.md.
	Mounts []volume.MountSpec
	// AllowRWMount (--allow-rw-mount) admits read-write host directories
	// under the standard and dev profiles; it is recorded in the plan.
	AllowRWMount bool
	// AllowManifestMounts (--allow-manifest-mounts) is the operator's
	// consent to the host directories and volumes a build directory's
	// manifest asks for ([[mount]]); it is recorded in the plan.
	AllowManifestMounts bool
	// AllowManifestSecrets (--allow-manifest-secrets) is the operator's
	// consent to the secrets that manifest asks for ([secrets]); recorded
	// in the plan.
	AllowManifestSecrets bool
	// Secrets are handed to the guest by name (--secret); values are read
	// from the store only when given to the guest.
	Secrets []secret.Ref
	// RootDir, when set, is a host directory shared read-write as the root
	// of the sandbox's processes (UpBundle); the plan records it.
	RootDir *RootDir
	// Labels are shown by `mvmctl ls` and kept in the sandbox's spec.
	Labels map[string]string
	// Cold boots the kernel even when a ready snapshot of the image could
	// be restored (--cold), and never takes a pooled sandbox; see
	// docs/snapshots.md.
	Cold bool
	// pool marks a warm pool's member (started by the pool's filler).
	pool *poolMember
	// FromSnapshot starts the sandbox from this snapshot's saved state
	// (its own name, id and disk copy) instead of booting an image.
	FromSnapshot string
}

// Sandbox is a booted sandbox.
type Sandbox struct {
	ID    string
	Name  string
	Dir   string
	State *sandbox.State
	// Hold is set for transient sandboxes: closing it tears the sandbox
	// down, so that it dies with its creator.
	Hold interface{ Close() error }
	// Plan is the plan the sandbox was admitted with: its run profile and
	// network as granted, for callers to report rather than recompute.
	Plan *plan.Plan
	// Start is StartRestored when the sandbox was restored from its
	// image's ready snapshot, else StartCold. Recorded is the time spent
	// recording the ready snapshot after a cold first boot (0 when none
	// was recorded), RecordErr why recording failed (the sandbox runs).
	Start     string
	Recorded  time.Duration
	RecordErr error
	// Pool names the warm pool the sandbox was claimed from ("" when it
	// was started for the caller).
	Pool string
	// Repinned is set when UpOptions.Refresh moved the pin of the image's
	// OCI base: the digest it had and the one booted.
	Repinned *image.Repin
	// Ready is the tag of the ready snapshot the sandbox was restored
	// from or recorded ("" for none).
	Ready string
}

func (o *UpOptions) defaults(img *bootImage) {
	if a := img.artifact; a != nil {
		if o.CPUs == 0 {
			o.CPUs = a.CPUs
		}
		if o.MemoryMiB == 0 {
			o.MemoryMiB = int(a.MemoryMiB)
		}
		if o.DiskMiB == 0 {
			o.DiskMiB = int(a.DiskMiB)
		}
	}
	if o.CPUs == 0 {
		o.CPUs = 1
	}
	if o.MemoryMiB == 0 {
		o.MemoryMiB = 512
	}
	if o.DiskMiB == 0 {
		o.DiskMiB = DefaultDiskMiB
	}
	if o.BootTimeout == 0 {
		o.BootTimeout = BootTimeout()
	}
	if o.RunProfile == "" {
		o.RunProfile = string(plan.DefaultProfile)
	}
}

// pullOptions are the options of an OCI image pull: tags are refused when
// asked, and always under the restrictive run profile.
func (o *UpOptions) pullOptions() image.PullOptions {
	return image.PullOptions{Platform: o.Platform, RequireDigest: o.RequireDigest || o.RunProfile == string(plan.Restrictive), Refresh: o.Refresh}
}

// Validate checks options before anything is created. Its errors are
// invalid arguments; they name options, not CLI flags (MCP shows them too).
func (o *UpOptions) Validate() error {
	return errdefs.InvalidArgument(o.validate())
}

func (o *UpOptions) validate() error {
	if o.Name != "" {
		if err := sandbox.ValidateName(o.Name); err != nil {
			return err
		}
	}
	if o.CPUs < 0 || o.CPUs > 64 {
		return fmt.Errorf("cpus %d: must be between 1 and 64", o.CPUs)
	}
	if o.MemoryMiB != 0 && (o.MemoryMiB < 128 || o.MemoryMiB > 256<<10) {
		return fmt.Errorf("memory %dM: must be between 128M and 256G", o.MemoryMiB)
	}
	if o.DiskMiB != 0 && (o.DiskMiB < 64 || o.DiskMiB > 1<<20) {
		return fmt.Errorf("disk %dM: must be between 64M and 1T", o.DiskMiB)
	}
	if o.TTL < 0 {
		return fmt.Errorf("ttl must not be negative")
	}
	if err := o.Network.Validate(); err != nil {
		if errors.Is(err, netpolicy.ErrRefused) {
			return fmt.Errorf("%w: %v", ErrPolicy, err)
		}
		return err
	}
	for k := range o.Env {
		if !validEnvKey(k) {
			return fmt.Errorf("invalid environment variable name %q: use letters, digits and '_', not starting with a digit", k)
		}
	}
	if err := ValidateLabels(o.Labels); err != nil {
		return err
	}
	if o.Refresh && !(IsBuildDir(o.Image) && !o.NoBuildDir || IsWorkloadFile(o.Image)) {
		return fmt.Errorf("refresh applies to an image built on the fly (a directory with mvm.toml, or a declaration), not to %q: to follow a moved tag of an OCI image, pull it again (mvmctl image pull REF)", o.Image)
	}
	if o.RootDir != nil && (o.Image != "" && o.Image != "minimal") {
		return fmt.Errorf("a sandbox whose root is a host directory boots the minimal image, not %q", o.Image)
	}
	return nil
}

func validEnvKey(k string) bool {
	if k == "" {
		return false
	}
	for i, c := range k {
		if c == '_' || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (i > 0 && c >= '0' && c <= '9') {
			continue
		}
		return false
	}
	return true
}

// Up boots a sandbox and returns once its agent is ready. On any failure
// nothing is left behind: no process, no directory, no name.
func (r *Runtime) Up(ctx context.Context, o UpOptions) (*Sandbox, error) {
	if o.FromSnapshot != "" {
		return r.upFromSnapshot(ctx, o)
	}
	if err := o.Validate(); err != nil {
		return nil, err
	}
	progress := o.Progress
	if progress == nil {
		progress = func(string) {}
	}
	backendName, err := r.backend()
	if err != nil {
		return nil, err
	}
	// Host paths, volumes and secrets are checked before anything else,
	// the manifest's mounts (granted or refused) among them.
	if err := r.manifestAttachments(&o); err != nil {
		return nil, err
	}
	att, err := r.ResolveAttachments(o)
	if err != nil {
		return nil, err
	}
	var rootDir string
	if o.RootDir != nil {
		if rootDir, err = r.checkRootDir(o.RootDir); err != nil {
			return nil, err
		}
		if err := qemu.ShareSupport(); err != nil {
			return nil, errdefs.New(errdefs.KindUnavailable, err)
		}
	}
	img, err := r.resolveImage(ctx, o.Image, backendName, !o.NoBuildDir, o.pullOptions(), o.BuildProgress)
	if err != nil {
		return nil, err
	}
	var repinned *image.Repin
	if img.artifact != nil {
		if err := o.manifestNetwork(img.artifact.Network, img.artifact.Allow); err != nil {
			return nil, err
		}
		repinned = img.artifact.Repinned
	}
	o.defaults(img)
	if sb, ok, err := r.claimPooled(ctx, &o, img, att, backendName); ok || err != nil {
		if sb != nil {
			sb.Repinned = repinned
		}
		return sb, err
	}
	id := sandbox.NewID()
	name := o.Name
	if name == "" {
		prefix := "sb"
		switch {
		case o.pool != nil:
			prefix = "pool"
		case o.Transient:
			prefix = "run"
		}
		name = prefix + "-" + id
	}
	in, err := planFor(&o, img, backendName, id, name)
	if err != nil {
		return nil, err
	}
	withAttachments(&in, att, o)
	if o.RootDir != nil {
		in.RootDir = &plan.RootDir{HostPath: rootDir, BundleDir: o.RootDir.BundleDir, ReadOnly: o.RootDir.ReadOnly}
	}
	dir, cleanup, err := r.newSandboxDir(name, id)
	if err != nil {
		return nil, err
	}
	if o.pool != nil {
		// Marked before anything runs: a member is never listed as an
		// ordinary sandbox.
		if err := sandbox.WriteJSON(filepath.Join(dir, poolMarker), o.pool); err != nil {
			cleanup()
			return nil, err
		}
	}
	if o.Workload != nil {
		if err := sandbox.WriteJSON(filepath.Join(dir, WorkloadFile), o.Workload); err != nil {
			cleanup()
			return nil, err
		}
	}
	adm, err := r.admit(ctx, in, dir)
	if err != nil {
		cleanup()
		return nil, err
	}
	cmdline := img.cmdline()
	dec := r.decideStart(r.readyKey(img, &o, backendName, cmdline, adm.Plan.Console), coldReason(&o, att, backendName))
	var disks []backend.Disk
	if dec.Start == StartRestored {
		disks = img.restoredDisks(dir)
	} else if disks, err = img.vmDisks(ctx, dir, o.DiskMiB); err != nil {
		cleanup()
		return nil, err
	}
	volDisks, shares, mountArgs, err := r.vmAttachments(att)
	if err != nil {
		cleanup()
		return nil, err
	}
	disks = append(disks, volDisks...)
	if mountArgs != "" {
		cmdline = strings.TrimSpace(cmdline + " " + mountArgs)
	}
	if o.RootDir != nil {
		shares = append(shares, backend.Share{Tag: RootDirTag, HostPath: rootDir})
		cmdline = strings.TrimSpace(cmdline + " mvm.rootdir=" + RootDirTag)
		if o.RootDir.ReadOnly {
			cmdline += " mvm.rootdir_ro=1"
		}
		if h := o.RootDir.Hostname; h != "" && hostnameRe.MatchString(h) {
			cmdline += " mvm.rootdir_hostname=" + h
		}
		if !strings.Contains(cmdline, "mvm.virtiofs=1") {
			cmdline += " mvm.virtiofs=1"
		}
	}
	locks, err := r.lockVolumes(att)
	if err != nil {
		cleanup()
		return nil, err
	}
	defer func() {
		for _, f := range locks {
			f.Close() // the supervisor holds its own copies
		}
	}()
	envKeys := make([]string, 0, len(o.Env))
	for k := range o.Env {
		envKeys = append(envKeys, k)
	}
	sort.Strings(envKeys)
	spec := sandbox.Spec{
		ID: id, Name: name, Transient: o.Transient,
		VM: backend.Spec{
			Kernel: img.kernel.Vmlinux, Initrd: img.initrd, Cmdline: cmdline,
			CPUs: o.CPUs, MemoryMiB: o.MemoryMiB, Disks: disks, Shares: shares,
		},
		BootTimeout: o.BootTimeout, TTL: o.TTL,
		Image: img.ref, Kernel: img.kernel.Digest,
		RunProfile: string(adm.Plan.RunProfile), Backend: adm.Plan.Backend,
		Network: string(in.Network.Mode), Env: envKeys,
		PlanHash: adm.Hash,
		Created:  time.Now().UTC(),
		Labels:   o.Labels,
		RootDir:  rootDir,
		Start:    sandbox.StartInfo{Mode: dec.Start, Reason: dec.Reason},
	}
	if dec.Start == StartRestored {
		spec.Start.Snapshot = dec.Tag
		if err := r.restoreFrom(&spec, adm.Plan, dec.Tag, dir); err != nil {
			// Tampered, truncated or no longer this host's machine: it is
			// replaced, never used. This sandbox boots cold and records a
			// good one.
			r.dropReady(dec)
			r.unrestore(&spec)
			dec = warmDecision{Start: StartCold, Key: dec.Key, Tag: dec.Tag, Record: true,
				Reason: "ready snapshot refused (replaced by this boot): " + firstLine(err.Error())}
			spec.Start = sandbox.StartInfo{Mode: dec.Start, Reason: dec.Reason}
			if _, err := img.vmDisks(ctx, dir, o.DiskMiB); err != nil {
				cleanup()
				return nil, err
			}
		}
	}
	if err := sandbox.WriteJSON(filepath.Join(dir, sandbox.SpecFile), spec); err != nil {
		cleanup()
		return nil, err
	}
	if !att.Empty() {
		if err := sandbox.WriteJSON(filepath.Join(dir, sandbox.AttachmentsFile), att); err != nil {
			cleanup()
			return nil, err
		}
	}
	if len(o.Env) > 0 {
		if err := sandbox.WriteJSON(filepath.Join(dir, envFile), o.Env); err != nil {
			cleanup()
			return nil, err
		}
	}
	if o.Network.HasNIC() {
		if err := netpolicy.WriteConfig(dir, o.Network); err != nil {
			cleanup()
			return nil, err
		}
	}
	verb := "booting"
	if dec.Start == StartRestored {
		verb = "restoring"
	}
	progress(fmt.Sprintf("%s %s (%s, %d cpu, %d MiB)", verb, name, img.ref.Name, o.CPUs, o.MemoryMiB))
	st, hold, err := r.spawnSupervisor(ctx, dir, o.BootTimeout, o.Transient, locks)
	if err != nil && dec.Start == StartRestored && ctx.Err() == nil && !errors.Is(err, errSupervisorVanished) {
		// A ready snapshot that does not restore is dropped (the next
		// first boot records a good one) and this sandbox boots cold.
		// Not when the supervisor vanished without reporting: it was
		// killed (perhaps after the sandbox was announced running), and
		// booting a second VM behind the killer's back would be wrong.
		r.dropReady(dec)
		dec.Reason = "ready snapshot failed to restore: " + firstLine(err.Error())
		progress(fmt.Sprintf("%s; booting %s", dec.Reason, name))
		st, hold, err = r.bootColdAfterRestore(ctx, dir, img, &spec, &o, dec, locks)
		dec.Start, dec.Record = StartCold, err == nil
	}
	if err != nil {
		cleanup()
		return nil, fmt.Errorf("%w: %s: %v", ErrBoot, name, err)
	}
	sb := &Sandbox{ID: id, Name: name, Dir: dir, State: st, Plan: adm.Plan, Start: dec.Start, Repinned: repinned}
	if dec.Start == StartRestored {
		sb.Ready = dec.Tag
	}
	if hold != nil {
		sb.Hold = hold
	}
	if dec.Record {
		// Before anything of the caller's reaches the guest (secrets,
		// commands): the snapshot holds a sandbox that has run nothing.
		if rec, err := r.recordReady(ctx, r.saveReady, sb, dec); err != nil {
			progress("warm start: " + err.Error())
			sb.RecordErr = err
		} else if rec != nil {
			sb.Recorded = time.Duration(rec.SaveMS) * time.Millisecond
			sb.Ready = rec.Snapshot
		}
	}
	if err := r.placeSecretFiles(ctx, id, att); err != nil {
		r.Down(context.Background(), id)
		if hold != nil {
			hold.Close()
		}
		return nil, err
	}
	st.Attachments = att
	return sb, nil
}

// envFile holds the sandbox's default environment for every exec.
const envFile = "env.json"

// errSupervisorVanished: the supervisor exited (or was killed) without
// reporting, failure or success.
var errSupervisorVanished = errors.New("supervisor exited before the sandbox was ready")

// spawnSupervisor re-executes mvmctl as the sandbox's supervisor and
// waits for its ready line. A transient sandbox also gets a hold pipe
// (fd 4): its write end stays with the caller, and when it closes, even
// because the caller was killed, the supervisor tears the sandbox down.
// There is no window in which the sandbox runs without a holder.
func (r *Runtime) spawnSupervisor(ctx context.Context, dir string, bootTimeout time.Duration, transient bool, inherit []*os.File) (st *sandbox.State, hold *os.File, err error) {
	rd, wr, err := os.Pipe()
	if err != nil {
		return nil, nil, err
	}
	defer rd.Close()
	extra := []*os.File{wr} // fd 3: the ready line
	if transient {
		var holdR, holdW *os.File
		if holdR, holdW, err = os.Pipe(); err != nil {
			wr.Close()
			return nil, nil, err
		}
		defer holdR.Close()
		defer func() {
			if err != nil {
				holdW.Close()
			}
		}()
		extra = append(extra, holdR) // fd 4
		hold = holdW
	}
	logf, err := os.OpenFile(filepath.Join(dir, sandbox.SupervisorLog), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		wr.Close()
		return nil, nil, err
	}
	cmd := exec.Command(r.Exe, SupervisorCommand, dir)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Then the volume locks: the supervisor holds them, unread, for as
	// long as it lives.
	cmd.ExtraFiles = append(extra, inherit...)
	// Its own session: a terminal's Ctrl-C goes to mvmctl, which decides.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	wr.Close()
	logf.Close()
	if err != nil {
		return nil, nil, fmt.Errorf("start supervisor: %w", err)
	}
	go cmd.Wait() // reap it whenever it exits
	type result struct {
		ready supervisor.Ready
		err   error
	}
	ch := make(chan result, 1)
	go func() {
		line, err := bufio.NewReader(rd).ReadBytes('\n')
		if err != nil {
			ch <- result{err: fmt.Errorf("%w%s", errSupervisorVanished, logTail(filepath.Join(dir, sandbox.SupervisorLog)))}
			return
		}
		var res result
		res.err = json.Unmarshal(line, &res.ready)
		ch <- res
	}()
	// The supervisor enforces the boot deadline itself; this is a backstop.
	backstop := time.NewTimer(bootTimeout + 15*time.Second)
	defer backstop.Stop()
	kill := func() {
		cmd.Process.Kill() // the VMM dies with it
	}
	select {
	case res := <-ch:
		if res.err != nil {
			kill()
			return nil, nil, res.err
		}
		if !res.ready.OK {
			kill()
			return nil, nil, errors.New(res.ready.Error)
		}
		return res.ready.State, hold, nil
	case <-ctx.Done():
		kill()
		return nil, nil, ctx.Err()
	case <-backstop.C:
		kill()
		return nil, nil, fmt.Errorf("supervisor did not report within %s", bootTimeout+15*time.Second)
	}
}

func logTail(path string) string {
	b, err := os.ReadFile(path)
	s := strings.TrimSpace(string(b))
	if err != nil || s == "" {
		return ""
	}
	if len(s) > 2000 {
		s = s[len(s)-2000:]
	}
	return ": " + s
}

// newSandboxDir reserves name for id and creates the sandbox's private
// directory; cleanup releases both.
func (r *Runtime) newSandboxDir(name, id string) (dir string, cleanup func(), err error) {
	if err := r.Layout.Reserve(name, id); err != nil {
		return "", nil, err
	}
	dir = r.Layout.Dir(id)
	cleanup = func() {
		os.RemoveAll(dir)
		r.Layout.Release(name, id)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		cleanup()
		return "", nil, fmt.Errorf("create sandbox dir: %w", err)
	}
	return dir, cleanup, nil
}
