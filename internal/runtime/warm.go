package runtime

// Warm start: the first boot of an image (and `mvmctl build`) records a
// ready snapshot (booted, agent ready, nothing run) and later sandboxes of
// the same image and shape restore from it instead of booting. See
// docs/snapshots.md, "Warm start".

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/gofrs/flock"
	"github.com/mvm-sandbox/mvm/internal/backend/qemu"
	"github.com/mvm-sandbox/mvm/internal/image/cache"
	"github.com/mvm-sandbox/mvm/internal/plan"
	"github.com/mvm-sandbox/mvm/internal/sandbox"
	"github.com/mvm-sandbox/mvm/internal/snapshot"
)

// Start modes a boot report names.
const (
	StartCold     = "cold"
	StartRestored = "restored"
)

// ReadyShape is what a ready snapshot is recorded for: one image booted
// with one set of devices and resources. Each shape has at most one ready
// snapshot; a second sandbox of the same shape restores from it.
type ReadyShape struct {
	Backend   string `json:"backend"`
	Image     string `json:"image_digest"`
	CPUs      int    `json:"cpus"`
	MemoryMiB int    `json:"memory_mib"`
	DiskMiB   int    `json:"disk_mib"` // 0: no writable disk (initramfs images)
	// Console is the plan's console flag: the agent reads it at boot.
	Console bool `json:"console"`
}

// ID names the shape's directory under the cache's ready/ directory.
func (s ReadyShape) ID() string {
	b, _ := json.Marshal(s)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:16])
}

// ReadyKey is everything a restore must match: the shape plus what the
// guest was booted from. A ready snapshot whose key differs in anything is
// stale: it is replaced, never restored.
type ReadyKey struct {
	ReadyShape
	// VMM identifies the QEMU binary (path, size, modification time: a
	// new package, or another binary, changes it); VMMVersion is what it
	// reported, for people.
	VMM        string `json:"vmm"`
	VMMVersion string `json:"vmm_version,omitempty"`
	Machine    string `json:"machine"`
	Accel      string `json:"accel"`
	Kernel     string `json:"kernel_digest"`
	// Initramfs covers the agent: it is the initramfs's /init.
	Initramfs string `json:"initramfs_digest"`
	// Cmdline is the kernel command line minus what differs per sandbox
	// (the hostname, which the restore refreshes) and per host clock
	// reading (tsc_early_khz).
	Cmdline string `json:"cmdline"`
}

// mismatch names the first field in which a recorded key differs from
// want ("" when they match), for the boot report's cold reason.
func (k ReadyKey) mismatch(want ReadyKey) string {
	switch {
	case k.ReadyShape != want.ReadyShape:
		return "shape"
	case k.VMM != want.VMM:
		return "qemu binary"
	case k.Machine != want.Machine:
		return "machine type"
	case k.Accel != want.Accel:
		return "accelerator"
	case k.Kernel != want.Kernel:
		return "kernel"
	case k.Initramfs != want.Initramfs:
		return "agent/initramfs"
	case k.Cmdline != want.Cmdline:
		return "kernel command line"
	}
	return ""
}

// ReadyRecord is TAG.ready.json, written beside the ready snapshot TAG
// (a snapshot of the store in the cache's ready/ directory) once the
// snapshot is complete.
type ReadyRecord struct {
	Key     ReadyKey  `json:"key"`
	Created time.Time `json:"created"`
	// Snapshot is the tag and SnapshotCreated the creation time of the
	// snapshot this record describes: a snapshot replaced since does not
	// match it.
	Snapshot        string    `json:"snapshot"`
	SnapshotCreated time.Time `json:"snapshot_created"`
	// Source is the sandbox whose first boot was recorded, BootMS its cold
	// boot (VMM start to agent ready) and SaveMS the time the save took.
	Source string `json:"source"`
	BootMS int64  `json:"boot_ms"`
	SaveMS int64  `json:"save_ms"`
}

// readyRecordExt ends the name of a ready snapshot's record.
const readyRecordExt = ".ready.json"

// readyRoot is where ready snapshots live: the cache, private to its
// owner like every artifact there.
func (r *Runtime) readyRoot() string { return filepath.Join(r.Dirs.Cache, "ready") }

// warmDecision is how Up starts one sandbox.
type warmDecision struct {
	Start  string // StartCold or StartRestored
	Reason string // why cold
	Key    ReadyKey
	Tag    string // the ready snapshot's tag in readyStore
	// Record is set when a cold boot should record the ready snapshot
	// once the agent is ready.
	Record bool
	rec    *ReadyRecord // the snapshot restored from
}

