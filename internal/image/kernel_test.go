package image

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mvm-sandbox/mvm/internal/paths"

	"github.com/mvm-sandbox/mvm/internal/testenv"
)

// Tests that need Debian's real cloud kernel get it from
// MVM_TEST_KERNEL_DEB_DIR (a `dpkg -x` of linux-image-<ver>-cloud-amd64,
// holding boot/vmlinuz-* and lib/modules/<ver>/). Without it they download
// the package once with apt, and skip only when that is impossible.
const kernelTreeEnv = "MVM_TEST_KERNEL_DEB_DIR"

var (
	shared struct {
		once   sync.Once
		dir    string // temp dir shared by the tests of this package
		tree   string
		kernel *Kernel
		err    error
	}
)

func TestMain(m *testing.M) {
	code := m.Run()
	if shared.dir != "" {
		os.RemoveAll(shared.dir)
	}
	os.Exit(code)
}

// realKernel returns an unpacked package tree and the kernel installed from
// it into a shared temporary cache, or skips the test.
func realKernel(t *testing.T) (tree string, k *Kernel) {
	t.Helper()
	shared.once.Do(func() {
		shared.dir, shared.err = os.MkdirTemp("", "mvm-image-test-")
		if shared.err != nil {
			return
		}
		tree := os.Getenv(kernelTreeEnv)
		if tree == "" {
			tree, shared.err = downloadTree(shared.dir)
			if shared.err != nil {
				shared.err = errors.New("real kernel unavailable: set " + kernelTreeEnv +
					" to an unpacked linux-image-*-cloud-amd64 package, or allow apt to download it: " + shared.err.Error())
				return
			}
		}
		shared.tree = tree
		d := paths.Dirs{Cache: filepath.Join(shared.dir, "cache")}
		shared.kernel, shared.err = InstallKernelTree(d, tree, nil)
	})
	if shared.err != nil {
		if strings.HasPrefix(shared.err.Error(), "real kernel unavailable") {
			testenv.Missing(t, "%v", shared.err)
		}
		t.Fatal(shared.err)
	}
	return shared.tree, shared.kernel
}

// downloadTree fetches and unpacks the current cloud kernel package.
func downloadTree(dir string) (string, error) {
	if _, err := exec.LookPath("apt-get"); err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := runCmd(ctx, "", nil, "apt-cache", "depends", KernelPackage)
	if err != nil {
		return "", err
	}
	pkg, err := parseKernelDepends(out)
	if err != nil {
		return "", err
	}
	deb := filepath.Join(dir, "deb")
	if err := os.Mkdir(deb, 0o755); err != nil {
		return "", err
	}
	if _, err := runCmd(ctx, deb, nil, "apt-get", "download", "-o", "APT::Sandbox::User=root", pkg); err != nil {
		return "", err
	}
	debs, _ := filepath.Glob(filepath.Join(deb, "*.deb"))
	if len(debs) != 1 {
		return "", errors.New("no .deb downloaded")
	}
	tree := filepath.Join(dir, "tree")
	if _, err := runCmd(ctx, "", nil, "dpkg", "-x", debs[0], tree); err != nil {
		return "", err
	}
	return tree, nil
}

