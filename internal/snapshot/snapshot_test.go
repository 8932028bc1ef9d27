package snapshot

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/mvm-sandbox/mvm/internal/errdefs"
	"github.com/mvm-sandbox/mvm/internal/evidence"
)

// save writes a small snapshot with a sparse disk and returns it.
func save(t *testing.T, st *Store, s *evidence.Signer, tag string) *Snapshot {
	t.Helper()
	p, err := st.Begin(tag)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(st.Path(tag)); err == nil {
		t.Fatal("the tag is visible before Commit")
	}
	os.WriteFile(filepath.Join(p.Dir, MemoryFile), bytes.Repeat([]byte("memory"), 100000), 0o644)
	f, _ := os.Create(filepath.Join(p.Dir, DiskFile))
	f.Truncate(64 << 20)
	f.WriteAt([]byte("upper data"), 5<<20)
	f.Close()
	os.WriteFile(filepath.Join(p.Dir, PlanFile), []byte(`{"plan":1}`), 0o600)
	if _, err := p.Commit(Meta{Secrets: []string{"tok"}, Match: Match{MemoryMiB: 256}}, s); err != nil {
		t.Fatal(err)
	}
	sn, err := st.Get(tag)
	if err != nil {
		t.Fatal(err)
	}
	return sn
}

func TestCommitVerifyAndModes(t *testing.T) {
	st := &Store{Dir: filepath.Join(t.TempDir(), "snapshots")}
	s := evidence.GenerateSigner("host:test")
	sn := save(t, st, s, "t1")
	if err := sn.Verify(s.Public); err != nil {
		t.Fatalf("fresh snapshot refused: %v", err)
	}
	for _, name := range []string{MemoryFile, DiskFile, PlanFile, MetaFile, SigFile} {
		fi, err := os.Stat(sn.Path(name))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, %v", name, fi.Mode(), err)
		}
	}
	for _, d := range []string{st.Dir, sn.Dir} {
		if fi, _ := os.Stat(d); fi.Mode().Perm() != 0o700 {
			t.Errorf("%s: mode %v", d, fi.Mode())
		}
	}
	if sn.Meta.Tag != "t1" || len(sn.Meta.Files) != 3 || sn.Meta.Secrets[0] != "tok" {
		t.Fatalf("meta %+v", sn.Meta)
	}
	if _, err := st.Begin("t1"); !errdefs.IsAlreadyExists(err) {
		t.Fatalf("second save under one tag: %v", err)
	}
	// another host's key does not verify it
	if err := sn.Verify(evidence.GenerateSigner("host:other").Public); !errors.Is(err, ErrIntegrity) {
		t.Fatalf("foreign key: %v", err)
	}
	list, _ := st.List()
	if len(list) != 1 {
		t.Fatalf("list %d", len(list))
	}
	if err := st.Remove("t1"); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Get("t1"); !errdefs.IsNotFound(err) {
		t.Fatalf("after remove: %v", err)
	}
	if err := st.Remove("t1"); !errdefs.IsNotFound(err) {
		t.Fatalf("remove twice: %v", err)
	}
}

// TestVerifyRefusesTamperedSnapshots: a flipped byte, a truncated file, an
// extra file, a missing file, an edited sidecar, a missing signature and a
// file readable by others are each refused as an integrity error that says
// what to do.
func TestVerifyRefusesTamperedSnapshots(t *testing.T) {
	s := evidence.GenerateSigner("host:test")
	cases := []struct {
		name   string
		tamper func(sn *Snapshot)
		want   string
	}{
		{"flipped byte in memory", func(sn *Snapshot) { flip(t, sn.Path(MemoryFile), 4242) }, "memory.state does not match"},
		{"flipped byte in a disk hole", func(sn *Snapshot) { flip(t, sn.Path(DiskFile), 40<<20) }, "upper.img does not match"},
		{"truncated memory", func(sn *Snapshot) { os.Truncate(sn.Path(MemoryFile), 1000) }, "truncated"},
		{"extra file", func(sn *Snapshot) { os.WriteFile(sn.Path("evil"), nil, 0o600) }, "does not list"},
		{"missing file", func(sn *Snapshot) { os.Remove(sn.Path(PlanFile)) }, "plan.json is missing"},
		{"edited sidecar", func(sn *Snapshot) {
			b, _ := os.ReadFile(sn.Path(MetaFile))
			os.WriteFile(sn.Path(MetaFile), bytes.Replace(b, []byte(`"tok"`), []byte(`"tox"`), 1), 0o600)
		}, "not signed"},
		{"missing signature", func(sn *Snapshot) { os.Remove(sn.Path(SigFile)) }, "signature"},
		{"readable by others", func(sn *Snapshot) { os.Chmod(sn.Path(MemoryFile), 0o644) }, "readable by others"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			st := &Store{Dir: t.TempDir()}
			sn := save(t, st, s, "t")
			c.tamper(sn)
			err := sn.Verify(s.Public)
			if !errors.Is(err, ErrIntegrity) || errdefs.KindOf(err) != errdefs.KindRefused || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "remove it and save a new one") {
				t.Fatalf("got %v", err)
			}
		})
	}
}

