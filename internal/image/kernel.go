// Package image provides the guest artifacts mvm boots: the kernel (Debian's
// linux-image-cloud-amd64, unpacked into the cache with its vmlinux
// extracted), kernel module closures and the initramfs that carries the
// agent as /init.
package image

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/mvm-sandbox/mvm/internal/image/cache"
	"github.com/mvm-sandbox/mvm/internal/paths"
)

// ErrKernelMissing is returned (wrapped) by FindKernel when no kernel has
// been unpacked into the cache.
var ErrKernelMissing = errors.New("no guest kernel installed: run `mvmctl setup` to fetch one")

// KernelPackage is the Debian metapackage FetchKernel follows.
const KernelPackage = "linux-image-cloud-amd64"

// kernelMetaFile is the per-kernel record written last when a kernel is
// installed; a kernel directory without it is incomplete.
const kernelMetaFile = "kernel.json"

// Kernel is an unpacked guest kernel.
type Kernel struct {
	Version    string // kernel release, e.g. "6.1.0-56-cloud-amd64"
	Vmlinux    string // absolute path of the uncompressed ELF vmlinux (boots directly via PVH)
	ModulesDir string // absolute path of .../lib/modules/<Version>
	Digest     string // "sha256:<hex>" of the vmlinux file
}

// kernelMeta is the content of kernel.json.
type kernelMeta struct {
	Version        string `json:"version"`
	Digest         string `json:"digest"`
	Size           int64  `json:"size"`
	Package        string `json:"package,omitempty"`
	PackageVersion string `json:"package_version,omitempty"`
}

// loadKernel reads the kernel installed in dir and checks it cheaply: the
// record matches the directory, the vmlinux has the recorded size and the
// modules directory exists. The vmlinux is not re-hashed.
func loadKernel(dir string) (*Kernel, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	raw, err := os.ReadFile(filepath.Join(dir, kernelMetaFile))
	if err != nil {
		return nil, err
	}
	var m kernelMeta
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, kernelMetaFile), err)
	}
	if m.Version == "" || m.Version != filepath.Base(dir) || !validDigest(m.Digest) {
		return nil, fmt.Errorf("%s: inconsistent record", filepath.Join(dir, kernelMetaFile))
	}
	k := &Kernel{
		Version:    m.Version,
		Vmlinux:    filepath.Join(dir, "vmlinux"),
		ModulesDir: filepath.Join(dir, "lib", "modules", m.Version),
		Digest:     m.Digest,
	}
	st, err := os.Stat(k.Vmlinux)
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() || st.Size() != m.Size {
		return nil, fmt.Errorf("%s: size %d, recorded %d", k.Vmlinux, st.Size(), m.Size)
	}
	if st, err := os.Stat(k.ModulesDir); err != nil {
		return nil, err
	} else if !st.IsDir() {
		return nil, fmt.Errorf("%s is not a directory", k.ModulesDir)
	}
	return k, nil
}

// FindKernel returns the newest kernel unpacked under d.Kernels(). It uses
// neither the network nor apt, and reads only each kernel's small kernel.json
// record. When no complete kernel is found, the error wraps ErrKernelMissing.
func FindKernel(d paths.Dirs) (*Kernel, error) {
	if err := cache.Secure(d.Cache); err != nil {
		return nil, err
	}
	dir := d.Kernels()
	ents, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("find kernel: %w", err)
	}
	var best *Kernel
	for _, e := range ents {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		k, err := loadKernel(filepath.Join(dir, e.Name()))
		if err != nil {
			continue // incomplete or damaged: FetchKernel replaces it
		}
		if best == nil || compareVersions(k.Version, best.Version) > 0 {
			best = k
		}
	}
	if best == nil {
		return nil, fmt.Errorf("find kernel in %s: %w", dir, ErrKernelMissing)
	}
	return best, nil
}

// compareVersions orders kernel release strings naturally: runs of digits
// compare as numbers, everything else byte-wise.
func compareVersions(a, b string) int {
	for a != "" && b != "" {
		ra, resta := versionRun(a)
		rb, restb := versionRun(b)
		na, errA := strconv.ParseUint(ra, 10, 64)
		nb, errB := strconv.ParseUint(rb, 10, 64)
		switch {
		case errA == nil && errB == nil:
			if na != nb {
				if na < nb {
					return -1
				}
				return 1
			}
		default:
			if c := strings.Compare(ra, rb); c != 0 {
				return c
			}
		}
		a, b = resta, restb
	}
	return strings.Compare(a, b)
}

// versionRun splits off the leading run of digits or of non-digits.
func versionRun(s string) (string, string) {
	digit := func(c byte) bool { return c >= '0' && c <= '9' }
	d := digit(s[0])
	i := 1
	for i < len(s) && digit(s[i]) == d {
		i++
	}
	return s[:i], s[i:]
}

