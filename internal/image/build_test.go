package image

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mvm-sandbox/mvm/internal/image/rootfs"
	"github.com/mvm-sandbox/mvm/internal/paths"
	"github.com/mvm-sandbox/mvm/internal/testenv"
)

func rfTestDirs(t *testing.T) paths.Dirs {
	t.Helper()
	base := t.TempDir()
	return paths.Dirs{Cache: filepath.Join(base, "cache"), Data: filepath.Join(base, "data"), State: filepath.Join(base, "state")}
}

// rfNeedTools: e2fsprogs and busybox-static are installed by
// scripts/test.sh; by hand, a test without them is skipped.
func rfNeedTools(t *testing.T, tools ...string) {
	t.Helper()
	testenv.NeedTools(t, append([]string{"mkfs.ext4", "debugfs", "e2fsck"}, tools...)...)
	testenv.NeedStaticBinary(t, rootfs.HostBusybox, "busybox-static")
}

// debugfs runs one read-only debugfs request against an image.
func debugfs(t *testing.T, img, req string) string {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", req, img).Output()
	if err != nil {
		t.Fatalf("debugfs -R %q %s: %v", req, img, err)
	}
	return string(out)
}

// guestStat returns debugfs's stat output, or "" if the path is missing.
func guestStat(t *testing.T, img, p string) string {
	t.Helper()
	cmd := exec.Command("debugfs", "-R", "stat "+p, img)
	out, _ := cmd.CombinedOutput()
	s := string(out)
	if strings.Contains(s, "File not found") || !strings.Contains(s, "Inode:") {
		return ""
	}
	return s
}

func fsck(t *testing.T, img string) {
	t.Helper()
	out, err := exec.Command("e2fsck", "-fn", img).CombinedOutput()
	if err != nil {
		t.Fatalf("e2fsck -fn %s: %v\n%s", img, err, out)
	}
}

type eventLog struct {
	mu sync.Mutex
	ev []Event
}

func (l *eventLog) add(e Event) { l.mu.Lock(); l.ev = append(l.ev, e); l.mu.Unlock() }

func (l *eventLog) has(phase, status string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range l.ev {
		if e.Phase == phase && e.Status == status {
			return true
		}
	}
	return false
}

func TestResolveTemplate(t *testing.T) {
	for name, want := range map[string]string{
		"minimal": "minimal", "debian": "debian-12", "debian-12": "debian-12", "debian-13": "debian-13",
		"python": "python-3.11", "python-3.11": "python-3.11", "python-3.13": "python-3.13",
		"node": "node-18", "node-18": "node-18", "node-20": "node-20",
	} {
		tpl, err := ResolveTemplate(name)
		if err != nil || tpl.Name != want {
			t.Errorf("ResolveTemplate(%q) = %q, %v; want %q", name, tpl.Name, err, want)
		}
	}
	py, _ := ResolveTemplate("python")
	if py.Suite != SuiteBookworm || strings.Join(py.Packages, ",") != "python3,python-is-python3" {
		t.Errorf("python template: %+v", py)
	}
	n20, _ := ResolveTemplate("node-20")
	if n20.Suite != SuiteTrixie {
		t.Errorf("node-20 suite %q", n20.Suite)
	}

	for _, bad := range []string{"python-3.12", "node-22", "ubuntu", "", "python3"} {
		_, err := ResolveTemplate(bad)
		var ut *UnknownTemplateError
		if !errors.As(err, &ut) {
			t.Fatalf("ResolveTemplate(%q): %v", bad, err)
		}
		msg := err.Error()
		for _, name := range TemplateNames() {
			if !strings.Contains(msg, name) {
				t.Errorf("error for %q does not list %q: %s", bad, name, msg)
			}
		}
	}
	_, err := ResolveTemplate("python-3.12")
	if !strings.Contains(err.Error(), "python versions: python-3.11, python-3.13") {
		t.Errorf("python-3.12: %v", err)
	}
}

