package image

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cavaliergopher/cpio"

	"github.com/mvm-sandbox/mvm/internal/paths"

	"github.com/mvm-sandbox/mvm/internal/testenv"
)

// testSpec returns a spec with a fake agent, a fake busybox (a script that
// lists a few applets) and modules from a fake modules tree.
func testSpec(t *testing.T) InitramfsSpec {
	t.Helper()
	dir := t.TempDir()
	agent := filepath.Join(dir, "agent")
	if err := os.WriteFile(agent, []byte("\x7fELF fake agent"), 0o600); err != nil {
		t.Fatal(err)
	}
	bb := filepath.Join(dir, "busybox")
	script := "#!/bin/sh\n[ \"$1\" = --list-full ] || exit 1\nprintf 'bin/sh\\nsbin/init\\nusr/bin/env\\nusr/bin/[\\nlinuxrc\\nbin/busybox\\n'\n"
	if err := os.WriteFile(bb, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return InitramfsSpec{
		Agent:   agent,
		Busybox: bb,
		Kernel:  &Kernel{Version: "6.1.0-test", ModulesDir: fakeModulesDir(t), Digest: "sha256:" + strings.Repeat("0", 64)},
		Modules: []string{"d-e", "nodeps"},
		Files: map[string][]byte{
			"/etc/mvm/image.json": []byte(`{"name":"test"}`),
			"/usr/bin/env":        []byte("replaces an applet"),
			"/opt/x/y/z.txt":      []byte("deep"),
		},
	}
}

type member struct {
	hdr  *cpio.Header
	data []byte
}

func readArchive(t *testing.T, b []byte) ([]string, map[string]member) {
	t.Helper()
	r := cpio.NewReader(bytes.NewReader(b))
	var order []string
	m := map[string]member{}
	for {
		h, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(r)
		if err != nil {
			t.Fatal(err)
		}
		if _, dup := m[h.Name]; dup {
			t.Errorf("duplicate member %s", h.Name)
		}
		order = append(order, h.Name)
		m[h.Name] = member{h, data}
	}
	return order, m
}

func TestWriteInitramfsDeterministic(t *testing.T) {
	spec := testSpec(t)
	var a, b bytes.Buffer
	if err := WriteInitramfs(spec, &a); err != nil {
		t.Fatal(err)
	}
	if err := WriteInitramfs(spec, &b); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Fatal("same spec gave different archives")
	}
	spec.Files["/etc/mvm/image.json"] = []byte(`{"name":"other"}`)
	var c bytes.Buffer
	if err := WriteInitramfs(spec, &c); err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(a.Bytes(), c.Bytes()) {
		t.Fatal("different files gave the same archive")
	}
}

