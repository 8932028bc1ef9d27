package runtime

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mvm-sandbox/mvm/internal/backend"
	"github.com/mvm-sandbox/mvm/internal/backend/qemu"
	"github.com/mvm-sandbox/mvm/internal/evidence"
	"github.com/mvm-sandbox/mvm/internal/image"
	"github.com/mvm-sandbox/mvm/internal/netpolicy"
	"github.com/mvm-sandbox/mvm/internal/plan"
	"github.com/mvm-sandbox/mvm/internal/sandbox"
	"github.com/mvm-sandbox/mvm/internal/snapshot"
	"github.com/mvm-sandbox/mvm/internal/supervisor"
	"github.com/mvm-sandbox/mvm/internal/testenv"
)

func withSnapshots(t *testing.T) {
	t.Helper()
	old := snapshotsSupported
	snapshotsSupported = true
	t.Cleanup(func() { snapshotsSupported = old })
}

func testKey() ReadyKey {
	return ReadyKey{
		ReadyShape: ReadyShape{Backend: plan.BackendQEMU, Image: "sha256:" + strings.Repeat("a", 64), CPUs: 1, MemoryMiB: 512},
		VMM:        "/usr/bin/qemu size=1 mtime=2", Machine: "microvm", Accel: "tcg",
		Kernel: "sha256:k", Initramfs: "sha256:i", Cmdline: "console=ttyS0",
	}
}

// fakeSave stores a snapshot whose memory file names the source, after
// wait returns.
func fakeSave(t *testing.T, saves *atomic.Int32, wait func()) ReadySaver {
	signer, err := evidence.LoadOrCreateSigner(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return func(ctx context.Context, id string, store *snapshot.Store, tag string) (*snapshot.Meta, error) {
		saves.Add(1)
		if wait != nil {
			wait()
		}
		p, err := store.Begin(tag)
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(p.Dir, snapshot.MemoryFile), []byte("state of "+id), 0o600); err != nil {
			return nil, err
		}
		return p.Commit(snapshot.Meta{Created: time.Now().UTC(), SourceID: id}, signer)
	}
}

func memoryOf(t *testing.T, r *Runtime, tag string) string {
	t.Helper()
	b, _ := os.ReadFile(filepath.Join(r.readyStore().Path(tag), snapshot.MemoryFile))
	return string(b)
}