func TestBuildMinimal(t *testing.T) {
	rfNeedTools(t)
	d := rfTestDirs(t)
	ctx := context.Background()
	var log eventLog
	t0 := time.Now()
	a, err := Build(ctx, d, "", "minimal", BuildOptions{}, log.add)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("minimal: built in %v, %d bytes, %s", time.Since(t0), a.Size, a.Digest)
	for _, ph := range []string{PhaseResolve, PhaseBootstrap, PhaseFiles, PhasePack, PhaseRecord} {
		if !log.has(ph, StatusDone) {
			t.Errorf("no %s done event", ph)
		}
	}
	if a.Cached || a.Template != "minimal" || a.Profile != "dev" || a.Workdir != "/work" || a.Source != "template:minimal" {
		t.Errorf("artifact: %+v", a)
	}
	sum, err := fileSHA(a.Path)
	if err != nil || "sha256:"+sum != a.Digest {
		t.Fatalf("digest %s, file sha256 %s (%v)", a.Digest, sum, err)
	}
	if want := filepath.Join(d.Images(), "artifacts", sum, RootfsFile); a.Path != want {
		t.Errorf("path %s, want %s", a.Path, want)
	}
	if _, err := os.Stat(filepath.Join(d.Images(), "artifacts", sum, "artifact.json")); err != nil {
		t.Error(err)
	}
	fsck(t, a.Path)

	for _, p := range []string{"/bin/busybox", "/bin/sh", "/usr/bin/env", "/etc/passwd", "/etc/group",
		"/tmp", "/proc", "/sys", "/dev", "/run", "/work", "/root", RootfsConfigPath} {
		if guestStat(t, a.Path, p) == "" {
			t.Errorf("%s missing from the minimal image", p)
		}
	}
	if s := guestStat(t, a.Path, "/bin/sh"); !strings.Contains(s, "Type: symlink") {
		t.Errorf("/bin/sh is not a symlink: %s", s)
	}
	if s := debugfs(t, a.Path, "cat /etc/passwd"); !strings.HasPrefix(s, "root:x:0:0:") {
		t.Errorf("/etc/passwd: %q", s)
	}
	if s := debugfs(t, a.Path, "cat "+RootfsConfigPath); !strings.Contains(s, `"profile": "dev"`) || !strings.Contains(s, `"workdir": "/work"`) {
		t.Errorf("image.json: %s", s)
	}
	if s := guestStat(t, a.Path, "/bin/busybox"); !strings.Contains(s, "User:     0   Group:     0") {
		t.Errorf("/bin/busybox not owned by root: %s", s)
	}

	// The second build of the same input is a cache hit: no tree, no mkfs.
	var log2 eventLog
	b, err := Build(ctx, d, "", "minimal", BuildOptions{}, log2.add)
	if err != nil {
		t.Fatal(err)
	}
	if !b.Cached || b.Digest != a.Digest {
		t.Fatalf("second build not a cache hit: %+v", b)
	}
	for _, ph := range []string{PhaseBootstrap, PhaseFiles, PhasePack, PhaseRecord} {
		if log2.has(ph, StatusStarted) {
			t.Errorf("cache hit ran %s", ph)
		}
	}

	// Same input, fresh cache: the same bytes.
	d2 := rfTestDirs(t)
	c, err := Build(ctx, d2, "", "minimal", BuildOptions{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Digest != a.Digest {
		t.Errorf("not reproducible: %s vs %s", c.Digest, a.Digest)
	}

	// A sealed bare template is a different image.
	s, err := Build(ctx, d, "", "minimal", BuildOptions{Profile: "sealed"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if s.Digest == a.Digest || s.Profile != "sealed" {
		t.Errorf("sealed: %+v", s)
	}

	// ResolveImage finds the bare template build.
	r, err := ResolveImage(d, "minimal")
	if err != nil || r.Digest != a.Digest {
		t.Errorf("ResolveImage(minimal) = %v, %v", r, err)
	}
	var nb *NotBuiltError
	if _, err := ResolveImage(d, "python"); !errors.As(err, &nb) {
		t.Errorf("ResolveImage(python) before build: %v", err)
	}
}

func writeTree(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestBuildManifestFiles(t *testing.T) {
	rfNeedTools(t)
	d := rfTestDirs(t)
	ctx := context.Background()
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{
		"mvm.toml": `template = "minimal"
name = "files-demo"
command = ["sh", "run.sh"]
profile = "sealed"
memory = "256M"
cpus = 2
[env]
GREETING = "hello"
[files]
"/opt/tool" = "tool"
"/etc/app.conf" = "conf/app.conf"
`,
		"run.sh":         "echo $GREETING\n",
		"sub/deep/x.txt": "x\n",
		"tool/bin/t":     "#!/bin/sh\necho tool\n",
		"conf/app.conf":  "k=v\n",
		".git/HEAD":      "ref: refs/heads/main\n",
	})
	if err := os.Chmod(filepath.Join(dir, "tool/bin/t"), 0o4755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("run.sh", filepath.Join(dir, "link.sh")); err != nil {
		t.Fatal(err)
	}

	var log eventLog
	a, err := Build(ctx, d, dir, "", BuildOptions{}, log.add)
	if err != nil {
		t.Fatal(err)
	}
	fsck(t, a.Path)
	if a.Name != "files-demo" || a.Profile != "sealed" || a.MemoryMiB != 256 || a.CPUs != 2 || a.Env["GREETING"] != "hello" {
		t.Errorf("artifact: %+v", a)
	}
	for _, p := range []string{"/work/run.sh", "/work/sub/deep/x.txt", "/work/link.sh", "/opt/tool/bin/t", "/etc/app.conf", "/work/tool/bin/t"} {
		if guestStat(t, a.Path, p) == "" {
			t.Errorf("%s missing", p)
		}
	}
	for _, p := range []string{"/work/mvm.toml", "/work/.git"} {
		if guestStat(t, a.Path, p) != "" {
			t.Errorf("%s should be excluded", p)
		}
	}
	if s := guestStat(t, a.Path, "/opt/tool/bin/t"); !strings.Contains(s, "Mode:  0755") {
		t.Errorf("set-uid bit not dropped: %s", s)
	}
	if s := guestStat(t, a.Path, "/work/link.sh"); !strings.Contains(s, "Type: symlink") {
		t.Errorf("link.sh: %s", s)
	}
	if s := debugfs(t, a.Path, "cat /etc/app.conf"); s != "k=v\n" {
		t.Errorf("/etc/app.conf = %q", s)
	}
	cfg := debugfs(t, a.Path, "cat "+RootfsConfigPath)
	for _, want := range []string{`"profile": "sealed"`, `"GREETING": "hello"`, `"sh"`, `"run.sh"`, `"workdir": "/work"`} {
		if !strings.Contains(cfg, want) {
			t.Errorf("image.json lacks %s: %s", want, cfg)
		}
	}

	// unchanged: cache hit; touching a file without changing it: still a hit
	now := time.Now()
	os.Chtimes(filepath.Join(dir, "run.sh"), now, now)
	b, err := Build(ctx, d, dir, "", BuildOptions{}, nil)
	if err != nil || !b.Cached || b.Digest != a.Digest {
		t.Fatalf("rebuild: %+v %v", b, err)
	}
	// changed content: a new image
	writeTree(t, dir, map[string]string{"run.sh": "echo changed\n"})
	c, err := Build(ctx, d, dir, "", BuildOptions{}, nil)
	if err != nil || c.Cached || c.Digest == a.Digest {
		t.Fatalf("changed content: %+v %v", c, err)
	}
	if s := debugfs(t, c.Path, "cat /work/run.sh"); s != "echo changed\n" {
		t.Errorf("run.sh = %q", s)
	}

	// ResolveImage by name gives the newest; by prefix; ListArtifacts.
	r, err := ResolveImage(d, "files-demo")
	if err != nil || r.Digest != c.Digest {
		t.Errorf("ResolveImage(name) = %v, %v", r, err)
	}
	r, err = ResolveImage(d, a.ID()[:10])
	if err != nil || r.Digest != a.Digest {
		t.Errorf("ResolveImage(prefix) = %v, %v", r, err)
	}
	all, err := ListArtifacts(d)
	if err != nil || len(all) != 2 {
		t.Fatalf("ListArtifacts: %d %v", len(all), err)
	}

	// RemoveArtifact refuses an image in use, then removes it.
	_, err = RemoveArtifact(d, a.ID()[:8], func(dg string) bool { return dg == a.Digest })
	if !errors.Is(err, ErrArtifactInUse) {
		t.Fatalf("remove in-use: %v", err)
	}
	if _, err := RemoveArtifact(d, "sha256:"+a.ID(), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Dir(a.Path)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("artifact dir still there: %v", err)
	}
	if _, err := RemoveArtifact(d, a.ID(), nil); err == nil {
		t.Error("removing twice succeeded")
	}
	if _, err := RemoveArtifact(d, "zz", nil); err == nil {
		t.Error("bad id accepted")
	}
	// after removal, the old input builds again (index entry dropped)
	writeTree(t, dir, map[string]string{"run.sh": "echo $GREETING\n"})
	e, err := Build(ctx, d, dir, "", BuildOptions{}, nil)
	if err != nil || e.Cached || e.Digest != a.Digest {
		t.Fatalf("rebuild after rm: %+v %v", e, err)
	}
}

func TestBuildErrors(t *testing.T) {
	rfNeedTools(t)
	d := rfTestDirs(t)
	ctx := context.Background()

	_, err := Build(ctx, d, "", "python-3.12", BuildOptions{}, nil)
	var ut *UnknownTemplateError
	if !errors.As(err, &ut) || !strings.Contains(err.Error(), "python-3.13") {
		t.Errorf("python-3.12: %v", err)
	}
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{"mvm.toml": "template = \"minimal\"\npackages = [\"curl\"]\n"})
	if _, err := Build(ctx, d, dir, "", BuildOptions{}, nil); err == nil || !strings.Contains(err.Error(), "no package manager") {
		t.Errorf("minimal + packages: %v", err)
	}
	writeTree(t, dir, map[string]string{"mvm.toml": "template = \"minimal\"\nbogus = 1\n"})
	if _, err := Build(ctx, d, dir, "", BuildOptions{}, nil); err == nil || !strings.Contains(err.Error(), "bogus") || !strings.Contains(err.Error(), "mvm.toml") {
		t.Errorf("bad manifest: %v", err)
	}
	if _, err := Build(ctx, d, "", "", BuildOptions{}, nil); err == nil {
		t.Error("no template accepted")
	}
}

func TestBuildConcurrent(t *testing.T) {
	rfNeedTools(t)
	d := rfTestDirs(t)
	var wg sync.WaitGroup
	res := make([]*Artifact, 4)
	errs := make([]error, 4)
	for i := range res {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			res[i], errs[i] = Build(context.Background(), d, "", "minimal", BuildOptions{}, nil)
		}(i)
	}
	wg.Wait()
	for i := range res {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if res[i].Digest != res[0].Digest {
			t.Errorf("digests differ: %s %s", res[i].Digest, res[0].Digest)
		}
	}
	all, _ := ListArtifacts(d)
	if len(all) != 1 {
		t.Errorf("%d artifacts", len(all))
	}
	fsck(t, res[0].Path)
}

// TestBuildPython builds the python template from the Debian mirror. It
// needs root, mmdebstrap and the network; it takes about half a minute.
func TestBuildPython(t *testing.T) {
	if testing.Short() {
		t.Skip("needs the Debian mirror; skipped with -short")
	}
	rfNeedTools(t, "mmdebstrap")
	testenv.NeedRoot(t, "mmdebstrap --mode=root")
	d := rfTestDirs(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	var log eventLog
	t0 := time.Now()
	a, err := Build(ctx, d, "", "python", BuildOptions{}, log.add)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("python: built in %v, image %d bytes, %s", time.Since(t0), a.Size, a.Digest)
	fsck(t, a.Path)
	if a.Template != "python-3.11" || a.Suite != SuiteBookworm {
		t.Errorf("artifact: %+v", a)
	}
	for _, p := range []string{"/usr/bin/python3", "/usr/bin/python", "/bin/sh", "/usr/bin/env", "/etc/passwd",
		"/tmp", "/proc", "/sys", "/dev", "/run", "/work", RootfsConfigPath} {
		if guestStat(t, a.Path, p) == "" {
			t.Errorf("%s missing from the python image", p)
		}
	}
	if s := debugfs(t, a.Path, "cat /etc/hostname"); s != "mvm\n" {
		t.Errorf("/etc/hostname = %q (host's leaked?)", s)
	}
	if s := debugfs(t, a.Path, "ls /usr/share/doc/python3"); strings.Contains(s, "changelog") {
		t.Errorf("docs not excluded: %s", s)
	}
	// a manifest on top reuses the tree: no mmdebstrap, only files and pack
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{"mvm.toml": "template = \"python\"\n", "main.py": "print('hi')\n"})
	var log2 eventLog
	t1 := time.Now()
	b, err := Build(ctx, d, dir, "", BuildOptions{}, log2.add)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("python + files: built in %v", time.Since(t1))
	if log2.has(PhaseBootstrap, StatusStarted) {
		t.Error("mmdebstrap ran again for the same template")
	}
	if s := debugfs(t, b.Path, "cat /work/main.py"); s != "print('hi')\n" {
		t.Errorf("/work/main.py = %q", s)
	}
	// the cache hit is asserted by what ran, not by how long it took
	var log3 eventLog
	c, err := Build(ctx, d, dir, "", BuildOptions{}, log3.add)
	if err != nil || !c.Cached || c.Digest != b.Digest {
		t.Fatalf("cache hit: %+v %v", c, err)
	}
	for _, ph := range []string{PhaseBootstrap, PhasePackages, PhaseFiles, PhasePack, PhaseRecord} {
		if log3.has(ph, StatusStarted) {
			t.Errorf("cache hit ran %s", ph)
		}
	}
}

// TestImageNameIsLastBuilt: two directories that declare one name; the
// name resolves to whichever was built last, also when that build was a
// cache hit (it resolved to the newest artifact before, so rebuilding an
// older directory left the name on the other one).
func TestImageNameIsLastBuilt(t *testing.T) {
	rfNeedTools(t)
	d := rfTestDirs(t)
	ctx := context.Background()
	a, b := t.TempDir(), t.TempDir()
	writeTree(t, a, map[string]string{"mvm.toml": "template = \"minimal\"\nname = \"same-name\"\n", "data.txt": "a\n"})
	writeTree(t, b, map[string]string{"mvm.toml": "template = \"minimal\"\nname = \"same-name\"\n", "data.txt": "b\n"})
	built := map[string]string{}
	for _, dir := range []string{a, b, a} {
		art, err := Build(ctx, d, dir, "", BuildOptions{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		built[dir] = art.Digest
		got, err := ResolveImage(d, "same-name")
		if err != nil {
			t.Fatal(err)
		}
		if got.Digest != art.Digest {
			t.Fatalf("after building %s (cached %v) the name resolves to %s, want %s", dir, art.Cached, got.Digest, art.Digest)
		}
	}
	if built[a] == built[b] {
		t.Fatalf("two different directories built to one digest %s", built[a])
	}
	if _, err := RemoveArtifact(d, built[a], nil); err != nil {
		t.Fatal(err)
	}
	if got, err := ResolveImage(d, "same-name"); err != nil || got.Digest != built[b] {
		t.Fatalf("after removing the last build the name resolves to %v (%v), want the other build %s", got, err, built[b])
	}
}