func TestWriteInitramfsContents(t *testing.T) {
	spec := testSpec(t)
	var buf bytes.Buffer
	if err := WriteInitramfs(spec, &buf); err != nil {
		t.Fatal(err)
	}
	if buf.Len()%4 != 0 {
		t.Errorf("archive length %d not 4-aligned", buf.Len())
	}
	order, m := readArchive(t, buf.Bytes())

	// Parents precede children; entries are sorted; metadata is zeroed.
	seen := map[string]bool{}
	for _, name := range order {
		if strings.HasPrefix(name, "/") || strings.HasPrefix(name, ".") {
			t.Errorf("member name %q should be relative", name)
		}
		if d := filepath.Dir(name); d != "." && !seen[d] {
			t.Errorf("%s comes before its directory %s", name, d)
		}
		seen[name] = true
		h := m[name].hdr
		if h.Uid != 0 || h.Guid != 0 || h.ModTime.Unix() != 0 {
			t.Errorf("%s: uid %d gid %d mtime %v", name, h.Uid, h.Guid, h.ModTime)
		}
	}
	if !slices.IsSorted(order) {
		t.Error("members are not sorted")
	}

	check := func(name string, typ cpio.FileMode, perm cpio.FileMode) member {
		t.Helper()
		e, ok := m[name]
		if !ok {
			t.Fatalf("missing %s", name)
		}
		if e.hdr.Mode&cpio.ModeType != typ || e.hdr.Mode&07777 != perm {
			t.Errorf("%s: mode %o, want type %o perm %o", name, e.hdr.Mode, typ, perm)
		}
		return e
	}
	for _, d := range []string{"dev", "run", "etc", "etc/mvm", "bin", "sbin", "usr/bin", "usr/sbin", "lib/modules", "mnt", "opt/x/y"} {
		check(d, cpio.TypeDir, 0o755)
	}
	check("proc", cpio.TypeDir, 0o555)
	check("sys", cpio.TypeDir, 0o555)
	check("tmp", cpio.TypeDir, 0o1777)
	check("root", cpio.TypeDir, 0o700)
	if e := check("init", cpio.TypeReg, 0o755); string(e.data) != "\x7fELF fake agent" {
		t.Errorf("/init content %q", e.data)
	}
	check("bin/busybox", cpio.TypeReg, 0o755)
	if e := check("bin/sh", cpio.TypeSymlink, 0o777); e.hdr.Linkname != "/bin/busybox" {
		t.Errorf("/bin/sh -> %q", e.hdr.Linkname)
	}
	check("usr/bin/[", cpio.TypeSymlink, 0o777)
	check("sbin/init", cpio.TypeSymlink, 0o777)
	if e := check("usr/bin/env", cpio.TypeReg, 0o644); string(e.data) != "replaces an applet" {
		t.Errorf("extra file did not replace the applet: %q", e.data)
	}
	if _, ok := m["linuxrc"]; ok {
		t.Error("root-level linuxrc applet should be skipped")
	}
	check("dev/console", cpio.TypeChar, 0o600)
	if e := check("etc/mvm/image.json", cpio.TypeReg, 0o644); string(e.data) != `{"name":"test"}` {
		t.Errorf("image.json %q", e.data)
	}
	check("opt/x/y/z.txt", cpio.TypeReg, 0o644)

	e := check("etc/mvm/modules", cpio.TypeReg, 0o644)
	lines := strings.Split(strings.TrimSuffix(string(e.data), "\n"), "\n")
	want := []string{"/lib/modules/c.ko", "/lib/modules/b.ko", "/lib/modules/a.ko", "/lib/modules/d-e.ko", "/lib/modules/nodeps.ko"}
	if !slices.Equal(lines, want) {
		t.Errorf("/etc/mvm/modules = %q, want %q", lines, want)
	}
	for _, l := range lines {
		mod := check(strings.TrimPrefix(l, "/"), cpio.TypeReg, 0o644)
		if !bytes.HasPrefix(mod.data, elfMagic) {
			t.Errorf("%s is not an ELF module", l)
		}
	}

	// The reader above does not expose device numbers: check the raw
	// header of dev/console (rdevmajor 5, rdevminor 1).
	i := bytes.Index(buf.Bytes(), []byte("dev/console\x00"))
	if i < 110 {
		t.Fatal("dev/console header not found")
	}
	hdr := string(buf.Bytes()[i-110 : i])
	major, _ := strconv.ParseUint(hdr[78:86], 16, 32)
	minor, _ := strconv.ParseUint(hdr[86:94], 16, 32)
	if major != 5 || minor != 1 {
		t.Errorf("dev/console rdev %d,%d, want 5,1", major, minor)
	}
}

func TestWriteInitramfsErrors(t *testing.T) {
	base := testSpec(t)
	cases := map[string]func(*InitramfsSpec){
		"no agent":        func(s *InitramfsSpec) { s.Agent = "" },
		"missing agent":   func(s *InitramfsSpec) { s.Agent = "/nonexistent/agent" },
		"unknown module":  func(s *InitramfsSpec) { s.Modules = []string{"no_such_mod"} },
		"no kernel":       func(s *InitramfsSpec) { s.Kernel = nil },
		"relative file":   func(s *InitramfsSpec) { s.Files = map[string][]byte{"etc/x": nil} },
		"unclean file":    func(s *InitramfsSpec) { s.Files = map[string][]byte{"/etc/../x": nil} },
		"init file":       func(s *InitramfsSpec) { s.Files = map[string][]byte{"/init": nil} },
		"dir as file":     func(s *InitramfsSpec) { s.Files = map[string][]byte{"/etc": nil} },
		"under a file":    func(s *InitramfsSpec) { s.Files = map[string][]byte{"/bin/sh/x": nil} },
		"console as file": func(s *InitramfsSpec) { s.Files = map[string][]byte{"/dev/console": nil} },
	}
	for name, mutate := range cases {
		s := base
		mutate(&s)
		if err := WriteInitramfs(s, io.Discard); err == nil {
			t.Errorf("%s: expected an error", name)
		}
	}
}

func TestWriteInitramfsRealBusybox(t *testing.T) {
	const bb = "/bin/busybox"
	testenv.NeedStaticBinary(t, bb, "busybox-static")
	spec := testSpec(t)
	spec.Busybox = bb
	spec.Modules = nil
	spec.Kernel = nil
	var buf bytes.Buffer
	if err := WriteInitramfs(spec, &buf); err != nil {
		t.Fatal(err)
	}
	_, m := readArchive(t, buf.Bytes())
	for _, a := range []string{"bin/sh", "bin/mount", "sbin/insmod"} {
		if e, ok := m[a]; !ok || e.hdr.Linkname != "/bin/busybox" {
			t.Errorf("%s: not a busybox link", a)
		}
	}
}