func TestFindKernelMissing(t *testing.T) {
	d := paths.Dirs{Cache: t.TempDir()}
	_, err := FindKernel(d)
	if !errors.Is(err, ErrKernelMissing) {
		t.Fatalf("FindKernel on empty cache: got %v, want ErrKernelMissing", err)
	}
	if !strings.Contains(err.Error(), "mvmctl setup") {
		t.Fatalf("error %q does not tell the user to run mvmctl setup", err)
	}
	// An incomplete kernel dir (no kernel.json) is ignored.
	if err := os.MkdirAll(filepath.Join(d.Kernels(), "6.1.0-1-cloud-amd64", "lib", "modules"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := FindKernel(d); !errors.Is(err, ErrKernelMissing) {
		t.Fatalf("FindKernel with incomplete dir: got %v, want ErrKernelMissing", err)
	}
}

// fakeKernelDir installs a kernel.json-described kernel with a tiny vmlinux.
func fakeKernelDir(t *testing.T, d paths.Dirs, ver string) {
	t.Helper()
	dir := filepath.Join(d.Kernels(), ver)
	if err := os.MkdirAll(filepath.Join(dir, "lib", "modules", ver), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "vmlinux"), []byte("\x7fELF"+ver), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := writeMeta(dir, kernelMeta{Version: ver, Digest: "sha256:" + strings.Repeat("ab", 32), Size: int64(4 + len(ver))}); err != nil {
		t.Fatal(err)
	}
}

func TestFindKernelNewest(t *testing.T) {
	d := paths.Dirs{Cache: t.TempDir()}
	for _, v := range []string{"6.1.0-9-cloud-amd64", "6.1.0-56-cloud-amd64", "6.1.0-10-cloud-amd64"} {
		fakeKernelDir(t, d, v)
	}
	// A damaged newer one (vmlinux size does not match) is skipped.
	fakeKernelDir(t, d, "6.1.0-99-cloud-amd64")
	if err := os.WriteFile(filepath.Join(d.Kernels(), "6.1.0-99-cloud-amd64", "vmlinux"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	k, err := FindKernel(d)
	if err != nil {
		t.Fatal(err)
	}
	if k.Version != "6.1.0-56-cloud-amd64" {
		t.Fatalf("newest kernel: got %s", k.Version)
	}
	if !filepath.IsAbs(k.Vmlinux) || !filepath.IsAbs(k.ModulesDir) {
		t.Fatalf("paths not absolute: %+v", k)
	}
	if filepath.Base(k.ModulesDir) != k.Version {
		t.Fatalf("modules dir %s", k.ModulesDir)
	}
}

func TestCompareVersions(t *testing.T) {
	cases := []struct {
		a, b string
		want int
	}{
		{"6.1.0-9-cloud-amd64", "6.1.0-10-cloud-amd64", -1},
		{"6.10.0-1-cloud-amd64", "6.9.0-1-cloud-amd64", 1},
		{"6.1.0-56-cloud-amd64", "6.1.0-56-cloud-amd64", 0},
		{"6.1.0", "6.1.0-1", -1},
	}
	for _, c := range cases {
		if got := compareVersions(c.a, c.b); got != c.want {
			t.Errorf("compareVersions(%q, %q) = %d, want %d", c.a, c.b, got, c.want)
		}
	}
}

func TestParseKernelDepends(t *testing.T) {
	out := "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n"
	pkg, err := parseKernelDepends(out)
	if err != nil || pkg != "linux-image-6.1.0-56-cloud-amd64" {
		t.Fatalf("got %q, %v", pkg, err)
	}
	if _, err := parseKernelDepends("linux-image-cloud-amd64\n"); err == nil {
		t.Fatal("expected an error without a Depends line")
	}
}

func TestInstalledRealKernel(t *testing.T) {
	_, k := realKernel(t)
	d := paths.Dirs{Cache: filepath.Join(shared.dir, "cache")}
	found, err := FindKernel(d)
	if err != nil {
		t.Fatal(err)
	}
	if *found != *k {
		t.Fatalf("FindKernel = %+v, installed %+v", found, k)
	}
	f, err := os.Open(k.Vmlinux)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	magic := make([]byte, 4)
	if _, err := f.Read(magic); err != nil || !bytes.Equal(magic, elfMagic) {
		t.Fatalf("vmlinux does not start with the ELF magic: %x %v", magic, err)
	}
	if _, err := os.Stat(filepath.Join(k.ModulesDir, "modules.builtin")); err != nil {
		t.Fatal(err)
	}
	// Installing again is a no-op.
	again, err := InstallKernelTree(d, shared.tree, nil)
	if err != nil || *again != *k {
		t.Fatalf("second install: %+v, %v", again, err)
	}
}

// TestFetchKernel downloads the real package (about 27 MB). It runs with
// MVM_TEST_FETCH=1 and always under scripts/test.sh.
func TestFetchKernel(t *testing.T) {
	testenv.Opted(t, "MVM_TEST_FETCH", "downloads linux-image-cloud-amd64 with apt")
	d := paths.Dirs{Cache: t.TempDir()}
	var log bytes.Buffer
	ctx := context.Background()
	k, err := FetchKernel(ctx, d, &log)
	if err != nil {
		t.Fatalf("%v\n%s", err, log.String())
	}
	t.Logf("fetched %+v; progress:\n%s", k, log.String())
	found, err := FindKernel(d)
	if err != nil || *found != *k {
		t.Fatalf("FindKernel after fetch: %+v, %v", found, err)
	}
	log.Reset()
	again, err := FetchKernel(ctx, d, &log)
	if err != nil || *again != *k {
		t.Fatalf("second fetch: %+v, %v", again, err)
	}
	if !strings.Contains(log.String(), "already installed") {
		t.Fatalf("second fetch did not short-cut:\n%s", log.String())
	}
	ents, _ := os.ReadDir(d.Kernels())
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".") {
			t.Errorf("leftover work dir %s", e.Name())
		}
	}
}

// TestConcurrentInstallsOnce: concurrent installs of one kernel version
// take its lock in turn; all get the same kernel and nothing is left over.
func TestConcurrentInstallsOnce(t *testing.T) {
	realKernel(t)
	d := paths.Dirs{Cache: t.TempDir()}
	ks := make([]*Kernel, 4)
	errs := make([]error, 4)
	var wg sync.WaitGroup
	for i := range ks {
		wg.Add(1)
		go func() { defer wg.Done(); ks[i], errs[i] = InstallKernelTree(d, shared.tree, nil) }()
	}
	wg.Wait()
	for i := range ks {
		if errs[i] != nil || *ks[i] != *ks[0] {
			t.Fatalf("install %d: %+v, %v (first %+v)", i, ks[i], errs[i], ks[0])
		}
	}
	ents, _ := os.ReadDir(d.Kernels())
	if len(ents) != 1 || ents[0].Name() != ks[0].Version {
		t.Fatalf("kernel dir holds %v", ents)
	}
	if _, err := os.Stat(kernelLock(d, ks[0].Version)); err != nil {
		t.Fatalf("no lock file: %v", err)
	}
}