func TestDecideStart(t *testing.T) {
	withSnapshots(t)
	r := testRuntime(t)
	key := testKey()

	d := r.decideStart(key, "")
	if d.Start != StartCold || !d.Record || !strings.Contains(d.Reason, "no ready snapshot") {
		t.Fatalf("no snapshot: %+v", d)
	}
	var saves atomic.Int32
	sb := &Sandbox{ID: "src1"}
	rec, err := r.recordReady(context.Background(), fakeSave(t, &saves, nil), sb, d)
	if err != nil || rec == nil {
		t.Fatalf("record: %v %v", rec, err)
	}
	d = r.decideStart(key, "")
	if d.Start != StartRestored || d.Record || d.Tag != key.ID() {
		t.Fatalf("after recording: %+v", d)
	}
	if got := memoryOf(t, r, d.Tag); got != "state of src1" {
		t.Fatalf("published snapshot: %q", got)
	}
	// The snapshot is the store's: verified files, private modes.
	sn, err := r.readyStore().Get(d.Tag)
	if err != nil || sn.VerifyFiles() != nil {
		t.Fatalf("stored snapshot: %v", err)
	}
	if st, err := os.Stat(sn.Dir); err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("ready dir mode: %v %v", st.Mode(), err)
	}

	// Anything the guest was booted from changing makes it stale: cold,
	// and this boot replaces it.
	for field, mut := range map[string]func(*ReadyKey){
		"kernel":          func(k *ReadyKey) { k.Kernel = "sha256:k2" },
		"agent/initramfs": func(k *ReadyKey) { k.Initramfs = "sha256:i2" },
		"qemu binary":     func(k *ReadyKey) { k.VMM = "/usr/bin/qemu size=3 mtime=4" },
		"machine type":    func(k *ReadyKey) { k.Machine = "q35" },
		"accelerator":     func(k *ReadyKey) { k.Accel = "kvm" },
		"kernel command":  func(k *ReadyKey) { k.Cmdline = "console=ttyS0 other" },
	} {
		k := key
		mut(&k)
		if k.ID() != key.ID() {
			t.Fatalf("%s: the shape id must not change with versions", field)
		}
		d := r.decideStart(k, "")
		if d.Start != StartCold || !d.Record || !strings.Contains(d.Reason, "stale: "+field) {
			t.Errorf("%s changed: %+v", field, d)
		}
	}
	// A different shape has its own snapshot (none yet).
	k := key
	k.MemoryMiB = 1024
	if k.ID() == key.ID() {
		t.Fatal("memory must be part of the shape")
	}
	if d := r.decideStart(k, ""); d.Start != StartCold || !strings.Contains(d.Reason, "no ready snapshot") {
		t.Fatalf("other shape: %+v", d)
	}
	// A reason to be cold wins and records nothing.
	if d := r.decideStart(key, "cold start requested"); d.Start != StartCold || d.Record || d.Reason != "cold start requested" {
		t.Fatalf("cold requested: %+v", d)
	}
	// A corrupt record is replaced, not trusted.
	if err := os.WriteFile(r.readyRecordPath(d.Tag), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if d := r.decideStart(key, ""); d.Start != StartCold || !d.Record || !strings.Contains(d.Reason, "unreadable") {
		t.Fatalf("corrupt record: %+v", d)
	}
	// So is a record whose snapshot was replaced behind its back.
	r.readyStore().Remove(d.Tag)
	r.recordReady(context.Background(), fakeSave(t, &saves, nil), &Sandbox{ID: "src2"}, r.decideStart(key, ""))
	recBytes, _ := os.ReadFile(r.readyRecordPath(d.Tag))
	r.readyStore().Remove(d.Tag)
	fakeSave(t, &saves, nil)(context.Background(), "intruder", r.readyStore(), d.Tag)
	os.WriteFile(r.readyRecordPath(d.Tag), recBytes, 0o600)
	if d := r.decideStart(key, ""); d.Start != StartCold || !d.Record {
		t.Fatalf("a record of another snapshot: %+v", d)
	}
}

func TestRecordReadyReplacesStale(t *testing.T) {
	withSnapshots(t)
	r := testRuntime(t)
	old := testKey()
	var saves atomic.Int32
	if _, err := r.recordReady(context.Background(), fakeSave(t, &saves, nil), &Sandbox{ID: "old"}, r.decideStart(old, "")); err != nil {
		t.Fatal(err)
	}
	cur := old
	cur.Kernel = "sha256:new"
	d := r.decideStart(cur, "")
	if !d.Record {
		t.Fatalf("stale: %+v", d)
	}
	if _, err := r.recordReady(context.Background(), fakeSave(t, &saves, nil), &Sandbox{ID: "new"}, d); err != nil {
		t.Fatal(err)
	}
	d = r.decideStart(cur, "")
	if d.Start != StartRestored {
		t.Fatalf("replaced: %+v", d)
	}
	if got := memoryOf(t, r, d.Tag); got != "state of new" {
		t.Fatalf("the stale snapshot is still there: %q", got)
	}
	if d := r.decideStart(old, ""); d.Start != StartCold {
		t.Fatalf("the old key must not restore the new snapshot: %+v", d)
	}
	assertNoStaging(t, r)
}

func assertNoStaging(t *testing.T, r *Runtime) {
	t.Helper()
	ents, _ := os.ReadDir(r.readyRoot())
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".") {
			t.Errorf("left in %s: %s", r.readyRoot(), e.Name())
		}
	}
}