// FetchKernel downloads Debian's linux-image-cloud-amd64 kernel with apt,
// unpacks it and installs it under d.Kernels()/<version>/: the extracted ELF
// vmlinux, lib/modules/<version>/ and the kernel config. The installation is
// atomic (built beside the final directory, then renamed). If the version the
// metapackage points at is already installed, FetchKernel does nothing.
// Progress lines go to log.
func FetchKernel(ctx context.Context, d paths.Dirs, log io.Writer) (*Kernel, error) {
	if log == nil {
		log = io.Discard
	}
	kernels, err := filepath.Abs(d.Kernels())
	if err != nil {
		return nil, fmt.Errorf("fetch kernel: %w", err)
	}

	// 1. Follow the metapackage to the versioned package.
	fmt.Fprintf(log, "kernel: resolving %s\n", KernelPackage)
	out, err := runCmd(ctx, "", nil, "apt-cache", "depends", KernelPackage)
	if err != nil {
		return nil, fmt.Errorf("fetch kernel: resolve %s (`apt-cache depends %s`; run `apt-get update` if the package is unknown): %w",
			KernelPackage, KernelPackage, err)
	}
	pkg, err := parseKernelDepends(out)
	if err != nil {
		return nil, fmt.Errorf("fetch kernel: resolve %s: %w", KernelPackage, err)
	}
	ver := strings.TrimPrefix(pkg, "linux-image-")
	final := filepath.Join(kernels, ver)
	installed := func() (*Kernel, bool) { k, err := loadKernel(final); return k, err == nil }
	k, hit, err := cache.Once(ctx, kernelLock(d, ver), false, installed, func() (*Kernel, error) {
		return fetchVersion(ctx, kernels, pkg, ver, log)
	})
	if hit {
		fmt.Fprintf(log, "kernel: %s already installed in %s\n", ver, filepath.Dir(k.Vmlinux))
	}
	return k, err
}

// kernelLock is the lock of one kernel version: concurrent fetches and
// installs of it download and unpack once.
func kernelLock(d paths.Dirs, version string) string {
	return filepath.Join(d.Images(), "locks", "kernel-"+version+".lock")
}

// fetchVersion downloads, unpacks and installs package pkg (kernel ver).
func fetchVersion(ctx context.Context, kernels, pkg, ver string, log io.Writer) (*Kernel, error) {
	// 2. Download it into a work dir beside the final location.
	if err := os.MkdirAll(kernels, cache.DirMode); err != nil {
		return nil, fmt.Errorf("fetch kernel: create %s: %w", kernels, err)
	}
	removeStaleWork(kernels)
	work, err := os.MkdirTemp(kernels, ".fetch-")
	if err != nil {
		return nil, fmt.Errorf("fetch kernel: create work dir: %w", err)
	}
	defer os.RemoveAll(work)
	debDir := filepath.Join(work, "deb")
	if err := os.Mkdir(debDir, cache.DirMode); err != nil {
		return nil, fmt.Errorf("fetch kernel: %w", err)
	}
	fmt.Fprintf(log, "kernel: downloading %s\n", pkg)
	args := []string{"download"}
	if os.Geteuid() == 0 {
		// As root apt drops to the _apt user, which usually cannot write
		// into the cache dir; it then warns and downloads as root anyway.
		args = append(args, "-o", "APT::Sandbox::User=root")
	}
	args = append(args, pkg)
	if _, err := runCmd(ctx, debDir, log, "apt-get", args...); err != nil {
		return nil, fmt.Errorf("fetch kernel: download %s (`apt-get download %s`): %w", pkg, pkg, err)
	}
	debs, _ := filepath.Glob(filepath.Join(debDir, "*.deb"))
	if len(debs) != 1 {
		return nil, fmt.Errorf("fetch kernel: download %s: expected one .deb in %s, found %d", pkg, debDir, len(debs))
	}
	pkgVersion := ""
	if v, err := runCmd(ctx, "", nil, "dpkg-deb", "-f", debs[0], "Version"); err == nil {
		pkgVersion = strings.TrimSpace(v)
	}

	// 3. Unpack.
	fmt.Fprintf(log, "kernel: unpacking %s\n", filepath.Base(debs[0]))
	root := filepath.Join(work, "x")
	if _, err := runCmd(ctx, "", nil, "dpkg", "-x", debs[0], root); err != nil {
		return nil, fmt.Errorf("fetch kernel: unpack %s (`dpkg -x %s DIR`): %w", pkg, filepath.Base(debs[0]), err)
	}
	stage := filepath.Join(work, "stage")
	k, err := stageKernel(root, stage, true, log)
	if err != nil {
		return nil, fmt.Errorf("fetch kernel: %s: %w", pkg, err)
	}
	if k.Version != ver {
		fmt.Fprintf(log, "kernel: package %s holds kernel %s\n", pkg, k.Version)
	}
	if err := patchMeta(stage, pkg, pkgVersion); err != nil {
		return nil, fmt.Errorf("fetch kernel: %w", err)
	}

	// 4. Install atomically.
	k, err = installStaged(kernels, work, stage, k.Version)
	if err != nil {
		return nil, fmt.Errorf("fetch kernel: %w", err)
	}
	fmt.Fprintf(log, "kernel: installed %s (%s)\n", k.Version, k.Digest)
	return k, nil
}