func TestEnsureInitramfsCache(t *testing.T) {
	d := paths.Dirs{Cache: t.TempDir()}
	spec := testSpec(t)
	p1, dig1, err := EnsureInitramfs(d, spec)
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Base(p1) != strings.TrimPrefix(dig1, "sha256:")+".cpio" {
		t.Fatalf("path %s does not match digest %s", p1, dig1)
	}
	var want bytes.Buffer
	if err := WriteInitramfs(spec, &want); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(p1)
	if err != nil || !bytes.Equal(got, want.Bytes()) {
		t.Fatalf("cached archive differs from WriteInitramfs output (%v)", err)
	}

	// A hit returns the same path and does not rewrite the file.
	old := time.Unix(1_000_000, 0)
	if err := os.Chtimes(p1, old, old); err != nil {
		t.Fatal(err)
	}
	st1, _ := os.Stat(p1)
	p2, dig2, err := EnsureInitramfs(d, spec)
	if err != nil || p2 != p1 || dig2 != dig1 {
		t.Fatalf("second call: %s %s %v", p2, dig2, err)
	}
	st2, _ := os.Stat(p2)
	if !st2.ModTime().Equal(old) || !os.SameFile(st1, st2) {
		t.Fatal("cache hit rewrote the archive")
	}

	// A changed input gives a new archive; the old one stays.
	spec.Files = map[string][]byte{"/etc/mvm/image.json": []byte("{}")}
	p3, dig3, err := EnsureInitramfs(d, spec)
	if err != nil || p3 == p1 || dig3 == dig1 {
		t.Fatalf("changed input: %s %s %v", p3, dig3, err)
	}
	// A changed agent binary too.
	if err := os.WriteFile(spec.Agent, []byte("new agent"), 0o600); err != nil {
		t.Fatal(err)
	}
	p4, _, err := EnsureInitramfs(d, spec)
	if err != nil || p4 == p3 {
		t.Fatalf("changed agent: %s %v", p4, err)
	}

	// A deleted archive is rebuilt despite its index entry.
	os.Remove(p1)
	spec = testSpec(t)
	os.WriteFile(spec.Agent, []byte("\x7fELF fake agent"), 0o600)
	p5, dig5, err := EnsureInitramfs(d, spec)
	if err != nil || dig5 != dig1 {
		t.Fatalf("rebuild: %s %s %v", p5, dig5, err)
	}
	if _, err := os.Stat(p5); err != nil {
		t.Fatal(err)
	}
}

func TestEnsureInitramfsConcurrent(t *testing.T) {
	d := paths.Dirs{Cache: t.TempDir()}
	spec := testSpec(t)
	const n = 8
	var wg sync.WaitGroup
	res := make([]string, n)
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p, dig, err := EnsureInitramfs(d, spec)
			res[i], errs[i] = fmt.Sprint(p, " ", dig), err
		}()
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if res[i] != res[0] {
			t.Fatalf("caller %d got %s, caller 0 got %s", i, res[i], res[0])
		}
	}
	ents, _ := os.ReadDir(filepath.Join(d.Images(), "initramfs"))
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".tmp") {
			t.Errorf("leftover temp file %s", e.Name())
		}
	}
}

func TestEnsureInitramfsRealKernel(t *testing.T) {
	_, k := realKernel(t)
	spec := testSpec(t)
	spec.Kernel = k
	spec.Modules = []string{"virtio_mmio", "virtio_console", "virtio_blk", "virtio_net", "overlay", "erofs", "vmw_vsock_virtio_transport", "ext4"}
	d := paths.Dirs{Cache: t.TempDir()}
	p, _, err := EnsureInitramfs(d, spec)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	_, m := readArchive(t, b)
	list := strings.Fields(string(m["etc/mvm/modules"].data))
	if len(list) < 10 || list[0] != "/lib/modules/virtio_ring.ko" {
		t.Fatalf("module list %v", list)
	}
	// A hit costs about hashing the inputs.
	start := time.Now()
	if _, _, err := EnsureInitramfs(d, spec); err != nil {
		t.Fatal(err)
	}
	t.Logf("cache hit took %v", time.Since(start))
}