// Two first boots of one image at once: one records, the other goes on
// without waiting, and readers only ever see a complete snapshot.
func TestRecordReadyConcurrentFirstBoots(t *testing.T) {
	withSnapshots(t)
	r := testRuntime(t)
	key := testKey()
	var saves atomic.Int32
	release := make(chan struct{})
	entered := make(chan struct{}, 2)
	save := fakeSave(t, &saves, func() { entered <- struct{}{}; <-release })
	var wg sync.WaitGroup
	errs := make([]error, 2)
	recs := make([]*ReadyRecord, 2)
	d := r.decideStart(key, "")
	wg.Add(1)
	go func() {
		defer wg.Done()
		recs[0], errs[0] = r.recordReady(context.Background(), save, &Sandbox{ID: "a"}, d)
	}()
	<-entered // a holds the lock and is saving
	if got := r.decideStart(key, ""); got.Start != StartCold {
		t.Fatalf("a snapshot being recorded must not be restored: %+v", got)
	}
	recs[1], errs[1] = r.recordReady(context.Background(), save, &Sandbox{ID: "b"}, d)
	if errs[1] != nil || recs[1] != nil {
		t.Fatalf("second recorder: %v %v (want: skipped, no error)", recs[1], errs[1])
	}
	close(release)
	wg.Wait()
	if errs[0] != nil || recs[0] == nil {
		t.Fatalf("first recorder: %v %v", recs[0], errs[0])
	}
	if n := saves.Load(); n != 1 {
		t.Fatalf("%d saves, want 1", n)
	}
	// A later first boot (it decided before the snapshot was published)
	// finds it under the lock and records nothing.
	if rec, err := r.recordReady(context.Background(), save, &Sandbox{ID: "c"}, d); rec != nil || err != nil || saves.Load() != 1 {
		t.Fatalf("late recorder: %v %v saves=%d", rec, err, saves.Load())
	}
	assertNoStaging(t, r)
}

func TestRecordReadySaveFailureLeavesNothing(t *testing.T) {
	withSnapshots(t)
	r := testRuntime(t)
	key := testKey()
	boom := errors.New("migrate failed")
	_, err := r.recordReady(context.Background(), func(ctx context.Context, id string, store *snapshot.Store, tag string) (*snapshot.Meta, error) {
		p, err := store.Begin(tag)
		if err != nil {
			return nil, err
		}
		defer p.Abort()
		os.WriteFile(filepath.Join(p.Dir, snapshot.MemoryFile), []byte("half"), 0o600)
		return nil, boom
	}, &Sandbox{ID: "a"}, r.decideStart(key, ""))
	if !errors.Is(err, boom) {
		t.Fatalf("err %v", err)
	}
	if d := r.decideStart(key, ""); d.Start != StartCold || !strings.Contains(d.Reason, "no ready snapshot") {
		t.Fatalf("after a failed save: %+v", d)
	}
	assertNoStaging(t, r)
}

func TestDropReadyKeepsANewerSnapshot(t *testing.T) {
	withSnapshots(t)
	r := testRuntime(t)
	key := testKey()
	var saves atomic.Int32
	r.recordReady(context.Background(), fakeSave(t, &saves, nil), &Sandbox{ID: "a"}, r.decideStart(key, ""))
	failed := r.decideStart(key, "")
	if failed.Start != StartRestored {
		t.Fatalf("%+v", failed)
	}
	// Meanwhile someone replaced it.
	os.Remove(r.readyRecordPath(key.ID()))
	r.recordReady(context.Background(), fakeSave(t, &saves, nil), &Sandbox{ID: "b"}, r.decideStart(key, ""))
	r.dropReady(failed)
	if d := r.decideStart(key, ""); d.Start != StartRestored || memoryOf(t, r, d.Tag) != "state of b" {
		t.Fatalf("a newer snapshot was dropped: %+v", d)
	}
	r.dropReady(r.decideStart(key, ""))
	if d := r.decideStart(key, ""); d.Start != StartCold || !d.Record {
		t.Fatalf("after drop: %+v", d)
	}
	if _, err := r.readyStore().Get(key.ID()); err == nil {
		t.Fatal("the dropped snapshot is still in the store")
	}
	assertNoStaging(t, r)
}