// InstallKernelTree installs a kernel from an already unpacked package tree
// (the output of `dpkg -x`, holding boot/vmlinuz-<version> and
// lib/modules/<version>) under d.Kernels()/<version>/, copying it. It is the
// offline half of FetchKernel. An already installed version is kept.
func InstallKernelTree(d paths.Dirs, tree string, log io.Writer) (*Kernel, error) {
	if log == nil {
		log = io.Discard
	}
	kernels, err := filepath.Abs(d.Kernels())
	if err != nil {
		return nil, fmt.Errorf("install kernel: %w", err)
	}
	ver, err := treeVersion(tree)
	if err != nil {
		return nil, fmt.Errorf("install kernel from %s: %w", tree, err)
	}
	final := filepath.Join(kernels, ver)
	installed := func() (*Kernel, bool) { k, err := loadKernel(final); return k, err == nil }
	k, _, err := cache.Once(context.Background(), kernelLock(d, ver), false, installed, func() (*Kernel, error) {
		return installTree(kernels, tree, log)
	})
	return k, err
}

// installTree copies an unpacked package tree into kernels.
func installTree(kernels, tree string, log io.Writer) (*Kernel, error) {
	if err := os.MkdirAll(kernels, cache.DirMode); err != nil {
		return nil, fmt.Errorf("install kernel: create %s: %w", kernels, err)
	}
	removeStaleWork(kernels)
	work, err := os.MkdirTemp(kernels, ".install-")
	if err != nil {
		return nil, fmt.Errorf("install kernel: create work dir: %w", err)
	}
	defer os.RemoveAll(work)
	stage := filepath.Join(work, "stage")
	k, err := stageKernel(tree, stage, false, log)
	if err != nil {
		return nil, fmt.Errorf("install kernel from %s: %w", tree, err)
	}
	k, err = installStaged(kernels, work, stage, k.Version)
	if err != nil {
		return nil, fmt.Errorf("install kernel: %w", err)
	}
	return k, nil
}

// installStaged publishes a staged kernel directory as kernels/<version>,
// keeping a complete one already there (a concurrent caller's) and moving
// an incomplete leftover into work, which the caller deletes.
func installStaged(kernels, work, stage, version string) (*Kernel, error) {
	final := filepath.Join(kernels, version)
	good := func(p string) bool { _, err := loadKernel(p); return err == nil }
	if _, err := cache.PublishDir(stage, final, filepath.Join(work, "old"), good); err != nil {
		return nil, err
	}
	k, err := loadKernel(final)
	if err != nil {
		return nil, fmt.Errorf("check installed %s: %w", final, err)
	}
	return k, nil
}

// removeStaleWork deletes work dirs that an interrupted FetchKernel or
// InstallKernelTree left behind. Only old ones go, so that a concurrent
// caller's work dir survives.
func removeStaleWork(kernels string) {
	ents, _ := os.ReadDir(kernels)
	for _, e := range ents {
		if !e.IsDir() || !(strings.HasPrefix(e.Name(), ".fetch-") || strings.HasPrefix(e.Name(), ".install-")) {
			continue
		}
		if info, err := e.Info(); err == nil && time.Since(info.ModTime()) > 6*time.Hour {
			os.RemoveAll(filepath.Join(kernels, e.Name()))
		}
	}
}

// parseKernelDepends picks the versioned kernel package out of
// `apt-cache depends` output.
func parseKernelDepends(out string) (string, error) {
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		line = strings.TrimPrefix(line, "|")
		dep, ok := strings.CutPrefix(line, "Depends:")
		if !ok {
			continue
		}
		dep = strings.TrimSpace(dep)
		if strings.HasPrefix(dep, "linux-image-") && !strings.HasPrefix(dep, "<") {
			return dep, nil
		}
	}
	return "", errors.New("no linux-image-<version> dependency in `apt-cache depends` output")
}