// TestCopyVerifiedRefusesTamperedDisk: the disk is verified while it is
// copied; a mismatch leaves no copy.
func TestCopyVerifiedRefusesTamperedDisk(t *testing.T) {
	s := evidence.GenerateSigner("host:test")
	st := &Store{Dir: t.TempDir()}
	sn := save(t, st, s, "t")
	if err := sn.Verify(s.Public, DiskFile); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "copy.img")
	if err := sn.CopyVerified(DiskFile, dst); err != nil {
		t.Fatal(err)
	}
	os.Remove(dst)
	flip(t, sn.Path(DiskFile), 5<<20)
	if err := sn.CopyVerified(DiskFile, dst); !errors.Is(err, ErrIntegrity) {
		t.Fatalf("tampered disk copied: %v", err)
	}
	if _, err := os.Stat(dst); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("a refused copy was left behind")
	}
}

func flip(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	f.ReadAt(b, off)
	b[0] ^= 0x01
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// TestDigestIsOfContentAndCopyStaysSparse: a hole and written zeros digest
// alike; a sparse copy keeps holes and has the source's digest.
func TestDigestIsOfContentAndCopyStaysSparse(t *testing.T) {
	dir := t.TempDir()
	sparse, dense := filepath.Join(dir, "sparse"), filepath.Join(dir, "dense")
	f, _ := os.Create(sparse)
	f.Truncate(8<<20 + 123)
	f.WriteAt([]byte("x"), 3<<20)
	f.Close()
	b := make([]byte, 8<<20+123)
	b[3<<20] = 'x'
	os.WriteFile(dense, b, 0o600)
	d1, n1, err1 := FileDigest(sparse)
	d2, n2, err2 := FileDigest(dense)
	if err1 != nil || err2 != nil || d1 != d2 || n1 != n2 {
		t.Fatalf("digests %s %s (%v %v)", d1, d2, err1, err2)
	}
	cp := filepath.Join(dir, "copy")
	d3, err := CopySparse(dense, cp)
	if err != nil || d3 != d1 {
		t.Fatalf("copy digest %s, %v", d3, err)
	}
	var st syscall.Stat_t
	syscall.Stat(cp, &st)
	if st.Blocks*512 > 2<<20 {
		t.Fatalf("copy allocates %d bytes: not sparse", st.Blocks*512)
	}
	got, _ := os.ReadFile(cp)
	if !bytes.Equal(got, b) {
		t.Fatal("copy differs")
	}
	if _, err := CopySparse(dense, cp); err == nil {
		t.Fatal("copy over an existing file")
	}
}

// TestStaleSaveIsInvisibleAndCleaned: a save whose writer died leaves a
// temporary directory that no listing shows and the next save removes.
func TestStaleSaveIsInvisibleAndCleaned(t *testing.T) {
	st := &Store{Dir: t.TempDir()}
	dead := filepath.Join(st.Dir, tmpPrefix+"999999999-00-t")
	os.MkdirAll(dead, 0o700)
	os.WriteFile(filepath.Join(dead, MemoryFile), []byte("half"), 0o600)
	list, _ := st.List()
	if len(list) != 0 {
		t.Fatalf("a half save is listed: %v", list)
	}
	if _, err := os.Stat(dead); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("stale save directory not cleaned")
	}
	if _, err := st.Get("t"); !errdefs.IsNotFound(err) {
		t.Fatalf("get: %v", err)
	}
}