func TestColdReason(t *testing.T) {
	t.Setenv(WarmEnv, "")
	cases := []struct {
		name string
		o    UpOptions
		att  *sandbox.Attachments
		be   string
		want string
	}{
		{"plain", UpOptions{}, nil, plan.BackendQEMU, ""},
		{"secrets restore", UpOptions{}, &sandbox.Attachments{}, plan.BackendQEMU, ""},
		{"cold flag", UpOptions{Cold: true}, nil, plan.BackendQEMU, "cold start requested"},
		{"firecracker", UpOptions{}, nil, plan.BackendFirecracker, "qemu only"},
		{"network", UpOptions{Network: netpolicy.Config{Mode: netpolicy.Allowlist, Allow: []netpolicy.Rule{{Host: "example.com", Port: 443}}}}, nil, plan.BackendQEMU, "NIC"},
		{"host dir", UpOptions{}, &sandbox.Attachments{Mounts: []plan.Mount{{}}}, plan.BackendQEMU, "host directories"},
		{"volume", UpOptions{}, &sandbox.Attachments{Volumes: []plan.VolumeMount{{}}}, plan.BackendQEMU, "volumes"},
	}
	for _, c := range cases {
		got := coldReason(&c.o, c.att, c.be)
		if (c.want == "") != (got == "") || !strings.Contains(got, c.want) {
			t.Errorf("%s: %q, want %q", c.name, got, c.want)
		}
	}
	t.Setenv(WarmEnv, "0")
	if got := coldReason(&UpOptions{}, nil, plan.BackendQEMU); got != WarmEnv+"=0" {
		t.Errorf("%s=0: %q", WarmEnv, got)
	}
}

func TestReadyKeyShape(t *testing.T) {
	r := testRuntime(t)
	k := &image.Kernel{Digest: "sha256:k"}
	initramfsOnly := &bootImage{ref: sandbox.ImageRef{Digest: "sha256:m"}, kernel: k, initrdDigest: "sha256:i"}
	o := UpOptions{CPUs: 1, MemoryMiB: 512, DiskMiB: 4096}
	a := r.readyKey(initramfsOnly, &o, plan.BackendQEMU, "", false)
	if a.DiskMiB != 0 {
		t.Fatalf("an initramfs image has no disk in its shape: %+v", a)
	}
	if strings.Contains(a.Cmdline, "tsc_early_khz") || !strings.Contains(a.Cmdline, "console=ttyS0") {
		t.Fatalf("cmdline %q", a.Cmdline)
	}
	withConsole := r.readyKey(initramfsOnly, &o, plan.BackendQEMU, "", true)
	if withConsole.ID() == a.ID() {
		t.Fatal("the console flag must be part of the shape")
	}
	rootfs := &bootImage{ref: sandbox.ImageRef{Digest: "sha256:r"}, kernel: k, initrdDigest: "sha256:i", rootfs: "/img"}
	b := r.readyKey(rootfs, &o, plan.BackendQEMU, rootfs.cmdline(), false)
	if b.DiskMiB != 4096 || !strings.Contains(b.Cmdline, "mvm.upper=/dev/vdb") {
		t.Fatalf("rootfs key %+v", b)
	}
}

// The cache keeps at most MVM_READY_MAX ready snapshots: recording one
// more removes the least recently used (a restore counts as a use).
func TestPruneReadyKeepsTheRecentlyUsed(t *testing.T) {
	withSnapshots(t)
	t.Setenv(ReadyMaxEnv, "2")
	r := testRuntime(t)
	var saves atomic.Int32
	key := func(mem int) ReadyKey { k := testKey(); k.MemoryMiB = mem; return k }
	record := func(mem int) {
		t.Helper()
		if _, err := r.recordReady(context.Background(), fakeSave(t, &saves, nil), &Sandbox{ID: "s"}, r.decideStart(key(mem), "")); err != nil {
			t.Fatal(err)
		}
	}
	record(256)
	record(512)
	old := time.Now().Add(-time.Hour)
	os.Chtimes(r.readyRecordPath(key(256).ID()), old, old)
	os.Chtimes(r.readyRecordPath(key(512).ID()), old.Add(time.Minute), old.Add(time.Minute))
	if d := r.decideStart(key(256), ""); d.Start != StartRestored { // a use
		t.Fatalf("%+v", d)
	}
	record(1024)
	if d := r.decideStart(key(512), ""); d.Start != StartCold {
		t.Fatalf("the least recently used snapshot was kept: %+v", d)
	}
	for _, m := range []int{256, 1024} {
		if d := r.decideStart(key(m), ""); d.Start != StartRestored {
			t.Fatalf("%d MiB: %+v", m, d)
		}
	}
	if _, err := r.readyStore().Get(key(512).ID()); err == nil {
		t.Fatal("the pruned snapshot is still in the store")
	}
	assertNoStaging(t, r)
}