// coldReason says why a sandbox cannot start from a ready snapshot at
// all ("" when it may). Devices a ready snapshot does not have (a NIC,
// host directories, volumes) cannot be added to a restored machine: QEMU
// restores exactly the device set that was saved. Secrets and the
// environment are handed over after the agent answers, so they restore.
func coldReason(o *UpOptions, att *sandbox.Attachments, backendName string) string {
	switch {
	case o.Cold:
		return "cold start requested"
	case backendName != plan.BackendQEMU:
		return "ready snapshots are made with qemu only"
	case o.Network.HasNIC():
		return "a network (NIC) is not in the ready snapshot"
	case att != nil && len(att.Mounts) > 0:
		return "host directories are not in the ready snapshot"
	case att != nil && len(att.Volumes) > 0:
		return "volumes are not in the ready snapshot"
	case o.RootDir != nil:
		return "a host root directory is not in the ready snapshot"
	case os.Getenv(WarmEnv) == "0":
		return WarmEnv + "=0"
	}
	return ""
}

// WarmEnv=0 turns warm starts off for every sandbox (as --cold does for
// one).
const WarmEnv = "MVM_WARM"

// readyKey is the key a sandbox booted from img with these options would
// record. cmdline is the image part of the kernel command line.
func (r *Runtime) readyKey(img *bootImage, o *UpOptions, backendName, cmdline string, console bool) ReadyKey {
	accel := qemu.DetectAccel().Accel
	disk := 0
	if img.rootfs != "" {
		disk = o.DiskMiB
	}
	return ReadyKey{
		ReadyShape: ReadyShape{
			Backend: backendName, Image: img.ref.Digest,
			CPUs: o.CPUs, MemoryMiB: o.MemoryMiB, DiskMiB: disk, Console: console,
		},
		VMM:       qemuStamp(),
		Machine:   qemu.MachineType,
		Accel:     accel,
		Kernel:    img.kernelDigest(),
		Initramfs: img.initrdDigest,
		Cmdline:   stableCmdline(qemu.KernelCmdline(accel) + " " + cmdline),
	}
}

// stableCmdline drops tsc_early_khz (a host clock reading that only
// matters while the kernel calibrates, long before the snapshot).
func stableCmdline(s string) string {
	var out []string
	for _, f := range strings.Fields(s) {
		if !strings.HasPrefix(f, "tsc_early_khz=") {
			out = append(out, f)
		}
	}
	return strings.Join(out, " ")
}

// qemuStamp identifies the QEMU binary without running it.
func qemuStamp() string {
	p, err := exec.LookPath(qemu.Binary())
	if err != nil {
		return "missing:" + qemu.Binary()
	}
	if rp, err := filepath.EvalSymlinks(p); err == nil {
		p = rp
	}
	st, err := os.Stat(p)
	if err != nil {
		return "missing:" + p
	}
	return fmt.Sprintf("%s size=%d mtime=%d", p, st.Size(), st.ModTime().UnixNano())
}

// qemuVersion is the first line of `qemu --version` ("" if it fails);
// only asked when a ready snapshot is recorded.
func qemuVersion(ctx context.Context) string {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, qemu.Binary(), "--version").Output()
	if err != nil {
		return ""
	}
	line, _, _ := strings.Cut(string(out), "\n")
	return strings.TrimSpace(line)
}

// decideStart looks for a ready snapshot of key. It never waits for a
// recorder: a snapshot being recorded is not there yet.
func (r *Runtime) decideStart(key ReadyKey, why string) warmDecision {
	d := warmDecision{Start: StartCold, Key: key, Tag: key.ID()}
	if why != "" {
		d.Reason = why
		return d
	}
	if !snapshotsSupported {
		d.Reason = "ready snapshots are not supported by this build"
		return d
	}
	rec, err := r.readReady(d.Tag)
	switch {
	case errors.Is(err, os.ErrNotExist):
		d.Reason, d.Record = "no ready snapshot yet (this boot records it)", true
	case err != nil:
		d.Reason, d.Record = "ready snapshot incomplete or unreadable (replaced by this boot)", true
	case rec.Key.mismatch(key) != "":
		d.Reason, d.Record = "ready snapshot stale: "+rec.Key.mismatch(key)+" changed (replaced by this boot)", true
	default:
		d.Start, d.rec = StartRestored, rec
		now := time.Now()
		os.Chtimes(r.readyRecordPath(d.Tag), now, now) // recently used (pruneReady)
	}
	return d
}

// readyStore is the store of ready snapshots: in the cache, shared by
// every data directory of the user (their sidecars are checked with
// VerifyFiles, as the kernel and initramfs beside them are trusted).
func (r *Runtime) readyStore() *snapshot.Store { return &snapshot.Store{Dir: r.readyRoot()} }

func (r *Runtime) readyRecordPath(tag string) string {
	return filepath.Join(r.readyRoot(), tag+readyRecordExt)
}