// treeVersion returns the kernel version of an unpacked package tree, from
// its single boot/vmlinuz-<version>.
func treeVersion(root string) (string, error) {
	m, _ := filepath.Glob(filepath.Join(root, "boot", "vmlinuz-*"))
	if len(m) != 1 {
		return "", fmt.Errorf("expected one boot/vmlinuz-* in %s, found %d", root, len(m))
	}
	ver := strings.TrimPrefix(filepath.Base(m[0]), "vmlinuz-")
	if ver == "" || strings.ContainsAny(ver, "/ ") || strings.HasPrefix(ver, ".") {
		return "", fmt.Errorf("odd kernel file name %s", m[0])
	}
	return ver, nil
}

// stageKernel builds an installable kernel directory at stage from the
// unpacked package tree root, moving files out of root when move is set and
// copying them otherwise.
func stageKernel(root, stage string, move bool, log io.Writer) (*Kernel, error) {
	ver, err := treeVersion(root)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(stage, "lib", "modules"), cache.DirMode); err != nil {
		return nil, err
	}
	fmt.Fprintf(log, "kernel: extracting vmlinux from vmlinuz-%s\n", ver)
	bz, err := os.ReadFile(filepath.Join(root, "boot", "vmlinuz-"+ver))
	if err != nil {
		return nil, fmt.Errorf("read vmlinuz: %w", err)
	}
	vmlinux, err := ExtractVmlinux(bz)
	if err != nil {
		return nil, fmt.Errorf("kernel %s: %w", ver, err)
	}
	if err := cache.WriteFile(filepath.Join(stage, "vmlinux"), vmlinux, cache.FileMode); err != nil {
		return nil, fmt.Errorf("write vmlinux: %w", err)
	}
	sum := sha256.Sum256(vmlinux)

	mods := ""
	for _, cand := range []string{filepath.Join(root, "lib", "modules", ver), filepath.Join(root, "usr", "lib", "modules", ver)} {
		if st, err := os.Stat(cand); err == nil && st.IsDir() {
			mods = cand
			break
		}
	}
	if mods == "" {
		return nil, fmt.Errorf("kernel %s: no lib/modules/%s in package", ver, ver)
	}
	transfer := func(from, to string) error {
		if move {
			return os.Rename(from, to)
		}
		st, err := os.Stat(from)
		if err != nil {
			return err
		}
		if st.IsDir() {
			return os.CopyFS(to, os.DirFS(from))
		}
		data, err := os.ReadFile(from)
		if err != nil {
			return err
		}
		return cache.WriteFile(to, data, cache.FileMode)
	}
	if err := transfer(mods, filepath.Join(stage, "lib", "modules", ver)); err != nil {
		return nil, fmt.Errorf("kernel %s: modules: %w", ver, err)
	}
	if err := transfer(filepath.Join(root, "boot", "config-"+ver), filepath.Join(stage, "config-"+ver)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("kernel %s: config: %w", ver, err)
	}
	m := kernelMeta{Version: ver, Digest: "sha256:" + hex.EncodeToString(sum[:]), Size: int64(len(vmlinux))}
	if err := writeMeta(stage, m); err != nil {
		return nil, err
	}
	return &Kernel{Version: ver, Digest: m.Digest}, nil
}

func writeMeta(dir string, m kernelMeta) error {
	raw, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	if err := cache.WriteFile(filepath.Join(dir, kernelMetaFile), append(raw, '\n'), cache.FileMode); err != nil {
		return fmt.Errorf("write %s: %w", kernelMetaFile, err)
	}
	return nil
}

// patchMeta adds package information to a staged kernel.json.
func patchMeta(dir, pkg, pkgVersion string) error {
	raw, err := os.ReadFile(filepath.Join(dir, kernelMetaFile))
	if err != nil {
		return err
	}
	var m kernelMeta
	if err := json.Unmarshal(raw, &m); err != nil {
		return err
	}
	m.Package, m.PackageVersion = pkg, pkgVersion
	return writeMeta(dir, m)
}

// runCmd runs a command and returns its stdout. Its stderr (and stdout,
// when log is set) is copied to log; the error carries the last lines of
// stderr.
func runCmd(ctx context.Context, dir string, log io.Writer, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if log != nil {
		cmd.Stdout = io.MultiWriter(&stdout, log)
		cmd.Stderr = io.MultiWriter(&stderr, log)
	}
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if len(msg) > 500 {
			msg = "..." + msg[len(msg)-500:]
		}
		if msg != "" {
			return stdout.String(), fmt.Errorf("%s: %w: %s", name, err, msg)
		}
		return stdout.String(), fmt.Errorf("%s: %w", name, err)
	}
	return stdout.String(), nil
}