// A restore hashes a ready snapshot in full the first time; later ones
// trust it only while every file (and the QEMU binary, kernel and
// initramfs) has the stamp the full verification saw: a rewrite of the
// memory file, same size or not, is hashed again and refused.
func TestRestoreFromVerifiesAgainAfterAChange(t *testing.T) {
	withSnapshots(t)
	testenv.NeedTools(t, qemu.Binary())
	r := testRuntime(t)
	dir := t.TempDir()
	kernel, initrd := filepath.Join(dir, "vmlinux"), filepath.Join(dir, "initrd")
	os.WriteFile(kernel, []byte("kernel"), 0o600)
	os.WriteFile(initrd, []byte("initrd"), 0o600)
	spec := sandbox.Spec{Kernel: "sha256:k", Image: sandbox.ImageRef{Digest: "sha256:i"},
		VM: backend.Spec{Kernel: kernel, Initrd: initrd, CPUs: 1, MemoryMiB: 512}}
	p := &plan.Plan{Resources: plan.Resources{CPUs: 1, MemoryMiB: 512}}
	accel := qemu.DetectAccel().Accel
	m, err := supervisor.MachineMatch(spec.Backend, spec.VM, accel, spec.Image.Digest, "", spec.Kernel)
	if err != nil {
		t.Fatal(err)
	}
	signer, _ := evidence.LoadOrCreateSigner(t.TempDir())
	pend, err := r.readyStore().Begin("tag1")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(pend.Dir, snapshot.MemoryFile), []byte("memory state"), 0o600)
	if _, err := pend.Commit(snapshot.Meta{Created: time.Now(), Match: m}, signer); err != nil {
		t.Fatal(err)
	}
	sb := t.TempDir()
	for i := 0; i < 2; i++ {
		s := spec
		if err := r.restoreFrom(&s, p, "tag1", sb); err != nil {
			t.Fatalf("restore %d: %v", i, err)
		}
		if s.VM.Incoming != r.readyStore().Path("tag1")+"/"+snapshot.MemoryFile {
			t.Fatalf("incoming %q", s.VM.Incoming)
		}
	}
	if _, err := os.Stat(filepath.Join(r.readyRoot(), "tag1"+readyVerifiedExt)); err != nil {
		t.Fatalf("no verification record: %v", err)
	}
	f, _ := os.OpenFile(filepath.Join(r.readyStore().Path("tag1"), snapshot.MemoryFile), os.O_WRONLY, 0)
	f.WriteAt([]byte("M"), 0) // same size
	f.Close()
	s := spec
	if err := r.restoreFrom(&s, p, "tag1", sb); !errors.Is(err, snapshot.ErrIntegrity) {
		t.Fatalf("a rewritten memory file was restored: %v", err)
	}
}

// Removing an image drops the ready snapshots booted from it (they can
// never match again) and keeps the others'. They used to stay until the
// LRU cap pushed them out.
func TestDropReadyOfRemovedImage(t *testing.T) {
	withSnapshots(t)
	r := testRuntime(t)
	var saves atomic.Int32
	gone, kept := testKey(), testKey()
	kept.Image = "sha256:" + strings.Repeat("b", 64)
	other := gone
	other.MemoryMiB = 1024 // a second shape of the removed image
	for _, k := range []ReadyKey{gone, kept, other} {
		if _, err := r.recordReady(context.Background(), fakeSave(t, &saves, nil), &Sandbox{ID: "s"}, r.decideStart(k, "")); err != nil {
			t.Fatal(err)
		}
	}
	r.dropReadyOf(gone.Image)
	for _, k := range []ReadyKey{gone, other} {
		if d := r.decideStart(k, ""); d.Start != StartCold {
			t.Fatalf("a ready snapshot of the removed image is still used: %+v", d)
		}
		if _, err := r.readyStore().Get(k.ID()); err == nil {
			t.Fatal("a ready snapshot of the removed image is still in the store")
		}
	}
	if d := r.decideStart(kept, ""); d.Start != StartRestored {
		t.Fatalf("another image's ready snapshot was dropped: %+v", d)
	}
	assertNoStaging(t, r)
}