// smokeAgent is a tiny /init: it loads the modules listed in
// /etc/mvm/modules, reports the virtio devices bound to drivers and powers
// off.
const smokeAgent = `package main

import (
	"fmt"
	"os"
	"strings"
	"syscall"
	"unsafe"
)

const sysFinitModule = 313 // x86_64

func main() {
	fmt.Println("mvm-smoke: hello from /init")
	data, err := os.ReadFile("/etc/mvm/modules")
	if err != nil {
		fmt.Println("mvm-smoke: FAIL", err)
	}
	empty, _ := syscall.BytePtrFromString("")
	ok := true
	for _, p := range strings.Fields(string(data)) {
		f, err := os.Open(p)
		if err != nil {
			fmt.Println("mvm-smoke: FAIL", err)
			ok = false
			continue
		}
		_, _, e := syscall.Syscall(sysFinitModule, f.Fd(), uintptr(unsafe.Pointer(empty)), 0)
		f.Close()
		if e != 0 && e != syscall.EEXIST {
			fmt.Println("mvm-smoke: FAIL load", p, e)
			ok = false
		}
	}
	if ok {
		fmt.Println("mvm-smoke: modules loaded")
	}
	if err := syscall.Mount("sysfs", "/sys", "sysfs", 0, ""); err != nil {
		fmt.Println("mvm-smoke: mount sysfs:", err)
	}
	for _, drv := range []string{"virtio_console", "virtio_blk"} {
		ents, _ := os.ReadDir("/sys/bus/virtio/drivers/" + drv)
		n := 0
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), "virtio") {
				n++
			}
		}
		fmt.Printf("mvm-smoke: driver %s bound to %d device(s)\n", drv, n)
	}
	if _, err := os.Stat("/bin/sh"); err == nil {
		fmt.Println("mvm-smoke: /bin/sh present")
	}
	syscall.Sync()
	syscall.Reboot(syscall.LINUX_REBOOT_CMD_POWER_OFF)
}
`

// TestSmokeBoot boots the real kernel under QEMU with an initramfs from
// EnsureInitramfs. It is slow under TCG: it runs with MVM_TEST_BOOT=1 and
// always under scripts/test.sh.
func TestSmokeBoot(t *testing.T) {
	testenv.Opted(t, "MVM_TEST_BOOT", "boots the kernel under QEMU")
	testenv.NeedTools(t, "qemu-system-x86_64")
	qemu, _ := exec.LookPath("qemu-system-x86_64")
	_, k := realKernel(t)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "main.go"), []byte(smokeAgent), 0o644)
	os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module smoke\n\ngo 1.22\n"), 0o644)
	build := exec.Command("go", "build", "-o", "agent", ".")
	build.Dir = dir
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOWORK=off", "GOFLAGS=")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build smoke agent: %v\n%s", err, out)
	}
	spec := InitramfsSpec{
		Agent:   filepath.Join(dir, "agent"),
		Busybox: "",
		Kernel:  k,
		Modules: []string{"virtio_mmio", "virtio_console", "virtio_blk", "virtio_net", "overlay", "erofs", "vmw_vsock_virtio_transport"},
	}
	if _, err := os.Stat("/bin/busybox"); err == nil {
		spec.Busybox = "/bin/busybox"
	}
	cpioPath, _, err := EnsureInitramfs(paths.Dirs{Cache: dir}, spec)
	if err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(dir, "disk.img")
	os.WriteFile(disk, make([]byte, 1<<20), 0o644)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, qemu, "-M", "microvm", "-accel", "tcg", "-m", "256",
		"-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio",
		"-device", "virtio-serial-device", "-chardev", "null,id=c0", "-device", "virtserialport,chardev=c0,name=org.mvm.test",
		"-drive", "if=none,id=d0,format=raw,file="+disk, "-device", "virtio-blk-device,drive=d0",
		"-kernel", k.Vmlinux, "-initrd", cpioPath,
		"-append", "console=ttyS0 panic=-1 tsc_early_khz=2596132", "-no-reboot")
	out, err := cmd.CombinedOutput()
	s := string(out)
	if err != nil || !strings.Contains(s, "mvm-smoke: hello from /init") || !strings.Contains(s, "mvm-smoke: modules loaded") {
		t.Fatalf("boot failed (%v):\n%s", err, s)
	}
	for _, line := range strings.Split(s, "\n") {
		if strings.Contains(line, "mvm-smoke") {
			t.Log(strings.TrimSpace(line))
		}
	}
	if !strings.Contains(s, "driver virtio_console bound to 1") || !strings.Contains(s, "driver virtio_blk bound to 1") {
		t.Errorf("virtio devices not bound:\n%s", s)
	}
}