func TestValidateTagAndMatch(t *testing.T) {
	for _, bad := range []string{"", "..", "a/b", "UP", ".hidden", strings.Repeat("a", 64)} {
		if err := ValidateTag(bad); errdefs.KindOf(err) != errdefs.KindInvalidArgument {
			t.Errorf("tag %q: %v", bad, err)
		}
	}
	a := Match{Backend: "qemu", MemoryMiB: 256, KernelDigest: "k1"}
	b := a
	b.KernelDigest, b.MemoryMiB = "k2", 512
	if d := a.Diff(b); d != "kernel_digest, memory_mib" || a.Diff(a) != "" || a.Key() == b.Key() {
		t.Fatalf("diff %q", d)
	}
}

// saveFiles commits a snapshot of the given files (name -> content) saved
// by backend.
func saveFiles(t *testing.T, st *Store, s *evidence.Signer, tag, backend string, files map[string]string) *Snapshot {
	t.Helper()
	p, err := st.Begin(tag)
	if err != nil {
		t.Fatal(err)
	}
	for name, content := range files {
		// written world-readable: Commit makes every file 0600
		if err := os.WriteFile(filepath.Join(p.Dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := p.Commit(Meta{Match: Match{Backend: backend}}, s); err != nil {
		t.Fatal(err)
	}
	sn, err := st.Get(tag)
	if err != nil {
		t.Fatal(err)
	}
	return sn
}

func TestFirecrackerSnapshotCoversBothStateFiles(t *testing.T) {
	st := &Store{Dir: filepath.Join(t.TempDir(), "snapshots")}
	s := evidence.GenerateSigner("host:test")
	sn := saveFiles(t, st, s, "fc", "firecracker", map[string]string{
		MemoryFile: "vmstate", GuestMemoryFile: strings.Repeat("guest memory ", 1000), DiskFile: "disk",
	})
	if err := sn.Verify(s.Public); err != nil {
		t.Fatalf("fresh firecracker snapshot refused: %v", err)
	}
	for _, name := range []string{MemoryFile, GuestMemoryFile} {
		f, ok := sn.Meta.File(name)
		if !ok || f.Digest == "" {
			t.Fatalf("%s not hashed in the sidecar: %+v", name, sn.Meta.Files)
		}
		if fi, err := os.Stat(sn.Path(name)); err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: mode %v, %v", name, fi.Mode(), err)
		}
	}
	// the guest memory changed after the save: refused
	flip(t, sn.Path(GuestMemoryFile), 100)
	err := sn.Verify(s.Public)
	if !errors.Is(err, ErrIntegrity) || !strings.Contains(err.Error(), GuestMemoryFile) {
		t.Fatalf("tampered guest memory: %v", err)
	}
	// the guest memory is gone: refused
	os.Remove(sn.Path(GuestMemoryFile))
	if err := sn.Verify(s.Public); !errors.Is(err, ErrIntegrity) || !strings.Contains(err.Error(), GuestMemoryFile+" is missing") {
		t.Fatalf("missing guest memory: %v", err)
	}
}

func TestStateFilesMustMatchTheRecordedBackend(t *testing.T) {
	st := &Store{Dir: filepath.Join(t.TempDir(), "snapshots")}
	s := evidence.GenerateSigner("host:test")
	// signed, but a firecracker snapshot without its guest memory
	half := saveFiles(t, st, s, "half", "firecracker", map[string]string{MemoryFile: "vmstate"})
	err := half.Verify(s.Public)
	if !errors.Is(err, ErrIntegrity) || !strings.Contains(err.Error(), "does not list "+GuestMemoryFile) {
		t.Fatalf("firecracker snapshot without guest memory: %v", err)
	}
	// a QEMU snapshot carrying firecracker's guest memory
	mixed := saveFiles(t, st, s, "mixed", "qemu", map[string]string{MemoryFile: "stream", GuestMemoryFile: "mem"})
	if err := mixed.Verify(s.Public); !errors.Is(err, ErrIntegrity) || !strings.Contains(err.Error(), "records the qemu backend") {
		t.Fatalf("qemu snapshot with guest memory: %v", err)
	}
	odd := saveFiles(t, st, s, "odd", "cloud-hypervisor", map[string]string{MemoryFile: "x"})
	if err := odd.Verify(s.Public); !errors.Is(err, ErrIntegrity) || !strings.Contains(err.Error(), "unknown backend") {
		t.Fatalf("unknown backend: %v", err)
	}
	if f, _ := StateFiles("qemu"); len(f) != 1 || f[0] != MemoryFile {
		t.Fatalf("qemu state files %v", f)
	}
}