// readReady reads the record of ready snapshot tag and checks that the
// snapshot it describes is the one in the store.
func (r *Runtime) readReady(tag string) (*ReadyRecord, error) {
	var rec ReadyRecord
	b, err := os.ReadFile(r.readyRecordPath(tag))
	if err != nil {
		return nil, err
	}
	if len(b) > 64<<10 {
		return nil, errors.New("ready record too large")
	}
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, err
	}
	sn, err := r.readyStore().Get(tag)
	if err != nil {
		return nil, fmt.Errorf("ready snapshot %s: %w", tag, err)
	}
	if rec.Snapshot != tag || !sn.Meta.Created.Equal(rec.SnapshotCreated) {
		return nil, fmt.Errorf("ready snapshot %s was replaced since its record was written", tag)
	}
	return &rec, nil
}

// ReadySaver saves running sandbox id as snapshot tag of store; the
// sandbox keeps running.
type ReadySaver func(ctx context.Context, id string, store *snapshot.Store, tag string) (*snapshot.Meta, error)

// recordReady records the ready snapshot of d.Key from sandbox sb, which
// has just booted cold and has run nothing. Concurrent first boots of the
// same shape do not wait for each other: the one that takes the shape's
// lock records, the others go on (their sandboxes stay cold-booted). The
// store writes the snapshot into a private directory and renames it into
// place; the record that makes it usable is written after, atomically. A
// reader sees a complete snapshot with its record, or none.
func (r *Runtime) recordReady(ctx context.Context, save ReadySaver, sb *Sandbox, d warmDecision) (*ReadyRecord, error) {
	root := r.readyRoot()
	if err := os.MkdirAll(root, cache.DirMode); err != nil {
		return nil, err
	}
	lk := flock.New(filepath.Join(root, d.Tag+".lock"), flock.SetPermissions(cache.FileMode))
	ok, err := lk.TryLock()
	if err != nil {
		return nil, fmt.Errorf("lock ready snapshot: %w", err)
	}
	if !ok {
		return nil, nil // another first boot records it
	}
	defer lk.Unlock()
	if rec, err := r.readReady(d.Tag); err == nil && rec.Key.mismatch(d.Key) == "" {
		return nil, nil // recorded while this sandbox booted
	}
	// What is there is stale or incomplete: the record goes first, so
	// nobody restores the snapshot while it is replaced.
	if err := os.Remove(r.readyRecordPath(d.Tag)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	os.Remove(filepath.Join(root, d.Tag+readyVerifiedExt))
	if err := r.readyStore().Remove(d.Tag); err != nil && !errors.Is(err, snapshot.ErrNotFound) {
		return nil, err
	}
	t0 := time.Now()
	meta, err := save(ctx, sb.ID, r.readyStore(), d.Tag)
	if err != nil {
		return nil, fmt.Errorf("record ready snapshot: %w", err)
	}
	key := d.Key
	key.VMMVersion = qemuVersion(ctx)
	rec := &ReadyRecord{Key: key, Created: time.Now().UTC(), Snapshot: d.Tag, SnapshotCreated: meta.Created,
		Source: sb.ID, SaveMS: time.Since(t0).Milliseconds()}
	if sb.State != nil {
		rec.BootMS = sb.State.Boot.AgentReadyMS
	}
	b, _ := json.MarshalIndent(rec, "", "  ")
	if err := cache.WriteFile(r.readyRecordPath(d.Tag), append(b, '\n'), cache.FileMode); err != nil {
		return nil, err
	}
	r.pruneReady(d.Tag)
	return rec, nil
}

// ReadyMaxEnv caps how many ready snapshots the cache keeps (default
// 16); recording one more removes the least recently used.
const ReadyMaxEnv = "MVM_READY_MAX"

func readyMax() int {
	if n, err := strconv.Atoi(os.Getenv(ReadyMaxEnv)); err == nil && n > 0 {
		return n
	}
	return 16
}

// pruneReady removes the least recently used ready snapshots beyond
// readyMax (a restore touches its record), never keep and never one whose
// lock is held (being recorded or dropped).
func (r *Runtime) pruneReady(keep string) {
	ents, err := os.ReadDir(r.readyRoot())
	if err != nil {
		return
	}
	type used struct {
		tag string
		at  time.Time
	}
	var all []used
	for _, e := range ents {
		tag, ok := strings.CutSuffix(e.Name(), readyRecordExt)
		if !ok || tag == keep {
			continue
		}
		if fi, err := e.Info(); err == nil {
			all = append(all, used{tag, fi.ModTime()})
		}
	}
	if len(all) < readyMax() {
		return
	}
	sort.Slice(all, func(i, j int) bool { return all[i].at.After(all[j].at) })
	for _, u := range all[readyMax()-1:] {
		lk := flock.New(filepath.Join(r.readyRoot(), u.tag+".lock"), flock.SetPermissions(cache.FileMode))
		if ok, err := lk.TryLock(); err != nil || !ok {
			continue
		}
		r.removeReady(u.tag)
		os.Remove(filepath.Join(r.readyRoot(), u.tag+".lock"))
		lk.Unlock()
	}
}

// dropReady removes a ready snapshot that failed to restore, so that the
// next boot records a good one. It takes the shape's lock (waiting a
// little for a recorder) and only removes what it was asked to drop: a
// snapshot recorded meanwhile by someone else stays.
func (r *Runtime) dropReady(d warmDecision) {
	failed := d.rec
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	unlock, err := cache.Lock(ctx, filepath.Join(r.readyRoot(), d.Tag+".lock"))
	if err != nil {
		return
	}
	defer unlock()
	rec, err := r.readReady(d.Tag)
	if err == nil && (failed == nil || !rec.Created.Equal(failed.Created)) {
		return
	}
	r.removeReady(d.Tag)
}

// removeReady removes ready snapshot tag: its record first, so that
// nobody starts restoring it meanwhile. The caller holds its lock.
func (r *Runtime) removeReady(tag string) {
	os.Remove(r.readyRecordPath(tag))
	os.Remove(filepath.Join(r.readyRoot(), tag+readyVerifiedExt))
	r.readyStore().Remove(tag)
}

// dropReadyOf removes the ready snapshots recorded from image digest (the
// image is gone: they could never match again). One being recorded or
// restored-and-dropped right now (its lock held) is left to the LRU cap.
func (r *Runtime) dropReadyOf(digest string) {
	ents, err := os.ReadDir(r.readyRoot())
	if err != nil {
		return
	}
	for _, e := range ents {
		tag, ok := strings.CutSuffix(e.Name(), readyRecordExt)
		if !ok {
			continue
		}
		if rec, err := r.readReady(tag); err != nil || rec.Key.Image != digest {
			continue
		}
		lk := flock.New(filepath.Join(r.readyRoot(), tag+".lock"), flock.SetPermissions(cache.FileMode))
		if ok, err := lk.TryLock(); err != nil || !ok {
			continue
		}
		r.removeReady(tag)
		lk.Unlock()
	}
}

// bootColdAfterRestore boots the sandbox in dir cold after its restore
// failed: what the failed VMM left is removed, the writable layer is made
// afresh, and the spec says why the sandbox is cold.
func (r *Runtime) bootColdAfterRestore(ctx context.Context, dir string, img *bootImage, spec *sandbox.Spec, o *UpOptions, d warmDecision, locks []*os.File) (*sandbox.State, *os.File, error) {
	for _, f := range []string{sandbox.StateFile, qemu.ChannelSocket, qemu.QMPSocket, sandbox.AgentSocket, sandbox.ControlSocket} {
		os.Remove(filepath.Join(dir, f))
	}
	r.unrestore(spec)
	if img.rootfs != "" {
		if _, err := img.vmDisks(ctx, dir, o.DiskMiB); err != nil {
			return nil, nil, err
		}
	}
	spec.Start = sandbox.StartInfo{Mode: StartCold, Reason: d.Reason}
	if err := sandbox.WriteJSON(filepath.Join(dir, sandbox.SpecFile), spec); err != nil {
		return nil, nil, err
	}
	return r.spawnSupervisor(ctx, dir, o.BootTimeout, o.Transient, locks)
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(strings.TrimSpace(s), "\n")
	if len(line) > 200 {
		line = line[:200]
	}
	return line
}

// RecordReady makes sure image (as Up names it) has the ready snapshot of
// its default shape (the manifest's resources, the standard run profile,
// no network): it starts a transient sandbox, which records the snapshot
// when there is none (or restores from it when there is), and removes it.
// `mvmctl build` calls it so that the first `up` is already warm. It
// returns the sandbox's start ("cold" when it recorded) and the tag.
func (r *Runtime) RecordReady(ctx context.Context, image string, progress func(string)) (start, tag string, err error) {
	sb, err := r.Up(ctx, UpOptions{Image: image, NoBuildDir: true, Transient: true, Progress: progress})
	if err != nil {
		return "", "", err
	}
	defer func() {
		r.Down(context.Background(), sb.ID)
		sb.Hold.Close()
	}()
	if sb.RecordErr != nil {
		return "", "", sb.RecordErr
	}
	if sb.Ready == "" {
		why := "another boot is recording it"
		if sb.State != nil && !strings.Contains(sb.State.Boot.StartReason, "this boot records it") {
			why = sb.State.Boot.StartReason
		}
		return sb.Start, "", fmt.Errorf("no ready snapshot recorded: %s", why)
	}
	tag = sb.Ready
	return sb.Start, tag, nil
}
